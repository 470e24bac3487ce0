/**
 * # What finding a connection's descriptor costs
 *
 * @run deno run --allow-net --allow-ffi bench/descriptor_lookup.ts
 *
 * Deno does not expose a socket's file descriptor, so @kakit/keepalive searches
 * for it (getsockname/getpeername through FFI). A server that tunes its
 * listener never needs it per connection; `--watch` does. This prints what
 * one lookup costs in two cases: connections accepted one after another
 * (the new socket is just above the last one found), and churn (one
 * connection closed at random, one accepted, so the new socket lands in a
 * hole lower down). Loopback only; it stops by itself.
 *
 * @module
 */
import { socketDescriptor } from "@kakit/keepalive";

const OPEN = 1000, STEPS = 1000;

function summary(name: string, times: number[]) {
  const sorted = [...times].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return {
    case: name,
    lookups: times.length,
    "median ms": at(0.5).toFixed(3),
    "p99 ms": at(0.99).toFixed(3),
    "worst ms": sorted[sorted.length - 1].toFixed(3),
  };
}

const listener = Deno.listen({ hostname: "127.0.0.1", port: 0, tcpBacklog: 4096 });
socketDescriptor(listener);
const pairs: [Deno.TcpConn, Deno.TcpConn][] = [];
const inOrder: number[] = [];
for (let i = 0; i < OPEN; i++) {
  const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  const accepted = await listener.accept();
  const start = performance.now();
  socketDescriptor(accepted);
  inOrder.push(performance.now() - start);
  pairs.push([client, accepted]);
}

const churn: number[] = [];
for (let step = 0; step < STEPS; step++) {
  const k = Math.floor(Math.random() * pairs.length);
  for (const conn of pairs[k]) conn.close();
  const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  const accepted = await listener.accept();
  const start = performance.now();
  socketDescriptor(accepted);
  churn.push(performance.now() - start);
  pairs[k] = [client, accepted];
}

console.table([
  summary(`accepted in order, up to ${OPEN} open`, inOrder),
  summary(`churn, ${OPEN} open`, churn),
]);
for (const pair of pairs) for (const conn of pair) conn.close();
listener.close();

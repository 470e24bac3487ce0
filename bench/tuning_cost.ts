/**
 * # What tuning costs in a process with thousands of descriptors
 *
 * @run deno run -A bench/tuning_cost.ts [--runs 5] [--connections 1000,4000] [--json]
 *
 * Deno hides a socket's descriptor, so `@kakit/keepalive` finds it by
 * asking the kernel about descriptor numbers. This measures whether that
 * cost grows with the descriptors a process holds, against the call a
 * `node:net` user makes, Deno's own `socket.setKeepAlive(true, ms)` (no
 * search: two setsockopt calls in Rust), in the same process and run:
 *
 * - `setKeepAlive` on the newest connection (made just before, as a pool's
 *   `connect` handler sees it), after tuning a random older one;
 * - `setKeepAlive` again on an older connection tuned before;
 * - `setKeepAlive` on a new connection made after a random one closed
 *   (churn: the kernel puts it in the hole, and the search looks at every
 *   number up to it: this one does grow with the descriptors);
 * - `setKeepAliveAll` per socket tuned (every client end, by port), and
 *   with a filter that matches nothing;
 * - `setKeepAliveAllEvery(100)`: the share of the event loop it takes.
 *
 * Connections are `node:net` pairs on loopback in this process (two
 * descriptors each). Every figure is the median of `--runs` runs; each run
 * takes the median of many calls. No sysctl is read or written.
 *
 * @module
 */
import net from "node:net";
import { setKeepAlive, setKeepAliveAll, setKeepAliveAllEvery } from "@kakit/keepalive";
import { parseArgs } from "@std/cli/parse-args";

const TUNING = { time: 60_000, interval: 10_000, retries: 3 };

interface Row {
  connections: number;
  nodeUs: number;
  newestUs: number;
  olderAgainUs: number;
  churnUs: number;
  allPerSocketUs: number;
  allNoMatchMs: number;
  everyShare: number;
}

function usage(message: string): never {
  console.error(`tuning_cost.ts: ${message}`);
  console.error(
    "usage: deno run -A bench/tuning_cost.ts [--runs 1..50] [--connections N,N] [--json]",
  );
  Deno.exit(2);
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

// The median time of `count` calls of `fn`, in µs, each timed alone.
function timeEach(count: number, fn: (i: number) => void): number {
  const times: number[] = [];
  for (let i = 0; i < count; i++) {
    const start = performance.now();
    fn(i);
    times.push((performance.now() - start) * 1000);
  }
  return median(times);
}

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, "127.0.0.1", () => resolve(socket));
    socket.once("error", reject);
  });
}

async function measure(connections: number): Promise<Row> {
  const server = net.createServer();
  const accepted: net.Socket[] = [];
  server.on("connection", (socket) => accepted.push(socket));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", 4096, resolve));
  const port = (server.address() as net.AddressInfo).port;
  const clients: net.Socket[] = [];
  try {
    for (let i = 0; i < connections; i += 100) {
      const batch = Math.min(100, connections - i);
      clients.push(...await Promise.all(Array.from({ length: batch }, () => connect(port))));
    }
    const newestClient = clients.at(-1)!;
    const nodeUs = timeEach(2_000, (i) => newestClient.setKeepAlive(true, 1_000 + (i % 2) * 1_000));
    // The newest connection, each time a new one; before it, a random older
    // one is tuned, so that nothing depends on which socket was found last.
    const newest: number[] = [];
    for (let i = 0; i < 50; i++) {
      setKeepAlive(clients[Math.floor(Math.random() * clients.length)], TUNING);
      const fresh = await connect(port);
      const start = performance.now();
      setKeepAlive(fresh, TUNING);
      newest.push((performance.now() - start) * 1000);
      fresh.destroy();
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    // Churn: a random connection closed (both ends), a new one made: the
    // kernel puts it in the hole, low down, not just below the lowest free
    // number, and the search looks at every number up to it.
    const churn: number[] = [];
    for (let i = 0; i < 50; i++) {
      const k = 1 + Math.floor(Math.random() * (clients.length - 2));
      const peerPort = clients[k].localPort;
      clients[k].destroy();
      accepted.find((socket) => socket.remotePort === peerPort)?.destroy();
      await new Promise((resolve) => setTimeout(resolve, 1));
      clients[k] = await connect(port);
      const start = performance.now();
      setKeepAlive(clients[k], TUNING);
      churn.push((performance.now() - start) * 1000);
    }
    const older = clients[Math.floor(clients.length / 3)];
    setKeepAlive(older, TUNING);
    const olderAgainUs = timeEach(500, (i) => {
      if (i % 2) setKeepAlive(clients.at(-2)!, TUNING); // something else in between
      setKeepAlive(older, TUNING);
    });
    const perSocket: number[] = [];
    const noMatch: number[] = [];
    for (let i = 0; i < 5; i++) {
      let start = performance.now();
      const tuned = setKeepAliveAll(TUNING, { hostname: "127.0.0.1", port });
      perSocket.push((performance.now() - start) * 1000 / tuned);
      start = performance.now();
      setKeepAliveAll(TUNING, { hostname: "127.0.0.2", port: 1 });
      noMatch.push(performance.now() - start);
    }
    const every = setKeepAliveAllEvery(100, TUNING, { hostname: "127.0.0.1", port });
    const start = performance.now();
    setKeepAliveAll(TUNING, { hostname: "127.0.0.1", port });
    const callMs = performance.now() - start;
    // (An older package has no intervalMs: its interval never stretched.)
    const everyShare = callMs / (every.intervalMs?.() ?? 100);
    every.stop();
    return {
      connections,
      nodeUs,
      newestUs: median(newest),
      olderAgainUs,
      churnUs: median(churn),
      allPerSocketUs: median(perSocket),
      allNoMatchMs: median(noMatch),
      everyShare,
    };
  } finally {
    for (const socket of [...clients, ...accepted]) socket.destroy();
    await new Promise((resolve) => server.close(resolve));
  }
}

function table(rows: Row[]): string {
  const cell = (values: string[]) => values.map((v, i) => i ? v.padStart(16) : v.padEnd(44));
  const ratio = (us: number, node: number) => `${us.toFixed(2)} µs (${(us / node).toFixed(0)}x)`;
  const lines = [
    cell([
      "connections open (2 descriptors each)",
      ...rows.map((r) => r.connections.toLocaleString("en")),
    ]),
    cell([
      "node:net socket.setKeepAlive(true, ms)",
      ...rows.map((r) => `${r.nodeUs.toFixed(2)} µs`),
    ]),
    cell([
      "setKeepAlive, newest connection (goal ≤50x)",
      ...rows.map((r) => ratio(r.newestUs, r.nodeUs)),
    ]),
    cell([
      "setKeepAlive, older one again (goal ≤50x)",
      ...rows.map((r) => ratio(r.olderAgainUs, r.nodeUs)),
    ]),
    cell([
      "setKeepAlive, new one in a hole (churn)",
      ...rows.map((r) => ratio(r.churnUs, r.nodeUs)),
    ]),
    cell([
      "setKeepAliveAll per socket tuned (goal ≤3 µs)",
      ...rows.map((r) => `${r.allPerSocketUs.toFixed(2)} µs`),
    ]),
    cell([
      "setKeepAliveAll, filter matching nothing",
      ...rows.map((r) => `${r.allNoMatchMs.toFixed(2)} ms`),
    ]),
    cell([
      "setKeepAliveAllEvery(100): share of the loop",
      ...rows.map((r) => `${(r.everyShare * 100).toFixed(1)} %`),
    ]),
  ];
  return lines.map((line) => line.join(" ")).join("\n");
}

async function main() {
  const flags = parseArgs(Deno.args, {
    string: ["runs", "connections"],
    boolean: ["json", "help"],
    unknown: (arg: string) => usage(`unknown argument ${JSON.stringify(arg)}`),
  });
  if (flags.help) usage("what tuning costs with many descriptors open");
  const runs = Number(flags.runs ?? 5);
  if (!Number.isInteger(runs) || runs < 1 || runs > 50) usage("--runs takes 1..50");
  const counts: number[] = String(flags.connections ?? "1000,4000").split(",").map(Number);
  if (!counts.every((n: number) => Number.isInteger(n) && n >= 10 && n <= 8_000)) {
    usage("--connections takes numbers from 10 to 8000, separated by commas");
  }
  if (Deno.permissions.querySync({ name: "ffi" }).state !== "granted") {
    usage("needs -A (FFI, net): deno run -A bench/tuning_cost.ts");
  }
  const rows: Row[] = [];
  for (const connections of counts) {
    const results: Row[] = [];
    for (let run = 0; run < runs; run++) {
      console.error(`tuning cost: ${connections} connections, run ${run + 1}/${runs}`);
      results.push(await measure(connections));
    }
    const pick = (key: keyof Row) => median(results.map((r) => r[key]));
    rows.push({
      connections,
      nodeUs: pick("nodeUs"),
      newestUs: pick("newestUs"),
      olderAgainUs: pick("olderAgainUs"),
      churnUs: pick("churnUs"),
      allPerSocketUs: pick("allPerSocketUs"),
      allNoMatchMs: pick("allNoMatchMs"),
      everyShare: pick("everyShare"),
    });
  }
  console.log(flags.json ? JSON.stringify(rows, null, 2) : table(rows));
}

if (import.meta.main) await main();

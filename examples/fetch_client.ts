/**
 * # fetch behind a router that forgets idle flows
 *
 * @run deno run --allow-net --allow-ffi examples/fetch_client.ts --host ADDRESS [--port 8080] [--tuned] [--idle 10] [--wait 5]
 *
 * `fetch` keeps a connection in its pool for the next request to the same
 * server; here the pool keeps it 60 s (`poolIdleTimeout`), longer than the
 * idle below. A NAT gateway or a load balancer on the way forgets a flow
 * that stays idle longer than its timeout, and then drops its packets
 * without a word: the next request on the pooled connection gets no
 * answer. With `--tuned`, keepalive probes, sent more often than the
 * router's timeout, keep the flow in its table: the second request is
 * answered, on the same connection.
 *
 * It makes a request, stays idle `--idle` seconds, makes a second request
 * with a deadline of `--wait` seconds, says what happened, and exits 0 when
 * the second request was answered, 1 when it was lost.
 *
 * - https://docs.deno.com/api/deno/~/Deno.createHttpClient
 *
 * @module
 */
import { parseArgs } from "@std/cli/parse-args";
import { setKeepAliveAll } from "@kakit/keepalive";

const flags = parseArgs(Deno.args, {
  string: ["host", "port", "idle", "wait"],
  boolean: ["tuned"],
  default: { port: "8080", idle: "10", wait: "5" },
});
const host = flags.host ?? "127.0.0.1";
const port = Number(flags.port);
const url = `http://${host.includes(":") ? `[${host}]` : host}:${port}/`;

// The settings `deno task plan --middlebox-timeout 5` gives for the lab's
// router (it forgets idle flows after 5 s): first probe after 1 s of
// silence, then every 1 s, dead after 3 unanswered; unacknowledged data
// fails after 4 s. For your own path, ask the planner with its timeout.
const tuning = { time: 1_000, interval: 1_000, retries: 3, userTimeout: 4_000 };

// A pool that keeps an idle connection for 60 s.
const client = Deno.createHttpClient({ poolIdleTimeout: 60_000 });

const first = await fetch(url, { client }).then((response) => response.text())
  .catch((error) => fail(`the first request to ${url}`, error));
console.log(`first request answered: the server saw port ${first.trim()}`);

if (flags.tuned) {
  // fetch keeps its pool to itself: tune every connection of this process
  // to the server, now that the pool holds one.
  const tuned = setKeepAliveAll(tuning, { hostname: host, port });
  console.log(`tuned ${tuned} connection(s) to ${host} port ${port}`);
}

console.log(`idle for ${flags.idle} s`);
await new Promise((resolve) => setTimeout(resolve, Number(flags.idle) * 1000));

const started = performance.now();
try {
  const second = await (await fetch(url, {
    client,
    signal: AbortSignal.timeout(Number(flags.wait) * 1000),
  })).text();
  const same = second === first ? "the same connection" : "a new connection";
  const ms = Math.round(performance.now() - started);
  console.log(`second request answered in ${ms} ms on ${same} (port ${second.trim()})`);
  Deno.exit(0);
} catch (error) {
  const why = error instanceof Error ? error.name : String(error);
  console.log(`second request lost: no answer within ${flags.wait} s (${why})`);
  Deno.exit(1);
}

// One line and exit code 1 when the first request fails (no server there,
// refused): this example is about the second one.
function fail(what: string, error: unknown): never {
  console.error(`${what} failed: ${error instanceof Error ? error.message : String(error)}`);
  Deno.exit(1);
}

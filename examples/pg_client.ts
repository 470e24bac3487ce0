/**
 * # node-postgres (pg) behind a router that forgets idle flows
 *
 * @run deno run --allow-net --allow-env --allow-ffi examples/pg_client.ts --host ADDRESS [--port 5432] [--tuned] [--idle 10] [--wait 5]
 *
 * A database client keeps its connection open between queries, often for
 * minutes. A NAT gateway or a load balancer on the way forgets a flow that
 * stays idle longer than its timeout, and then drops its packets without a
 * word: the next query gets no answer. With `--tuned`, the driver's socket
 * (`client.connection.stream`) sends keepalive probes more often than the
 * router's timeout, and the flow stays in its table.
 *
 * It connects (user `postgres`, database `postgres`, no password: the
 * throwaway cluster of `examples/pg_server.sh`), runs a query, stays idle
 * `--idle` seconds, runs a second query with a deadline of `--wait`
 * seconds (pg's `query_timeout`), says what happened, and exits 0 when the
 * second query was answered, 1 when it was lost.
 *
 * - https://node-postgres.com/apis/client
 *
 * @module
 */
import { parseArgs } from "@std/cli/parse-args";
// @ts-types="@types/pg"
import pg from "pg";
import { setKeepAlive } from "@kakit/keepalive";

const flags = parseArgs(Deno.args, {
  string: ["host", "port", "idle", "wait"],
  boolean: ["tuned"],
  default: { port: "5432", idle: "10", wait: "5" },
});

// The settings `deno task plan --middlebox-timeout 5` gives for the lab's
// router (it forgets idle flows after 5 s): first probe after 1 s of
// silence, then every 1 s, dead after 3 unanswered; unacknowledged data
// fails after 4 s. For your own path, ask the planner with its timeout.
const tuning = { time: 1_000, interval: 1_000, retries: 3, userTimeout: 4_000 };

const client = new pg.Client({
  host: flags.host ?? "127.0.0.1",
  port: Number(flags.port),
  user: "postgres",
  database: "postgres",
  query_timeout: Number(flags.wait) * 1000,
});
client.on("error", () => {}); // each failure is reported by the query it failed

await client.connect().catch((error) => fail(`connecting to ${flags.host}`, error));
if (flags.tuned) {
  // The driver's own socket, once connected.
  setKeepAlive(client.connection.stream, tuning);
  console.log("tuned the connection's keepalive");
}
const first = await client.query("select pg_backend_pid() as pid")
  .catch((error) => fail("the first query", error));
console.log(`first query answered by server process ${first.rows[0].pid}`);

console.log(`idle for ${flags.idle} s`);
await new Promise((resolve) => setTimeout(resolve, Number(flags.idle) * 1000));

const started = performance.now();
try {
  const second = await client.query("select pg_backend_pid() as pid");
  const ms = Math.round(performance.now() - started);
  console.log(`second query answered in ${ms} ms by server process ${second.rows[0].pid}`);
  Deno.exit(0);
} catch (error) {
  const why = error instanceof Error ? error.message : String(error);
  console.log(`second query lost: no answer within ${flags.wait} s (${why})`);
  Deno.exit(1);
}

// One line and exit code 1 when the first request fails (no server there,
// refused): this example is about the second one.
function fail(what: string, error: unknown): never {
  console.error(`${what} failed: ${error instanceof Error ? error.message : String(error)}`);
  Deno.exit(1);
}

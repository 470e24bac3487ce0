/**
 * # ioredis behind a router that forgets idle flows
 *
 * @run deno run --allow-net --allow-env --allow-read --allow-sys --allow-ffi examples/redis_client.ts --host ADDRESS [--port 6379] [--tuned] [--idle 10] [--wait 5]
 *
 * A Redis client keeps one connection open for as long as it lives, and
 * most of that time it is idle. A NAT gateway or a load balancer on the way
 * forgets a flow that stays idle longer than its timeout, and then drops its
 * packets without a word: the next command gets no answer. With `--tuned`,
 * the driver's socket (`redis.stream`, a `node:net` socket) sends keepalive
 * probes more often than the router's timeout, and the flow stays in its
 * table.
 *
 * It connects and SETs a key, stays idle `--idle` seconds, GETs the key
 * with a deadline of `--wait` seconds (ioredis's `commandTimeout`), says
 * what happened, and exits 0 when the GET was answered, 1 when it was lost.
 * Start a throwaway server with
 * `redis-server --bind ADDRESS --port 6379 --save "" --appendonly no`.
 *
 * - https://github.com/redis/ioredis
 *
 * @module
 */
import { parseArgs } from "@std/cli/parse-args";
import { Redis } from "ioredis";
import { setKeepAlive } from "@kakit/keepalive";

const flags = parseArgs(Deno.args, {
  string: ["host", "port", "idle", "wait"],
  boolean: ["tuned"],
  default: { port: "6379", idle: "10", wait: "5" },
});

// The settings `deno task plan --middlebox-timeout 5` gives for the lab's
// router (it forgets idle flows after 5 s): first probe after 1 s of
// silence, then every 1 s, dead after 3 unanswered; unacknowledged data
// fails after 4 s. For your own path, ask the planner with its timeout.
const tuning = { time: 1_000, interval: 1_000, retries: 3, userTimeout: 4_000 };

const redis = new Redis({
  host: flags.host ?? "127.0.0.1",
  port: Number(flags.port),
  commandTimeout: Number(flags.wait) * 1000,
  maxRetriesPerRequest: 0,
  retryStrategy: () => null, // no reconnecting: this example is about the first connection
  lazyConnect: true,
});
redis.on("error", () => {}); // each failure is reported by the command it failed

if (flags.tuned) {
  // The driver's own socket, each time it connects (ioredis reconnects on
  // a new socket: tuning it once would be lost at the first reconnect).
  redis.on("connect", () => {
    setKeepAlive(redis.stream, tuning);
    console.log("tuned the connection's keepalive");
  });
}
await redis.connect().catch((error) => fail(`connecting to ${flags.host}`, error));
await redis.set("kit", "alive").catch((error) => fail("the SET", error));
console.log(`SET answered on the connection from port ${redis.stream.localPort}`);

console.log(`idle for ${flags.idle} s`);
await new Promise((resolve) => setTimeout(resolve, Number(flags.idle) * 1000));

const started = performance.now();
try {
  const value = await redis.get("kit");
  const ms = Math.round(performance.now() - started);
  console.log(`GET answered in ${ms} ms: ${JSON.stringify(value)}`);
  redis.disconnect();
  Deno.exit(0);
} catch (error) {
  const why = error instanceof Error ? error.message : String(error);
  console.log(`GET lost: no answer within ${flags.wait} s (${why})`);
  redis.disconnect();
  Deno.exit(1);
}

// One line and exit code 1 when the first request fails (no server there,
// refused): this example is about the second one.
function fail(what: string, error: unknown): never {
  console.error(`${what} failed: ${error instanceof Error ? error.message : String(error)}`);
  Deno.exit(1);
}

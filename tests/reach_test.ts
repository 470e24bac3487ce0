/**
 * Proofs with real components, through the lab's router that forgets idle
 * flows (lab/router.ts), in namespaces of the test's own: without tuning, a
 * request after an idle longer than the router's timeout is lost; with the
 * kit's tuning, the same request succeeds after idling three timeouts.
 *
 * - fetch from Deno to a Deno.serve server, its pooled connection tuned
 *   with setKeepAliveAll after the first request;
 * - a real Redis (redis-server from Debian) and npm:ioredis, its socket
 *   tuned with setKeepAlive(redis.stream);
 * - plan.ts's plan for a 5 s router and a 10 s deadline, applied with
 *   client.ts's flags: the flow lives, and when the server's cable is cut
 *   the client notices within 10 s.
 *
 * Root and `ip`, `nft`, `redis-server` needed: skipped on a laptop, run in CI.
 */
import { assert, assertEquals } from "@std/assert";
import { addNamespace, cutCable, deleteNamespace } from "../lab/netns.ts";
import { buildRouter, type Router } from "../lab/router.ts";
import { planKeepAlive } from "../tools/plan.ts";
import {
  delay,
  netnsUnavailableReason,
  requiringTest,
  run,
  spawnScript,
  withNetns,
} from "./_helpers.ts";

const TIMEOUT = 5; // seconds after which the router forgets an idle flow
const IDLE = 3 * TIMEOUT + 1; // how long each client stays idle: more than three timeouts
const WAIT = 5; // how long a request after the idle may take before it counts as lost

async function missing(): Promise<string | null> {
  const reason = netnsUnavailableReason();
  if (reason) return reason;
  for (const [command, pkg] of [["nft", "nftables"], ["redis-server", "redis-server"]]) {
    const found = await run(["sh", "-c", `command -v ${command}`]);
    if (found.code !== 0) return `${command} is missing (Debian package ${pkg})`;
  }
  return null;
}
const reason = await missing();

function reachTest(name: string, fn: () => Promise<void>) {
  requiringTest(name, reason, fn);
}

interface Path {
  client: string;
  router: string;
  server: string;
  /** The client's prefix to run a command in its namespace. */
  inClient: string[];
  /** The server's. */
  inServer: string[];
  net: Router;
}

// client - router - server, the router forgetting idle flows after TIMEOUT s.
function withRouterPath<T>(fn: (path: Path) => Promise<T>): Promise<T> {
  return withNetns((client) =>
    withNetns((router) =>
      withNetns(async (server) => {
        const net = await buildRouter({
          client: client.name,
          router: router.name,
          server: server.name,
          timeoutSeconds: TIMEOUT,
        });
        return await fn({
          client: client.name,
          router: router.name,
          server: server.name,
          inClient: client.exec,
          inServer: server.exec,
          net,
        });
      })
    )
  );
}

// Runs a fixture in the client's namespace and returns the JSON it printed.
async function clientFixture(path: Path, fixture: string, args: object) {
  const output = await run([
    ...path.inClient,
    Deno.execPath(),
    "run",
    "--allow-net",
    "--allow-ffi",
    "--allow-env",
    "--allow-read",
    "--allow-sys",
    `tests/fixtures/${fixture}`,
    JSON.stringify(args),
  ]);
  assertEquals(output.code, 0, output.stderr);
  return JSON.parse(output.stdout.trim().split("\n").at(-1)!);
}

const plan = planKeepAlive({ middleboxTimeoutSeconds: TIMEOUT, detectWithinSeconds: 10 });
const tuning = {
  time: plan.idleSeconds * 1000,
  interval: plan.intervalSeconds * 1000,
  retries: plan.count,
  userTimeout: plan.userTimeoutSeconds * 1000,
};

reachTest(
  "fetch's pooled connection through a NAT that forgets: lost without tuning, kept by setKeepAliveAll",
  async () => {
    await withRouterPath(async (path) => {
      const server = spawnScript("tests/fixtures/reach_http_server.ts", ["8080"], {
        netns: { name: path.server, exec: path.inServer, readFile: () => Promise.resolve("") },
        permissions: ["--allow-net"],
      });
      await using _server = server;
      await server.waitForLine((line) => line.includes("listening"));
      const url = `http://${path.net.serverAddress}:8080/`;
      const [plain, tuned] = await Promise.all([
        clientFixture(path, "reach_fetch_client.ts", {
          url,
          idleSeconds: IDLE,
          waitSeconds: WAIT,
          tuning: null,
        }),
        clientFixture(path, "reach_fetch_client.ts", {
          url,
          idleSeconds: IDLE,
          waitSeconds: WAIT,
          tuning,
        }),
      ]);
      // Without tuning: the router forgot the pooled connection; the request
      // on it is dropped and nothing comes back in WAIT seconds.
      assertEquals(plain.second, null, `the untuned request completed: ${JSON.stringify(plain)}`);
      assertEquals(plain.error, "TimeoutError");
      assert(plain.secondsWaited >= WAIT - 0.1, JSON.stringify(plain));
      // Tuned: one socket (the pooled connection) was tuned, and the second
      // request went over the same connection (the server saw the same port).
      assertEquals(tuned.tuned, 1);
      assertEquals(tuned.error, null, JSON.stringify(tuned));
      assertEquals(tuned.second, tuned.first, "the second request used another connection");
    });
  },
);

reachTest(
  "a real Redis through a NAT that forgets: a GET after the idle is lost untuned, answered when tuned",
  async () => {
    await withRouterPath(async (path) => {
      const redis = new Deno.Command(path.inServer[0], {
        args: [
          ...path.inServer.slice(1),
          "redis-server",
          "--port",
          "6379",
          "--bind",
          "0.0.0.0",
          "--protected-mode",
          "no",
          "--save",
          "",
          "--appendonly",
          "no",
          "--daemonize",
          "no",
        ],
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      try {
        const ready = redis.stdout.pipeThrough(new TextDecoderStream()).getReader();
        for (let seen = ""; !seen.includes("Ready to accept connections");) {
          const { value, done } = await ready.read();
          if (done) throw new Error(`redis-server ended: ${seen}`);
          seen += value;
        }
        ready.releaseLock();
        redis.stdout.cancel().catch(() => {});
        const host = path.net.serverAddress;
        const [plain, tuned] = await Promise.all([
          clientFixture(path, "reach_redis_client.ts", {
            host,
            idleSeconds: IDLE,
            waitSeconds: WAIT,
            tuning: null,
          }),
          clientFixture(path, "reach_redis_client.ts", {
            host,
            idleSeconds: IDLE,
            waitSeconds: WAIT,
            tuning,
          }),
        ]);
        assertEquals(plain.value, null, `the untuned GET was answered: ${JSON.stringify(plain)}`);
        assert(/timed out/i.test(plain.error), JSON.stringify(plain));
        assertEquals(tuned.error, null, JSON.stringify(tuned));
        assertEquals(tuned.value, "alive");
        assertEquals(tuned.settings.time, tuning.time, "read back from the driver's socket");
      } finally {
        redis.kill("SIGKILL");
        await redis.status;
        await redis.stderr.cancel().catch(() => {});
      }
    });
  },
);

reachTest(
  "plan.ts's plan for a 5 s router and a 10 s deadline keeps the flow, and notices a cut within 10 s",
  async () => {
    const output = await run([
      Deno.execPath(),
      "run",
      "tools/plan.ts",
      "--middlebox-timeout",
      "5",
      "--detect-within",
      "10",
      "--json",
    ]);
    const planned = JSON.parse(output.stdout);
    await withRouterPath(async (path) => {
      const netns = (name: string, exec: string[]) => ({
        name,
        exec,
        readFile: () => Promise.resolve(""),
      });
      await using server = spawnScript("server.ts", [
        "--json",
        "--port",
        "8888",
        "--hostname",
        "0.0.0.0",
      ], {
        netns: netns(path.server, path.inServer),
      });
      await server.waitForEvent("listening");
      const flags = planned.apply["server.ts / client.ts"].split(" ");
      await using client = spawnScript("client.ts", [
        "--json",
        "--hostname",
        path.net.serverAddress,
        "--port",
        "8888",
        ...flags,
      ], { netns: netns(path.client, path.inClient), permissions: ["--allow-net", "--allow-ffi"] });
      const connected = await client.waitForEvent("connected");
      assertEquals((connected.tuning as { time: number }).time, planned.idleSeconds * 1000);
      await delay(IDLE * 1000);
      // Alive after three timeouts: the router still has the flow.
      const port = Number(String(connected.local).split(":").at(-1));
      const entries = await path.net.readConntrack();
      assert(entries?.some((e) => e.sourcePort === port), "the router forgot a kept-alive flow");
      assert(!client.lines.some((line) => line.includes("timed-out")), "the client gave up early");
      // Cut the server's cable: the client's probes now vanish behind the router.
      await addNamespace(`${path.server}-void`);
      try {
        await cutCable(
          { ns: path.server, link: "to-router", address: `${path.net.serverAddress}/24` },
          { ns: path.router, link: path.net.links.serverSide, address: "10.231.2.1/24" },
          `${path.server}-void`,
        );
        const cut = performance.now();
        await client.waitForEvent("timed-out", 15_000);
        const seconds = (performance.now() - cut) / 1000;
        assert(seconds <= 10, `noticed ${seconds.toFixed(2)} s after the cut, not within 10 s`);
      } finally {
        await deleteNamespace(`${path.server}-void`);
      }
    });
  },
);

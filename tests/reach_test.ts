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
import { delay, requiringTest, run, spawnScript } from "./_helpers.ts";
import {
  clientFixture,
  IDLE,
  routerUnavailableReason,
  startRedis,
  tuning,
  WAIT,
  withRouterPath,
} from "./_router.ts";

const reason = await routerUnavailableReason([["redis-server", "redis-server"]]);

function reachTest(name: string, fn: () => Promise<void>) {
  requiringTest(name, reason, fn);
}

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
      assert(Number(plain.secondsWaited) >= WAIT - 0.1, JSON.stringify(plain));
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
      await using redis = await startRedis(path);
      const host = redis.host;
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
      assert(/timed out/i.test(String(plain.error)), JSON.stringify(plain));
      assertEquals(tuned.error, null, JSON.stringify(tuned));
      assertEquals(tuned.value, "alive");
      assertEquals(
        (tuned.settings as { time: number }).time,
        tuning.time,
        "read back from the driver's socket",
      );
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

/**
 * Tests for when a watcher says a probe happened (@kakit/keepalive ProbeTiming):
 * a watcher looks only now and then, so each event carries `agoMs`, and
 * `Date.now() - agoMs` taken in `onEvent` must be when the kernel really sent
 * the probe (or got its answer), not when the watcher happened to look.
 * The kernel's schedule is the reference: a probe leaves `time` after the
 * connection's last traffic, then every `interval` while unanswered, never
 * early and only a little late (its timers fire up to an eighth late). The
 * watchers here look far more rarely than that, so a stamp taken at the look
 * would be off by seconds.
 */
import { assert, assertEquals } from "@std/assert";
import {
  getKeepAlive,
  type ProbeEvent,
  setKeepAlive,
  watchKeepAlive,
  watchKeepAliveAll,
} from "@kakit/keepalive";
import { delay, netnsTest, spawnScript, startClientIn, withCable } from "./_helpers.ts";

// How late the kernel may fire a keepalive timer of `ms`: its timer wheel
// rounds a timeout up by up to an eighth of it (a 3 s timer at HZ=250 by up to
// 256 ms), plus a little for the softirq to run. The stamps this test
// catches are off by seconds.
const lateBy = (ms: number) => ms / 8 + 50;

Deno.test("an answered probe is stamped with its answer's time, not the watcher's look", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  // The accepted end probes 3 s after the handshake, then every 3 s.
  setKeepAlive(listener, { time: 3_000, interval: 3_000, retries: 3 });
  const before = Date.now();
  using _client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  using accepted = await listener.accept();
  const after = Date.now();
  const seen: { watcher: string; stamp: number; event: ProbeEvent }[] = [];
  const record = (watcher: string) => (event: ProbeEvent) =>
    seen.push({ watcher, stamp: Date.now() - event.agoMs, event });
  // Neither looks by itself during the test: only at the start and at stop().
  const one = watchKeepAlive(accepted, record("watchKeepAlive"), { pollMs: 60_000 });
  const all = watchKeepAliveAll(listener.addr, record("watchKeepAliveAll"), {
    pollMs: 60_000,
    limits: getKeepAlive(listener),
  });
  // Between the first probe (3 s) and the second (6 s).
  await delay(4_500);
  one.stop();
  all.stop();

  assertEquals(seen.map((s) => [s.watcher, s.event.kind, s.event.agoFrom]), [
    ["watchKeepAlive", "answered", "kernel"],
    ["watchKeepAliveAll", "answered", "kernel"],
  ]);
  for (const { watcher, stamp, event } of seen) {
    // The latest probe's answer: the first one's, or on a machine so slow
    // that the look came after 6 s, the second one's.
    const due = stamp - after > 4_500 ? 6_000 : 3_000;
    assert(
      stamp >= before + due - 20 && stamp <= after + due + (due / 3_000) * lateBy(3_000),
      `${watcher}: stamped ${stamp - after} ms after the connection, due at ${due}: ` +
        JSON.stringify(event),
    );
    assert(event.agoMs <= event.windowMs, JSON.stringify(event));
  }
});

// The server's side of the cable: listens, tunes, watches its one connection
// with both watchers (a look every 2.5 s), and prints each event with its
// stamp, until the connection times out.
const FIXTURE = `
import { getKeepAlive, getKeepAliveState, setKeepAlive, watchKeepAlive, watchKeepAliveAll }
  from ${JSON.stringify(new URL("../keepalive/mod.ts", import.meta.url).href)};
const listener = Deno.listen({ hostname: "::", port: 8888 });
setKeepAlive(listener, { time: 2_000, interval: 1_000, retries: 6 });
console.log(JSON.stringify({ event: "listening" }));
const conn = await listener.accept();
// The kernel's own word for when it last heard from the peer (the handshake).
const lastHeard = Date.now() - getKeepAliveState(conn).sinceLastAckMs;
const print = (watcher) => (event) =>
  console.log(JSON.stringify({ event: "probe", watcher, stamp: Date.now() - event.agoMs, ...event }));
const one = watchKeepAlive(conn, print("watchKeepAlive"), { pollMs: 2_500 });
const all = watchKeepAliveAll(listener.addr, print("watchKeepAliveAll"), {
  pollMs: 2_500,
  limits: getKeepAlive(listener),
});
console.log(JSON.stringify({ event: "accepted", lastHeard }));
const ended = await conn.read(new Uint8Array(1)).catch((error) => error.name);
one.stop();
all.stop();
console.log(JSON.stringify({ event: "ended", ended }));
`;

netnsTest(
  "each unanswered probe is stamped with when the kernel sent it: estimated (watchKeepAlive), from its timer (watchKeepAliveAll)",
  async () => {
    const script = await Deno.makeTempFile({ suffix: ".ts" });
    try {
      await Deno.writeTextFile(script, FIXTURE);
      await withCable(async (cable) => {
        await using server = spawnScript(script, [], {
          netns: cable.server,
          permissions: ["--allow-net", "--allow-ffi"],
        });
        await server.waitForEvent("listening");
        await using _client = await startClientIn(cable.client, cable.serverAddress);
        const { lastHeard } = await server.waitForEvent("accepted");
        await cable.cutAtClient();
        // Probes at 2, 3, 4, 5, 6 and 7 s; dead at 8 s.
        const { ended } = await server.waitForEvent("ended", 20_000);
        assertEquals(ended, "TimedOut");

        const events = server.lines.map((line) => JSON.parse(line))
          .filter((e) => e.event === "probe");
        for (
          const [watcher, agoFrom] of [["watchKeepAlive", "estimate"], [
            "watchKeepAliveAll",
            "kernel",
          ]]
        ) {
          const mine = events.filter((e) => e.watcher === watcher);
          assert(mine.length >= 4, `${watcher}: ${JSON.stringify(mine)}`);
          for (const event of mine) {
            assertEquals(
              [event.kind, event.agoFrom],
              ["unanswered", agoFrom],
              JSON.stringify(event),
            );
            const due = Number(lastHeard) + 2_000 + (event.probe - 1) * 1_000;
            // One 2 s timer, then one 1 s timer per probe after the first.
            const late = lateBy(2_000) + (event.probe - 1) * lateBy(1_000);
            assert(
              event.stamp >= due - 50 && event.stamp <= due + late,
              `${watcher}: probe ${event.probe} stamped ${
                event.stamp - due
              } ms from its due time: ` +
                JSON.stringify(event),
            );
          }
        }
      });
    } finally {
      await Deno.remove(script);
    }
  },
);

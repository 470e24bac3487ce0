/**
 * server.ts --watch at scale: one look at every connection per second,
 * through NETLINK_SOCK_DIAG (@kakit/keepalive watchKeepAliveAll), reports every
 * keepalive probe the kernel counts, on each connection, IPv4 and IPv6. In a
 * network namespace of the test's own (root and `ip`), so the kernel's
 * TCPKeepAlive counter counts this server's probes only.
 */
import { assert, assertEquals } from "@std/assert";
import { delay, netnsTest, probesSent, spawnScript, startServerIn, withNetns } from "./_helpers.ts";

const CONNECTIONS = 300;

// On `::` (IPv4 clients seen as IPv4-mapped IPv6, one dump) and on one IPv4
// address (only that family asked for, the address compared in place).
for (
  const listen of [{ hostname: "::", clients: ["127.0.0.1", "::1"] }, {
    hostname: "127.0.0.1",
    clients: ["127.0.0.1"],
  }]
) {
  netnsTest(
    `server --watch on ${listen.hostname} reports each of the kernel's probes on ${CONNECTIONS} connections, and no other`,
    async () => {
      await withNetns(async (ns) => {
        await using server = await startServerIn(ns, [
          "--hostname",
          listen.hostname,
          "--max-connections",
          String(CONNECTIONS),
          "--idle",
          "2",
          "--interval",
          "2",
          "--count",
          "3",
          "--watch",
        ], ["--allow-net", "--allow-ffi"]);
        await using holder = spawnScript("tests/fixtures/hold_connections.ts", [
          "--port",
          "8888",
          "--count",
          String(CONNECTIONS),
          ...listen.clients.flatMap((client) => ["--hostname", client]),
        ], { netns: ns });
        await holder.waitForLine((line) => line.includes('"held"'), 20_000);
        await server.waitForLine((line) => line.includes(`"open":${CONNECTIONS}`), 20_000);
        const before = await probesSent(ns);
        // Probes leave 2, 4 and 6 s after each accept, up to an eighth late
        // each (the kernel's timer wheel): quitting 7.2 s after the last accept
        // falls between the third probe and the fourth on every connection.
        await delay(7_200);
        await server.write("\n"); // quit: the watcher takes a last look first
        await server.waitForEvent("summary", 20_000);
        const kernel = (await probesSent(ns)) - before;

        const events = server.lines.map((line) => JSON.parse(line));
        const answered = events.filter((e) => e.event === "probe" && e.kind === "answered");
        const other = events.filter((e) => e.event === "probe" && e.kind !== "answered");
        assertEquals(other, [], "the peers answer every probe and send none");
        assertEquals(events.filter((e) => e.event === "watch-error"), []);
        assertEquals(kernel, 3 * CONNECTIONS, "the kernel sent three probes per connection");
        assertEquals(answered.length, kernel, "one event per probe the kernel counted");

        // Each connection's own three, with the idle time the kernel waited.
        const accepted = events.filter((e) => e.event === "accepted").map((e) => e.peer).sort();
        const perPeer = Map.groupBy(answered, (e) => e.peer as string);
        assertEquals([...perPeer.keys()].sort(), accepted);
        for (const [peer, probes] of perPeer) assertEquals(probes.length, 3, peer);
        for (const probe of answered) {
          assert(probe.idleMs >= 1_900 && probe.idleMs <= 3_000, `idle ${probe.idleMs} ms`);
        }
        const kinds = listen.hostname === "::" ? ["[::ffff:127.0.0.1]", "[::1]"] : ["127.0.0.1:"];
        for (const kind of kinds) assert(accepted.some((peer) => peer.startsWith(kind)), kind);
      });
    },
  );
}

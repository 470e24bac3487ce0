/**
 * Per-connection keepalive (@kakit/keepalive, and the scripts' --idle, --interval,
 * --count, --user-timeout and --watch) against the real kernel, inside
 * network namespaces joined by a cable the tests cut. No sysctl is changed:
 * every time here is set on the sockets themselves. Needs root and `ip`.
 */
import { assert, assertEquals } from "@std/assert";
import { parseProcNetTcp } from "@kakit/keepalive/proc-net";
import {
  cutAndTimeDeath,
  delay,
  netnsTest,
  probesSent,
  spawnScript,
  startClientIn,
  startServerIn,
  withCable,
  withNetns,
} from "./_helpers.ts";

const FFI = ["--allow-net", "--allow-ffi"];

function probeLines(lines: string[], kind: string): Record<string, unknown>[] {
  return lines.map((line) => JSON.parse(line)).filter((event) =>
    event.event === "probe" && event.kind === kind
  );
}

netnsTest(
  "the scripts report the tuning the kernel holds: server through its listener, client on its connection",
  async () => {
    await withNetns(async (ns) => {
      const tuning = ["--idle", "7", "--interval", "3", "--count", "4", "--user-timeout", "20"];
      await using server = await startServerIn(ns, tuning, FFI);
      const listening = await server.waitForEvent("listening");
      const expected = {
        enabled: true,
        time: 7_000,
        interval: 3_000,
        retries: 4,
        userTimeout: 20_000,
      };
      assertEquals(listening.tuning, expected);
      await using client = spawnScript("client.ts", ["--port", "8888", "--json", ...tuning], {
        netns: ns,
        permissions: FFI,
      });
      assertEquals((await client.waitForEvent("connected")).tuning, expected);
      // The accepted connection's keepalive timer runs on the listener's idle
      // time, not the namespace's 7200 s: the kernel's table says 7 s or less.
      await server.waitForEvent("accepted");
      const sockets = parseProcNetTcp(await ns.readFile("/proc/net/tcp"))
        .filter((socket) => socket.state === "ESTABLISHED");
      assertEquals(sockets.map((socket) => socket.timer), ["keepalive", "keepalive"]);
      for (const socket of sockets) assert(socket.timerSeconds <= 7, `${socket.timerSeconds} s`);
    });
  },
);

netnsTest(
  "a dead client is noticed 5-6.5 s after the last traffic with --idle 2 --interval 1 --count 3, and --watch shows each probe",
  async () => {
    await withCable(async (cable) => {
      const args = ["--hostname", "::", "--idle", "2", "--interval", "1", "--count", "3"];
      await using server = await startServerIn(cable.server, [...args, "--watch"], FFI);
      await using _client = await startClientIn(cable.client, cable.serverAddress);
      await server.waitForEvent("accepted");
      const seconds = await cutAndTimeDeath(cable.cutAtClient, server);
      assert(seconds >= 4.8 && seconds <= 6.5, `timed out after ${seconds.toFixed(2)} s`);

      // --watch saw every probe the kernel sent, and invented none.
      const unanswered = probeLines(server.lines, "unanswered");
      assertEquals(unanswered.map((event) => `${event.probe}/${event.of}`), ["1/3", "2/3", "3/3"]);
      assertEquals(probeLines(server.lines, "answered").length, 0);
      assertEquals(await probesSent(cable.server), 3);

      // One dead connection does not stop the server.
      await using _second = await startClientIn(cable.server, "::1");
      await server.waitForLine((line) => line.includes('"accepted","peer":"[::1]'));
    });
  },
);

netnsTest(
  "a server that loses its own link reports the connection timed out (ENETUNREACH), not an error",
  async () => {
    await withCable(async (cable) => {
      const args = ["--hostname", "::", "--idle", "2", "--interval", "1", "--count", "3"];
      await using server = await startServerIn(cable.server, args, FFI);
      await using _client = await startClientIn(cable.client, cable.serverAddress);
      await server.waitForEvent("accepted");
      // The server's end goes down: its address and route go with it, so its
      // probes cannot even be sent, and the kernel reports that instead.
      const seconds = await cutAndTimeDeath(cable.cutAtServer, server);
      assert(seconds >= 4.8 && seconds <= 6.5, `timed out after ${seconds.toFixed(2)} s`);
      const timedOut = await server.waitForEvent("timed-out");
      assertEquals(timedOut.code, "ENETUNREACH");
      await server.write("\n");
      const summary = await server.waitForEvent("summary");
      assertEquals([summary.timedOut, summary.errors], [1, 0]);
    });
  },
);

netnsTest(
  "--user-timeout overrides --count for an idle connection: dead after 4 s of silence, not 2 + 9 x 1",
  async () => {
    await withCable(async (cable) => {
      const tuning = ["--idle", "2", "--interval", "1", "--count", "9", "--user-timeout", "4"];
      await using server = await startServerIn(cable.server, [
        "--hostname",
        "::",
        ...tuning,
        "--watch",
      ], FFI);
      await using _client = await startClientIn(cable.client, cable.serverAddress);
      await server.waitForEvent("accepted");
      const seconds = await cutAndTimeDeath(cable.cutAtClient, server, { timeoutMs: 20_000 });
      // tcp(7): with keepalive, TCP_USER_TIMEOUT decides when a silent peer
      // is dead. Without it: 2 + 9 x 1 = 11 s.
      assert(seconds >= 3.8 && seconds <= 5.5, `timed out after ${seconds.toFixed(2)} s`);
      const sent = await probesSent(cable.server);
      assert(sent >= 1 && sent < 9, `${sent} probes`);
      // --watch reports the silence limit, not a count the kernel ignores.
      const unanswered = probeLines(server.lines, "unanswered");
      assertEquals(unanswered.length, sent);
      for (const event of unanswered) assertEquals([event.of, event.userTimeoutMs], [null, 4_000]);
    });
  },
);

netnsTest(
  "a dead server is noticed by a client with --idle 2 --interval 1 --count 3 after 5-6.5 s, exit 1",
  async () => {
    await withCable(async (cable) => {
      await using _server = await startServerIn(cable.server, [
        "--hostname",
        "::",
        "--no-keepalive",
      ]);
      const tuning = ["--idle", "2", "--interval", "1", "--count", "3", "--watch"];
      await using client = await startClientIn(cable.client, cable.serverAddress, tuning, FFI);
      const seconds = await cutAndTimeDeath(cable.cutAtServer, client);
      assert(seconds >= 4.8 && seconds <= 6.5, `timed out after ${seconds.toFixed(2)} s`);
      assertEquals((await client.finish()).code, 1);
      assertEquals(probeLines(client.lines, "unanswered").length, 3);
      assertEquals(await probesSent(cable.client), 3);
    });
  },
);

netnsTest(
  "--watch on a healthy connection prints one answered probe per probe the kernel counted",
  async () => {
    await withNetns(async (ns) => {
      await using server = await startServerIn(
        ns,
        ["--idle", "1", "--interval", "1", "--watch"],
        FFI,
      );
      // The client watches too: it sees the server's probes arrive and answers them.
      await using client = await startClientIn(ns, "127.0.0.1", ["--watch"], FFI);
      await delay(4_500);
      await server.write("\n");
      await server.waitForEvent("summary");
      await client.finish();

      const sent = await probesSent(ns);
      const answered = probeLines(server.lines, "answered");
      assert(sent >= 3 && sent <= 5, `${sent} probes in 4.5 s with a 1 s idle time`);
      assertEquals(answered.length, sent);
      for (const event of answered) {
        const idleMs = Number(event.idleMs);
        assert(idleMs >= 950 && idleMs < 1_600, `answered after ${idleMs} ms idle`);
      }
      assertEquals(probeLines(server.lines, "unanswered").length, 0);
      assertEquals(probeLines(client.lines, "peer-probe").length, sent);
      // The server's FIN at the end is no probe: the client invents none.
      assertEquals(
        client.lines.filter((line) => /"kind":"(answered|unanswered|late-answer)"/.test(line)),
        [],
      );
    });
  },
);

netnsTest(
  "TCP_USER_TIMEOUT bounds the wait for unacknowledged data: 3 s instead of about 15 minutes",
  async () => {
    await withCable(async (cable) => {
      await using _server = await startServerIn(cable.server, ["--hostname", "::"]);
      await using writer = spawnScript("tests/fixtures/unacked_writer.ts", [
        cable.serverAddress,
        "8888",
      ], {
        netns: cable.client,
        permissions: FFI,
      });
      await writer.waitForLine((line) => line === "connected");
      await cable.cutAtServer();
      await writer.closeStdin();
      const { code, stdout, stderr } = await writer.finish(20_000);
      assertEquals(code, 0, stderr);
      const result = JSON.parse(stdout.trim().split("\n").pop()!);
      assertEquals(result.bounded.error, "ETIMEDOUT", stdout);
      assert(result.bounded.seconds >= 2.5 && result.bounded.seconds <= 5, stdout);
      // Without a user timeout, the same data is still being retransmitted.
      assertEquals(result.unbounded, "still waiting", stdout);
    });
  },
);

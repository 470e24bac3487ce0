/**
 * The blog's experiment, and its failure case, run for real inside network
 * namespaces, where the keepalive sysctls can be lowered without touching
 * the host's. Needs root and `ip`; skipped without them unless CI=true.
 */
import { assert, assertEquals } from "@std/assert";
import { findTcpSocket, parseEndpoint, parseProcNetTcp } from "@kakit/keepalive/proc-net";
import {
  cutAndTimeDeath,
  delay,
  type Netns,
  netnsTest,
  probesSent,
  runOk,
  startClientIn,
  startServerIn,
  withCable,
  withNetns,
} from "./_helpers.ts";

/** Sets the namespace's keepalive sysctls with sysctl.ts, as a user would. */
async function setSysctls(ns: Netns, assignments: string[]): Promise<void> {
  await runOk([...ns.exec, Deno.execPath(), "run", "-A", "sysctl.ts", ...assignments]);
}

/**
 * Runs server.ts and client.ts in a fresh namespace with the given sysctls,
 * watches the namespace's probe counter for `watchSeconds`, and returns the
 * seconds (since the connection was accepted) at which the counter rose.
 */
async function probeTimes(sysctls: string[], watchSeconds: number) {
  return await withNetns(async (ns) => {
    await setSysctls(ns, sysctls);
    await using server = await startServerIn(ns);
    await using client = await startClientIn(ns, "127.0.0.1");
    const connected = await client.waitForEvent("connected");
    const start = performance.now();
    await server.waitForEvent("accepted");

    const times: number[] = [];
    let seen = await probesSent(ns);
    assertEquals(seen, 0, "a fresh namespace has sent no probes");
    while (performance.now() - start < watchSeconds * 1000) {
      await delay(100);
      const now = await probesSent(ns);
      for (; seen < now; seen++) times.push((performance.now() - start) / 1000);
    }
    // The client answered every probe: nothing unanswered, nothing ended.
    const [local, remote] = [connected.local, connected.remote].map((text) =>
      parseEndpoint(String(text))
    );
    const table = parseProcNetTcp(await ns.readFile("/proc/net/tcp"));
    const serverSide = findTcpSocket(table, remote, local);
    // Only the server probes: the client, like the blog's, has no keepalive timer.
    assertEquals(findTcpSocket(table, local, remote)?.timer, "none");
    assertEquals(serverSide?.state, "ESTABLISHED");
    assertEquals(serverSide?.unansweredProbes, 0);
    assert(
      !server.lines.some((line) => /timed-out|reset|peer-closed/.test(line)),
      server.lines.join("\n"),
    );
    return times;
  });
}

netnsTest(
  "the blog reproduced: with time=2 and intvl=2 the server probes the idle client every 2 s",
  async () => {
    const times = await probeTimes(["time=2", "intvl=2"], 7);
    // Probes at about 2, 4 and 6 s; the counter is read every 0.1 s.
    assertEquals(times.length, 3, `probes at ${times.map((t) => t.toFixed(2))} s`);
    times.forEach((t, i) =>
      assert(Math.abs(t - 2 * (i + 1)) < 0.6, `probe ${i + 1} at ${t.toFixed(2)} s`)
    );
  },
);

netnsTest(
  "a healthy connection is probed every max(time, intvl) seconds: time=1, intvl=3 gives 3 s",
  async () => {
    const times = await probeTimes(["time=1", "intvl=3"], 7.5);
    // The first probe after 1 s of silence, then one every 3 s: about 1, 4, 7.
    assertEquals(times.length, 3, `probes at ${times.map((t) => t.toFixed(2))} s`);
    times.forEach((t, i) =>
      assert(Math.abs(t - (1 + 3 * i)) < 0.6, `probe ${i + 1} at ${t.toFixed(2)} s`)
    );
  },
);

netnsTest(
  "a client that vanishes is reported as timed out after time + probes x intvl, and the server keeps serving",
  async () => {
    await withCable(async (cable) => {
      await setSysctls(cable.server, ["time=2", "intvl=1", "probes=3"]);
      await using server = await startServerIn(cable.server, ["--hostname", "::"]);
      await using _client = await startClientIn(cable.client, cable.serverAddress);
      await server.waitForEvent("accepted");
      const seconds = await cutAndTimeDeath(cable.cutAtClient, server);
      const timedOut = await server.waitForEvent("timed-out");
      assert(String(timedOut.peer).startsWith(`[${cable.clientAddress}]:`), String(timedOut.peer));
      // 2 s of silence, then 3 probes 1 s apart: 5 s, plus scheduling slack.
      assert(seconds > 4.5 && seconds < 8, `timed out after ${seconds.toFixed(2)} s`);
      assertEquals(await probesSent(cable.server), 3);

      // The server still serves: a new connection from inside its namespace.
      await using _second = await startClientIn(cable.server, "::1");
      await server.waitForLine((line) => line.includes('"accepted","peer":"[::1]'));
    });
  },
);

netnsTest("a client with --keepalive notices a server that vanished, and exits 1", async () => {
  await withCable(async (cable) => {
    await setSysctls(cable.client, ["time=2", "intvl=1", "probes=2"]);
    await using _server = await startServerIn(cable.server, ["--hostname", "::"]);
    await using client = await startClientIn(cable.client, cable.serverAddress, ["--keepalive"]);
    const seconds = await cutAndTimeDeath(cable.cutAtServer, client);
    assert(seconds > 3.5 && seconds < 7, `timed out after ${seconds.toFixed(2)} s`);
    assertEquals((await client.finish()).code, 1);
    assertEquals(await probesSent(cable.client), 2);
  });
});

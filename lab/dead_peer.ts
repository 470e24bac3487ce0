/**
 * # Scenario `dead-peer`: the client vanishes
 *
 * This time the server tunes keepalive per socket (`server.ts --idle
 * --interval --count`, through the package `@kakit/keepalive`), not with sysctls, so both
 * ways of setting it are exercised. After two answered probes the client's
 * end of the cable is cut: no FIN, no RST, nothing, as when a laptop closes
 * its lid or a VM is destroyed. The server goes on probing into the void;
 * after `count` unanswered probes its kernel gives up, and the read in
 * `server.ts` fails with ETIMEDOUT. The kernel counts from the last packet it
 * received from the peer: the answer to the last good probe. From there,
 * the next probe goes out max(idle, interval) later, then one every
 * interval, and `count` intervals after the first unanswered probe the
 * connection is dead:
 *
 *     detected after = max(idle, interval) + interval x count
 *
 * (idle + interval x count when, as usual, idle >= interval).
 *
 * @module
 */
import {
  check,
  describeScriptEvent,
  firstReport,
  type LabContext,
  momentsOf,
  ms,
  onTime,
  packetsOf,
  seconds,
  sleep,
  timerSlack,
} from "./common.ts";
import {
  addCable,
  addNamespace,
  type CableEnd,
  cutCable,
  deleteNamespace,
  readNetstat,
  startCapture,
} from "./netns.ts";
import { splitConnections, tellConnection } from "./packets.ts";
import { createPcapParser, type Segment } from "./pcap.ts";
import type { Check, Moment, Packet, ScenarioResult } from "./result.ts";
import { eventTime, startScript } from "./scripts.ts";

/** The dead-peer scenario's settings, set per socket on the server. */
export interface DeadPeerSettings {
  /** `--idle`: seconds of silence before the first probe. */
  time: number;
  /** `--interval`: seconds between unanswered probes. */
  intvl: number;
  /** `--count`: unanswered probes before the connection fails. */
  probes: number;
}

const SERVER = "fd6c:de::1";
const CLIENT = "fd6c:de::2";

/** The detection time the settings predict, in seconds after the last packet from the peer. */
export function expectedDetection(settings: DeadPeerSettings): number {
  return Math.max(settings.time, settings.intvl) + settings.intvl * settings.probes;
}

/** Runs the scenario in namespaces of its own and says what it saw. */
export async function runDeadPeer(
  ctx: LabContext,
  settings: DeadPeerSettings,
): Promise<ScenarioResult> {
  const ns = { server: "dead-server", client: "dead-client", void: "dead-void" };
  await using cleanup = new AsyncDisposableStack();
  for (const name of [ns.server, ns.client, ns.void]) {
    await addNamespace(name);
    cleanup.defer(() => deleteNamespace(name));
  }
  const clientEnd: CableEnd = { ns: ns.client, link: "to-server", address: `${CLIENT}/64` };
  const serverEnd: CableEnd = { ns: ns.server, link: "to-client", address: `${SERVER}/64` };
  await addCable(serverEnd, clientEnd);
  const capture = ctx.capture ? await startCapture(ns.server, "to-client") : null;
  cleanup.defer(async () => void await capture?.stop());
  const server = startScript(ctx.place, ns.server, "server.ts", ["--allow-net", "--allow-ffi"], [
    "--json",
    "--hostname",
    "::",
    "--port",
    "8888",
    "--idle",
    String(settings.time),
    "--interval",
    String(settings.intvl),
    "--count",
    String(settings.probes),
  ]);
  cleanup.defer(async () => void await server.stop());
  await server.waitFor("listening", 20_000);
  const client = startScript(ctx.place, ns.client, "client.ts", ["--allow-net"], [
    "--json",
    "--hostname",
    SERVER,
    "--port",
    "8888",
  ]);
  cleanup.defer(async () => void await client.stop());
  const connected = await client.waitFor("connected", 20_000);

  // Two probes answered, then the cut, well before the third.
  const cadence = Math.max(settings.time, settings.intvl);
  const secondProbe = settings.time + cadence;
  const cutAt = secondProbe + Math.min(cadence / 2, 0.4 + timerSlack(secondProbe));
  ctx.progress(
    `dead-peer: two probes answered, then the client's cable is cut at ${cutAt.toFixed(1)} s`,
  );
  const probesBefore = ctx.capture ? 0 : await readNetstat(ns.server, "TcpExt", "TCPKeepAlive");
  await sleep(cutAt * 1000 - (Date.now() - eventTime(connected) * 1000));
  const probesAtCut = ctx.capture ? 0 : await readNetstat(ns.server, "TcpExt", "TCPKeepAlive");
  await cutCable(clientEnd, serverEnd, ns.void);
  const cutTime = Date.now() / 1000;
  const expected = expectedDetection(settings);
  ctx.progress(
    `dead-peer: cut; the server should give up about ${expected} s after the last answer`,
  );
  const timedOut = await server.waitFor("timed-out", (expected + 10) * 1000).catch(() => null);
  const probesAfter = ctx.capture ? 0 : await readNetstat(ns.server, "TcpExt", "TCPKeepAlive");
  await sleep(300);
  const pcap = capture ? await capture.stop() : null;

  const flow = pcap ? splitConnections(createPcapParser().push(pcap))[0] ?? [] : [];
  // Time 0 is the SYN; without a capture, the first report of the connection.
  const start = flow[0]?.time ?? firstReport(server, connected);
  const fate = (segment: Segment) => segment.time > cutTime ? "lost" : "delivered";
  const packets = tellConnection(flow, fate);
  const lastFromClient = packets.filter((p) => p.from === "client").at(-1);
  // Without a capture: the last answer came right after the last probe before the cut.
  const lastHeard = lastFromClient
    ? start + lastFromClient.seconds
    : eventTime(connected) + settings.time + cadence * (probesAtCut - probesBefore - 1);
  const moments: Moment[] = [
    ...momentsOf(server, "server", start, describeScriptEvent),
    ...momentsOf(client, "client", start, describeScriptEvent),
    { seconds: ms(cutTime - start), host: "client" as const, text: "cable cut" },
  ].sort((a, b) => a.seconds - b.seconds);
  return judge(settings, {
    packets,
    detectedAfter: timedOut ? eventTime(timedOut) - lastHeard : null,
    code: timedOut ? String(timedOut.code) : null,
    probesAfterCut: ctx.capture ? null : probesAfter - probesAtCut,
    moments,
    durationSeconds: ms(Date.now() / 1000 - start),
  });
}

interface DeadPeerObservation {
  packets: Packet[];
  detectedAfter: number | null;
  code: string | null;
  probesAfterCut: number | null;
  moments: Moment[];
  durationSeconds: number;
}

function judge(settings: DeadPeerSettings, seen: DeadPeerObservation): ScenarioResult {
  const expected = expectedDetection(settings);
  const probes = packetsOf(seen.packets, "keepalive probe", "server");
  const unanswered = seen.probesAfterCut ?? probes.filter((p) => p.fate === "lost").length;
  const answered = packetsOf(seen.packets, "probe answered", "client").length;
  const detected = seen.detectedAfter;
  const checks: Check[] = [
    check(
      "unanswered probes",
      `${settings.probes} (count)`,
      `${unanswered}`,
      unanswered === settings.probes,
    ),
    check(
      "detected after last answer",
      `${expected} s = max(time, intvl) + intvl x probes`,
      seconds(detected),
      onTime(detected, expected, 1, 0.1),
    ),
    check("how the read failed", "ETIMEDOUT", seen.code ?? "it did not", seen.code === "ETIMEDOUT"),
  ];
  if (seen.probesAfterCut === null) {
    checks.unshift(check("probes answered before the cut", "2", `${answered}`, answered === 2));
  }
  return {
    name: "dead-peer",
    title:
      `the client vanishes; the server (--idle ${settings.time} --interval ${settings.intvl} ` +
      `--count ${settings.probes}) notices`,
    hosts: ["client", "server"],
    settings: {
      idleSeconds: settings.time,
      intervalSeconds: settings.intvl,
      count: settings.probes,
      setBy: "server.ts flags (@kakit/keepalive)",
    },
    expected: {
      unansweredProbes: settings.probes,
      detectedAfterSeconds: expected,
      code: "ETIMEDOUT",
    },
    observed: {
      probesAnsweredBeforeCut: seen.probesAfterCut === null ? answered : null,
      unansweredProbes: unanswered,
      detectedAfterSeconds: detected === null ? null : ms(detected),
      code: seen.code,
    },
    checks,
    passed: checks.every((c) => c.passed),
    packets: seen.packets,
    moments: seen.moments,
    conntrack: null,
    durationSeconds: seen.durationSeconds,
  };
}

/**
 * # Scenario `blog`: the blog's experiment
 *
 * Server and client in two namespaces joined by a cable. `sysctl.ts` lowers
 * `tcp_keepalive_time` and `tcp_keepalive_intvl` in the server's namespace
 * only; `server.ts` turns keepalive on with `setKeepAlive(true)` and nothing
 * else, so its sockets take those sysctls; `client.ts` connects and stays
 * idle. The capture on the server's end shows what the blog's tcpdump
 * showed: after the idle time, a probe (`ack 1`, no data), and the client's
 * kernel answering it; then again every max(time, intvl) seconds, because an
 * answered probe restarts the idle clock.
 *
 * @module
 */
import {
  check,
  describeScriptEvent,
  firstReport,
  type LabContext,
  medianGap,
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
  deleteNamespace,
  readNetstat,
  runOk,
  startCapture,
} from "./netns.ts";
import { splitConnections, tellConnection } from "./packets.ts";
import { createPcapParser } from "./pcap.ts";
import type { Check, Packet, ScenarioResult } from "./result.ts";
import { eventTime, startScript } from "./scripts.ts";
import { tool } from "./tools.ts";

/** The blog scenario's settings: the two sysctls, in seconds. */
export interface BlogSettings {
  /** `net.ipv4.tcp_keepalive_time` in the server's namespace. */
  time: number;
  /** `net.ipv4.tcp_keepalive_intvl` in the server's namespace. */
  intvl: number;
}

/** How many probes the scenario waits for. */
export const BLOG_PROBES = 4;

const SERVER = "fd6c:ab::1";
const CLIENT = "fd6c:ab::2";

/** Runs the scenario in namespaces of its own and says what it saw. */
export async function runBlog(ctx: LabContext, settings: BlogSettings): Promise<ScenarioResult> {
  const ns = { server: "blog-server", client: "blog-client" };
  await using cleanup = new AsyncDisposableStack();
  for (const name of [ns.server, ns.client]) {
    await addNamespace(name);
    cleanup.defer(() => deleteNamespace(name));
  }
  await addCable(
    { ns: ns.server, link: "to-client", address: `${SERVER}/64` },
    { ns: ns.client, link: "to-server", address: `${CLIENT}/64` },
  );
  ctx.progress(
    `blog: sysctl.ts time=${settings.time} intvl=${settings.intvl} in the server's namespace`,
  );
  await runOk([
    tool("ip"),
    "netns",
    "exec",
    ns.server,
    ctx.place.deno,
    "run",
    "-A",
    `${ctx.place.dir}/sysctl.ts`,
    "--json",
    `time=${settings.time}`,
    `intvl=${settings.intvl}`,
  ]);
  const capture = ctx.capture ? await startCapture(ns.server, "to-client") : null;
  cleanup.defer(async () => void await capture?.stop());
  const server = startScript(ctx.place, ns.server, "server.ts", ["--allow-net"], [
    "--json",
    "--hostname",
    "::",
    "--port",
    "8888",
  ]);
  cleanup.defer(async () => void await server.stop());
  await server.waitFor("listening", 20_000);
  const probesBefore = await readNetstat(ns.server, "TcpExt", "TCPKeepAlive");
  const client = startScript(ctx.place, ns.client, "client.ts", ["--allow-net"], [
    "--json",
    "--hostname",
    SERVER,
    "--port",
    "8888",
  ]);
  cleanup.defer(async () => void await client.stop());
  const connected = await client.waitFor("connected", 20_000);

  const cadence = Math.max(settings.time, settings.intvl);
  const lastProbe = settings.time + cadence * (BLOG_PROBES - 1);
  const watchFor = lastProbe + timerSlack(lastProbe) + 0.5;
  ctx.progress(`blog: the connection is idle; watching ${watchFor.toFixed(1)} s for probes`);
  const counted = ctx.capture ? null : sampleCounter(ns.server);
  await sleep(watchFor * 1000 - (Date.now() - eventTime(connected) * 1000));
  await client.stop(); // Enter in the blog: the client closes, and the probes stop
  await server.waitFor("peer-closed", 5_000).catch(() => null);
  const probesSent = (await readNetstat(ns.server, "TcpExt", "TCPKeepAlive")) - probesBefore;
  const probeTimes = counted ? await counted.stop() : null;
  const pcap = capture ? await capture.stop() : null;

  const flow = pcap ? splitConnections(createPcapParser().push(pcap))[0] ?? [] : [];
  const packets = tellConnection(flow);
  // Time 0 is the SYN; without a capture, the first report of the connection.
  const start = flow[0]?.time ?? firstReport(server, connected);
  return judge(settings, {
    packets,
    probesSent,
    probeTimes: probeTimes?.map((t) => t - start) ?? null,
    moments: [
      ...momentsOf(server, "server", start, describeScriptEvent),
      ...momentsOf(client, "client", start, describeScriptEvent),
    ].sort((a, b) => a.seconds - b.seconds),
    durationSeconds: ms(Date.now() / 1000 - start),
  });
}

// Without tcpdump: the namespace's TCPKeepAlive counter, read every 100 ms;
// each step up is a probe sent at about that time.
function sampleCounter(ns: string) {
  const times: number[] = [];
  let last: number | null = null;
  let running = true;
  const loop = (async () => {
    while (running) {
      const value = await readNetstat(ns, "TcpExt", "TCPKeepAlive");
      if (last !== null) { for (let i = last; i < value; i++) times.push(Date.now() / 1000); }
      last = value;
      await sleep(100);
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return times;
    },
  };
}

interface BlogObservation {
  packets: Packet[];
  probesSent: number;
  probeTimes: number[] | null;
  moments: ScenarioResult["moments"];
  durationSeconds: number;
}

function judge(settings: BlogSettings, seen: BlogObservation): ScenarioResult {
  const cadence = Math.max(settings.time, settings.intvl);
  const probes = packetsOf(seen.packets, "keepalive probe", "server");
  const answers = packetsOf(seen.packets, "probe answered", "client");
  const times = seen.probeTimes ?? probes.map((p) => p.seconds);
  const handshakeEnd = seen.packets.filter((p) => p.kind === "handshake").at(-1)?.seconds ?? 0;
  const observedCadence = medianGap(times);
  const firstProbe = times.length > 0 ? times[0] - handshakeEnd : null;
  // Without a capture, a probe is seen when the counter is next read: up to
  // 0.1 s and a read later.
  const late = seen.probeTimes === null ? 0 : 0.25;
  const near = (value: number | null, target: number) => onTime(value, target, late);
  const checks: Check[] = [
    check(
      "first probe after idle",
      `${settings.time} s (time)`,
      seconds(firstProbe),
      near(firstProbe, settings.time),
    ),
    check(
      "probe cadence",
      `${cadence} s (max(time, intvl))`,
      seconds(observedCadence),
      near(observedCadence, cadence),
    ),
  ];
  if (seen.probeTimes === null) {
    checks.push(
      check(
        "probes answered",
        `at least ${BLOG_PROBES}, all answered`,
        `${answers.length} of ${probes.length}`,
        probes.length >= BLOG_PROBES && answers.length === probes.length,
      ),
      check(
        "probes in capture = TCPKeepAlive",
        `${seen.probesSent} (kernel counter)`,
        `${probes.length} (tcpdump)`,
        probes.length === seen.probesSent,
      ),
    );
  } else {
    checks.push(
      check(
        "probes sent (TCPKeepAlive)",
        `at least ${BLOG_PROBES}`,
        `${seen.probesSent}`,
        seen.probesSent >= BLOG_PROBES,
      ),
    );
  }
  return {
    name: "blog",
    title: `the blog's experiment: sysctls time=${settings.time} s and intvl=${settings.intvl} s ` +
      `in the server's namespace, setKeepAlive(true), an idle client`,
    hosts: ["client", "server"],
    settings: { timeSeconds: settings.time, intvlSeconds: settings.intvl, setBy: "sysctl.ts" },
    expected: {
      firstProbeAfterSeconds: settings.time,
      cadenceSeconds: cadence,
      probesAnsweredAll: true,
    },
    observed: {
      firstProbeAfterSeconds: firstProbe === null ? null : ms(firstProbe),
      cadenceSeconds: observedCadence === null ? null : ms(observedCadence),
      probesCaptured: seen.probeTimes === null ? probes.length : null,
      probesAnswered: seen.probeTimes === null ? answers.length : null,
      probesCounted: seen.probesSent,
    },
    checks,
    passed: checks.every((c) => c.passed),
    packets: seen.packets,
    moments: seen.moments,
    conntrack: null,
    durationSeconds: seen.durationSeconds,
  };
}

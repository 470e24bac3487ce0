/**
 * # Scenario `nat`: a router that forgets idle flows
 *
 * client - router - server, the router built by `router.ts`: it masquerades
 * and forgets an established flow after `timeout` seconds without a packet.
 * Four connections through it, side by side, each from its own `client.ts`
 * to one `server.ts --echo`:
 *
 * 1. **no keepalive**: idle past the timeout, then one line. The router has
 *    forgotten the flow and drops it; the client retransmits into the void,
 *    and the server never hears a thing (a half-open connection). Linux
 *    would go on retransmitting for about 15 minutes (tcp_retries2 = 15); the
 *    lab stops watching when the others are done, and says so.
 * 2. **the same with `--user-timeout`**: the client gives up that long
 *    after the line went unacknowledged (ETIMEDOUT): the hang is bounded.
 * 3. **keepalive idle below the timeout**: every probe (and its answer)
 *    refreshes the router's entry, so the flow survives three timeouts and
 *    more, and the line sent afterwards comes back.
 * 4. **keepalive idle above the timeout**: the first probe comes too late;
 *    the router drops it and its followers, and the client notices the dead
 *    flow (idle + interval x count after the last packet it heard) but cannot
 *    keep it alive.
 *
 * @module
 */
import {
  check,
  describeScriptEvent,
  type LabContext,
  momentsOf,
  ms,
  onTime,
  packetsOf,
  seconds,
  sleep,
  timerSlack,
} from "./common.ts";
import { addNamespace, deleteNamespace, startCapture } from "./netns.ts";
import { joinAtRouter, tellConnection } from "./packets.ts";
import { createPcapParser, type Segment } from "./pcap.ts";
import type { Check, ConntrackTrace, Moment, Packet, ScenarioResult } from "./result.ts";
import { buildRouter, type ConntrackEntry, type Router } from "./router.ts";
import { eventTime, type ScriptEvent, type ScriptRun, startScript } from "./scripts.ts";

/** The nat scenario's settings. */
export interface NatSettings {
  /** Seconds after which the router forgets an idle flow (`--middlebox-timeout`). */
  timeout: number;
  /** The second variant's `--user-timeout`, in seconds. */
  userTimeout: number;
}

/** Linux's retransmission limit with tcp_retries2 = 15 and the minimum RTO: the "15 minute hang". */
export const RETRANSMISSION_LIMIT_SECONDS = 924.6;

/** One of the nat scenario's four connections. */
export interface NatVariant {
  /** The scenario name it reports as. */
  name: string;
  /** Seconds of idle before its client sends a line; null for never. */
  sendAfter: number | null;
  /** Its client.ts flags for keepalive and the user timeout. */
  flags: string[];
  /** Whether those need --allow-ffi. */
  ffi: boolean;
  /** One line saying what it does. */
  title: string;
  /** Its keepalive idle time in seconds, when it has one. */
  idle?: number;
}

/** What each connection does, from the settings. */
export function natVariants(settings: NatSettings): NatVariant[] {
  const m = settings.timeout;
  const below = Math.max(1, Math.ceil(m / 2));
  const above = m + 2;
  return [
    {
      name: "nat-no-keepalive",
      sendAfter: m + 2,
      flags: [] as string[],
      ffi: false,
      title: `no keepalive: idle ${m + 2} s, then a line`,
    },
    {
      name: "nat-user-timeout",
      sendAfter: m + 2,
      flags: ["--user-timeout", String(settings.userTimeout)],
      ffi: true,
      title: `no keepalive, user timeout ${settings.userTimeout} s: idle ${m + 2} s, then a line`,
    },
    {
      name: "nat-idle-below",
      sendAfter: 3 * m + 1,
      flags: ["--idle", String(below), "--interval", "1", "--count", "3"],
      ffi: true,
      title: `keepalive idle ${below} s (below the router's ${m} s): idle ${
        3 * m + 1
      } s, then a line`,
      idle: below,
    },
    {
      name: "nat-idle-above",
      sendAfter: null,
      flags: ["--idle", String(above), "--interval", "1", "--count", "2"],
      ffi: true,
      title: `keepalive idle ${above} s (above the router's ${m} s), interval 1 s, 2 probes`,
      idle: above,
    },
  ];
}

/** How long the scenario watches, in seconds after the connections are made. */
export function natWatchSeconds(settings: NatSettings): number {
  const m = settings.timeout;
  const failure = m + 2 + settings.userTimeout; // the line at m + 2, then the user timeout
  const detection = m + 2 + 2; // idle m + 2, then 2 probes 1 s apart
  return Math.max(
    3 * m + 2.5,
    failure + timerSlack(settings.userTimeout) + 2,
    detection + timerSlack(detection) + 2,
  );
}

/** Runs the scenario in namespaces of its own; one result per connection. */
export async function runNat(ctx: LabContext, settings: NatSettings): Promise<ScenarioResult[]> {
  const ns = { client: "nat-client", router: "nat-router", server: "nat-server" };
  await using cleanup = new AsyncDisposableStack();
  for (const name of [ns.client, ns.router, ns.server]) {
    await addNamespace(name);
    cleanup.defer(() => deleteNamespace(name));
  }
  const router = await buildRouter({ ...ns, timeoutSeconds: settings.timeout });
  const captures = ctx.capture
    ? [
      await startCapture(ns.router, router.links.clientSide),
      await startCapture(ns.router, router.links.serverSide),
    ]
    : null;
  cleanup.defer(async () => void await Promise.all(captures?.map((c) => c.stop()) ?? []));
  const server = startScript(ctx.place, ns.server, "server.ts", ["--allow-net"], [
    "--json",
    "--hostname",
    "0.0.0.0",
    "--port",
    "8888",
    "--echo",
  ]);
  cleanup.defer(async () => void await server.stop());
  await server.waitFor("listening", 20_000);

  const variants = natVariants(settings);
  const clients: ScriptRun[] = [];
  for (const variant of variants) {
    const send = variant.sendAfter === null
      ? []
      : ["--send", "hello", "--send-after", String(variant.sendAfter)];
    const client = startScript(ctx.place, ns.client, "client.ts", [
      "--allow-net",
      ...(variant.ffi ? ["--allow-ffi"] : []),
    ], [
      "--json",
      "--hostname",
      router.serverAddress,
      "--port",
      "8888",
      ...variant.flags,
      ...send,
    ]);
    cleanup.defer(async () => void await client.stop());
    clients.push(client);
  }
  const connected = await Promise.all(clients.map((c) => c.waitFor("connected", 20_000)));
  const watch = natWatchSeconds(settings);
  ctx.progress(
    `nat: four connections through a router that forgets idle flows after ${settings.timeout} s; ` +
      `watching ${watch.toFixed(1)} s`,
  );
  const ports = connected.map((event) => Number(String(event.local).split(":").at(-1)));
  const traces = await sampleConntrack(router, ports, watch * 1000);
  if (!traces) {
    ctx.progress("nat: the router's connection table cannot be read (install conntrack)");
  }
  const countedAt = Date.now() / 1000;
  const drops = await router.readDrops();
  const pcaps = captures ? await Promise.all(captures.map((c) => c.stop())) : null;
  const flows = pcaps
    ? joinAtRouter(createPcapParser().push(pcaps[0]), createPcapParser().push(pcaps[1]))
    : [];
  const starts: number[] = [];
  const results = variants.map((variant, i) => {
    const joined = flows.find((f) => f.flow[0]?.sourcePort === ports[i]);
    const start = joined?.flow[0]?.time ?? eventTime(connected[i]);
    starts.push(start);
    // The client's port as the server saw it: masquerade keeps it when it is
    // free, and the capture says for sure.
    const seenAs = joined?.serverSidePort ?? ports[i];
    const packets = joined
      ? tellConnection(joined.flow, (segment: Segment) => joined.fates.get(segment) ?? "delivered")
      : [];
    return judge(variant, settings, {
      packets,
      client: clients[i],
      echoedByServer: server.events.filter((e) =>
        e.event === "echoed" && portOf(e.peer) === seenAs
      ).length,
      serverEnded: server.events.some((e) =>
        ["peer-closed", "reset", "timed-out"].includes(e.event) && portOf(e.peer) === seenAs
      ),
      conntrack: traces ? traceFrom(traces.get(ports[i]) ?? [], start) : null,
      moments: [
        ...momentsOf(clients[i], "client", start, describeScriptEvent),
        ...momentsOf(server, "server", start, (e) =>
          portOf(e.peer) === seenAs ? describeScriptEvent(e) : null),
      ].sort((a, b) =>
        a.seconds - b.seconds
      ),
      start,
      durationSeconds: ms(Date.now() / 1000 - start),
    });
  });
  if (pcaps) {
    // Drops the capture saw before the counter was read: one more may land
    // between the two, in the counter only.
    const seen = results.flatMap((r, i) =>
      r.packets.filter((p) =>
        p.fate === "dropped-at-router" && starts[i] + p.seconds <= countedAt
      )
    ).length;
    const counted = drops.invalid + drops.other;
    results[0].checks.push(check(
      "router's drop counter, all 4 nat flows",
      `${seen} (drops in the capture)`,
      `${counted} (nft: ${drops.invalid} invalid, ${drops.other} other)`,
      counted >= seen && counted - seen <= 2, // a retransmission may land between the two reads
    ));
    results[0].observed.routerDropCounter = counted;
    results[0].passed = results[0].checks.every((c) =>
      c.passed
    );
  }
  return results;
}

// The port of a "host:port" peer as server.ts prints it.
function portOf(peer: unknown): number {
  return Number(String(peer).split(":").at(-1));
}

// The router's table every 250 ms for `durationMs`, per client port; null
// when it cannot be read (then the scenario only waits).
async function sampleConntrack(router: Router, ports: number[], durationMs: number) {
  const samples = new Map<number, { time: number; entry: ConntrackEntry | null }[]>(
    ports.map((port) => [port, []]),
  );
  const end = Date.now() + durationMs;
  while (Date.now() < end) {
    const time = Date.now() / 1000;
    const entries = await router.readConntrack();
    if (!entries) {
      await sleep(end - Date.now());
      return null;
    }
    for (const port of ports) {
      samples.get(port)!.push({ time, entry: entries.find((e) => e.sourcePort === port) ?? null });
    }
    await sleep(Math.min(250, end - Date.now()));
  }
  return samples;
}

function traceFrom(
  samples: { time: number; entry: ConntrackEntry | null }[],
  start: number,
): ConntrackTrace {
  const trace: ConntrackTrace = { present: [], samples: [], forgottenAtSeconds: null };
  let span: { fromSeconds: number; toSeconds: number } | null = null;
  for (const { time, entry } of samples) {
    const at = ms(time - start);
    if (entry) {
      trace.samples.push({ seconds: at, remainingSeconds: entry.remainingSeconds });
      if (span) span.toSeconds = at;
      else trace.present.push(span = { fromSeconds: at, toSeconds: at });
    } else if (span) {
      trace.forgottenAtSeconds ??= at;
      span = null;
    }
  }
  return trace;
}

interface NatObservation {
  packets: Packet[];
  client: ScriptRun;
  echoedByServer: number;
  serverEnded: boolean;
  conntrack: ConntrackTrace | null;
  moments: Moment[];
  start: number;
  durationSeconds: number;
}

// What judging a variant looks at: the settings, and the facts of the run.
interface Facts {
  variant: NatVariant;
  settings: NatSettings;
  seen: NatObservation;
  /** The router's timeout. */
  m: number;
  /** Seconds since the SYN of a client event, or null. */
  at(event: ScriptEvent | undefined): number | null;
  sent?: ScriptEvent;
  received?: ScriptEvent;
  timedOut?: ScriptEvent;
  data: Packet[];
  retransmissions: Packet[];
  probes: Packet[];
  /** Whether there was a capture (tcpdump). */
  capture: boolean;
  /** When the router forgot the flow; null if it did not (or without its table). */
  forgotten: number | null;
  /** Whether the router's table was read (without it, its checks are left out). */
  traced: boolean;
}

// What judging adds up: expected and observed values, and the checks.
interface Verdict {
  expected: ScenarioResult["expected"];
  observed: ScenarioResult["observed"];
  checks: Check[];
}

function judge(variant: NatVariant, settings: NatSettings, seen: NatObservation): ScenarioResult {
  const event = (name: string) => seen.client.events.find((e) => e.event === name);
  const f: Facts = {
    variant,
    settings,
    seen,
    m: settings.timeout,
    at: (e) => e ? eventTime(e) - seen.start : null,
    sent: event("sent"),
    received: event("received"),
    timedOut: event("timed-out"),
    data: packetsOf(seen.packets, "data", "client"),
    retransmissions: packetsOf(seen.packets, "retransmission", "client"),
    probes: packetsOf(seen.packets, "keepalive probe", "client"),
    capture: seen.packets.length > 0,
    forgotten: seen.conntrack?.forgottenAtSeconds ?? null,
    traced: seen.conntrack !== null,
  };
  const verdict: Verdict = { expected: {}, observed: observedOf(f), checks: [] };
  for (const part of JUDGES[variant.name] ?? []) part(f, verdict);
  return {
    name: variant.name,
    title: variant.title,
    hosts: ["client", "router", "server"],
    settings: {
      middleboxTimeoutSeconds: f.m,
      keepalive: variant.flags.includes("--idle") ? variant.flags.join(" ") : "off",
      userTimeoutSeconds: variant.name === "nat-user-timeout" ? settings.userTimeout : null,
      sendAfterSeconds: variant.sendAfter,
    },
    ...verdict,
    passed: verdict.checks.every((c) => c.passed),
    packets: seen.packets,
    moments: seen.moments,
    conntrack: seen.conntrack,
    durationSeconds: seen.durationSeconds,
  };
}

// The parts of each variant's verdict.
const JUDGES: Record<string, ((f: Facts, v: Verdict) => void)[]> = {
  "nat-no-keepalive": [judgeLineLost, judgeStillWaiting],
  "nat-user-timeout": [judgeLineLost, judgeUserTimeout],
  "nat-idle-below": [judgeKeptAlive],
  "nat-idle-above": [judgeDetectedNotKept],
};

function observedOf(f: Facts): ScenarioResult["observed"] {
  const { at, sent, received, timedOut, probes, capture } = f;
  return {
    forgottenAtSeconds: f.forgotten,
    lineSentAtSeconds: at(sent) === null ? null : ms(at(sent)!),
    lineReachedServer: f.seen.echoedByServer > 0,
    echoReceived: received !== undefined,
    probesSent: capture ? probes.length : null,
    probesDroppedAtRouter: capture
      ? probes.filter((p) => p.fate === "dropped-at-router").length
      : null,
    retransmissions: capture ? f.retransmissions.length : null,
    timedOutAtSeconds: at(timedOut) === null ? null : ms(at(timedOut)!),
    serverStillThinksOpen: !f.seen.serverEnded,
  };
}

// Without keepalive: the router forgets, and the line never arrives.
function judgeLineLost(f: Facts, v: Verdict) {
  const { m, forgotten, seen, data, retransmissions } = f;
  v.expected.forgottenAtSeconds = m;
  v.expected.lineReachedServer = false;
  if (f.traced) {
    v.checks.push(
      check(
        "router forgets the idle flow",
        `after ~${m} s`,
        seconds(forgotten),
        forgotten !== null && forgotten >= m - 0.5 && forgotten <= m + 1.5,
      ),
    );
  }
  v.checks.push(
    check(
      "the line reaches the server",
      "no: dropped at the router",
      seen.echoedByServer > 0 ? "yes" : "no",
      seen.echoedByServer === 0,
    ),
    check(
      "the server still thinks it is open",
      "yes (half-open)",
      seen.serverEnded ? "no" : "yes",
      !seen.serverEnded,
    ),
  );
  if (f.capture) {
    const dropped = [...data, ...retransmissions].every((p) => p.fate === "dropped-at-router");
    v.checks.push(
      check(
        "the line and its retransmissions",
        "all dropped at the router",
        `${data.length + retransmissions.length} sent, ${dropped ? "all" : "not all"} dropped`,
        data.length === 1 && dropped,
      ),
    );
  }
}

// No user timeout: the client is still retransmitting when the lab stops.
function judgeStillWaiting(f: Facts, v: Verdict) {
  const { at, sent } = f;
  const hung = at(sent) === null ? null : f.seen.durationSeconds - at(sent)!;
  // Still waiting: no ending of any kind (a reset or a close would be news too).
  const ended = f.seen.client.events.find((e) =>
    ["timed-out", "reset", "server-closed", "error"].includes(e.event)
  );
  v.expected.failsAfterSeconds = RETRANSMISSION_LIMIT_SECONDS;
  v.observed.stillHangingAfterSeconds = ended || hung === null ? null : ms(hung);
  v.checks.push(check(
    "the client still waits when the lab stops",
    `yes (Linux gives up after ~${RETRANSMISSION_LIMIT_SECONDS} s)`,
    ended
      ? `no: ${ended.event} ${seconds(at(ended)! - (at(sent) ?? 0))} after the line`
      : `yes, ${seconds(hung)} after the line`,
    !ended && sent !== undefined,
  ));
}

// With a user timeout: the client fails that long after the line.
function judgeUserTimeout(f: Facts, v: Verdict) {
  const { at, sent, timedOut, settings } = f;
  const failedAfter = timedOut && sent ? at(timedOut)! - at(sent)! : null;
  v.expected.failsAfterSeconds = settings.userTimeout;
  v.observed.failedAfterSeconds = failedAfter === null ? null : ms(failedAfter);
  v.checks.push(check(
    "the client fails after the user timeout",
    `${settings.userTimeout} s after the line`,
    seconds(failedAfter),
    onTime(failedAfter, settings.userTimeout, 1, 0.1),
  ));
}

// Keepalive idle below the timeout: the flow lives, and the line comes back.
function judgeKeptAlive(f: Facts, v: Verdict) {
  const { m, forgotten, received, probes } = f;
  const idle = f.at(f.sent);
  v.expected.survivedSeconds = 3 * m;
  v.expected.echoReceived = true;
  v.observed.survivedSeconds = idle === null ? null : ms(idle);
  if (f.traced) {
    v.checks.push(
      check(
        "the router keeps the flow",
        "never forgets it",
        forgotten === null ? "never forgot it" : `forgot it at ${seconds(forgotten)}`,
        forgotten === null,
      ),
    );
  }
  v.checks.push(
    check(
      "the line after the idle comes back",
      `echo after >= ${3 * m} s idle (3 timeouts)`,
      received ? `echoed, after ${seconds(idle)}` : "no echo",
      received !== undefined && idle !== null && idle >= 3 * m,
    ),
  );
  if (f.capture) {
    const gaps = probes.slice(1).map((p, i) => p.seconds - probes[i].seconds);
    const widest = Math.max(probes[0]?.seconds ?? Infinity, ...gaps);
    const through = probes.filter((p) => p.fate === "delivered").length;
    v.checks.push(check(
      "keepalive probes",
      `every ${f.variant.idle} s (< ${m} s), all through the router`,
      `${probes.length} sent, ${through} through, at most ${seconds(widest)} apart`,
      probes.length >= 2 && through === probes.length && widest < m,
    ));
  }
}

// Keepalive idle above the timeout: the dead flow is noticed, not kept.
function judgeDetectedNotKept(f: Facts, v: Verdict) {
  const { m, forgotten, probes, variant } = f;
  const lastHeard = f.seen.packets.filter((p) => p.from === "server").at(-1)?.seconds ?? 0;
  const detect = (variant.idle ?? 0) + 2;
  const detectedAfter = f.at(f.timedOut) === null ? null : f.at(f.timedOut)! - lastHeard;
  v.expected.detectedAfterSeconds = detect;
  v.expected.flowKeptAlive = false;
  v.observed.detectedAfterSeconds = detectedAfter === null ? null : ms(detectedAfter);
  if (f.traced) {
    v.checks.push(
      check(
        "router forgets the idle flow",
        `after ~${m} s, before the first probe`,
        seconds(forgotten),
        forgotten !== null && forgotten <= (variant.idle ?? 0),
      ),
    );
  }
  v.checks.push(
    check(
      "the dead flow is detected",
      `${detect} s = idle ${variant.idle} + 1 x 2`,
      seconds(detectedAfter),
      onTime(detectedAfter, detect, 1, 0.1),
    ),
  );
  if (f.capture) {
    const dropped = probes.filter((p) => p.fate === "dropped-at-router").length;
    v.checks.push(
      check(
        "keepalive probes",
        "all dropped at the router",
        `${probes.length} sent, ${dropped} dropped`,
        probes.length >= 1 && dropped === probes.length,
      ),
    );
  }
}

/**
 * # Which keepalive settings? A planner
 *
 * @run deno run tools/plan.ts --middlebox aws-nat-gateway --detect-within 60
 * @run deno run tools/plan.ts --middlebox-timeout 350 [--detect-within 60] [--json]
 *
 * Two questions decide keepalive's settings: how long may a connection stay
 * silent before something on the path forgets it (a NAT gateway, a load
 * balancer, a firewall's connection table), and how soon must a dead peer
 * be noticed. This script turns the answers into the four numbers the
 * kernel takes, says what they cost, and prints how to apply them with the
 * kit's scripts, the package `@kakit/keepalive`, Node and Go.
 *
 * The rules, each one short:
 *
 * 1. **Every probe leaves before the middlebox forgets.** Keepalive counts
 *    in whole seconds and the kernel's timer wheel may fire a timer up to an
 *    eighth late (a 130 s idle time was seen to send its probe at 146 s), so
 *    a probe due at t may leave at t × 9/8, and then needs a moment on the
 *    wire: the ceiling is C = ⌊(timeout − 1) × 8/9⌋ seconds after the last
 *    packet. (An answered probe is traffic too: it restarts both clocks.)
 * 2. **Three probes, and a lost one does not lose the flow.** A dead peer is
 *    declared after `count` unanswered probes (three; fewer only when the
 *    deadline leaves no room). The retries of a lost probe must leave before
 *    the ceiling too: idle + interval × L ≤ C, where L, the probes that may
 *    be lost in a row, is count − 1 where there is room (1 s per retry).
 * 3. **Worst case = idle + interval × count**, counted from the last packet
 *    heard from the peer. With a deadline, half of it goes to the probes:
 *    interval = ⌊deadline / (2 × count)⌋ (at most what rule 2 leaves), then
 *    idle takes the rest, up to what rule 2 allows. Without a deadline:
 *    interval = C / 10, idle = C − interval × L.
 * 4. **User timeout = the worst case.** `TCP_USER_TIMEOUT` bounds a request
 *    already in flight (keepalive only runs when nothing is), and with
 *    keepalive on it also replaces the count: set to the worst case, both
 *    ways of dying agree.
 * 5. **Cost.** A healthy idle connection sends one probe and gets one answer
 *    every max(idle, interval) seconds: 66-byte frames on IPv4 (86 on IPv6).
 *
 * It needs no permission: it only computes and prints.
 *
 * It is a tool of the kit (it uses `tools/cli.ts` and the package's limits),
 * not a file to copy: the plan it prints is what goes into your project.
 *
 * @module
 */
import {
  type CommandIO,
  parseCommandLine,
  parseFlags,
  parseInteger,
  printError,
  showTyped,
  UsageError,
  writeText,
} from "./cli.ts";
import { KEEPALIVE_LIMITS } from "@kakit/keepalive";
export { type CommandIO, UsageError } from "./cli.ts";

/** Middleboxes that forget idle flows, and after how long (sources in the README). */
export const MIDDLEBOXES: Record<string, { name: string; timeoutSeconds: number }> = {
  "aws-nat-gateway": { name: "AWS NAT gateway", timeoutSeconds: 350 },
  "aws-nlb": { name: "AWS Network Load Balancer", timeoutSeconds: 350 },
  "azure-lb": { name: "Azure load balancer", timeoutSeconds: 240 },
  "gcp-firewall": { name: "GCP firewall connection tracking", timeoutSeconds: 600 },
  "docker-swarm": { name: "Docker Swarm (IPVS)", timeoutSeconds: 900 },
  "linux-conntrack": { name: "Linux conntrack", timeoutSeconds: 432_000 },
};

/** What the plan is for. At least one of the two is given. */
export interface PlanRequest {
  /** Seconds after which the strictest middlebox on the path forgets an idle flow. */
  middleboxTimeoutSeconds?: number;
  /** Its name, when it came from {@linkcode MIDDLEBOXES}. */
  middleboxName?: string;
  /** Seconds within which a dead peer must be noticed, counted from its last packet. */
  detectWithinSeconds?: number;
}

/** The settings, what they guarantee and what they cost. Times in seconds. */
export interface Plan {
  /** The request, as understood. */
  request: PlanRequest;
  /** `TCP_KEEPIDLE`: silence before the first probe. */
  idleSeconds: number;
  /** Rule 1's ceiling: the latest a probe may be due after the last packet; null without a middlebox. */
  idleCeilingSeconds: number | null;
  /** Probes that may be lost in a row before the middlebox forgets the flow (rule 2); null without one. */
  lostProbesSurvived: number | null;
  /** `TCP_KEEPINTVL`: between unanswered probes. */
  intervalSeconds: number;
  /** `TCP_KEEPCNT`: unanswered probes before the connection fails. */
  count: number;
  /** `TCP_USER_TIMEOUT`, in seconds: how long sent data may go unacknowledged. */
  userTimeoutSeconds: number;
  /** The longest a dead peer can go unnoticed, from its last packet: idle + interval × count. */
  worstCaseDetectionSeconds: number;
  /** Probes a healthy idle connection sends per hour (each gets an answer), to 2 decimals. */
  probesPerHour: number;
  /** Bytes on an Ethernet link per connection per hour, probes and answers, IPv4 (IPv6 is 86/66 of it). */
  bytesPerHourIPv4: number;
}

// A probe or its answer on the wire: Ethernet 14 + IPv4 20 (IPv6 40) + TCP
// 20 + timestamps option 12 bytes.
const FRAME_BYTES_IPV4 = 66;
const COUNT = 3;
const MAX_IDLE = KEEPALIVE_LIMITS.time.max / 1000;
const MAX_INTERVAL = KEEPALIVE_LIMITS.interval.max / 1000;

/**
 * Rule 1's ceiling: the latest a probe may be due, in seconds after the last
 * packet, so that it leaves (up to an eighth late) and arrives before a
 * middlebox with this timeout forgets the flow.
 */
export function probeCeiling(timeoutSeconds: number): number {
  return Math.floor((timeoutSeconds - 1) * 8 / 9);
}

/**
 * Works out the settings for a request. Throws a {@linkcode UsageError}
 * saying what is possible when the request cannot be met.
 *
 * @example
 * ```ts
 * import { planKeepAlive } from "./plan.ts";
 * const plan = planKeepAlive({ middleboxTimeoutSeconds: 350, detectWithinSeconds: 60 });
 * // plan.idleSeconds 30, plan.intervalSeconds 10, plan.count 3, plan.userTimeoutSeconds 60
 * ```
 */
export function planKeepAlive(request: PlanRequest): Plan {
  const { middleboxTimeoutSeconds: timeout, detectWithinSeconds: deadline } = request;
  if (timeout === undefined && deadline === undefined) {
    throw new UsageError("give --middlebox-timeout (or --middlebox), --detect-within, or both");
  }
  let ceiling = MAX_IDLE;
  if (timeout !== undefined) {
    ceiling = Math.min(MAX_IDLE, probeCeiling(timeout));
    if (ceiling < 1) {
      throw new UsageError(
        `keepalive cannot keep a flow alive through a middlebox that forgets it after ` +
          `${timeout} s: a probe is due 1 s after the last packet at the soonest, and may leave ` +
          `an eighth late, so the timeout must be at least 3 s`,
      );
    }
  }
  if (deadline !== undefined && deadline < 2) {
    throw new UsageError(
      `a dead peer cannot be noticed within ${deadline} s: the least keepalive can do is ` +
        `2 s (idle 1 s, then 1 probe after 1 s)`,
    );
  }
  // Room for idle 1 s and count probes 1 s apart within the deadline.
  const count = deadline === undefined ? COUNT : Math.min(COUNT, deadline - 1);
  // Rule 2: the probes that may be lost in a row, each retry 1 s or more.
  const lost = Math.min(count - 1, ceiling - 1);
  const roomPerRetry = lost > 0 ? Math.floor((ceiling - 1) / lost) : MAX_INTERVAL;
  const wanted = deadline === undefined
    ? Math.round(ceiling / 10)
    : Math.floor(deadline / (2 * count));
  const interval = Math.min(MAX_INTERVAL, ceiling, roomPerRetry, Math.max(1, wanted));
  let idle = ceiling - interval * lost;
  if (deadline !== undefined) idle = Math.min(idle, deadline - interval * count);
  const worst = idle + interval * count;
  const probesPerHour = Math.round(3600 / Math.max(idle, interval) * 100) / 100;
  return {
    request,
    idleSeconds: idle,
    idleCeilingSeconds: timeout === undefined ? null : ceiling,
    intervalSeconds: interval,
    count,
    lostProbesSurvived: timeout === undefined ? null : lost,
    userTimeoutSeconds: worst,
    worstCaseDetectionSeconds: worst,
    probesPerHour,
    bytesPerHourIPv4: Math.round(probesPerHour * 2 * FRAME_BYTES_IPV4),
  };
}

/** How to apply a plan with each tool, one line each, keyed by the tool. */
export function applyPlan(plan: Plan): Record<string, string> {
  const { idleSeconds: idle, intervalSeconds: interval, count, userTimeoutSeconds: user } = plan;
  const ms = (seconds: number) => `${seconds * 1000}`.replace(/\B(?=(\d{3})+$)/g, "_");
  const options = `{ time: ${ms(idle)}, interval: ${ms(interval)}, retries: ${count}, ` +
    `userTimeout: ${ms(user)} }`;
  return {
    "server.ts / client.ts":
      `--idle ${idle} --interval ${interval} --count ${count} --user-timeout ${user}`,
    "@kakit/keepalive": `setKeepAlive(conn, ${options})`,
    "fetch, npm drivers": `setKeepAliveAll(${options}, { hostname, port })`,
    "Node >= 26.4": `socket.setKeepAlive({ enable: true, initialDelay: ${idle * 1000}, ` +
      `interval: ${interval * 1000}, count: ${count} }); no user timeout in Node itself`,
    "older Node, Deno node:net": `socket.setKeepAlive(true, ${idle * 1000}): the idle time ` +
      `only (Node then probes every 1 s, 10 times; Deno leaves the system's interval and count)`,
    "Go >= 1.23": `net.KeepAliveConfig{Enable: true, Idle: ${idle} * time.Second, ` +
      `Interval: ${interval} * time.Second, Count: ${count}}; user timeout with ` +
      `RawConn.Control and unix.TCP_USER_TIMEOUT`,
    "a whole namespace": `sysctl.ts time=${idle} intvl=${interval} probes=${count} ` +
      `(no sysctl for the user timeout)`,
  };
}

/** The plan as lines of text, for people. */
export function formatPlan(plan: Plan): string[] {
  const { request } = plan;
  const path = request.middleboxTimeoutSeconds === undefined
    ? "a path with no known idle timeout"
    : `a path that forgets idle flows after ${request.middleboxTimeoutSeconds} s${
      request.middleboxName ? ` (${request.middleboxName})` : ""
    }`;
  const goal = request.detectWithinSeconds === undefined
    ? ""
    : `, noticing a dead peer within ${request.detectWithinSeconds} s`;
  const timeout = request.middleboxTimeoutSeconds;
  const ceiling = plan.idleCeilingSeconds === null
    ? ""
    : timeout !== undefined && probeCeiling(timeout) > MAX_IDLE
    ? ` (at most ${MAX_IDLE} s: the kernel's limit)`
    : ` (every probe due by ${plan.idleCeilingSeconds} s after the last packet: even an ` +
      `eighth late, it leaves by ${timeout! - 1} s)`;
  const lost = describeLostProbes(plan);
  const apply = applyPlan(plan);
  const width = Math.max(...Object.keys(apply).map((key) => key.length));
  return [
    `Plan for ${path}${goal}:`,
    "",
    `  idle          ${plan.idleSeconds} s: the first probe after this much silence${ceiling}`,
    `  interval      ${plan.intervalSeconds} s: then one probe this often while unanswered`,
    `  count         ${plan.count}: dead after this many unanswered probes`,
    `  user timeout  ${plan.userTimeoutSeconds} s: sent data unacknowledged this long fails too`,
    "",
    ...lost,
    `  worst case: a dead peer is noticed ${plan.worstCaseDetectionSeconds} s after its last ` +
    `packet (${plan.idleSeconds} + ${plan.intervalSeconds} x ${plan.count})`,
    `  cost: ${describeRate(plan)}`,
    "",
    "Apply it:",
    ...Object.entries(apply).map(([tool, how]) => `  ${tool.padEnd(width)}  ${how}`),
  ];
}

// Rule 2 in words: how many probes in a row may be lost without losing the
// flow or, when none may, why not. No line without a middlebox.
function describeLostProbes(plan: Plan): string[] {
  const lost = plan.lostProbesSurvived;
  if (lost === null) return [];
  if (lost > 0) {
    return [
      `  a flow survives ${lost} lost probe${lost === 1 ? "" : "s"} in a row: the retries, ` +
      `too, come before the timeout`,
    ];
  }
  if (plan.count === 1) {
    return [
      "  no probe may be lost: the deadline leaves room for one probe only (count 1), " +
      "so a lost one ends the connection",
    ];
  }
  return [
    `  no probe may be lost: with a ${plan.request.middleboxTimeoutSeconds} s timeout, ` +
    `the retry of a lost probe could come after the middlebox has forgotten the flow`,
  ];
}

// Probes per hour, or per day when fewer than one an hour.
function describeRate(plan: Plan): string {
  const period = Math.max(plan.idleSeconds, plan.intervalSeconds);
  if (period > 3600) {
    const perDay = Math.round(86400 / period * 10) / 10;
    return `one probe and its answer every ${period} s (${perDay} a day) per connection, ` +
      `${formatBytes(Math.round(perDay * 2 * FRAME_BYTES_IPV4))} a day on IPv4`;
  }
  return `${plan.probesPerHour} probes and as many answers per connection per hour, ` +
    `about ${formatBytes(plan.bytesPerHourIPv4)} on IPv4`;
}

function formatBytes(bytes: number): string {
  return bytes < 10_000 ? `${bytes} bytes` : `${(bytes / 1000).toFixed(1)} kB`;
}

// ## The command line

// What the flags take, in seconds, for --help and for the checks alike. A
// middlebox that forgets sooner than 3 s cannot be kept (rule 1), and a dead
// peer cannot be noticed sooner than 2 s (idle 1 s, one probe 1 s later).
const TIMEOUT_RANGE = { min: 3, max: 31_536_000 } as const;
const DEADLINE_RANGE = { min: 2, max: 1_000_000 } as const;

/** The `--help` text. */
export const HELP = `Usage: deno run tools/plan.ts [--middlebox-timeout SECONDS | --middlebox NAME]
                    [--detect-within SECONDS] [--json]

Picks TCP keepalive settings (idle, interval, count, user timeout) that keep
a connection alive through a middlebox that forgets idle flows, and notice a
dead peer in time; says what they cost and how to apply them.

Options:
  --middlebox-timeout SECONDS  the shortest idle timeout on the path, ${TIMEOUT_RANGE.min}..${TIMEOUT_RANGE.max}
  --middlebox NAME             the same, from a known middlebox:
${
  Object.entries(MIDDLEBOXES).map(([key, box]) =>
    `                                 ${key.padEnd(16)} ${box.timeoutSeconds} s  ${box.name}`
  ).join("\n")
}
  --detect-within SECONDS      notice a dead peer within this long after its last packet,
                               ${DEADLINE_RANGE.min}..${DEADLINE_RANGE.max}
  --json                       print the plan as one JSON object
  -h, --help                   show this help

Exit codes: 0 with a plan, 1 when it cannot be written (stdout full or
closed), 2 for bad flags or a request that cannot be met (one line saying what
is possible). Needs no permission.`;

/** What the command was asked. */
export interface PlanOptions {
  /** What the plan is for. */
  request: PlanRequest;
  /** Print JSON instead of text. */
  json: boolean;
}

/**
 * Parses the command-line flags. Throws a `UsageError` for anything it
 * cannot use; returns `"help"` for `--help`.
 */
export function parsePlanArgs(args: string[]): PlanOptions | "help" {
  const flags = parseFlags(args, {
    string: ["middlebox-timeout", "middlebox", "detect-within"],
    boolean: ["json"],
  });
  if (flags.help) return "help";
  const request: PlanRequest = {};
  if (flags.middlebox !== undefined && flags["middlebox-timeout"] !== undefined) {
    throw new UsageError("give --middlebox or --middlebox-timeout, not both");
  }
  if (flags.middlebox !== undefined) {
    const box = Object.hasOwn(MIDDLEBOXES, flags.middlebox)
      ? MIDDLEBOXES[flags.middlebox]
      : undefined;
    if (!box) {
      throw new UsageError(
        `no middlebox ${showTyped(flags.middlebox)}: choose from ${
          Object.keys(MIDDLEBOXES).join(", ")
        }, or give --middlebox-timeout`,
      );
    }
    request.middleboxTimeoutSeconds = box.timeoutSeconds;
    request.middleboxName = box.name;
  }
  if (flags["middlebox-timeout"] !== undefined) {
    request.middleboxTimeoutSeconds = parseInteger(
      "--middlebox-timeout",
      flags["middlebox-timeout"],
      TIMEOUT_RANGE.min,
      TIMEOUT_RANGE.max,
    );
  }
  if (flags["detect-within"] !== undefined) {
    request.detectWithinSeconds = parseInteger(
      "--detect-within",
      flags["detect-within"],
      DEADLINE_RANGE.min,
      DEADLINE_RANGE.max,
    );
  }
  if (request.middleboxTimeoutSeconds === undefined && request.detectWithinSeconds === undefined) {
    throw new UsageError("give --middlebox-timeout (or --middlebox), --detect-within, or both");
  }
  return { request, json: flags.json };
}

/**
 * The command. Returns the exit code: 0 with a plan, 1 when the plan cannot
 * be written (one line on stderr says why, if stderr can be written), 2 for
 * bad flags or a request that cannot be met.
 */
export function main(args: string[], io: Pick<CommandIO, "stderr"> = {}): number {
  const stderr = io.stderr ?? printError;
  const options = parseCommandLine("plan.ts", args, parsePlanArgs, HELP, stderr);
  if (typeof options === "number") return options;
  let plan: Plan;
  try {
    plan = planKeepAlive(options.request);
  } catch (error) {
    stderr(`plan.ts: ${(error as Error).message}`);
    return 2;
  }
  const failed = writeText(
    options.json
      ? JSON.stringify({ ...plan, apply: applyPlan(plan) }, null, 2)
      : formatPlan(plan).join("\n"),
  );
  if (failed === null) return 0;
  stderr(`plan.ts: cannot write the plan: ${failed}`);
  return 1;
}

if (import.meta.main) Deno.exit(main(Deno.args));

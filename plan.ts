/**
 * # Which keepalive settings? A planner
 *
 * @run deno run plan.ts --middlebox aws-nat-gateway --detect-within 60
 * @run deno run plan.ts --middlebox-timeout 350 [--detect-within 60] [--json]
 *
 * Two questions decide keepalive's settings: how long may a connection stay
 * silent before something on the path forgets it (a NAT gateway, a load
 * balancer, a firewall's connection table), and how soon must a dead peer
 * be noticed. This script turns the answers into the four numbers the
 * kernel takes, says what they cost, and prints how to apply them with the
 * kit's scripts, `keepalive.ts`, Node and Go.
 *
 * The rules, each one short:
 *
 * 1. **Idle below the timeout, with a margin.** The first probe must reach
 *    the middlebox before it forgets the flow, and keepalive counts in whole
 *    seconds and may fire a little late: idle ≤ timeout − margin, where the
 *    margin is 10% of the timeout and at least 2 s. (The answer to each probe
 *    counts as traffic too, so an answered probe restarts both clocks.)
 * 2. **Three probes.** A dead peer is declared after `count` unanswered
 *    probes; three ride out a lost packet or two (fewer only when the
 *    deadline leaves no room).
 * 3. **Worst case = idle + interval × count**, counted from the last packet
 *    heard from the peer. With a deadline, half of it goes to the idle time
 *    and half to the probes: interval = ⌊deadline / (2 × count)⌋, then idle
 *    takes what is left, up to rule 1's ceiling. Without a deadline: idle at
 *    the ceiling and interval = idle / 10. The interval never exceeds rule 1's
 *    ceiling either: after an answered probe the next one comes max(idle,
 *    interval) later, and that gap, too, must stay below the timeout.
 * 4. **User timeout = the worst case.** `TCP_USER_TIMEOUT` bounds a request
 *    already in flight (keepalive only runs when nothing is), and with
 *    keepalive on it also replaces the count: set to the worst case, both
 *    ways of dying agree.
 * 5. **Cost.** A healthy idle connection sends one probe and gets one answer
 *    every max(idle, interval) seconds: 66-byte frames on IPv4 (86 on IPv6).
 *
 * It needs no permission: it only computes and prints.
 *
 * Copying this file into your project? Copy `cli.ts` and `keepalive.ts`
 * (for the kernel's limits) beside it and map `@std/cli` in your `deno.json`.
 *
 * @module
 */
import {
  type CommandIO,
  parseCommandLine,
  parseFlags,
  parseInteger,
  showTyped,
  UsageError,
} from "./cli.ts";
import { KEEPALIVE_LIMITS } from "./keepalive.ts";
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
  /** The most the idle time may be to keep the flow alive (rule 1); null without a middlebox. */
  idleCeilingSeconds: number | null;
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

/** The margin rule 1 keeps below a middlebox's timeout, in seconds. */
export function idleMargin(timeoutSeconds: number): number {
  return Math.max(2, Math.ceil(timeoutSeconds * 0.1));
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
    ceiling = Math.min(MAX_IDLE, timeout - idleMargin(timeout));
    if (ceiling < 1) {
      throw new UsageError(
        `keepalive cannot keep a flow alive through a middlebox that forgets it after ` +
          `${timeout} s: the idle time is at least 1 s and stays 2 s below the timeout, so the ` +
          `timeout must be at least 3 s`,
      );
    }
  }
  if (deadline !== undefined && deadline < 2) {
    throw new UsageError(
      `a dead peer cannot be noticed within ${deadline} s: the least keepalive can do is ` +
        `2 s (idle 1 s, then 1 probe after 1 s)`,
    );
  }
  let idle: number, interval: number, count: number;
  if (deadline === undefined) {
    count = COUNT;
    idle = ceiling;
    interval = Math.min(MAX_INTERVAL, Math.max(1, Math.round(idle / 10)));
  } else {
    count = Math.min(COUNT, deadline - 1); // room for idle 1 s and count probes 1 s apart
    interval = Math.min(ceiling, Math.max(1, Math.floor(deadline / (2 * count))));
    idle = Math.min(ceiling, deadline - interval * count);
  }
  const worst = idle + interval * count;
  const probesPerHour = Math.round(3600 / Math.max(idle, interval) * 100) / 100;
  return {
    request,
    idleSeconds: idle,
    idleCeilingSeconds: timeout === undefined ? null : ceiling,
    intervalSeconds: interval,
    count,
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
    "keepalive.ts": `setKeepAlive(conn, ${options})`,
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
  const belowTimeout = timeout === undefined ? MAX_IDLE : timeout - idleMargin(timeout);
  const ceiling = plan.idleCeilingSeconds === null
    ? ""
    : belowTimeout > MAX_IDLE
    ? ` (at most ${MAX_IDLE} s: the kernel's limit)`
    : ` (at most ${plan.idleCeilingSeconds} s: ${timeout} s less a ${
      idleMargin(timeout!)
    } s margin)`;
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
    `  worst case: a dead peer is noticed ${plan.worstCaseDetectionSeconds} s after its last ` +
    `packet (${plan.idleSeconds} + ${plan.intervalSeconds} x ${plan.count})`,
    `  cost: ${describeRate(plan)}`,
    "",
    "Apply it:",
    ...Object.entries(apply).map(([tool, how]) => `  ${tool.padEnd(width)}  ${how}`),
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

/** The `--help` text. */
export const HELP = `Usage: deno run plan.ts [--middlebox-timeout SECONDS | --middlebox NAME]
                    [--detect-within SECONDS] [--json]

Picks TCP keepalive settings (idle, interval, count, user timeout) that keep
a connection alive through a middlebox that forgets idle flows, and notice a
dead peer in time; says what they cost and how to apply them.

Options:
  --middlebox-timeout SECONDS  the shortest idle timeout on the path, 3..31536000
  --middlebox NAME             the same, from a known middlebox:
${
  Object.entries(MIDDLEBOXES).map(([key, box]) =>
    `                                 ${key.padEnd(16)} ${box.timeoutSeconds} s  ${box.name}`
  ).join("\n")
}
  --detect-within SECONDS      notice a dead peer within this long after its last packet,
                               2..1000000
  --json                       print the plan as one JSON object
  -h, --help                   show this help

Exit codes: 0 with a plan, 2 for bad flags or a request that cannot be met
(one line saying what is possible). Needs no permission.`;

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
      1,
      31_536_000,
    );
  }
  if (flags["detect-within"] !== undefined) {
    request.detectWithinSeconds = parseInteger(
      "--detect-within",
      flags["detect-within"],
      1,
      1_000_000,
    );
  }
  if (request.middleboxTimeoutSeconds === undefined && request.detectWithinSeconds === undefined) {
    throw new UsageError("give --middlebox-timeout (or --middlebox), --detect-within, or both");
  }
  return { request, json: flags.json };
}

/**
 * The command. Returns the exit code: 0 with a plan, 2 for bad flags or a
 * request that cannot be met.
 */
export function main(args: string[], io: Pick<CommandIO, "stderr"> = {}): number {
  const stderr = io.stderr ?? ((line: string) => console.error(line));
  const options = parseCommandLine("plan.ts", args, parsePlanArgs, HELP, stderr);
  if (typeof options === "number") return options;
  let plan: Plan;
  try {
    plan = planKeepAlive(options.request);
  } catch (error) {
    stderr(`plan.ts: ${(error as Error).message}`);
    return 2;
  }
  if (options.json) console.log(JSON.stringify({ ...plan, apply: applyPlan(plan) }, null, 2));
  else console.log(formatPlan(plan).join("\n"));
  return 0;
}

if (import.meta.main) Deno.exit(main(Deno.args));

/**
 * # Which keepalive settings? A planner
 *
 * @run deno run tools/plan.ts --middlebox aws-nat-gateway --detect-within 60
 * @run deno run tools/plan.ts --middlebox-timeout 350 [--detect-within 60] [--pool-idle-timeout 90] [--json]
 *
 * Two questions decide keepalive's settings: how long may a connection stay
 * silent before something on the path forgets it (a NAT gateway, a load
 * balancer, a firewall's connection table), and how soon must a dead peer
 * be noticed. This script turns the answers into the four numbers the
 * kernel takes, says what they cost and how long a dead peer can go
 * unnoticed, and prints how to apply them with the kit's scripts, the
 * package `@kakit/keepalive`, Node and Go. Given the idle timeout of the
 * connection pool too (fetch's, pg-pool's), it says whether keepalive is
 * still needed to keep parked connections, and what it is still for.
 *
 * The rules are in `tools/plan_rules.ts` (and docs/planner.md); this file
 * puts them in words, plain ones: "about 8 probes an hour", "about 6 min".
 * `--json` gives the same plan with its exact numbers.
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
import {
  FRAME_BYTES_IPV4,
  MAX_KEEPALIVE_SECONDS,
  MIDDLEBOXES,
  type Plan,
  planKeepAlive,
  type PlanRequest,
  POOL_IDLE_TIMEOUTS,
} from "./plan_rules.ts";
export { type CommandIO, UsageError } from "./cli.ts";
export {
  type KeepaliveNeed,
  type Middlebox,
  MIDDLEBOXES,
  type Plan,
  planKeepAlive,
  type PlanRequest,
  POOL_IDLE_TIMEOUTS,
  type PoolAdvice,
  poolAdvice,
  probeCeiling,
} from "./plan_rules.ts";

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

/** The plan as lines of text, for people: exact settings, plain words for what they mean. */
export function formatPlan(plan: Plan): string[] {
  const { request } = plan;
  const timeout = request.middleboxTimeoutSeconds;
  const path = timeout === undefined
    ? "a path with no known idle timeout"
    : `a path that forgets idle flows after ${count(timeout)} s${
      request.middleboxName ? ` (${request.middleboxName})` : ""
    }`;
  const goal = request.detectWithinSeconds === undefined
    ? ""
    : `, noticing a dead peer within ${count(request.detectWithinSeconds)} s`;
  const pool = request.poolIdleTimeoutSeconds === undefined
    ? ""
    : `, with a pool that closes idle connections after ${count(request.poolIdleTimeoutSeconds)} s`;
  const ceiling = plan.idleCeilingSeconds === null
    ? ""
    : plan.idleCeilingSeconds > MAX_KEEPALIVE_SECONDS
    ? ` (at most ${count(MAX_KEEPALIVE_SECONDS)} s: the kernel's limit)`
    : ` (every probe due by ${plan.idleCeilingSeconds} s after the last packet: even an ` +
      `eighth late, it leaves by ${timeout! - 1} s)`;
  const apply = applyPlan(plan);
  const width = Math.max(...Object.keys(apply).map((key) => key.length));
  const warnings = planWarnings(plan).map((line) => `  warning: ${line}`);
  const poolLines = describePool(plan);
  return [
    `Plan for ${path}${goal}${pool}:`,
    "",
    `  idle          ${duration(plan.idleSeconds)}: the first probe after this much silence` +
    ceiling,
    `  interval      ${duration(plan.intervalSeconds)}: then one probe this often while unanswered`,
    `  count         ${plan.count}: dead after this many unanswered probes`,
    `  user timeout  ${duration(plan.userTimeoutSeconds)}: sent data unacknowledged this long ` +
    `fails too`,
    "",
    ...describeLostProbes(plan),
    `  worst case: a dead peer is noticed at most ${duration(plan.worstCaseDetectionSeconds)} ` +
    `after its last packet (${plan.idleSeconds} + ${plan.intervalSeconds} x ${plan.count})`,
    `  cost: ${describeCost(plan)}`,
    ...warnings,
    ...(poolLines.length ? ["", ...poolLines] : []),
    "",
    "Apply it:",
    ...Object.entries(apply).map(([tool, how]) => `  ${tool.padEnd(width)}  ${how}`),
  ];
}

// Beyond this many seconds, a worst case nobody asked for is worth a warning.
const WARN_ABOVE_SECONDS = 60;
// The deadline the warning suggests, and prices.
const SUGGESTED_DEADLINE = 60;

/**
 * What the user did not ask for but should know, one line each: without
 * `--detect-within`, a worst case over a minute (a dead peer unnoticed, a
 * request in flight on a dead path hanging) is said in plain words, with
 * what a deadline would cost. Empty when there is nothing to say.
 *
 * @example
 * ```ts
 * import { planKeepAlive, planWarnings } from "./plan.ts";
 * planWarnings(planKeepAlive({ middleboxTimeoutSeconds: 600 }))[0];
 * // "without --detect-within, a dead peer, or a request in flight on a dead path, ..."
 * ```
 */
export function planWarnings(plan: Plan): string[] {
  const { request } = plan;
  if (request.detectWithinSeconds !== undefined) return [];
  if (plan.worstCaseDetectionSeconds <= WARN_ABOVE_SECONDS) return [];
  const bounded = planKeepAlive({ ...request, detectWithinSeconds: SUGGESTED_DEADLINE });
  return [
    `without --detect-within, a dead peer, or a request in flight on a dead path, can go ` +
    `unnoticed for up to ${duration(plan.worstCaseDetectionSeconds)}. Add --detect-within ` +
    `SECONDS to bound it: --detect-within ${SUGGESTED_DEADLINE} costs ` +
    `${describeProbeRate(bounded.probeEverySeconds)}.`,
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

// What a pool's own idle timeout changes, in words (docs/planner.md, "The
// pool's own idle timeout first"). No lines without --pool-idle-timeout.
function describePool(plan: Plan): string[] {
  const advice = plan.pool;
  if (advice === null) return [];
  const pool = advice.idleTimeoutSeconds;
  const timeout = plan.request.middleboxTimeoutSeconds;
  const closes = `it closes an idle connection after ${duration(pool)}; fetch's pool checks ` +
    `every ${count(pool)} s, so by ${duration(advice.closedBySeconds)} at the latest`;
  const sooner = (limit: number) =>
    `or close them sooner: Deno.createHttpClient({ poolIdleTimeout: ${milliseconds(limit)} }) ` +
    `or less for fetch, idleTimeoutMillis: ${milliseconds(timeout! - 1)} or less for pg-pool`;
  const half = Math.floor((timeout! - 1) / 2);
  if (advice.keepaliveNeededToKeep === "yes") {
    return [
      `  pool: ${closes}. The middlebox forgets a parked connection sooner, at ` +
      `${count(timeout!)} s: keepalive is what keeps it (${sooner(half)}).`,
    ];
  }
  if (advice.keepaliveNeededToKeep === "maybe") {
    return [
      `  pool: it closes an idle connection after ${duration(pool)}, before the middlebox ` +
      `forgets it at ${count(timeout!)} s, if it closes on time, as pg-pool does (a timer per ` +
      `connection). fetch's pool checks every ${count(pool)} s and may keep one up to ` +
      `${duration(advice.closedBySeconds)}: keep keepalive on for fetch (${sooner(half)}).`,
    ];
  }
  const first = timeout === undefined
    ? `  pool: ${closes}. With no middlebox to outlast, keepalive is not what keeps it.`
    : `  pool: ${closes}, before the middlebox forgets it at ${count(timeout)} s: keepalive ` +
      `is not needed to keep parked connections.`;
  const probe = advice.probesParked
    ? `within ${duration(plan.worstCaseDetectionSeconds)} of its last packet (the first ` +
      `probe after ${duration(plan.idleSeconds)} of silence)`
    : `but only after ${duration(plan.idleSeconds)} of silence, by when the pool has closed ` +
      `it (after ${count(pool)} s): a request that meets the dead path waits for the user ` +
      `timeout instead`;
  return [
    first,
    `  keepalive is still what notices a path that dies under a parked connection (NAT ` +
    `reboot, failover, VPN drop), ${probe}; it still keeps connections that outlive the pool ` +
    `(streams, subscriptions, LISTEN, pg-pool's min); and the user timeout still ends a ` +
    `request in flight on ` +
    `a dead path, after ${duration(plan.userTimeoutSeconds)}.`,
  ];
}

// ## Plain numbers

// An integer with thousands separators, the way people write it: 32,767.
function count(value: number): string {
  return value.toLocaleString("en-US");
}

// Seconds as people say them: "60 s", "341 s (about 6 min)", "5 days".
function duration(seconds: number): string {
  if (seconds < 100) return `${seconds} s`;
  return `${count(seconds)} s (${roughly(seconds)})`;
}

// A long time in its largest sensible unit, rounded: "about 6 min".
function roughly(seconds: number): string {
  const [size, unit] = seconds < 5_400
    ? [60, "min"]
    : seconds < 129_600
    ? [3_600, "h"]
    : [86_400, "days"];
  return approximately(seconds / size, unit);
}

// "4 min" when exact, "about 6 min" when rounded.
function approximately(value: number, unit: string): string {
  const rounded = Math.max(1, Math.round(value));
  return `${rounded === value ? "" : "about "}${count(rounded)} ${unit}`;
}

// Milliseconds as an option takes them: 174_000.
function milliseconds(seconds: number): string {
  return `${seconds * 1000}`.replace(/\B(?=(\d{3})+$)/g, "_");
}

// How often a healthy idle connection probes: "about 15 probes an hour".
function describeProbeRate(periodSeconds: number): string {
  const rate = (value: number, per: string) =>
    `${approximately(value, "probes").replace(/^((?:about )?1) probes$/, "$1 probe")} ${per}`;
  const perHour = 3600 / periodSeconds;
  if (perHour >= 1) return rate(perHour, "an hour");
  const perDay = 86_400 / periodSeconds;
  if (perDay >= 1) return rate(perDay, "a day");
  return `one probe every ${roughly(periodSeconds)}`;
}

// Rule 5 in plain words: probes, answers and bytes, per hour or per day.
function describeCost(plan: Plan): string {
  const period = plan.probeEverySeconds;
  const perHour = 3600 / period;
  const [bytes, per] = perHour >= 1
    ? [perHour * 2 * FRAME_BYTES_IPV4, "an hour"]
    : [86_400 / period * 2 * FRAME_BYTES_IPV4, "a day"];
  return `${describeProbeRate(period)} per idle connection, each answered: ` +
    `${plainBytes(bytes)} ${per} on IPv4`;
}

// Bytes, rounded to two figures: "about 290 bytes", "about 1.1 kB", "about 16 kB".
function plainBytes(bytes: number): string {
  if (bytes < 1_000) {
    return `about ${Math.max(1, Math.round(bytes / 10) * 10 || Math.round(bytes))} bytes`;
  }
  if (bytes < 10_000) return `about ${(bytes / 1_000).toFixed(1)} kB`;
  if (bytes < 1_000_000) return `about ${Math.round(bytes / 1_000)} kB`;
  return `about ${(bytes / 1_000_000).toFixed(1)} MB`;
}

// ## The command line

// What the flags take, in seconds, for --help and for the checks alike. A
// middlebox that forgets sooner than 3 s cannot be kept (rule 1), and a dead
// peer cannot be noticed sooner than 2 s (idle 1 s, one probe 1 s later).
const TIMEOUT_RANGE = { min: 3, max: 31_536_000 } as const;
const DEADLINE_RANGE = { min: 2, max: 1_000_000 } as const;
const POOL_RANGE = { min: 1, max: 31_536_000 } as const;

const PRESETS = Object.entries(MIDDLEBOXES).map(([key, box]) =>
  `      ${key.padEnd(18)} ${`${box.timeoutSeconds} s`.padStart(8)}  ${box.name}${
    box.configurable ? ` (default; ${box.configurable})` : ""
  }`
).join("\n");

/** The `--help` text. */
export const HELP = `Usage: deno run tools/plan.ts [--middlebox-timeout SECONDS | --middlebox NAME]
                    [--detect-within SECONDS] [--pool-idle-timeout SECONDS] [--json]

Picks TCP keepalive settings (idle, interval, count, user timeout) that keep
a connection alive through a middlebox that forgets idle flows, and notice a
dead peer in time; says what they cost and how to apply them.

Options:
  --middlebox-timeout SECONDS  the shortest idle timeout on the path, ${TIMEOUT_RANGE.min}..${TIMEOUT_RANGE.max}
  --middlebox NAME             the same, from a known middlebox (at its default: if
                               yours was changed, give --middlebox-timeout):
${PRESETS}
  --detect-within SECONDS      notice a dead peer within this long after its last packet,
                               ${DEADLINE_RANGE.min}..${DEADLINE_RANGE.max}; without it, the plan is the cheapest that
                               keeps the flow, and a worst case over a minute is a warning
  --pool-idle-timeout SECONDS  the connection pool closes idle connections itself after
                               this long, ${POOL_RANGE.min}..${POOL_RANGE.max} (fetch in Deno 2.9: ${POOL_IDLE_TIMEOUTS.fetch}; pg-pool:
                               ${POOL_IDLE_TIMEOUTS.pg}, idleTimeoutMillis); the plan says whether keepalive is
                               still needed to keep them, and what it is still for
  --json                       print the plan as one JSON object, exact numbers
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
    string: ["middlebox-timeout", "middlebox", "detect-within", "pool-idle-timeout"],
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
  if (flags["pool-idle-timeout"] !== undefined) {
    request.poolIdleTimeoutSeconds = parseInteger(
      "--pool-idle-timeout",
      flags["pool-idle-timeout"],
      POOL_RANGE.min,
      POOL_RANGE.max,
    );
  }
  if (request.middleboxTimeoutSeconds === undefined && request.detectWithinSeconds === undefined) {
    throw new UsageError(
      "give --middlebox-timeout (or --middlebox), --detect-within, or both" +
        (request.poolIdleTimeoutSeconds === undefined
          ? ""
          : ": the pool's timeout alone is not a plan"),
    );
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
      ? JSON.stringify({ ...plan, warnings: planWarnings(plan), apply: applyPlan(plan) }, null, 2)
      : formatPlan(plan).join("\n"),
  );
  if (failed === null) return 0;
  stderr(`plan.ts: cannot write the plan: ${failed}`);
  return 1;
}

if (import.meta.main) Deno.exit(main(Deno.args));

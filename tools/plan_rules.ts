/**
 * # The planner's rules: keepalive settings from a middlebox, a deadline and a pool
 *
 * The computation behind `tools/plan.ts`, without any text: which idle
 * time, interval, count and user timeout keep a connection alive through a
 * middlebox that forgets idle flows and notice a dead peer in time, what
 * they cost, and what a connection pool's own idle timeout changes.
 *
 * 1. **Every probe leaves before the middlebox forgets.** Keepalive counts
 *    in whole seconds and the kernel's timer wheel may fire a timer up to an
 *    eighth late (a 130 s idle time was seen to send its probe at 146 s), so
 *    a probe due at t may leave at t × 9/8, and then needs a moment on the
 *    wire: the ceiling is C = ⌊(timeout − 1) × 8/9⌋ seconds after the last
 *    packet. (An answered probe is traffic too: it restarts both clocks.)
 * 2. **Three probes, and a lost one does not lose the flow.** A dead peer is
 *    declared after `count` unanswered probes (three; fewer only when the
 *    deadline leaves no room). The retries of a lost probe are due by the
 *    ceiling too: idle + interval × L ≤ C, where L, the probes that may be
 *    lost in a row, is count − 1 where there is room (1 s per retry).
 * 3. **The cheapest plan that keeps the flow, then the deadline.** Without a
 *    deadline: interval = C / 10 (the retries spread over a tenth of the
 *    ceiling, so a blip of a few seconds is not a dead peer), idle = the
 *    rest, C − interval × L. A deadline D that plan already meets changes
 *    nothing. A tighter one: interval = the smaller of C / 10 and
 *    ⌊D / (2 × count)⌋; idle = half of D, rounded up, or, once the interval
 *    is C / 10, the rest of D (so a looser deadline never costs more
 *    probes); rule 2 still holds. Without a middlebox there is no ceiling
 *    but the kernel's limit (32,767 s each): interval = ⌊D / (2 × count)⌋,
 *    idle = ⌈D / 2⌉. Worst case = idle + interval × count, from the last
 *    packet heard.
 * 4. **User timeout = the worst case.** `TCP_USER_TIMEOUT` bounds a request
 *    already in flight (keepalive only runs when nothing is), and with
 *    keepalive on it also replaces the count: set to the worst case, both
 *    ways of dying agree.
 * 5. **Cost.** A healthy idle connection sends one probe and gets one answer
 *    every max(idle, interval) seconds: 66-byte frames on IPv4 (86 on IPv6).
 *
 * A pool that closes idle connections itself (fetch's, about 90 s in Deno
 * 2.9; pg-pool's `idleTimeoutMillis`, 10 s by default) needs no keepalive
 * to keep them when it closes them before the middlebox forgets; keepalive
 * is still what notices a path that dies under a parked connection, and the
 * user timeout still bounds a request in flight. See
 * {@linkcode poolAdvice}.
 *
 * @module
 */
import { KEEPALIVE_LIMITS } from "@kakit/keepalive";
import { UsageError } from "./cli.ts";

/** A middlebox that forgets idle flows, with where its timeout is documented. */
export interface Middlebox {
  /** Its name, for people. */
  name: string;
  /** Seconds of silence after which it forgets a flow (its default, when it can be changed). */
  timeoutSeconds: number;
  /** What else it can be set to, in the provider's words; absent when fixed. */
  configurable?: string;
  /** The page that documents the timeout. */
  source: string;
}

/**
 * Middleboxes that forget idle flows, and after how long, each with the page
 * that says so. A configurable timeout is listed at its default: if yours
 * was changed, give `--middlebox-timeout` instead.
 *
 * @example
 * ```ts
 * import { MIDDLEBOXES } from "./plan_rules.ts";
 * MIDDLEBOXES["gcp-cloud-nat"].timeoutSeconds; // 1200
 * ```
 */
export const MIDDLEBOXES: Readonly<Record<string, Middlebox>> = {
  "aws-nat-gateway": {
    name: "AWS NAT gateway",
    timeoutSeconds: 350,
    source: "https://docs.aws.amazon.com/vpc/latest/userguide/nat-gateway-troubleshooting.html",
  },
  "aws-nlb": {
    name: "AWS Network Load Balancer",
    timeoutSeconds: 350,
    configurable: "60-6000 s; TLS listeners fixed",
    source:
      "https://docs.aws.amazon.com/elasticloadbalancing/latest/network/update-idle-timeout.html",
  },
  "azure-lb": {
    name: "Azure Load Balancer",
    timeoutSeconds: 240,
    configurable: "4-100 min",
    source: "https://learn.microsoft.com/azure/load-balancer/load-balancer-tcp-idle-timeout",
  },
  "azure-nat-gateway": {
    name: "Azure NAT gateway",
    timeoutSeconds: 240,
    configurable: "4-120 min",
    source: "https://learn.microsoft.com/azure/nat-gateway/nat-gateway-resource#tcp-idle-timeout",
  },
  "gcp-firewall": {
    name: "GCP firewall connection tracking",
    timeoutSeconds: 600,
    source: "https://cloud.google.com/firewall/docs/firewalls#specifications",
  },
  "gcp-cloud-nat": {
    name: "GCP Cloud NAT",
    timeoutSeconds: 1200,
    configurable: "--tcp-established-idle-timeout",
    source: "https://cloud.google.com/nat/docs/tune-nat-configuration#nat-timeouts",
  },
  "docker-swarm": {
    name: "Docker Swarm routing mesh, IPVS",
    timeoutSeconds: 900,
    configurable: "ipvsadm --set",
    source: "https://github.com/moby/moby/issues/31208",
  },
  "linux-conntrack": {
    name: "Linux conntrack",
    timeoutSeconds: 432_000,
    configurable: "sysctl nf_conntrack_tcp_timeout_established",
    source: "https://docs.kernel.org/networking/nf_conntrack-sysctl.html",
  },
};

/** Idle timeouts of the pools the kit meets, in seconds, with where they come from. */
export const POOL_IDLE_TIMEOUTS = {
  /** fetch in Deno 2.9.6: measured on loopback (docs/planner.md); `Deno.createHttpClient({ poolIdleTimeout })` changes it. */
  fetch: 90,
  /** pg-pool's `idleTimeoutMillis` default, 10,000 ms. */
  pg: 10,
} as const;

/** What the plan is for. A middlebox timeout or a deadline is given, or both. */
export interface PlanRequest {
  /** Seconds after which the strictest middlebox on the path forgets an idle flow. */
  middleboxTimeoutSeconds?: number;
  /** Its name, when it came from {@linkcode MIDDLEBOXES}. */
  middleboxName?: string;
  /** Seconds within which a dead peer must be noticed, counted from its last packet. */
  detectWithinSeconds?: number;
  /** Seconds after which the connection pool closes an idle connection itself. */
  poolIdleTimeoutSeconds?: number;
}

/**
 * Whether keepalive is what keeps a parked connection through the
 * middlebox: `"no"` when the pool closes it first, even late; `"maybe"`
 * when only a pool that closes on time does (pg-pool: one timer per
 * connection) and a late one does not (fetch's pool checks every idle
 * timeout, so it may keep one up to twice that); `"yes"` when the pool
 * keeps it longer than the middlebox does.
 */
export type KeepaliveNeed = "no" | "maybe" | "yes";

/** What a pool's own idle timeout means for keepalive. Times in seconds. */
export interface PoolAdvice {
  /** The pool's idle timeout, as given. */
  idleTimeoutSeconds: number;
  /** The latest a parked connection is closed: twice the timeout, for a pool that checks every timeout. */
  closedBySeconds: number;
  /** Whether keepalive keeps parked connections through the middlebox; null without one. */
  keepaliveNeededToKeep: KeepaliveNeed | null;
  /** Whether a parked connection is probed before the pool may close it (idle below the pool's timeout). */
  probesParked: boolean;
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
  /** A healthy idle connection sends one probe (and gets one answer) this often: max(idle, interval). */
  probeEverySeconds: number;
  /** Probes a healthy idle connection sends per hour (each gets an answer), unrounded. */
  probesPerHour: number;
  /** Bytes on an Ethernet link per connection per hour, probes and answers, IPv4 (IPv6 is 86/66 of it). */
  bytesPerHourIPv4: number;
  /** What the pool's idle timeout changes; null when none was given. */
  pool: PoolAdvice | null;
}

/** A probe or its answer on the wire: Ethernet 14 + IPv4 20 (IPv6 40) + TCP 20 + timestamps 12 bytes. */
export const FRAME_BYTES_IPV4 = 66;
/** The kernel's largest idle time and interval, in seconds (`TCP_KEEPIDLE`, `TCP_KEEPINTVL`). */
export const MAX_KEEPALIVE_SECONDS = KEEPALIVE_LIMITS.time.max / 1000;
const MAX_IDLE = MAX_KEEPALIVE_SECONDS;
const MAX_INTERVAL = KEEPALIVE_LIMITS.interval.max / 1000;
const COUNT = 3;

/**
 * Rule 1's ceiling: the latest a probe may be due, in seconds after the last
 * packet, so that it leaves (up to an eighth late) and arrives before a
 * middlebox with this timeout forgets the flow.
 *
 * @example
 * ```ts
 * import { probeCeiling } from "./plan_rules.ts";
 * probeCeiling(350); // 310
 * ```
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
 * import { planKeepAlive } from "./plan_rules.ts";
 * const plan = planKeepAlive({ middleboxTimeoutSeconds: 350, detectWithinSeconds: 60 });
 * // plan.idleSeconds 30, plan.intervalSeconds 10, plan.count 3, plan.userTimeoutSeconds 60
 * ```
 */
export function planKeepAlive(request: PlanRequest): Plan {
  const { middleboxTimeoutSeconds: timeout, detectWithinSeconds: deadline } = request;
  checkRequest(request);
  // Room for idle 1 s and count probes 1 s apart within the deadline.
  const count = deadline === undefined ? COUNT : Math.min(COUNT, deadline - 1);
  const ceiling = timeout === undefined ? null : probeCeiling(timeout);
  const { idle, interval, lost } = settingsFor(ceiling, count, deadline);
  const worst = idle + interval * count;
  const period = Math.max(idle, interval);
  const plan: Plan = {
    request,
    idleSeconds: idle,
    idleCeilingSeconds: ceiling,
    intervalSeconds: interval,
    count,
    lostProbesSurvived: lost,
    userTimeoutSeconds: worst,
    worstCaseDetectionSeconds: worst,
    probeEverySeconds: period,
    probesPerHour: 3600 / period,
    bytesPerHourIPv4: Math.round(3600 / period * 2 * FRAME_BYTES_IPV4),
    pool: null,
  };
  plan.pool = poolAdvice(plan);
  return plan;
}

// The requests no plan can meet, each refused with what is possible.
function checkRequest(request: PlanRequest): void {
  const { middleboxTimeoutSeconds: timeout, detectWithinSeconds: deadline } = request;
  if (timeout === undefined && deadline === undefined) {
    throw new UsageError("give --middlebox-timeout (or --middlebox), --detect-within, or both");
  }
  if (timeout !== undefined && probeCeiling(timeout) < 1) {
    throw new UsageError(
      `keepalive cannot keep a flow alive through a middlebox that forgets it after ` +
        `${timeout} s: a probe is due 1 s after the last packet at the soonest, and may leave ` +
        `an eighth late, so the timeout must be at least 3 s`,
    );
  }
  if (deadline !== undefined && deadline < 2) {
    throw new UsageError(
      `a dead peer cannot be noticed within ${deadline} s: the least keepalive can do is ` +
        `2 s (idle 1 s, then 1 probe after 1 s)`,
    );
  }
  const pool = request.poolIdleTimeoutSeconds;
  if (pool !== undefined && !(Number.isInteger(pool) && pool >= 1)) {
    throw new UsageError(`a pool's idle timeout is a whole number of seconds, not ${pool}`);
  }
}

interface Settings {
  idle: number;
  interval: number;
  lost: number | null;
}

// Rules 1 to 3: the plan that keeps the flow for the least cost, unless the
// deadline asks for more. Without a middlebox (ceiling null), the kernel's
// limits are the only ceiling, and only the deadline shapes the plan.
function settingsFor(ceiling: number | null, count: number, deadline?: number): Settings {
  const limit = ceiling ?? Infinity;
  // Rule 2: the probes that may be lost in a row, each retry 1 s or more.
  const lost = ceiling === null ? null : Math.min(count - 1, ceiling - 1);
  const retries = lost ?? 0;
  const roomPerRetry = retries > 0 ? Math.floor((limit - 1) / retries) : Infinity;
  // The retries spread over a tenth of what idle can reach: the ceiling, or
  // the kernel's limit when the middlebox is slower than that.
  const spread = ceiling === null ? Infinity : Math.round(Math.min(ceiling, MAX_IDLE) / 10);
  const settle = (wanted: number, idleCap: (interval: number) => number): Settings => {
    const interval = Math.min(MAX_INTERVAL, limit, roomPerRetry, Math.max(1, wanted));
    const idle = Math.min(MAX_IDLE, limit - interval * retries, idleCap(interval));
    return { idle, interval, lost };
  };
  const loose = settle(spread, () => Infinity);
  if (deadline === undefined) return loose;
  // A deadline the plan without one already meets changes nothing.
  if (ceiling !== null && loose.idle + loose.interval * count <= deadline) return loose;
  // Half of it to the probes, at most, and half to the idle time, rounded
  // up, until the interval reaches the spread; then idle takes the rest. So
  // a looser deadline never costs more probes.
  const share = Math.floor(deadline / (2 * count));
  return settle(
    Math.min(spread, share),
    (interval) =>
      Math.min(deadline - interval * count, share < spread ? Math.ceil(deadline / 2) : Infinity),
  );
}

/**
 * What the pool's own idle timeout changes, or null when none was given.
 * A pool closes a parked connection after its idle timeout P; fetch's pool
 * (hyper) checks every P, so it may close one as late as 2P (measured: with
 * `poolIdleTimeout: 1000`, a connection parked 0.6 s after the first closed
 * 1.4 s after its last use). Keepalive is not needed to keep parked
 * connections when even 2P comes before the middlebox forgets.
 *
 * @example
 * ```ts
 * import { planKeepAlive } from "./plan_rules.ts";
 * const plan = planKeepAlive({ middleboxTimeoutSeconds: 350, poolIdleTimeoutSeconds: 90 });
 * plan.pool?.keepaliveNeededToKeep; // "no"
 * ```
 */
export function poolAdvice(plan: Plan): PoolAdvice | null {
  const pool = plan.request.poolIdleTimeoutSeconds;
  if (pool === undefined) return null;
  const timeout = plan.request.middleboxTimeoutSeconds;
  const closedBy = 2 * pool;
  let need: KeepaliveNeed | null = null;
  // The middlebox forgets T s after the last packet; a close must be sent before.
  if (timeout !== undefined) need = closedBy < timeout ? "no" : pool < timeout ? "maybe" : "yes";
  return {
    idleTimeoutSeconds: pool,
    closedBySeconds: closedBy,
    keepaliveNeededToKeep: need,
    probesParked: plan.idleSeconds < pool,
  };
}

/**
 * # Watching keepalive probes without tcpdump
 *
 * The kernel sends keepalive probes by itself, and nothing tells a program
 * when. Its `TCP_INFO` counts them, though: {@linkcode getKeepAliveState}
 * reads it once; {@linkcode watchKeepAlive} looks at one connection now and
 * then and reports each probe, answered or not; {@linkcode watchKeepAliveAll}
 * does the same for every connection of a server's port, in one netlink
 * dump per look. Needs `--allow-ffi`; Linux only.
 *
 * @example
 * ```ts
 * import { setKeepAlive } from "@kakit/keepalive";
 * import { watchKeepAlive } from "@kakit/keepalive/watch";
 *
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 8888 });
 * setKeepAlive(conn, { time: 2_000, interval: 1_000, retries: 3 });
 * const watcher = watchKeepAlive(conn, (event) => console.log(event.kind));
 * // ... when the connection ends:
 * watcher.stop();
 * ```
 *
 * @module
 */

import { isPort, readFields, shown, typeName } from "./_checks.ts";
import {
  emptyState,
  type KeepAliveState,
  type ProbeClock,
  type ProbeEvent,
  probesBetween,
  readTcpInfo,
  readTcpInfoInto,
} from "./_tcp_info.ts";
import { addressBytes } from "./_address.ts";
import { endpointsOf, examine, type KeepAliveConnection, onSocket } from "./descriptor.ts";
import { isValidKeepAliveValue } from "./options.ts";
import { type DiagEntry, SockDiag } from "./sock_diag.ts";
import { probeLimits } from "./sockopt.ts";

export type { KeepAliveState, ProbeEvent, ProbeTiming } from "./_tcp_info.ts";
export type { KeepAliveConnection, NodeSocketLike } from "./descriptor.ts";

/**
 * Reads a connection's live keepalive state from `TCP_INFO`: how many probes
 * are unanswered and how long the peer has been silent. Needs `--allow-ffi`.
 *
 * @example
 * ```ts
 * import { getKeepAliveState } from "@kakit/keepalive";
 *
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 8888 });
 * const { unansweredProbes, sinceLastAckMs } = getKeepAliveState(conn);
 * ```
 */
export function getKeepAliveState(conn: KeepAliveConnection): KeepAliveState {
  return onSocket("read TCP_INFO", conn, readTcpInfo);
}

/**
 * Makes the kernel's keepalive probes visible without tcpdump: polls the
 * connection's `TCP_INFO` every `pollMs` (200 by default) and reports each
 * probe this side sends, answered or not, and each probe of the peer's that
 * it answers. Call `stop()` when the connection ends (it takes one last look);
 * a watcher whose connection has closed also stops by itself, and none keeps
 * the process alive. Needs `--allow-ffi`.
 *
 * How it tells: a probe and its answer are segments without data, so while
 * no data moves, the segments counted in and out are probes and answers.
 * The answer to this side's probe restarts `tcpi_last_ack_recv`;
 * `tcpi_probes` counts this side's probes still unanswered; a segment
 * received that does neither is the peer's probe. It assumes an answer comes
 * back within one look (a round trip shorter than `pollMs`) and at most one
 * probe per look (an interval longer than `pollMs`); otherwise a probe may be
 * reported unanswered and then followed by a `late-answer`. Keepalive only
 * probes a connection with nothing in flight, so a look in which data moved
 * is skipped: a probe in the same look as data (within `pollMs` of it) is
 * not reported. Each event says when it happened ({@linkcode ProbeTiming}):
 * an answer from the kernel's clock, an unanswered probe estimated from the
 * silence and the socket's idle time and interval.
 *
 * Every argument is checked at the call (a `TypeError`): `onEvent` must be a
 * function, and `options` takes `pollMs` only.
 *
 * @example
 * ```ts
 * import { setKeepAlive, watchKeepAlive } from "@kakit/keepalive";
 *
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 8888 });
 * setKeepAlive(conn, { time: 2_000, interval: 1_000, retries: 3 });
 * const watcher = watchKeepAlive(conn, (event) => console.log(event));
 * // { kind: "answered", idleMs: 2003, agoMs: 120, agoFrom: "kernel", windowMs: 200 }
 * // every 2 s while the peer answers
 * // ... and when the connection ends:
 * watcher.stop();
 * ```
 */
export function watchKeepAlive(
  conn: KeepAliveConnection,
  onEvent: (event: ProbeEvent) => void,
  options: { pollMs?: number } = {},
): { stop(): void } {
  checkOnEvent(onEvent);
  const pollMs = checkWatchOptions(options);
  const lookOnce = lookingAt(conn, onEvent);
  let looking = false;
  const look = () => {
    if (looking) return; // stop() called from onEvent, in the middle of this look
    looking = true;
    try {
      if (!lookOnce()) clearInterval(timer);
    } finally {
      looking = false;
    }
  };
  const timer = setInterval(look, pollMs);
  Deno.unrefTimer(timer);
  let stopped = false;
  return {
    // One last look, for a probe since the previous one; once only, so that
    // stop() called from onEvent (during a look) does not look again.
    stop() {
      if (stopped) return;
      stopped = true;
      clearInterval(timer);
      look();
    },
  };
}

// watchKeepAlive's look at one connection: reports what happened since the
// previous look, and returns false once the connection is gone.
function lookingAt(conn: KeepAliveConnection, onEvent: (event: ProbeEvent) => void) {
  // Found once: a closed connection's number may be reused, so each look
  // checks it still is this connection instead of searching again.
  const fd = onSocket("watch keepalive", conn, (fd) => fd);
  const { local, remote } = endpointsOf(conn);
  let previous = onSocket("watch keepalive", conn, readTcpInfo);
  let previousAt = performance.now();
  // Read the limits only when a probe went unanswered: they may have
  // changed since the watch began. (No timer here: getsockopt has none.)
  const clock = (): ProbeClock => ({ ...probeLimits(fd), keepaliveTimerMs: null });
  return (): boolean => {
    let current: KeepAliveState;
    try {
      if (examine(fd, local, remote) !== "match") return false;
      current = readTcpInfo(fd);
    } catch {
      return false; // closed between the two calls
    }
    const now = performance.now();
    probesBetween(previous, current, now - previousAt, clock, onEvent);
    previous = current;
    previousAt = now;
    return true;
  };
}

// watchKeepAlive's options, read once: its pollMs.
function checkWatchOptions(options: unknown): number {
  const { pollMs = 200 } = readFields(
    options,
    ["pollMs"],
    `watchKeepAlive's options must be an object { pollMs? }, not ${typeName(options)}`,
    (key) => `unknown watchKeepAlive option ${JSON.stringify(key)}: it takes pollMs`,
  );
  checkPollMs(pollMs);
  return pollMs;
}

function checkPollMs(pollMs: unknown): asserts pollMs is number {
  if (!Number.isInteger(pollMs) || (pollMs as number) < 10 || (pollMs as number) > 60_000) {
    throw new TypeError(`pollMs must be an integer from 10 to 60000, not ${shown(pollMs)}`);
  }
}

function checkOnEvent(onEvent: unknown): void {
  if (typeof onEvent !== "function") {
    throw new TypeError(`onEvent must be a function, not ${shown(onEvent)}`);
  }
}

/**
 * Which connections {@linkcode watchKeepAliveAll} watches: a server's, by its local address.
 *
 * @example
 * ```ts
 * import { type LocalFilter, watchKeepAliveAll } from "@kakit/keepalive";
 * const filter: LocalFilter = { hostname: "::", port: 8888 }; // IPv6 and IPv4-mapped clients
 * watchKeepAliveAll(filter, (event, remote) => console.log(remote, event.kind), {
 *   limits: { retries: 9, userTimeout: 0 },
 * });
 * ```
 */
export interface LocalFilter {
  /** The local port: a server's listening port. */
  port: number;
  /**
   * The address the server listens on, `0.0.0.0` and `::` included: only
   * connections to it are watched, and it says which address family to ask
   * the kernel for (`::` takes IPv4 clients as IPv4-mapped IPv6). Left out:
   * every address, both families.
   */
  hostname?: string;
  /**
   * Taken so that a TCP listener's `addr` can be passed as it is; anything
   * but `"tcp"` is refused.
   */
  transport?: Deno.NetAddr["transport"];
}

/**
 * The options of {@linkcode watchKeepAliveAll}.
 *
 * @example
 * ```ts
 * import { getKeepAlive, type WatchAllOptions } from "@kakit/keepalive";
 * const listener = Deno.listen({ port: 8888 });
 * const options: WatchAllOptions = {
 *   limits: getKeepAlive(listener),
 *   pollMs: 500,
 *   onError: (error) => console.error("watching stopped:", error),
 * };
 * ```
 */
export interface WatchAllOptions {
  /** How often to look, in ms: 10..60000, 1000 by default. */
  pollMs?: number;
  /**
   * The connections' settings, which `tcp_info` does not carry: what the
   * listener holds, as `getKeepAlive` returns it (accepted
   * connections inherit it). `retries` and `userTimeout` are needed;
   * `interval` (and `time`) let each unanswered probe be timed from the
   * kernel's keepalive timer ({@linkcode ProbeTiming}). They only time
   * events, so any number is taken (a namespace's sysctl may hold values a
   * socket option could not).
   */
  limits: {
    retries: number;
    userTimeout: number;
    time?: number;
    interval?: number;
    enabled?: boolean;
  };
  /** Gets a failed look (the watcher has stopped); by default it is thrown from the timer. */
  onError?: (error: unknown) => void;
}

/**
 * Watches the keepalive probes of every established connection on a local
 * port (a server's), like {@linkcode watchKeepAlive} does for one, but in one
 * batch: each look is one `NETLINK_SOCK_DIAG` dump per address family
 * (`@kakit/keepalive/sock-diag`), answered with every matching socket's
 * `tcp_info`, so a look at 10,000 connections costs a few hundred system
 * calls instead of 20,000, and idle connections cost no timer of their own.
 * `onEvent` gets each probe with the connection's remote address (formatted
 * as Deno formats `conn.remoteAddr`), and when it happened
 * ({@linkcode ProbeTiming}). It sees every socket on that local address in
 * the network namespace, whichever process holds it (a server shares its
 * port with nobody, unless with `reusePort`).
 *
 * `limits` are the connections' settings, which `tcp_info` does not carry:
 * pass what the listener holds (`getKeepAlive(listener)`; accepted
 * connections inherit it). A look every `pollMs` (default 1000) reports each
 * answered probe when probes on a connection are at least `pollMs` apart,
 * and every unanswered one. The timer does not keep the program alive;
 * `stop()` takes one last look. A look that fails (the netlink socket
 * refused) stops the watcher and goes to `onError` (by default, thrown from
 * the timer).
 *
 * Every argument is checked at the call, with a `TypeError`: the filter
 * takes `port`, `hostname` (and a listener's `transport: "tcp"`) and nothing
 * else, since a misspelt key would widen it to every address; `onEvent` and
 * `onError` must be functions; the options and the limits take their own
 * fields only. Each is read once. Needs `--allow-ffi`; Linux only.
 *
 * @example
 * ```ts
 * import { getKeepAlive, setKeepAlive, watchKeepAliveAll } from "@kakit/keepalive";
 *
 * const listener = Deno.listen({ port: 8888 });
 * setKeepAlive(listener, { time: 2_000, interval: 2_000, retries: 3 });
 * const watcher = watchKeepAliveAll(
 *   listener.addr, // { hostname: "0.0.0.0", port: 8888 }: IPv4 only, every address
 *   (event, remote) => console.log(remote.hostname, remote.port, event),
 *   { limits: getKeepAlive(listener) },
 * );
 * // ... at shutdown:
 * watcher.stop();
 * ```
 */
export function watchKeepAliveAll(
  filter: LocalFilter,
  onEvent: (event: ProbeEvent, remote: Deno.NetAddr) => void,
  options: WatchAllOptions,
): { stop(): void } {
  const { port, local, families } = checkLocalFilter(filter);
  checkOnEvent(onEvent);
  const { pollMs, limits, onError } = checkWatchAllOptions(options);
  const diag = new SockDiag(); // fails here, not in the timer, without --allow-ffi
  const lookOnce = lookingAtAll(diag, { localPort: port, families }, local, limits, onEvent);
  let looking = false;
  const look = () => {
    if (looking) return; // stop() called from onEvent, in the middle of this look
    looking = true;
    try {
      lookOnce();
    } finally {
      looking = false;
    }
  };
  look();
  return watchEvery(pollMs, look, () => diag.close(), onError);
}

// watchKeepAliveAll's look at every connection on the port: one dump, and
// what happened on each connection since the previous look.
function lookingAtAll(
  diag: SockDiag,
  which: { localPort: number; families: ("ipv4" | "ipv6")[] },
  local: Uint8Array | null,
  limits: Omit<ProbeClock, "keepaliveTimerMs">,
  onEvent: (event: ProbeEvent, remote: Deno.NetAddr) => void,
): () => void {
  // The last look at each connection, by the kernel's cookie for its socket,
  // updated in place (10,000 connections: no new objects each look), and
  // the look that last saw it, so that connections gone since are dropped.
  const previous = new Map<number, KeepAliveState & { look: number }>();
  let previousAt = performance.now();
  let looks = 0;
  const current = emptyState();
  // The socket being looked at, for the two callbacks below (made once,
  // not once per socket per look).
  let entry: DiagEntry;
  const clock = (): ProbeClock => ({
    ...limits,
    keepaliveTimerMs: entry.timer === "keepalive" ? entry.timerMs : null,
  });
  const report = (event: ProbeEvent) => onEvent(event, entry.remote());
  const filter = { ...which, states: ["established"] as const };
  return () => {
    const now = performance.now();
    const elapsedMs = now - previousAt;
    const thisLook = ++looks;
    diag.forEachTcpSocket(filter, (visited) => {
      entry = visited;
      if (local && !entry.localAddressIs(local)) return;
      if (!readTcpInfoInto(entry, current)) return;
      const key = entry.cookieNumber;
      const before = previous.get(key);
      if (!before) {
        previous.set(key, { ...current, look: thisLook });
        return;
      }
      probesBetween(before, current, elapsedMs, clock, report);
      Object.assign(before, current);
      before.look = thisLook;
    });
    for (const [key, state] of previous) if (state.look !== thisLook) previous.delete(key);
    previousAt = now;
  };
}

// Runs `look` every `pollMs` (unref'd) until stop(), which looks once more;
// a look that throws stops it and goes to `onError` (or is thrown).
function watchEvery(
  pollMs: number,
  look: () => void,
  close: () => void,
  onError: ((error: unknown) => void) | undefined,
): { stop(): void } {
  let stopped = false;
  const timer = setInterval(() => {
    try {
      look();
    } catch (error) {
      stopped = true;
      clearInterval(timer);
      close();
      if (!onError) throw error;
      onError(error);
    }
  }, pollMs);
  Deno.unrefTimer(timer);
  return {
    stop() {
      if (stopped) return;
      stopped = true;
      clearInterval(timer);
      try {
        look();
      } finally {
        close();
      }
    },
  };
}

// watchKeepAliveAll's filter, each field read once: the port, the local
// address to compare (null for every address, a wildcard's too), and which
// address families to ask for. A listener on an IPv4 address has IPv4
// sockets only; one on an IPv6 address (`::` too) has IPv6 sockets, its
// IPv4 clients' among them (IPv4-mapped). Each family asked for is a walk of
// the kernel's whole table.
function checkLocalFilter(filter: unknown): {
  port: number;
  local: Uint8Array | null;
  families: ("ipv4" | "ipv6")[];
} {
  const { port, hostname, transport } = readFields(
    filter,
    ["port", "hostname", "transport"],
    `the filter must be an object { port, hostname? } (a listener's addr), not ${typeName(filter)}`,
    (key) => `unknown filter key ${JSON.stringify(key)}: it takes port and hostname`,
  );
  if (transport !== undefined && transport !== "tcp") {
    throw new TypeError(`the filter is a TCP address: transport "tcp", not ${shown(transport)}`);
  }
  if (!isPort(port)) {
    throw new TypeError(`port must be an integer from 1 to 65535, not ${shown(port)}`);
  }
  if (hostname === undefined) return { port, local: null, families: ["ipv4", "ipv6"] };
  const bytes = typeof hostname === "string" ? addressBytes(hostname) : null;
  if (bytes === null) {
    throw new TypeError(
      `hostname must be an IP address, as the listener's addr.hostname is, not ${shown(hostname)}`,
    );
  }
  const text = hostname as string;
  return {
    port,
    local: isWildcard(bytes) ? null : bytes,
    families: text.includes(":") ? ["ipv6"] : ["ipv4"],
  };
}

// watchKeepAliveAll's options and limits, each field read once.
function checkWatchAllOptions(options: unknown): {
  pollMs: number;
  limits: Omit<ProbeClock, "keepaliveTimerMs">;
  onError?: (error: unknown) => void;
} {
  const { pollMs = 1000, limits, onError } = readFields(
    options,
    ["pollMs", "limits", "onError"],
    `watchKeepAliveAll's options must be an object { limits, pollMs?, onError? }, not ${
      typeName(options)
    }`,
    (key) =>
      `unknown watchKeepAliveAll option ${
        JSON.stringify(key)
      }: it takes limits, pollMs and onError`,
  );
  checkPollMs(pollMs);
  if (onError !== undefined && typeof onError !== "function") {
    throw new TypeError(`onError must be a function, not ${shown(onError)}`);
  }
  return {
    pollMs,
    limits: checkLimits(limits),
    onError: onError as ((error: unknown) => void) | undefined,
  };
}

// watchKeepAliveAll's limits, each field read once.
function checkLimits(limits: unknown): Omit<ProbeClock, "keepaliveTimerMs"> {
  const usage =
    "limits must be { retries, userTimeout, time?, interval? }, as getKeepAlive returns them";
  const { retries, userTimeout, time, interval, enabled } = readFields(
    limits,
    ["retries", "userTimeout", "time", "interval", "enabled"],
    usage,
    (key) => `${usage}: not ${JSON.stringify(key)}`,
  );
  const number = (value: unknown) => value === undefined || Number.isFinite(value);
  if (
    !isValidKeepAliveValue("retries", retries) ||
    !isValidKeepAliveValue("userTimeout", userTimeout) ||
    !number(time) || !number(interval) || (enabled !== undefined && typeof enabled !== "boolean")
  ) {
    throw new TypeError(usage);
  }
  return {
    retries: retries as number,
    userTimeout: userTimeout as number,
    time: time as number | undefined,
    interval: interval as number | undefined,
  };
}

// Whether 16 address bytes are a wildcard: `::`, or `0.0.0.0` (IPv4-mapped).
function isWildcard(bytes: Uint8Array): boolean {
  return bytes.every((b) => b === 0) ||
    (bytes.subarray(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff &&
      bytes.subarray(12).every((b) => b === 0));
}

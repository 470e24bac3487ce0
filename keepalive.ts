/**
 * # Per-connection TCP keepalive for Deno, on Linux
 *
 * `conn.setKeepAlive(true)` only switches `SO_KEEPALIVE` on: the first probe
 * then waits for the system's `tcp_keepalive_time` (7200 s by default), and
 * a dead peer is noticed after more than two hours. Go (`net.KeepAliveConfig`)
 * and Rust (`socket2::TcpKeepalive`) set the idle time, the probe interval
 * and the probe count per connection; Deno does not yet (denoland/deno issue
 * 35634, pull request 35636). This module does, on Linux, through FFI:
 *
 * ```ts ignore
 * import { setKeepAlive } from "./keepalive.ts";
 *
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 8888 });
 * // First probe after 10 s of silence, then every 2 s; dead after 3 unanswered.
 * setKeepAlive(conn, { time: 10_000, interval: 2_000, retries: 3 });
 * ```
 *
 * The options are shaped like the upstream proposal (`time`, `interval`,
 * `retries`, times in milliseconds), plus `userTimeout` (`TCP_USER_TIMEOUT`),
 * which bounds how long data may stay unacknowledged before the connection
 * fails: keepalive only runs while nothing is in flight.
 *
 * Errors follow Go's: a setter reports the system call and its errno, and
 * each public call wraps that once, with what it was doing and the socket's
 * addresses ({@linkcode KeepAliveError}).
 *
 * Permissions: `--allow-ffi` (and `--allow-net` for the connection itself).
 * Deno does not expose a socket's file descriptor, so this module finds it
 * with `getsockname`/`getpeername` on the process's descriptors, matched
 * against `conn.localAddr` and `conn.remoteAddr`: one scan per connection or
 * listener, no `/proc` (which Deno refuses without `--allow-all`). Options
 * set on a listener are inherited by every connection it accepts, so a
 * server tunes its listener once and accepts at no extra cost.
 *
 * - https://man7.org/linux/man-pages/man7/tcp.7.html (TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, TCP_USER_TIMEOUT, TCP_INFO)
 * - https://docs.deno.com/api/deno/~/Deno.dlopen
 *
 * @module
 */

/**
 * Keepalive settings for one socket. Times are in milliseconds, like the
 * upstream Deno proposal, but the kernel counts keepalive times in whole
 * seconds: `time` and `interval` must be whole seconds (a multiple of 1000);
 * anything else is refused with a `TypeError`, never rounded. A field left
 * out keeps the socket's current value (the system's sysctl by default).
 */
export interface KeepAliveOptions {
  /** Idle time before the first probe (`TCP_KEEPIDLE`): 1000..32767000 ms, whole seconds. */
  time?: number;
  /** Time between unanswered probes (`TCP_KEEPINTVL`): 1000..32767000 ms, whole seconds. */
  interval?: number;
  /** Unanswered probes before the connection fails with ETIMEDOUT (`TCP_KEEPCNT`): 1..127. */
  retries?: number;
  /**
   * How long sent data may stay unacknowledged before the connection fails
   * with ETIMEDOUT (`TCP_USER_TIMEOUT`): 0..2147483647 ms, 0 meaning the
   * system's retransmission limit (about 15 minutes). With keepalive on, it
   * also replaces `retries` (tcp(7)): once a probe is unanswered, the
   * connection fails when the peer has been silent this long.
   */
  userTimeout?: number;
}

/** What the kernel holds for a socket, read back with `getsockopt`. Times in milliseconds. */
export interface KeepAliveSettings {
  /** Whether `SO_KEEPALIVE` is on. */
  enabled: boolean;
  /** `TCP_KEEPIDLE`, in ms. */
  time: number;
  /** `TCP_KEEPINTVL`, in ms. */
  interval: number;
  /** `TCP_KEEPCNT`. */
  retries: number;
  /** `TCP_USER_TIMEOUT`, in ms (0: the system's default). */
  userTimeout: number;
}

/** A TCP connection or listener, as Deno hands them out. */
export type TcpSocket = Deno.TcpConn | Deno.TcpListener;

// Linux constants (x86_64 and arm64 alike).
const SOL_SOCKET = 1, SO_TYPE = 3, SO_KEEPALIVE = 9, SO_ACCEPTCONN = 30, SOCK_STREAM = 1;
const EBADF = 9, ENOTCONN = 107;
const IPPROTO_TCP = 6, TCP_KEEPIDLE = 4, TCP_KEEPINTVL = 5, TCP_KEEPCNT = 6;
const TCP_INFO = 11, TCP_USER_TIMEOUT = 18;
const TCP_ESTABLISHED = 1;
const AF_INET = 2, AF_INET6 = 10, RLIMIT_NOFILE = 7;
const ERRNO_NAMES: Record<number, string> = {
  1: "EPERM",
  9: "EBADF",
  13: "EACCES",
  22: "EINVAL",
  88: "ENOTSOCK",
  92: "ENOPROTOOPT",
  107: "ENOTCONN",
};

/**
 * The values each option may take, in the options' own units: the per-socket
 * limits of Linux (include/net/tcp.h: `MAX_TCP_KEEPIDLE`, `MAX_TCP_KEEPINTVL`,
 * `MAX_TCP_KEEPCNT`; `TCP_USER_TIMEOUT` is an int of milliseconds). Outside
 * them `setsockopt` fails with EINVAL. The kernel counts keepalive times in
 * whole seconds, so `time` and `interval` must be multiples of 1000 ms.
 *
 * @example
 * ```ts
 * import { KEEPALIVE_LIMITS } from "./keepalive.ts";
 * KEEPALIVE_LIMITS.retries; // { min: 1, max: 127, multipleOf: 1 }
 * ```
 */
export const KEEPALIVE_LIMITS = {
  time: { min: 1_000, max: 32_767_000, multipleOf: 1_000 },
  interval: { min: 1_000, max: 32_767_000, multipleOf: 1_000 },
  retries: { min: 1, max: 127, multipleOf: 1 },
  userTimeout: { min: 0, max: 2_147_483_647, multipleOf: 1 },
} as const;

/** The name of one keepalive option: `time`, `interval`, `retries` or `userTimeout`. */
export type KeepAliveOption = keyof typeof KEEPALIVE_LIMITS;

/**
 * Whether `value` is one the kernel takes for `option`: an integer within
 * {@linkcode KEEPALIVE_LIMITS}, whole seconds for the times. This is the one
 * range check of the kit: {@linkcode setKeepAlive} uses it, and so do the
 * command-line flags in `keepalive_flags.ts`.
 *
 * @example
 * ```ts
 * import { isValidKeepAliveValue } from "./keepalive.ts";
 * isValidKeepAliveValue("time", 1_500); // false: the kernel counts whole seconds
 * ```
 */
export function isValidKeepAliveValue(option: KeepAliveOption, value: unknown): boolean {
  const { min, max, multipleOf } = KEEPALIVE_LIMITS[option];
  return typeof value === "number" && Number.isInteger(value) && value % multipleOf === 0 &&
    value >= min && value <= max;
}

/**
 * A system call on a socket failed: `syscall` (with the option it set or
 * read) and the errno it answered, as `code` (`"EINVAL"`) and `errno` (22).
 */
export class SyscallError extends Error {
  /** Makes the error for `syscall` from the errno the C library left. */
  constructor(
    /** The call and its option, e.g. `setsockopt TCP_KEEPIDLE=5`. */
    readonly syscall: string,
    /** The errno number. */
    readonly errno: number,
    /** The errno's name, e.g. `EINVAL`. */
    readonly code: string = ERRNO_NAMES[errno] ?? `errno ${errno}`,
  ) {
    super(`${syscall}: ${code}${errno > 0 ? ` (${strerror(errno)})` : ""}`);
    this.name = "SyscallError";
  }
}

/**
 * A keepalive call failed on one socket: like Go's `net.OpError`, the
 * message says what was done (`op`), on which socket (its local and remote
 * addresses), and why; `cause` holds the error underneath (a
 * {@linkcode SyscallError} for a failed system call) and `code` its errno
 * name, so `error.code === "EINVAL"` works without parsing the message.
 */
export class KeepAliveError extends Error {
  /** The errno name of the cause (`EINVAL`, `EBADF`...), or `""` when it has none. */
  readonly code: string;
  /** Wraps `cause`, which happened while doing `op` on `socket`. */
  constructor(
    /** What was being done: `set keepalive`, `get keepalive`, `read TCP_INFO`, `watch keepalive`. */
    readonly op: string,
    /** The socket's local address, `host:port`. */
    readonly local: string,
    /** The socket's peer, `host:port`, or null for a listener. */
    readonly remote: string | null,
    cause: Error,
  ) {
    super(
      `${op} ${remote === null ? `listener ${local}` : `${local}->${remote}`}: ${cause.message}`,
      {
        cause,
      },
    );
    this.name = "KeepAliveError";
    this.code = String((cause as { code?: unknown }).code ?? "");
  }
}

/**
 * Turns keepalive on (or off, with `false`) for a connection or a listener,
 * and applies the given times. On a listener, every connection it accepts
 * afterwards inherits the settings.
 *
 * Every value is checked before anything is set: a bad one throws a
 * `TypeError` naming the field and its range, and leaves the socket as it
 * was. A system call that fails throws a {@linkcode KeepAliveError} (the
 * operation, the socket's addresses, `code` such as `EINVAL`, and the
 * {@linkcode SyscallError} as `cause`). Needs `--allow-ffi` (without it:
 * `Deno.errors.NotCapable`); Linux only ({@linkcode UnsupportedSystemError}).
 *
 * @example
 * ```ts ignore
 * import { setKeepAlive } from "./keepalive.ts";
 *
 * const listener = Deno.listen({ port: 8888 });
 * setKeepAlive(listener, { time: 60_000, interval: 10_000, retries: 3, userTimeout: 90_000 });
 * for await (const conn of listener) {
 *   // conn already has keepalive on, with these times.
 * }
 * ```
 */
export function setKeepAlive(socket: TcpSocket, options: boolean | KeepAliveOptions = true): void {
  const settings = validateOptions(options);
  onSocket("set keepalive", socket, (fd) => {
    // One setter per option, in an order that is safe to stop in: the times
    // first, so that keepalive never runs with half of them. The kernel
    // takes the keepalive times in seconds and the user timeout in ms.
    if (settings.time !== undefined) setKeepAliveIdle(fd, settings.time / 1000);
    if (settings.interval !== undefined) setKeepAliveInterval(fd, settings.interval / 1000);
    if (settings.retries !== undefined) setKeepAliveCount(fd, settings.retries);
    if (settings.userTimeout !== undefined) setTcpUserTimeout(fd, settings.userTimeout);
    setKeepAliveEnabled(fd, settings.enabled);
  });
}

/**
 * Sets only `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged
 * before the connection fails with ETIMEDOUT, 0..2147483647 ms (0: the
 * system's retransmission limit, about 15 minutes). Unlike
 * {@linkcode setKeepAlive}, it leaves `SO_KEEPALIVE` as it is: a request
 * in flight is bounded whether or not the socket probes when idle. Errors
 * as for `setKeepAlive`.
 *
 * @example
 * ```ts ignore
 * import { setUserTimeout } from "./keepalive.ts";
 *
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 8888 });
 * setUserTimeout(conn, 10_000); // a write unacknowledged for 10 s fails the connection
 * ```
 */
export function setUserTimeout(socket: TcpSocket, milliseconds: number): void {
  validateOptions({ userTimeout: milliseconds ?? NaN });
  onSocket("set user timeout", socket, (fd) => setTcpUserTimeout(fd, milliseconds));
}

/**
 * Reads back what the kernel holds for a socket. Needs `--allow-ffi`.
 *
 * @example
 * ```ts ignore
 * import { getKeepAlive, setKeepAlive } from "./keepalive.ts";
 *
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 8888 });
 * setKeepAlive(conn, { time: 5_000 });
 * getKeepAlive(conn); // { enabled: true, time: 5000, interval: 75000, retries: 9, userTimeout: 0 }
 * ```
 */
export function getKeepAlive(socket: TcpSocket): KeepAliveSettings {
  return onSocket("get keepalive", socket, (fd) => ({
    enabled: getInt(fd, SOL_SOCKET, SO_KEEPALIVE, "SO_KEEPALIVE") !== 0,
    time: getInt(fd, IPPROTO_TCP, TCP_KEEPIDLE, "TCP_KEEPIDLE") * 1000,
    interval: getInt(fd, IPPROTO_TCP, TCP_KEEPINTVL, "TCP_KEEPINTVL") * 1000,
    retries: getInt(fd, IPPROTO_TCP, TCP_KEEPCNT, "TCP_KEEPCNT"),
    userTimeout: getInt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT"),
  }));
}

/**
 * Whether a failed read is keepalive giving up on the peer, and with which
 * errno: `ETIMEDOUT` when the probes went unanswered, or `ENETUNREACH` /
 * `EHOSTUNREACH` when the last ones could not even be sent (this side lost
 * its route: the kernel then reports that error instead). Null for anything
 * else. A connection that never writes has nothing else that times out.
 * Needs no permission.
 *
 * @example
 * ```ts ignore
 * import { keepAliveGaveUp } from "./keepalive.ts";
 * try {
 *   await conn.read(buffer);
 * } catch (error) {
 *   if (keepAliveGaveUp(error)) console.log("the peer is gone");
 * }
 * ```
 */
export function keepAliveGaveUp(
  error: unknown,
): "ETIMEDOUT" | "ENETUNREACH" | "EHOSTUNREACH" | null {
  if (error instanceof Deno.errors.TimedOut) return "ETIMEDOUT";
  if (error instanceof Deno.errors.NetworkUnreachable) return "ENETUNREACH";
  const code = (error as { code?: unknown } | null)?.code;
  return code === "ENETUNREACH" || code === "EHOSTUNREACH" ? code : null;
}

/** Live keepalive state of a connection, from `TCP_INFO`. */
export interface KeepAliveState {
  /** Whether the connection is established (not closing or closed). */
  established: boolean;
  /** Keepalive probes sent since the peer last answered (`tcpi_probes`). */
  unansweredProbes: number;
  /** Segments sent and not yet acknowledged (`tcpi_unacked`); keepalive waits for 0. */
  unackedSegments: number;
  /** Bytes written but not yet sent (`tcpi_notsent_bytes`); keepalive waits for 0. */
  notSentBytes: number;
  /** Milliseconds since the peer's last ACK, a probe's answer included (`tcpi_last_ack_recv`). */
  sinceLastAckMs: number;
  /** Milliseconds since the peer last sent data (`tcpi_last_data_recv`). */
  sinceLastDataMs: number;
  /** Segments sent on the connection, probes included (`tcpi_segs_out`). */
  segmentsOut: number;
  /** Segments sent that carried data (`tcpi_data_segs_out`). */
  dataSegmentsOut: number;
  /** Segments received (`tcpi_segs_in`). */
  segmentsIn: number;
  /** Segments received that carried data (`tcpi_data_segs_in`). */
  dataSegmentsIn: number;
}

/**
 * Reads a connection's live keepalive state from `TCP_INFO`: how many probes
 * are unanswered and how long the peer has been silent. Needs `--allow-ffi`.
 *
 * @example
 * ```ts ignore
 * import { getKeepAliveState } from "./keepalive.ts";
 *
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 8888 });
 * const { unansweredProbes, sinceLastAckMs } = getKeepAliveState(conn);
 * ```
 */
export function getKeepAliveState(conn: Deno.TcpConn): KeepAliveState {
  return onSocket("read TCP_INFO", conn, readTcpInfo);
}

function readTcpInfo(fd: number): KeepAliveState {
  const info = new Uint8Array(232);
  const length = new Uint32Array([info.length]);
  if (libc().getsockopt(fd, IPPROTO_TCP, TCP_INFO, info, length) !== 0) {
    throw new SyscallError("getsockopt TCP_INFO", errno());
  }
  // Offsets of struct tcp_info in include/uapi/linux/tcp.h.
  const view = new DataView(info.buffer);
  const u32 = (offset: number) => view.getUint32(offset, true);
  return {
    established: view.getUint8(0) === TCP_ESTABLISHED,
    unansweredProbes: view.getUint8(3),
    unackedSegments: u32(24),
    sinceLastDataMs: u32(52),
    sinceLastAckMs: u32(56),
    segmentsOut: u32(136),
    segmentsIn: u32(140),
    notSentBytes: u32(144),
    dataSegmentsIn: u32(152),
    dataSegmentsOut: u32(156),
  };
}

/** What {@linkcode watchKeepAlive} saw happen on a connection. */
export type ProbeEvent =
  | {
    /** This side's kernel sent a keepalive probe and the peer answered it. */
    kind: "answered";
    /** How long the connection had been silent when the probe went out, in ms. */
    idleMs: number;
  }
  | {
    /** This side's kernel sent a keepalive probe that is still unanswered. */
    kind: "unanswered";
    /** Which unanswered probe this is, from 1. */
    probe: number;
    /**
     * How many unanswered probes end the connection (`TCP_KEEPCNT`), or null
     * when a user timeout decides instead (then see `userTimeoutMs`).
     */
    of: number | null;
    /** `TCP_USER_TIMEOUT` in ms: the silence after which the connection fails; 0 when unset. */
    userTimeoutMs: number;
  }
  | {
    /** The peer answered at last, after probes already reported as unanswered. */
    kind: "late-answer";
    /** How many probes were unanswered until then. */
    unanswered: number;
  }
  | {
    /** The peer sent a keepalive probe and this side's kernel answered it. */
    kind: "peer-probe";
  };

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
 * not reported.
 *
 * @example
 * ```ts ignore
 * import { setKeepAlive, watchKeepAlive } from "./keepalive.ts";
 *
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 8888 });
 * setKeepAlive(conn, { time: 2_000, interval: 1_000, retries: 3 });
 * const watcher = watchKeepAlive(conn, (event) => console.log(event));
 * // { kind: "answered", idleMs: 2003 } every 2 s while the peer answers
 * // ... and when the connection ends:
 * watcher.stop();
 * ```
 */
export function watchKeepAlive(
  conn: Deno.TcpConn,
  onEvent: (event: ProbeEvent) => void,
  options: { pollMs?: number } = {},
): { stop(): void } {
  // Found once: a closed connection's number may be reused, so each look
  // checks it still is this connection instead of searching again.
  const fd = onSocket("watch keepalive", conn, (fd) => fd);
  const stillOurs = () => examine(fd, conn.localAddr, conn.remoteAddr) === "match";
  let previous = onSocket("watch keepalive", conn, readTcpInfo);
  let previousAt = performance.now();

  const look = () => {
    let current: KeepAliveState;
    try {
      if (!stillOurs()) return clearInterval(timer);
      current = readTcpInfo(fd);
    } catch {
      return clearInterval(timer); // closed between the two calls
    }
    const now = performance.now();
    const elapsedMs = now - previousAt;
    // Keepalive only probes an established connection with nothing in
    // flight and nothing waiting to be sent. A look in which data moved,
    // or the connection began to close (a FIN carries no data either), or
    // data waits (a zero-window probe looks like a keepalive probe) has no
    // keepalive probes to report.
    const quiet = current.established && previous.established &&
      current.unackedSegments === 0 && current.notSentBytes === 0 &&
      current.dataSegmentsIn === previous.dataSegmentsIn &&
      current.dataSegmentsOut === previous.dataSegmentsOut;
    const sent = current.segmentsOut - previous.segmentsOut;
    const received = current.segmentsIn - previous.segmentsIn;
    if (quiet && (sent > 0 || received > 0)) {
      // The answer to our probe is an ACK the kernel accepts, so it restarts
      // tcpi_last_ack_recv, after at least a second of silence. The peer's
      // own probe does not: it repeats an old byte, and the kernel only
      // answers it. (The clock counts in kernel ticks, up to 10 ms.)
      const silentMs = previous.sinceLastAckMs + elapsedMs;
      const answer = received > 0 && current.sinceLastAckMs + 500 < silentMs;
      const peerProbes = answer ? received - 1 : received;
      const ourProbes = sent - peerProbes;
      if (answer && ourProbes > 0) {
        onEvent({ kind: "answered", idleMs: Math.round(silentMs - current.sinceLastAckMs) });
      } else if (answer && previous.unansweredProbes > 0) {
        onEvent({ kind: "late-answer", unanswered: previous.unansweredProbes });
      } else if (current.unansweredProbes > previous.unansweredProbes) {
        // Read the limits now: they may have changed since the watch began.
        // With a user timeout the kernel ignores the probe count (tcp(7)).
        const userTimeoutMs = getInt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT");
        const retries = getInt(fd, IPPROTO_TCP, TCP_KEEPCNT, "TCP_KEEPCNT");
        for (
          let probe = previous.unansweredProbes + 1;
          probe <= current.unansweredProbes;
          probe++
        ) {
          onEvent({
            kind: "unanswered",
            probe,
            of: userTimeoutMs > 0 ? null : retries,
            userTimeoutMs,
          });
        }
      }
      for (let i = 0; i < peerProbes; i++) onEvent({ kind: "peer-probe" });
    }
    previous = current;
    previousAt = now;
  };

  const timer = setInterval(look, options.pollMs ?? 200);
  Deno.unrefTimer(timer);
  return {
    stop() {
      clearInterval(timer);
      look();
    },
  };
}

// --- Checking the options ----------------------------------------------------

type CheckedOptions = KeepAliveOptions & { enabled: boolean };

function validateOptions(options: boolean | KeepAliveOptions): CheckedOptions {
  if (typeof options === "boolean") return { enabled: options };
  if (typeof options !== "object" || options === null || Array.isArray(options)) {
    const what = options === null ? "null" : Array.isArray(options) ? "an array" : typeof options;
    throw new TypeError(`keepalive options must be a boolean or an object, not ${what}`);
  }
  for (const [option, value] of Object.entries(options)) {
    if (!(option in KEEPALIVE_LIMITS)) {
      throw new TypeError(`unknown keepalive option ${JSON.stringify(option)}`);
    }
    if (value === undefined || isValidKeepAliveValue(option as KeepAliveOption, value)) continue;
    const { min, max, multipleOf } = KEEPALIVE_LIMITS[option as KeepAliveOption];
    const shown = typeof value === "string" ? JSON.stringify(value) : String(value);
    throw new TypeError(
      multipleOf === 1000
        ? `${option} must be whole seconds in milliseconds, ${min}..${max} (a multiple of 1000), not ${shown}`
        : `${option} must be an integer from ${min} to ${max}, not ${shown}`,
    );
  }
  return { enabled: true, ...options };
}

// --- One setter per option ---------------------------------------------------
//
// Each reports the system call and its errno; the public calls above add the
// operation and the socket's addresses, once (onSocket).

function setKeepAliveEnabled(fd: number, enabled: boolean) {
  setInt(fd, SOL_SOCKET, SO_KEEPALIVE, enabled ? 1 : 0, "SO_KEEPALIVE");
}

function setKeepAliveIdle(fd: number, seconds: number) {
  setInt(fd, IPPROTO_TCP, TCP_KEEPIDLE, seconds, "TCP_KEEPIDLE");
}

function setKeepAliveInterval(fd: number, seconds: number) {
  setInt(fd, IPPROTO_TCP, TCP_KEEPINTVL, seconds, "TCP_KEEPINTVL");
}

function setKeepAliveCount(fd: number, count: number) {
  setInt(fd, IPPROTO_TCP, TCP_KEEPCNT, count, "TCP_KEEPCNT");
}

function setTcpUserTimeout(fd: number, milliseconds: number) {
  setInt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, milliseconds, "TCP_USER_TIMEOUT");
}

function setInt(fd: number, level: number, option: number, value: number, name: string) {
  if (libc().setsockopt(fd, level, option, new Int32Array([value]), 4) !== 0) {
    throw new SyscallError(`setsockopt ${name}=${value}`, errno());
  }
}

function getInt(fd: number, level: number, option: number, name: string): number {
  const value = new Int32Array(1);
  const length = new Uint32Array([4]);
  if (libc().getsockopt(fd, level, option, value, length) !== 0) {
    throw new SyscallError(`getsockopt ${name}`, errno());
  }
  return value[0];
}

// Runs `fn` on the socket's descriptor. Whatever fails about this socket is
// wrapped once, here, with the operation and the socket's addresses (Go's
// net.OpError); a missing --allow-ffi or an unsupported system is about the
// process, not the socket, and passes through as it is.
function onSocket<T>(op: string, socket: TcpSocket, fn: (fd: number) => T): T {
  try {
    return fn(findDescriptor(socket));
  } catch (error) {
    if (error instanceof Deno.errors.NotCapable || error instanceof UnsupportedSystemError) {
      throw error;
    }
    const [local, remote] = "remoteAddr" in socket
      ? [formatAddr(socket.localAddr), formatAddr(socket.remoteAddr)]
      : [formatAddr(socket.addr), null];
    throw new KeepAliveError(
      op,
      local,
      remote,
      error instanceof Error ? error : new Error(String(error)),
    );
  }
}

// --- Finding the descriptor ----------------------------------------------------

// The descriptor found for each socket object, so that polling TCP_INFO does
// not scan again. It is checked on every use: after a close, the number may
// belong to another socket.
const descriptors = new WeakMap<TcpSocket, number>();
let lastFound = -1;

/**
 * Finds the file descriptor behind a Deno connection or listener: the one
 * TCP socket of this process whose local address (and, for a connection,
 * remote address) match. The first lookup scans the process's descriptors,
 * starting above the last one found (where a newly accepted socket usually
 * is); later ones cost three system calls. Needs `--allow-ffi`.
 *
 * @example
 * ```ts ignore
 * import { socketDescriptor } from "./keepalive.ts";
 * const listener = Deno.listen({ port: 0 });
 * socketDescriptor(listener); // e.g. 11
 * ```
 */
export function socketDescriptor(socket: TcpSocket): number {
  return onSocket("find descriptor", socket, (fd) => fd);
}

function findDescriptor(socket: TcpSocket): number {
  const [local, remote] = "remoteAddr" in socket
    ? [socket.localAddr, socket.remoteAddr]
    : [socket.addr, null];
  const cached = descriptors.get(socket);
  if (cached !== undefined && examine(cached, local, remote) === "match") return cached;
  const found = (fd: number) => {
    descriptors.set(socket, fd);
    lastFound = fd;
    return fd;
  };
  // The kernel hands out the lowest free number, so on a server that keeps
  // accepting, the next socket is usually just above the last one found.
  // Look there first, until 256 numbers in a row are unused (nothing is
  // likely to lie beyond), then from 0 up; only then, rarely, the rest.
  const limit = openFileLimit();
  let fd = lastFound + 1;
  let peerless = false;
  for (let unused = 0; fd < limit && unused < 256; fd++) {
    const what = examine(fd, local, remote);
    if (what === "match") return found(fd);
    peerless ||= what === "peerless";
    unused = what === "unused" ? unused + 1 : 0;
  }
  for (let low = 0; low <= lastFound && low < limit; low++) {
    const what = examine(low, local, remote);
    if (what === "match") return found(low);
    peerless ||= what === "peerless";
  }
  // Everything left lies beyond a run of unused numbers, up to the limit on
  // open files (a million in some containers: seconds of system calls). A
  // reset socket with our address was seen, and ours is almost surely it:
  // do not search further for a connection that is already gone.
  if (peerless) {
    throw new SyscallError("getpeername: the connection was reset before it was found", ENOTCONN);
  }
  for (; fd < limit; fd++) {
    if (examine(fd, local, remote) === "match") return found(fd);
  }
  throw new SyscallError("no descriptor of this process holds this socket (closed?)", EBADF);
}

// What one descriptor number holds, as far as the lookup cares.
function examine(
  fd: number,
  local: Deno.NetAddr,
  remote: Deno.NetAddr | null,
): "match" | "unused" | "peerless" | "other" {
  const c = libc();
  const address = new Uint8Array(128);
  const length = new Uint32Array(1);
  length[0] = address.length;
  if (c.getsockname(fd, address, length) !== 0) return errno() === EBADF ? "unused" : "other";
  if (!sameAddress(address, local)) return "other";
  // A UDP socket can share the address; only a stream socket will do.
  if (getOption(fd, SOL_SOCKET, SO_TYPE) !== SOCK_STREAM) return "other";
  if (remote === null) {
    // An accepted socket has the listener's address too (and, once reset,
    // no peer either): only the listening socket accepts connections.
    return getOption(fd, SOL_SOCKET, SO_ACCEPTCONN) === 1 ? "match" : "other";
  }
  length[0] = address.length;
  if (c.getpeername(fd, address, length) !== 0) {
    // A connected socket with our address whose peer is gone: reset. It may
    // be the one we look for (a listener has no peer either, and is not it).
    const reset = errno() === ENOTCONN && getOption(fd, SOL_SOCKET, SO_ACCEPTCONN) !== 1;
    return reset ? "peerless" : "other";
  }
  return sameAddress(address, remote) ? "match" : "other";
}

// getsockopt for an int, or null when it fails.
function getOption(fd: number, level: number, option: number): number | null {
  const value = new Int32Array(1);
  const length = new Uint32Array([4]);
  return libc().getsockopt(fd, level, option, value, length) === 0 ? value[0] : null;
}

function errno(): number {
  const pointer = libc().__errno_location();
  return pointer ? new Deno.UnsafePointerView(pointer).getInt32() : 0;
}

// A struct sockaddr_in or sockaddr_in6, compared with Deno's view of it.
// Deno prints addresses the way Rust does (RFC 5952), and so does this.
function sameAddress(sockaddr: Uint8Array, addr: Deno.NetAddr): boolean {
  const view = new DataView(sockaddr.buffer);
  const family = view.getUint16(0, true);
  const port = view.getUint16(2, false);
  if (port !== addr.port) return false;
  if (family === AF_INET) return sockaddr.subarray(4, 8).join(".") === addr.hostname;
  if (family !== AF_INET6) return false;
  return formatIPv6(sockaddr.subarray(8, 24)) === addr.hostname;
}

function formatIPv6(bytes: Uint8Array): string {
  const groups = Array.from({ length: 8 }, (_, i) => (bytes[2 * i] << 8) | bytes[2 * i + 1]);
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    return `::ffff:${bytes.subarray(12).join(".")}`;
  }
  let bestStart = -1, bestLength = 1;
  for (let i = 0; i < 8; i++) {
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) [bestStart, bestLength] = [i, j - i];
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLength).join(":")}`;
}

function openFileLimit(): number {
  const limits = new BigUint64Array(2);
  if (libc().getrlimit(RLIMIT_NOFILE, limits) !== 0) return 1024;
  return Number(limits[0] > 1_048_576n ? 1_048_576n : limits[0]);
}

// --- The C library, loaded on first use ------------------------------------------

const LIBC_SYMBOLS = {
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  getpeername: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  getrlimit: { parameters: ["i32", "buffer"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
  strerror: { parameters: ["i32"], result: "pointer" },
} as const;

let loaded: Deno.DynamicLibrary<typeof LIBC_SYMBOLS>["symbols"] | undefined;

// Opening libc needs --allow-ffi, so it happens on the first call that needs
// it, not on import: a script that imports this module but tunes nothing
// still runs with --allow-net alone.
function libc(): Deno.DynamicLibrary<typeof LIBC_SYMBOLS>["symbols"] {
  if (loaded) return loaded;
  if (Deno.build.os !== "linux") throw new UnsupportedSystemError();
  try {
    loaded = Deno.dlopen("libc.so.6", LIBC_SYMBOLS).symbols;
  } catch (error) {
    if (error instanceof Deno.errors.NotCapable) {
      throw new Deno.errors.NotCapable(
        "per-connection keepalive tuning needs the --allow-ffi permission (it calls setsockopt through FFI)",
      );
    }
    throw error;
  }
  return loaded;
}

/** Thrown on a system other than Linux: the socket options and TCP_INFO here are Linux's. */
export class UnsupportedSystemError extends Error {
  /** Says which system this is, and which one the module needs. */
  constructor() {
    super(`per-connection keepalive tuning is Linux only (this is ${Deno.build.os})`);
    this.name = "UnsupportedSystemError";
  }
}

// The C library's text for an errno, e.g. "Invalid argument".
function strerror(code: number): string {
  const pointer = libc().strerror(code);
  return pointer ? Deno.UnsafePointerView.getCString(pointer) : `errno ${code}`;
}

/** `host:port`, with IPv6 hosts in brackets. (server.ts and client.ts each have their own copy.) */
function formatAddr(addr: Deno.NetAddr): string {
  return addr.hostname.includes(":")
    ? `[${addr.hostname}]:${addr.port}`
    : `${addr.hostname}:${addr.port}`;
}

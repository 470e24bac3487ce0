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
 * It takes every kind of socket a Deno program holds ({@linkcode KeepAliveSocket}):
 * Deno's TCP and TLS connections and listeners, a `Deno.serve` server or its
 * `addr`, and `node:net` / `node:tls` sockets and servers, as npm drivers use
 * them. For sockets a library keeps to itself (`fetch()`'s pool, a driver's
 * private connection), {@linkcode setKeepAliveAll} tunes every connection of
 * the process to a given peer.
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

import { type DiagEntry, SockDiag } from "./sock_diag.ts";

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

/**
 * A `node:net` or `node:tls` socket, as far as this module looks at it: its
 * addresses. (`net.Socket` and `tls.TLSSocket` have them once connected.)
 */
export interface NodeSocketLike {
  /** This side's address, once connected. */
  localAddress?: string;
  /** This side's port, once connected. */
  localPort?: number;
  /** The peer's address, once connected. */
  remoteAddress?: string;
  /** The peer's port, once connected. */
  remotePort?: number;
  /** True while a connect is under way. */
  connecting?: boolean;
}

/** A `node:net` or `node:tls` server: its listening address. */
export interface NodeServerLike {
  /** The listening address, or null before `listening` (a string for a Unix socket). */
  address(): { address: string; port: number } | string | null;
}

/** A connection this module can tune and watch: Deno's TCP or TLS, or Node's. */
export type KeepAliveConnection = Deno.TcpConn | Deno.TlsConn | NodeSocketLike;

/**
 * Everything this module can tune: a connection ({@linkcode KeepAliveConnection}),
 * or a listener, whose settings every connection it accepts inherits: Deno's
 * TCP or TLS listener, a `Deno.serve` server or its `addr`, a `node:net` or
 * `node:tls` server.
 *
 * A socket is found by its addresses, so mind what they cannot tell apart:
 * listeners sharing one address with `reusePort` (the first found is
 * tuned); an object whose socket was closed, when a new socket now has the
 * same addresses (the new one is tuned); and a connection's `localAddr`
 * passed alone, which is its listener's address (the listener is tuned).
 */
export type KeepAliveSocket =
  | KeepAliveConnection
  | Deno.TcpListener
  | Deno.TlsListener
  | Deno.HttpServer<Deno.NetAddr>
  | Deno.NetAddr
  | NodeServerLike;

// Linux constants (x86_64 and arm64 alike).
const SOL_SOCKET = 1, SO_TYPE = 3, SO_KEEPALIVE = 9, SO_ACCEPTCONN = 30, SO_PROTOCOL = 38;
const SOCK_STREAM = 1;
const EBADF = 9, ENOTSOCK = 88, ENOPROTOOPT = 92, EOPNOTSUPP = 95, ENOTCONN = 107;
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
  95: "EOPNOTSUPP",
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
 * was. So does a socket of a kind it does not take, or a `node:net` socket
 * that is not connected (yet, or any more): the `TypeError` says which. A system call that fails throws a {@linkcode KeepAliveError} (the
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
export function setKeepAlive(
  socket: KeepAliveSocket,
  options: boolean | KeepAliveOptions = true,
): void {
  const settings = validateOptions(options);
  onSocket("set keepalive", socket, (fd) => applySettings(fd, settings));
}

// One setter per option, in an order that is safe to stop in: the times
// first, so that keepalive never runs with half of them. The kernel takes
// the keepalive times in seconds and the user timeout in ms.
function applySettings(fd: number, settings: CheckedOptions) {
  if (settings.time !== undefined) setKeepAliveIdle(fd, settings.time / 1000);
  if (settings.interval !== undefined) setKeepAliveInterval(fd, settings.interval / 1000);
  if (settings.retries !== undefined) setKeepAliveCount(fd, settings.retries);
  if (settings.userTimeout !== undefined) setTcpUserTimeout(fd, settings.userTimeout);
  setKeepAliveEnabled(fd, settings.enabled);
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
export function setUserTimeout(socket: KeepAliveSocket, milliseconds: number): void {
  validateOptions({ userTimeout: milliseconds ?? NaN });
  onSocket("set user timeout", socket, (fd) => setTcpUserTimeout(fd, milliseconds));
}

/** Which connections {@linkcode setKeepAliveAll} tunes: those to this peer. */
export interface PeerFilter {
  /** The peer's IP address (`10.0.0.5`, `::1`); a host name is refused: resolve it first. */
  hostname?: string;
  /** The peer's port. */
  port?: number;
}

/**
 * Tunes every connected TCP socket of this process (optionally only those to
 * one peer) and returns how many it tuned. This is how to reach connections
 * that a library keeps to itself: `fetch()`'s pool, a database driver's
 * socket. Its limits, honestly:
 *
 * - it tunes the connections that exist when it is called: call it after the
 *   first request, or every so often with {@linkcode setKeepAliveAllEvery};
 * - it cannot tell two libraries talking to the same peer apart, nor your
 *   own sockets from a library's: the filter is all it has;
 * - it looks at descriptors from 0 up and stops after 1,024 unused numbers
 *   in a row (beyond, in a process with huge gaps, it would not look);
 * - another thread (a Worker) shares the descriptors: one it closes and
 *   reuses between the look and the setting can be tuned by mistake, and a
 *   connection it opens meanwhile can be missed;
 * - it blocks while it looks: about 40 µs per connection (6,000
 *   connections, about 0.23 s).
 *
 * Options are checked before anything is set, as for `setKeepAlive`. A
 * connection that closes while it looks is skipped. Needs `--allow-ffi`.
 *
 * @example
 * ```ts ignore
 * import { setKeepAliveAll } from "./keepalive.ts";
 *
 * await fetch("http://10.0.0.5:8080/"); // the pool now holds a connection
 * setKeepAliveAll({ time: 60_000, interval: 10_000, retries: 3 }, { hostname: "10.0.0.5", port: 8080 });
 * // 1
 * ```
 */
export function setKeepAliveAll(
  options: boolean | KeepAliveOptions,
  filter: PeerFilter = {},
): number {
  return tuneAll(validateOptions(options), checkFilter(filter));
}

// setKeepAliveAll with its options and filter already checked (and copied:
// what was checked is what is set, however often it runs).
function tuneAll(settings: CheckedOptions, peer: { bytes?: Uint8Array; port?: number }): number {
  const limit = openFileLimit();
  let tuned = 0;
  for (let fd = 0, unused = 0; fd < limit && unused < 1024; fd++) {
    const what = connectedPeer(fd);
    unused = what === "unused" ? unused + 1 : 0;
    if (typeof what !== "object") continue;
    if (peer.port !== undefined && what.port !== peer.port) continue;
    if (peer.bytes && !what.bytes.every((byte, i) => byte === peer.bytes![i])) continue;
    try {
      applySettings(fd, settings);
      tuned++;
    } catch (error) {
      // Closed meanwhile, its number now free or taken by another kind of
      // file (another thread, a Worker, shares the table): skip it.
      const code = (error as SyscallError).errno;
      if ([EBADF, ENOTCONN, ENOTSOCK, ENOPROTOOPT, EOPNOTSUPP].includes(code)) continue;
      throw new KeepAliveError(
        "set keepalive on all",
        `descriptor ${fd}`,
        formatAddr({ transport: "tcp", hostname: formatBytesAddress(what.bytes), port: what.port }),
        error instanceof Error ? error : new Error(String(error)),
      );
    }
  }
  return tuned;
}

/**
 * Calls {@linkcode setKeepAliveAll} now and then every `everyMs`, so that
 * connections a library opens later are tuned too, until `stop()`. Its timer
 * does not keep the program alive. `tuned()` says how many sockets the last
 * call tuned. A failure stops it and is passed to `onError` (by default,
 * thrown from the timer). The options and the filter are checked and copied
 * once, at the call: changing the objects afterwards changes nothing.
 *
 * @example
 * ```ts ignore
 * import { setKeepAliveAllEvery } from "./keepalive.ts";
 *
 * const tuning = setKeepAliveAllEvery(5_000, { time: 60_000, interval: 10_000, retries: 3 });
 * // ... and at shutdown:
 * tuning.stop();
 * ```
 */
export function setKeepAliveAllEvery(
  everyMs: number,
  options: boolean | KeepAliveOptions,
  filter: PeerFilter = {},
  onError: (error: unknown) => void = (error) => {
    throw error;
  },
): { stop(): void; tuned(): number } {
  if (!Number.isInteger(everyMs) || everyMs < 100 || everyMs > 2_147_483_647) {
    throw new TypeError(`everyMs must be an integer from 100 to 2147483647 ms, not ${everyMs}`);
  }
  if (typeof onError !== "function") throw new TypeError("onError must be a function");
  // Checked and copied once, up front: every call sets what was checked.
  const settings = validateOptions(options);
  const peer = checkFilter(filter);
  let last = tuneAll(settings, peer);
  const timer = setInterval(() => {
    try {
      last = tuneAll(settings, peer);
    } catch (error) {
      clearInterval(timer);
      onError(error);
    }
  }, everyMs);
  Deno.unrefTimer(timer);
  return { stop: () => clearInterval(timer), tuned: () => last };
}

function checkFilter(filter: PeerFilter): { bytes?: Uint8Array; port?: number } {
  // A misspelt key would otherwise widen the filter to every connection.
  const { hostname, port } = readFields(
    filter,
    ["hostname", "port"],
    "the filter must be an object: { hostname?, port? }",
    (key) => `unknown filter key ${JSON.stringify(key)}: it takes hostname and port`,
  );
  if (port !== undefined && !isPort(port)) {
    throw new TypeError(`filter.port must be an integer from 1 to 65535, not ${shown(port)}`);
  }
  if (hostname === undefined) return { port: port as number | undefined };
  if (typeof hostname === "string" && hostname.includes("%")) {
    throw new TypeError(
      `filter.hostname ${JSON.stringify(hostname)}: a zone id cannot be matched (the kernel's ` +
        `socket addresses here carry none); give the address without it`,
    );
  }
  const bytes = typeof hostname === "string" ? addressBytes(hostname) : null;
  if (!bytes) {
    throw new TypeError(
      `filter.hostname must be an IP address (resolve a name first, e.g. with Deno.resolveDns), ` +
        `not ${shown(hostname)}`,
    );
  }
  return { bytes, port: port as number | undefined };
}

// What one descriptor is, for setKeepAliveAll: a connected TCP socket (its
// peer's address), an unused number, or something else.
function connectedPeer(fd: number): { bytes: Uint8Array; port: number } | "unused" | "other" {
  const address = new Uint8Array(128);
  const length = new Uint32Array([address.length]);
  if (libc().getsockname(fd, address, length) !== 0) return errno() === EBADF ? "unused" : "other";
  if (sockaddrAddress(address) === null) return "other"; // not IPv4 or IPv6
  if (getOption(fd, SOL_SOCKET, SO_TYPE) !== SOCK_STREAM) return "other";
  if (getOption(fd, SOL_SOCKET, SO_PROTOCOL) !== IPPROTO_TCP) return "other";
  if (getOption(fd, SOL_SOCKET, SO_ACCEPTCONN) === 1) return "other"; // a listener
  length[0] = address.length;
  if (libc().getpeername(fd, address, length) !== 0) return "other"; // not connected
  return sockaddrAddress(address) ?? "other";
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
export function getKeepAlive(socket: KeepAliveSocket): KeepAliveSettings {
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
export function getKeepAliveState(conn: KeepAliveConnection): KeepAliveState {
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

/**
 * When a {@linkcode ProbeEvent} happened. A watcher only looks now and then
 * (every `pollMs`), so the moment `onEvent` is called is not the moment the
 * probe went out: stamp an event with `Date.now() - event.agoMs`, taken in
 * `onEvent`, not with the time of the call.
 *
 * How it is known (`agoFrom`), by kind:
 *
 * - `answered` and `late-answer`: the answer's arrival, from the kernel's
 *   clock (`tcpi_last_ack_recv`, to a few ms): `"kernel"`. The probe itself
 *   left one round trip earlier.
 * - `unanswered`: with {@linkcode watchKeepAliveAll} given the interval (as
 *   `getKeepAlive` returns it), from the keepalive timer the kernel re-armed,
 *   `interval` ahead, when it sent the probe: `"kernel"`. Otherwise from the silence so far and the socket's idle time
 *   and interval (probe N leaves after `time + (N - 1) * interval` of
 *   silence, or a little later: the kernel's timers fire up to an eighth
 *   late): `"estimate"`, and the probe is at most `agoMs` old. Without the
 *   idle time and interval: `"seen"`.
 * - `peer-probe`: nothing in `tcp_info` records when the peer's probe came:
 *   `"seen"`.
 *
 * `"seen"` means `agoMs` is 0: the event happened at some moment of the
 * `windowMs` before the look, and all that is known is when it was seen.
 */
export interface ProbeTiming {
  /**
   * How long before `onEvent` was called the event happened, in ms (whole,
   * from 0 to `windowMs`): what `agoFrom` says.
   */
  agoMs: number;
  /** How `agoMs` is known: `"kernel"` (measured), `"estimate"` (an upper bound), `"seen"` (0: unknown). */
  agoFrom: "kernel" | "estimate" | "seen";
  /**
   * The time since the watcher's previous look at the connection, in ms:
   * the event happened within it, whatever `agoFrom` says.
   */
  windowMs: number;
}

/**
 * What {@linkcode watchKeepAlive} saw happen on a connection, and when
 * ({@linkcode ProbeTiming}).
 */
export type ProbeEvent =
  & ProbeTiming
  & (
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
    }
  );

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
 * ```ts ignore
 * import { setKeepAlive, watchKeepAlive } from "./keepalive.ts";
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
  // Found once: a closed connection's number may be reused, so each look
  // checks it still is this connection instead of searching again.
  const fd = onSocket("watch keepalive", conn, (fd) => fd);
  const { local, remote } = endpointsOf(conn);
  const stillOurs = () => examine(fd, local, remote) === "match";
  let previous = onSocket("watch keepalive", conn, readTcpInfo);
  let previousAt = performance.now();

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
  const lookOnce = () => {
    let current: KeepAliveState;
    try {
      if (!stillOurs()) return clearInterval(timer);
      current = readTcpInfo(fd);
    } catch {
      return clearInterval(timer); // closed between the two calls
    }
    const now = performance.now();
    // Read the limits only when a probe went unanswered: they may have
    // changed since the watch began. (No timer here: getsockopt has none.)
    probesBetween(previous, current, now - previousAt, () => ({
      retries: getInt(fd, IPPROTO_TCP, TCP_KEEPCNT, "TCP_KEEPCNT"),
      userTimeout: getInt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT"),
      time: getInt(fd, IPPROTO_TCP, TCP_KEEPIDLE, "TCP_KEEPIDLE") * 1000,
      interval: getInt(fd, IPPROTO_TCP, TCP_KEEPINTVL, "TCP_KEEPINTVL") * 1000,
      keepaliveTimerMs: null,
    }), onEvent);
    previous = current;
    previousAt = now;
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

// What a watcher knows of a connection's keepalive, asked for only when a
// probe went unanswered: the limits, and for the probe's time, the idle
// time and interval (ms) and the kernel's pending keepalive timer (ms
// left), each when known.
interface ProbeClock {
  retries: number;
  userTimeout: number;
  time?: number;
  interval?: number;
  keepaliveTimerMs: number | null;
}

// What happened between two looks at one connection's TCP_INFO, `elapsedMs`
// apart: the probes it sent (answered or not) and the peer's probes it
// answered, each with when it happened (ProbeTiming). Shared by
// watchKeepAlive (one connection, getsockopt) and watchKeepAliveAll (every
// connection, one netlink dump).
function probesBetween(
  previous: KeepAliveState,
  current: KeepAliveState,
  elapsedMs: number,
  clock: () => ProbeClock,
  onEvent: (event: ProbeEvent) => void,
): void {
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
  if (!quiet || (sent <= 0 && received <= 0)) return;
  // The answer to our probe is an ACK the kernel accepts, so it restarts
  // tcpi_last_ack_recv, after at least a second of silence. The peer's
  // own probe does not: it repeats an old byte, and the kernel only
  // answers it. (The clock counts in kernel ticks, up to 10 ms.)
  const silentMs = previous.sinceLastAckMs + elapsedMs;
  const answer = received > 0 && current.sinceLastAckMs + 500 < silentMs;
  const peerProbes = answer ? received - 1 : received;
  const ourProbes = sent - peerProbes;
  const at = timingWithin(elapsedMs);
  if (answer && ourProbes > 0) {
    onEvent({
      kind: "answered",
      idleMs: Math.round(silentMs - current.sinceLastAckMs),
      ...at(current.sinceLastAckMs, "kernel"),
    });
  } else if (answer && previous.unansweredProbes > 0) {
    onEvent({
      kind: "late-answer",
      unanswered: previous.unansweredProbes,
      ...at(current.sinceLastAckMs, "kernel"),
    });
  } else if (current.unansweredProbes > previous.unansweredProbes) {
    unansweredBetween(previous, current, clock(), at, onEvent);
  }
  // Nothing in tcp_info moves when the peer's probe comes: only seen.
  for (let i = 0; i < peerProbes; i++) onEvent({ kind: "peer-probe", ...at(0, "seen") });
}

// A ProbeTiming for an event `agoMs` before a look `elapsedMs` after the
// previous one: it happened after that look, so never longer ago.
function timingWithin(elapsedMs: number) {
  const windowMs = Math.max(0, Math.round(elapsedMs));
  return (agoMs: number, agoFrom: ProbeTiming["agoFrom"]): ProbeTiming => ({
    agoMs: Math.min(Math.max(0, Math.round(agoMs)), windowMs),
    agoFrom,
    windowMs,
  });
}

// The probes sent since the last look and still unanswered, each with its
// best known time (ProbeTiming explains the three ways).
function unansweredBetween(
  previous: KeepAliveState,
  current: KeepAliveState,
  clock: ProbeClock,
  at: ReturnType<typeof timingWithin>,
  onEvent: (event: ProbeEvent) => void,
): void {
  const { retries, userTimeout, time, interval, keepaliveTimerMs } = clock;
  const latest = current.unansweredProbes;
  // The silence keepalive counts (tcp_timer.c, keepalive_time_elapsed):
  // since the peer's last ACK or last data, whichever came later.
  const silentMs = Math.min(current.sinceLastAckMs, current.sinceLastDataMs);
  const known = (ms: number | undefined): ms is number => ms !== undefined && ms > 0;
  for (let probe = previous.unansweredProbes + 1; probe <= latest; probe++) {
    // After each probe the kernel re-arms the timer `interval` ahead.
    const timing = known(interval) && keepaliveTimerMs !== null
      ? at(interval - keepaliveTimerMs + (latest - probe) * interval, "kernel")
      : known(time) && known(interval)
      ? at(silentMs - time - (probe - 1) * interval, "estimate")
      : at(0, "seen");
    onEvent({
      kind: "unanswered",
      probe,
      // With a user timeout the kernel ignores the probe count (tcp(7)).
      of: userTimeout > 0 ? null : retries,
      userTimeoutMs: userTimeout,
      ...timing,
    });
  }
}

/** Which connections {@linkcode watchKeepAliveAll} watches: a server's, by its local address. */
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

/** The options of {@linkcode watchKeepAliveAll}. */
export interface WatchAllOptions {
  /** How often to look, in ms: 10..60000, 1000 by default. */
  pollMs?: number;
  /**
   * The connections' settings, which `tcp_info` does not carry: what the
   * listener holds, as {@linkcode getKeepAlive} returns it (accepted
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
 * (`sock_diag.ts`), answered with every matching socket's `tcp_info`, so a
 * look at 10,000 connections costs a few hundred system calls instead of
 * 20,000, and idle connections cost no timer of their own. `onEvent` gets
 * each probe with the connection's remote address (formatted as Deno formats
 * `conn.remoteAddr`), and when it happened ({@linkcode ProbeTiming}). It
 * sees every socket on that local address in the network namespace,
 * whichever process holds it (a server shares its port with nobody, unless
 * with `reusePort`).
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
 * ```ts ignore
 * import { getKeepAlive, setKeepAlive, watchKeepAliveAll } from "./keepalive.ts";
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
  const which = { localPort: port, states: ["established"] as const, families };

  let looking = false;
  const look = () => {
    if (looking) return; // stop() called from onEvent, in the middle of this look
    looking = true;
    try {
      const now = performance.now();
      const elapsedMs = now - previousAt;
      const thisLook = ++looks;
      diag.forEachTcpSocket(which, (visited) => {
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
    } finally {
      looking = false;
    }
  };
  look();
  return watchEvery(pollMs, look, () => diag.close(), onError);
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
    local: isWildcard(text) ? null : bytes,
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
    pollMs,
    limits: {
      retries: retries as number,
      userTimeout: userTimeout as number,
      time: time as number | undefined,
      interval: interval as number | undefined,
    },
    onError: onError as ((error: unknown) => void) | undefined,
  };
}

function isWildcard(hostname: string): boolean {
  const bytes = addressBytes(hostname);
  return bytes !== null && (bytes.every((b) => b === 0) ||
    (bytes.subarray(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff &&
      bytes.subarray(12).every((b) => b === 0)));
}

// The fields of KeepAliveState from a dumped struct tcp_info (the same
// offsets as readTcpInfo's), into `state`; false when the kernel sent too
// short a one.
function readTcpInfoInto(entry: DiagEntry, state: KeepAliveState): boolean {
  const dataSegmentsOut = entry.tcpInfoU32(156);
  if (dataSegmentsOut === undefined) return false;
  state.established = entry.tcpInfoU8(0) === TCP_ESTABLISHED;
  state.unansweredProbes = entry.tcpInfoU8(3)!;
  state.unackedSegments = entry.tcpInfoU32(24)!;
  state.sinceLastDataMs = entry.tcpInfoU32(52)!;
  state.sinceLastAckMs = entry.tcpInfoU32(56)!;
  state.segmentsOut = entry.tcpInfoU32(136)!;
  state.segmentsIn = entry.tcpInfoU32(140)!;
  state.notSentBytes = entry.tcpInfoU32(144)!;
  state.dataSegmentsIn = entry.tcpInfoU32(152)!;
  state.dataSegmentsOut = dataSegmentsOut;
  return true;
}

function emptyState(): KeepAliveState {
  return {
    established: false,
    unansweredProbes: 0,
    unackedSegments: 0,
    sinceLastDataMs: 0,
    sinceLastAckMs: 0,
    segmentsOut: 0,
    segmentsIn: 0,
    notSentBytes: 0,
    dataSegmentsIn: 0,
    dataSegmentsOut: 0,
  };
}

// --- Checking the options ----------------------------------------------------

type CheckedOptions = KeepAliveOptions & { enabled: boolean };

const OPTION_NAMES = Object.keys(KEEPALIVE_LIMITS) as KeepAliveOption[];

// The options, each field read once (a getter is called once) and checked:
// what is set is exactly what was checked.
function validateOptions(options: boolean | KeepAliveOptions): CheckedOptions {
  if (typeof options === "boolean") return { enabled: options };
  const fields = readFields(
    options,
    OPTION_NAMES,
    `keepalive options must be a boolean or an object, not ${typeName(options)}`,
    (key) => `unknown keepalive option ${JSON.stringify(key)}`,
  );
  const checked: CheckedOptions = { enabled: true };
  for (const option of OPTION_NAMES) {
    const value = fields[option];
    if (value === undefined) continue;
    if (isValidKeepAliveValue(option, value)) {
      checked[option] = value as number;
      continue;
    }
    const { min, max, multipleOf } = KEEPALIVE_LIMITS[option];
    throw new TypeError(
      multipleOf === 1000
        ? `${option} must be whole seconds in milliseconds, ${min}..${max} (a multiple of 1000), not ${
          shown(value)
        }`
        : `${option} must be an integer from ${min} to ${max}, not ${shown(value)}`,
    );
  }
  return checked;
}

/**
 * The fields `known` of an options object, each read exactly once (a getter
 * is called once), into a plain object: what a caller checks is then what it
 * uses. Throws a `TypeError` with `notObject` for anything but an object,
 * and with `unknown(key)` for an own key it does not take (a misspelt key is
 * a mistake to report, not a field to ignore: it may widen a filter).
 */
function readFields<K extends string>(
  value: unknown,
  known: readonly K[],
  notObject: string,
  unknown: (key: string) => string,
): Partial<Record<K, unknown>> {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new TypeError(notObject);
  }
  const extra = Object.keys(value).find((key) => !(known as readonly string[]).includes(key));
  if (extra !== undefined) throw new TypeError(unknown(extra));
  const fields: Partial<Record<K, unknown>> = {};
  for (const key of known) fields[key] = (value as Record<string, unknown>)[key];
  return fields;
}

// A value as an error message shows it: strings quoted, numbers as they
// are, anything else by its kind (never a function's source).
function shown(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number" || typeof value === "boolean" || value === undefined) {
    return String(value);
  }
  return typeName(value);
}

function typeName(value: unknown): string {
  return value === null ? "null" : Array.isArray(value) ? "an array" : typeof value;
}

function isPort(value: unknown): value is number {
  return Number.isInteger(value) && (value as number) >= 1 && (value as number) <= 65535;
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
function onSocket<T>(op: string, socket: KeepAliveSocket, fn: (fd: number) => T): T {
  const { local, remote } = endpointsOf(socket); // a TypeError for anything else
  try {
    return fn(findDescriptor(socket, local, remote));
  } catch (error) {
    if (error instanceof Deno.errors.NotCapable || error instanceof UnsupportedSystemError) {
      throw error;
    }
    throw new KeepAliveError(
      op,
      formatAddr(local),
      remote && formatAddr(remote),
      error instanceof Error ? error : new Error(String(error)),
    );
  }
}

// --- What a socket is --------------------------------------------------------------

const ACCEPTED = "a Deno.TcpConn, Deno.TlsConn, Deno.TcpListener, Deno.TlsListener, " +
  "a Deno.serve server or its addr, or a node:net or node:tls socket or server";

/**
 * A socket's addresses: this side's, and the peer's for a connection (null
 * for a listener). Throws a `TypeError` for anything this module does not
 * take, and for a `node:net` socket or server that is not connected or
 * listening yet (it has no address to be found by).
 */
function endpointsOf(
  socket: KeepAliveSocket,
): { local: Deno.NetAddr; remote: Deno.NetAddr | null } {
  if (typeof socket !== "object" || socket === null) {
    throw new TypeError(
      `keepalive takes ${ACCEPTED}, not ${socket === null ? "null" : typeof socket}`,
    );
  }
  const tcp = (hostname: unknown, port: unknown): Deno.NetAddr | null =>
    typeof hostname === "string" && typeof port === "number"
      ? { transport: "tcp", hostname, port }
      : null;
  // Deno.startTls's connections give addresses without `transport`.
  const isTcp = (addr: unknown): addr is Deno.NetAddr =>
    typeof addr === "object" && addr !== null &&
    ((addr as Deno.Addr).transport === "tcp" ||
      ((addr as { transport?: unknown }).transport === undefined &&
        typeof (addr as Deno.NetAddr).hostname === "string" &&
        typeof (addr as Deno.NetAddr).port === "number"));
  let found: { local: Deno.NetAddr; remote: Deno.NetAddr | null } | null = null;
  if ("remoteAddr" in socket && "localAddr" in socket) { // Deno.TcpConn, Deno.TlsConn
    const { localAddr, remoteAddr } = socket as { localAddr: unknown; remoteAddr: unknown };
    if (isTcp(localAddr) && isTcp(remoteAddr)) found = { local: localAddr, remote: remoteAddr };
  } else if ("addr" in socket) { // Deno.TcpListener, Deno.TlsListener, Deno.serve's server
    const addr = (socket as { addr: unknown }).addr;
    if (isTcp(addr)) found = { local: addr, remote: null };
  } else if ("transport" in socket) { // a Deno.NetAddr: Deno.serve's server.addr
    if (isTcp(socket)) found = { local: socket, remote: null };
  } else if ("remotePort" in socket || "localPort" in socket) { // node:net, node:tls
    const node = socket as NodeSocketLike;
    const local = tcp(node.localAddress, node.localPort);
    const remote = tcp(node.remoteAddress, node.remotePort);
    if (!local || !remote) {
      throw new TypeError(
        "this node:net socket is not connected (still connecting, or closed): tune it in its " +
          "'connect' event ('secureConnect' for node:tls)",
      );
    }
    found = { local, remote };
  } else if (typeof (socket as NodeServerLike).address === "function") { // node:net, node:tls
    const address = (socket as NodeServerLike).address();
    if (address === null) {
      throw new TypeError(
        "this node:net server is not listening (not yet, or no more): tune it in its " +
          "'listening' event",
      );
    }
    if (typeof address === "string") {
      throw new TypeError("this node:net server listens on a Unix socket, not TCP");
    }
    found = { local: tcp(address.address, address.port) ?? badAddress(address), remote: null };
  }
  if (!found) throw new TypeError(`keepalive takes ${ACCEPTED}: this is none of them`);
  // An address must be one: a host name would be looked for in vain through
  // every descriptor of the process.
  for (const addr of [found.local, found.remote]) {
    if (addr && addressBytes(addr.hostname) === null) badAddress(addr);
  }
  return found;
}

function badAddress(addr: unknown): never {
  throw new TypeError(
    `keepalive finds a socket by its IP addresses and port; this one has ${JSON.stringify(addr)}`,
  );
}

// --- Finding the descriptor ----------------------------------------------------

// The descriptor found for each socket object, so that polling TCP_INFO does
// not scan again. It is checked on every use: after a close, the number may
// belong to another socket.
const descriptors = new WeakMap<object, number>();
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
export function socketDescriptor(socket: KeepAliveSocket): number {
  return onSocket("find descriptor", socket, (fd) => fd);
}

function findDescriptor(
  socket: KeepAliveSocket,
  local: Deno.NetAddr,
  remote: Deno.NetAddr | null,
): number {
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
  // A reset socket with our address was seen. Every connection a listener
  // accepted has the same local address, so it may be another one's: look a
  // good way further (64 Ki numbers, about 30 ms), but not to a limit of a
  // million, for a connection that is most likely already gone.
  const end = peerless ? Math.min(limit, fd + 65_536) : limit;
  for (; fd < end; fd++) {
    if (examine(fd, local, remote) === "match") return found(fd);
  }
  if (peerless) {
    throw new SyscallError("getpeername: the connection was reset before it was found", ENOTCONN);
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
  // A UDP socket can share the address; only a TCP socket will do (SCTP and
  // MPTCP have stream sockets too).
  if (getOption(fd, SOL_SOCKET, SO_TYPE) !== SOCK_STREAM) return "other";
  if (getOption(fd, SOL_SOCKET, SO_PROTOCOL) !== IPPROTO_TCP) return "other";
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
  const found = sockaddrAddress(sockaddr);
  const wanted = addressBytes(addr.hostname);
  return found !== null && wanted !== null && found.port === addr.port &&
    found.bytes.every((byte, i) => byte === wanted[i]);
}

// A sockaddr's address as 16 bytes (IPv4 as ::ffff:a.b.c.d) and its port;
// null for another family.
function sockaddrAddress(sockaddr: Uint8Array): { bytes: Uint8Array; port: number } | null {
  const view = new DataView(sockaddr.buffer, sockaddr.byteOffset);
  const family = view.getUint16(0, true);
  const port = view.getUint16(2, false);
  if (family === AF_INET6) return { bytes: sockaddr.slice(8, 24), port };
  if (family !== AF_INET) return null;
  const bytes = new Uint8Array(16);
  bytes.set([0xff, 0xff], 10);
  bytes.set(sockaddr.subarray(4, 8), 12);
  return { bytes, port };
}

// An address as written (127.0.0.1, ::1, ::ffff:127.0.0.1, [::1],
// fe80::1%eth0) as 16 bytes, IPv4 mapped into IPv6, so that the two ways
// Deno and Node write an address compare equal; null if it is not an
// address. Strict: decimal IPv4 octets 0..255, IPv6 groups of 1 to 4 hex
// digits, at most one "::", an IPv4 tail only at the end. A zone id
// (%eth0) is dropped: the socket addresses compared carry none here.
function addressBytes(hostname: string): Uint8Array | null {
  const bracketed = /^\[(.*)\]$/.exec(hostname);
  const [text, zone = null] = (bracketed ? bracketed[1] : hostname).split(/%(.*)/s);
  if (zone !== null && (zone === "" || !text.includes(":"))) return null;
  const bytes = new Uint8Array(16);
  const v4 = ipv4Bytes(text);
  if (v4) {
    bytes.set([0xff, 0xff], 10);
    bytes.set(v4, 12);
    return bytes;
  }
  const halves = text.split("::");
  if (halves.length > 2) return null;
  const words = (part: string) => part === "" ? [] : part.split(":");
  const head = words(halves[0]);
  const tail = halves.length === 2 ? words(halves[1]) : [];
  const lastGroups = halves.length === 2 ? tail : head;
  const last = lastGroups.at(-1);
  const v4Tail = last?.includes(".") ? ipv4Bytes(last) : null;
  if (last?.includes(".") && !v4Tail) return null;
  if (v4Tail) lastGroups.pop();
  const groups = [...head, ...tail];
  if (!groups.every((g) => /^[0-9a-f]{1,4}$/i.test(g))) return null;
  const room = 8 - (v4Tail ? 2 : 0);
  if (halves.length === 2 ? groups.length > room - 1 : groups.length !== room) return null;
  const all = [...head, ...new Array(room - groups.length).fill("0"), ...tail];
  all.forEach((g, i) => {
    const value = parseInt(g, 16);
    bytes.set([value >> 8, value & 255], 2 * i);
  });
  if (v4Tail) bytes.set(v4Tail, 12);
  return bytes;
}

// 16 address bytes back to text, for an error message.
function formatBytesAddress(bytes: Uint8Array): string {
  if (bytes.subarray(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff) {
    return bytes.subarray(12).join(".");
  }
  return Array.from({ length: 8 }, (_, i) => ((bytes[2 * i] << 8) | bytes[2 * i + 1]).toString(16))
    .join(":");
}

function ipv4Bytes(text: string): number[] | null {
  const octets = text.split(".");
  if (octets.length !== 4 || !octets.every((o) => /^(0|[1-9][0-9]{0,2})$/.test(o))) return null;
  const values = octets.map(Number);
  return values.every((v) => v <= 255) ? values : null;
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
    loaded = openLibc();
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

// glibc's name first, then musl's (Alpine): the same symbols in both.
const LIBC_NAMES = [
  "libc.so.6",
  `libc.musl-${Deno.build.arch}.so.1`,
  `ld-musl-${Deno.build.arch}.so.1`,
  "libc.so",
];

function openLibc(): Deno.DynamicLibrary<typeof LIBC_SYMBOLS>["symbols"] {
  const failures: string[] = [];
  for (const name of LIBC_NAMES) {
    try {
      return Deno.dlopen(name, LIBC_SYMBOLS).symbols;
    } catch (error) {
      if (error instanceof Deno.errors.NotCapable) throw error;
      failures.push(`${name}: ${(error as Error).message.split("\n")[0]}`);
    }
  }
  throw new UnsupportedSystemError(`no C library found (${failures.join("; ")})`);
}

/** Thrown on a system other than Linux: the socket options and TCP_INFO here are Linux's. */
export class UnsupportedSystemError extends Error {
  /** Says which system this is, and which ones the module works on. */
  constructor(detail?: string) {
    super(
      `per-connection keepalive tuning works on Linux only, with glibc or musl ` +
        `(this is ${Deno.build.os}${detail ? `: ${detail}` : ""})`,
    );
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

/**
 * # Per-connection TCP keepalive for Deno, on Linux
 *
 * `conn.setKeepAlive(true)` only switches `SO_KEEPALIVE` on: the first probe
 * then waits for the system's `tcp_keepalive_time` (7200 s by default), and
 * a dead peer is noticed after more than two hours. Go (`net.KeepAliveConfig`)
 * and Rust (`socket2::TcpKeepalive`) set the idle time, the probe interval
 * and the probe count per connection; Deno does not yet (denoland/deno issue
 * 35634, pull request 35636). This package does, on Linux, through FFI:
 *
 * ```ts
 * import { setKeepAlive } from "@kakit/keepalive";
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
 * Permissions: `--allow-ffi=/lib/x86_64-linux-gnu/libc.so.6` (FFI narrowed to
 * the C library's path, as your system has it; or the blanket `--allow-ffi`),
 * and `--allow-net` for the connection itself. {@linkcode canTuneKeepAlive}
 * tells whether tuning works here (Linux, FFI allowed), without prompting.
 * Deno does not expose a socket's file descriptor, so this package finds it
 * with `getsockname`/`getpeername` on the process's descriptors, matched
 * against `conn.localAddr` and `conn.remoteAddr`: one scan per connection or
 * listener, no `/proc` (which Deno refuses without `--allow-all`). Options
 * set on a listener are inherited by every connection it accepts, so a
 * server tunes its listener once and accepts at no extra cost.
 *
 * The other entry points: `@kakit/keepalive/watch` (the watchers alone),
 * `/all` (every connection of the process), `/sock-diag` (`NETLINK_SOCK_DIAG`),
 * `/proc-net` (the `/proc/net` tables), `/flags` (command-line tuning flags),
 * `/epoll` (one epoll for every connection).
 *
 * - https://man7.org/linux/man-pages/man7/tcp.7.html (TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT, TCP_USER_TIMEOUT, TCP_INFO)
 * - https://docs.deno.com/api/deno/~/Deno.dlopen
 *
 * @module
 */

export {
  isValidKeepAliveValue,
  KEEPALIVE_LIMITS,
  KeepAliveError,
  type KeepAliveOption,
  type KeepAliveOptions,
  type KeepAliveSettings,
  SyscallError,
} from "./options.ts";
export { UnsupportedSystemError } from "./_linux.ts";
export {
  type KeepAliveConnection,
  type KeepAliveSocket,
  type NodeServerLike,
  type NodeSocketLike,
  type NodeStreamLike,
  socketDescriptor,
  type TcpSocket,
} from "./descriptor.ts";
export {
  canTuneKeepAlive,
  getKeepAlive,
  keepAliveGaveUp,
  keepAliveTuningSupport,
  setKeepAlive,
  setUserTimeout,
} from "./sockopt.ts";
export {
  getKeepAliveState,
  type KeepAliveState,
  type LocalFilter,
  type ProbeEvent,
  type ProbeTiming,
  type WatchAllOptions,
  watchKeepAlive,
  watchKeepAliveAll,
} from "./watch.ts";
export {
  type KeepAliveAllTimer,
  type PeerFilter,
  type PeerFilters,
  ResolveError,
  setKeepAliveAll,
  setKeepAliveAllEvery,
} from "./all.ts";

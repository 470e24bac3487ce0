/**
 * # One setter per option, and the getters
 *
 * Like Go's `net` package: one small setter per socket option
 * (`SO_KEEPALIVE`, `TCP_KEEPIDLE`, `TCP_KEEPINTVL`, `TCP_KEEPCNT`,
 * `TCP_USER_TIMEOUT`), each reporting its system call and errno, composed by
 * one public call that takes a plain options object and wraps a failure
 * once, with the operation and the socket's addresses.
 *
 * @module
 */

import { getOption, lastErrno, setOption, tuningSupport } from "./_libc.ts";
import {
  IPPROTO_TCP,
  SO_KEEPALIVE,
  SOL_SOCKET,
  TCP_KEEPCNT,
  TCP_KEEPIDLE,
  TCP_KEEPINTVL,
  TCP_USER_TIMEOUT,
} from "./_linux.ts";
import { type KeepAliveSocket, onSocket } from "./descriptor.ts";
import {
  type CheckedOptions,
  type KeepAliveOptions,
  type KeepAliveSettings,
  SyscallError,
  validateOptions,
} from "./options.ts";

/**
 * Turns keepalive on (or off, with `false`) for a connection or a listener,
 * and applies the given times. On a listener, every connection it accepts
 * afterwards inherits the settings.
 *
 * Every value is checked before anything is set: a bad one throws a
 * `TypeError` naming the field and its range, and leaves the socket as it
 * was. So does a socket of a kind it does not take, or a `node:net` socket
 * that is not connected (yet, or any more): the `TypeError` says which. A
 * system call that fails throws a {@linkcode KeepAliveError} (the
 * operation, the socket's addresses, `code` such as `EINVAL`, and the
 * {@linkcode SyscallError} as `cause`). Needs `--allow-ffi` (without it:
 * `Deno.errors.NotCapable`); Linux only ({@linkcode UnsupportedSystemError}).
 *
 * @example
 * ```ts
 * import { setKeepAlive } from "@kakit/keepalive";
 *
 * const listener = Deno.listen({ port: 8888 });
 * setKeepAlive(listener, { time: 60_000, interval: 10_000, retries: 3, userTimeout: 90_000 });
 * for await (const conn of listener) {
 *   // conn already has keepalive on, with these times.
 *   conn.close();
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

/**
 * Whether per-connection tuning works here: Linux, with `--allow-ffi` (or
 * `--allow-ffi=` the C library's path). Code written on a macOS laptop and
 * run on a Linux server needs one `if`, not a `try` around each call; where
 * it is false, the calls throw as documented. Never prompts for the
 * permission. {@linkcode keepAliveTuningSupport} says why not.
 *
 * @example
 * ```ts
 * import { canTuneKeepAlive, setKeepAlive } from "@kakit/keepalive";
 *
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 8888 });
 * if (canTuneKeepAlive()) setKeepAlive(conn, { time: 60_000, interval: 10_000, retries: 3 });
 * else await conn.setKeepAlive(true); // elsewhere: the system's times
 * ```
 */
export function canTuneKeepAlive(): boolean {
  return tuningSupport().available;
}

/**
 * Whether per-connection tuning works here, and if not, what is missing:
 * `system` (not Linux, or no C library found) or `permission` (no
 * `--allow-ffi` for the C library), with a one-line `message` naming the
 * flag to add. Never prompts.
 *
 * @example
 * ```ts
 * import { keepAliveTuningSupport } from "@kakit/keepalive";
 *
 * const support = keepAliveTuningSupport();
 * if (!support.available) console.error(support.message);
 * // e.g. "per-connection keepalive tuning needs --allow-ffi=/lib/x86_64-linux-gnu/libc.so.6 (the C library; or --allow-ffi)"
 * ```
 */
export function keepAliveTuningSupport():
  | { available: true }
  | { available: false; missing: "system" | "permission"; message: string } {
  return tuningSupport();
}

/**
 * Sets checked options on a descriptor, one setter per option, in an order
 * that is safe to stop in: the times first, so that keepalive never runs
 * with half of them. The kernel takes the keepalive times in seconds and
 * the user timeout in ms. Throws the first setter's {@linkcode SyscallError}.
 */
export function applySettings(fd: number, settings: CheckedOptions): void {
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
 * ```ts
 * import { setUserTimeout } from "@kakit/keepalive";
 *
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 8888 });
 * setUserTimeout(conn, 10_000); // a write unacknowledged for 10 s fails the connection
 * ```
 */
export function setUserTimeout(socket: KeepAliveSocket, milliseconds: number): void {
  validateOptions({ userTimeout: milliseconds ?? NaN });
  onSocket("set user timeout", socket, (fd) => setTcpUserTimeout(fd, milliseconds));
}

/**
 * Reads back what the kernel holds for a socket. Needs `--allow-ffi`.
 *
 * @example
 * ```ts
 * import { getKeepAlive, setKeepAlive } from "@kakit/keepalive";
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
 * The limits a watcher needs to describe an unanswered probe, read from a
 * descriptor: `retries` and `userTimeout`, and `time` and `interval` in ms.
 */
export function probeLimits(
  fd: number,
): { retries: number; userTimeout: number; time: number; interval: number } {
  return {
    retries: getInt(fd, IPPROTO_TCP, TCP_KEEPCNT, "TCP_KEEPCNT"),
    userTimeout: getInt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT"),
    time: getInt(fd, IPPROTO_TCP, TCP_KEEPIDLE, "TCP_KEEPIDLE") * 1000,
    interval: getInt(fd, IPPROTO_TCP, TCP_KEEPINTVL, "TCP_KEEPINTVL") * 1000,
  };
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
 * ```ts
 * import { keepAliveGaveUp } from "@kakit/keepalive";
 *
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 8888 });
 * try {
 *   await conn.read(new Uint8Array(1024));
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
  // node:net sockets (the drivers') carry the C library's name in `code`.
  return code === "ETIMEDOUT" || code === "ENETUNREACH" || code === "EHOSTUNREACH" ? code : null;
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
  if (setOption(fd, level, option, value) !== 0) {
    throw new SyscallError(`setsockopt ${name}=${value}`, lastErrno());
  }
}

function getInt(fd: number, level: number, option: number, name: string): number {
  const value = getOption(fd, level, option);
  if (value === null) throw new SyscallError(`getsockopt ${name}`, lastErrno());
  return value;
}

/**
 * # Tuning the connections a library keeps to itself
 *
 * `fetch()` keeps its pool to itself, and so does a database driver its
 * socket: there is no object to hand to `setKeepAlive`. These calls tune
 * every connected TCP socket of the process instead, optionally only those
 * to one peer, by looking at the process's descriptors with
 * `getsockname`/`getpeername` (FFI: `--allow-ffi`, no `/proc`).
 *
 * @example
 * ```ts
 * import { setKeepAliveAll } from "@kakit/keepalive/all";
 *
 * await fetch("http://10.0.0.5:8080/"); // the pool now holds a connection
 * setKeepAliveAll({ time: 60_000, interval: 10_000, retries: 3 }, { hostname: "10.0.0.5" });
 * ```
 *
 * @module
 */

import { isPort, readFields, shown } from "./_checks.ts";
import { getOption, lastErrno, libc } from "./_libc.ts";
import {
  ERRNO,
  IPPROTO_TCP,
  SO_ACCEPTCONN,
  SO_PROTOCOL,
  SO_TYPE,
  SOCK_STREAM,
  SOL_SOCKET,
} from "./_linux.ts";
import {
  addressBytes,
  formatAddr,
  formatBytesAddress,
  openFileLimit,
  sockaddrAddress,
} from "./descriptor.ts";
import {
  type CheckedOptions,
  KeepAliveError,
  type KeepAliveOptions,
  type SyscallError,
  validateOptions,
} from "./options.ts";
import { applySettings } from "./sockopt.ts";

export type { KeepAliveOptions } from "./options.ts";

/**
 * Which connections {@linkcode setKeepAliveAll} tunes: those to this peer.
 *
 * @example
 * ```ts
 * import { type PeerFilter, setKeepAliveAll } from "@kakit/keepalive";
 * const redis: PeerFilter = { hostname: "::1", port: 6379 };
 * setKeepAliveAll({ time: 30_000 }, redis);
 * ```
 */
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
 * ```ts
 * import { setKeepAliveAll } from "@kakit/keepalive";
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

/**
 * Calls {@linkcode setKeepAliveAll} now and then every `everyMs`, so that
 * connections a library opens later are tuned too, until `stop()`. Its timer
 * does not keep the program alive. `tuned()` says how many sockets the last
 * call tuned. A failure stops it and is passed to `onError` (by default,
 * thrown from the timer). The options and the filter are checked and copied
 * once, at the call: changing the objects afterwards changes nothing.
 *
 * @example
 * ```ts
 * import { setKeepAliveAllEvery } from "@kakit/keepalive";
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
      if (GONE.includes(code)) continue;
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

// The errno values of a descriptor that is no longer the socket looked at.
const GONE: number[] = [
  ERRNO.EBADF,
  ERRNO.ENOTCONN,
  ERRNO.ENOTSOCK,
  ERRNO.ENOPROTOOPT,
  ERRNO.EOPNOTSUPP,
];

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
  if (libc().getsockname(fd, address, length) !== 0) {
    return lastErrno() === ERRNO.EBADF ? "unused" : "other";
  }
  if (sockaddrAddress(address) === null) return "other"; // not IPv4 or IPv6
  if (getOption(fd, SOL_SOCKET, SO_TYPE) !== SOCK_STREAM) return "other";
  if (getOption(fd, SOL_SOCKET, SO_PROTOCOL) !== IPPROTO_TCP) return "other";
  if (getOption(fd, SOL_SOCKET, SO_ACCEPTCONN) === 1) return "other"; // a listener
  length[0] = address.length;
  if (libc().getpeername(fd, address, length) !== 0) return "other"; // not connected
  return sockaddrAddress(address) ?? "other";
}

/**
 * # Tuning the connections a library keeps to itself
 *
 * `fetch()` keeps its pool to itself, and so does a database driver its
 * socket: there is no object to hand to `setKeepAlive`. These calls tune
 * every connected TCP socket of the process instead, optionally only those
 * to some peers (addresses or host names), by asking `getpeername` about
 * every descriptor number up to the table's capacity (FFI: `--allow-ffi`;
 * Deno's `/proc` rules do not apply to what the C library reads).
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
import {
  addressBytes,
  formatAddr,
  formatBytesAddress,
  sockaddrAddress,
  sockaddrHasAddress,
  sockaddrPort,
} from "./_address.ts";
import { descriptorCeiling } from "./_fdtable.ts";
import { getOption, socketName } from "./_libc.ts";
import { AF_INET, AF_INET6, ERRNO, IPPROTO_TCP, SO_PROTOCOL, SOL_SOCKET } from "./_linux.ts";
import { resolveLater, resolveNow } from "./_resolve.ts";
import {
  type CheckedOptions,
  KeepAliveError,
  type KeepAliveOptions,
  type SyscallError,
  validateOptions,
} from "./options.ts";
import { applySettings } from "./sockopt.ts";

export type { KeepAliveOptions } from "./options.ts";
export { ResolveError } from "./_resolve.ts";

/**
 * Which connections {@linkcode setKeepAliveAll} tunes: those to this peer.
 * `hostname` is an IP address or a host name; a name is resolved as
 * `fetch` and `node:net` resolve it (`/etc/hosts`, then DNS), and every
 * address it has counts.
 *
 * @example
 * ```ts
 * import { type PeerFilter, setKeepAliveAll } from "@kakit/keepalive";
 * const redis: PeerFilter = { hostname: "localhost", port: 6379 }; // 127.0.0.1 and ::1
 * setKeepAliveAll({ time: 30_000 }, redis);
 * ```
 */
export interface PeerFilter {
  /** The peer's IP address (`10.0.0.5`, `::1`) or host name (`db.internal`). */
  hostname?: string;
  /** The peer's port. */
  port?: number;
}

/**
 * One peer, or a list of them: a connection to any of them matches. `{}`
 * matches every connection; an empty list is refused (it would match none).
 *
 * @example
 * ```ts
 * import { type PeerFilters, setKeepAliveAll } from "@kakit/keepalive";
 * const databases: PeerFilters = [{ hostname: "10.0.0.5", port: 5432 }, { hostname: "::1", port: 5432 }];
 * setKeepAliveAll({ time: 30_000 }, databases);
 * ```
 */
export type PeerFilters = PeerFilter | readonly PeerFilter[];

/**
 * Tunes every connected TCP socket of this process (optionally only those to
 * some peers) and returns how many it tuned. This is how to reach
 * connections that a library keeps to itself: `fetch()`'s pool, a database
 * driver's socket. Its limits, honestly:
 *
 * - it tunes the connections that exist when it is called: call it after the
 *   first request, or every so often with {@linkcode setKeepAliveAllEvery};
 * - it cannot tell two libraries talking to the same peer apart, nor your
 *   own sockets from a library's: the filter is all it has;
 * - another thread (a Worker) shares the descriptors: one it closes and
 *   reuses between the look and the setting can be tuned by mistake, and a
 *   connection it opens meanwhile can be missed;
 * - it blocks while it looks: at every descriptor number up to the table's
 *   capacity (`FDSize`, so none is missed however far apart they are), one
 *   system call each, and a few more per connection it tunes (about 2.5 µs
 *   per connection with 4,000 connections open); a host name in the filter
 *   is resolved first, which waits for the name server if it is not in
 *   `/etc/hosts`.
 *
 * Options and filter are checked before anything is set, as for
 * `setKeepAlive` (a `TypeError`); a name that does not resolve is a
 * {@linkcode ResolveError}, before anything is set. A connection that
 * closes while it looks is skipped. Needs `--allow-ffi`.
 *
 * @example
 * ```ts
 * import { setKeepAliveAll } from "@kakit/keepalive";
 *
 * const url = new URL("http://localhost:8080/");
 * await fetch(url); // the pool now holds a connection
 * setKeepAliveAll({ time: 60_000, interval: 10_000, retries: 3 }, {
 *   hostname: url.hostname,
 *   port: Number(url.port),
 * });
 * // 1
 * ```
 */
export function setKeepAliveAll(
  options: boolean | KeepAliveOptions,
  filter: PeerFilters = {},
): number {
  const settings = validateOptions(options);
  const peers = checkFilters(filter);
  return tuneAll(settings, peers.map(resolvedNow));
}

/** What {@linkcode setKeepAliveAllEvery} returns: how to stop it, and what it did. */
export interface KeepAliveAllTimer {
  /** Stops it: no call after this one. */
  stop(): void;
  /** How many sockets the last call tuned. */
  tuned(): number;
  /**
   * The time between calls now, in ms: `everyMs`, or more when a call took
   * more than a twentieth of it (see {@linkcode setKeepAliveAllEvery}).
   */
  intervalMs(): number;
}

/**
 * Calls {@linkcode setKeepAliveAll} now and then every `everyMs`, so that
 * connections a library opens later are tuned too, until `stop()`. Its timer
 * does not keep the program alive. `tuned()` says how many sockets the last
 * call tuned. A failure stops it and is passed to `onError` (by default,
 * thrown from the timer). The options and the filter are checked and copied
 * once, at the call: changing the objects afterwards changes nothing.
 *
 * It never takes more than a twentieth of the event loop: when a call takes
 * longer than `everyMs / 20` (a process with many descriptors), the next one
 * waits 20 times as long as it took (`intervalMs()` says how long). Host
 * names are resolved at the call (a {@linkcode ResolveError} there), then
 * again at most every 30 s, one lookup at a time, on another thread, so
 * that the loop never waits for a name server; when that fails, the
 * addresses found before are kept. A lookup under way when the program
 * wants to end holds it until the name server answers or gives up (glibc:
 * 5 s per try, by default).
 *
 * @example
 * ```ts
 * import { setKeepAliveAllEvery } from "@kakit/keepalive";
 *
 * const tuning = setKeepAliveAllEvery(5_000, { time: 60_000, interval: 10_000, retries: 3 }, {
 *   hostname: "localhost",
 *   port: 5432,
 * });
 * // ... and at shutdown:
 * tuning.stop();
 * ```
 */
export function setKeepAliveAllEvery(
  everyMs: number,
  options: boolean | KeepAliveOptions,
  filter: PeerFilters = {},
  onError: (error: unknown) => void = (error) => {
    throw error;
  },
): KeepAliveAllTimer {
  if (!Number.isInteger(everyMs) || everyMs < 100 || everyMs > 2_147_483_647) {
    throw new TypeError(`everyMs must be an integer from 100 to 2147483647 ms, not ${everyMs}`);
  }
  if (typeof onError !== "function") throw new TypeError("onError must be a function");
  // Checked and copied once, up front: every call sets what was checked.
  const settings = validateOptions(options);
  const peers = checkFilters(filter);
  let matchers = peers.map(resolvedNow);
  let last = 0;
  let interval = everyMs;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let stopped = false;
  const tune = () => {
    const start = performance.now();
    last = tuneAll(settings, matchers);
    // At most a twentieth of the loop's time.
    interval = Math.min(
      2_147_483_647,
      Math.max(everyMs, Math.ceil((performance.now() - start) * 20)),
    );
  };
  const refreshNames = nameRefresher(peers, (found) => {
    if (!stopped) matchers = found;
  });
  const tick = () => {
    if (stopped) return;
    refreshNames();
    try {
      tune();
    } catch (error) {
      stopped = true;
      onError(error);
      return;
    }
    schedule();
  };
  const schedule = () => {
    const handle = setTimeout(tick, interval);
    Deno.unrefTimer(handle);
    timer = handle;
  };
  tune();
  schedule();
  return {
    stop: () => {
      stopped = true;
      clearTimeout(timer);
    },
    tuned: () => last,
    intervalMs: () => interval,
  };
}

// How often setKeepAliveAllEvery looks its names up again, at most.
const RESOLVE_EVERY_MS = 30_000;

// What setKeepAliveAllEvery calls before each round: when the filter has
// names and RESOLVE_EVERY_MS have passed, it looks them up again off the
// loop, one lookup at a time (a name server that does not answer must not
// pile up lookups, each holding the program until it gives up), and hands
// the new addresses to `found`; a failure keeps the addresses found before.
function nameRefresher(peers: Peer[], found: (matchers: Matcher[]) => void): () => void {
  if (!peers.some((peer) => peer.name !== undefined)) return () => {};
  let resolving = false;
  let resolvedAt = performance.now();
  return () => {
    if (resolving || performance.now() - resolvedAt < RESOLVE_EVERY_MS) return;
    resolving = true;
    Promise.all(peers.map(resolvedLater)).then(found, () => {}).finally(() => {
      resolving = false;
      resolvedAt = performance.now();
    });
  };
}

// --- The filter ------------------------------------------------------------------

// One peer of the filter, checked: an address (as bytes) or a name to
// resolve, or neither (any address); a port or none.
interface Peer {
  address?: Uint8Array;
  name?: string;
  port?: number;
}

// What a connection's peer is compared with: its addresses (null: any) and port.
interface Matcher {
  addresses: Uint8Array[] | null;
  port?: number;
}

function resolvedNow(peer: Peer): Matcher {
  return {
    addresses: peer.name !== undefined
      ? resolveNow(peer.name)
      : peer.address
      ? [peer.address]
      : null,
    port: peer.port,
  };
}

async function resolvedLater(peer: Peer): Promise<Matcher> {
  if (peer.name === undefined) return resolvedNow(peer);
  return { addresses: await resolveLater(peer.name), port: peer.port };
}

function checkFilters(filter: PeerFilters): Peer[] {
  if (!Array.isArray(filter)) return [checkFilter(filter as PeerFilter, "filter")];
  if (filter.length === 0) {
    throw new TypeError(
      "the filter is an empty list, which matches nothing: give {} for every peer",
    );
  }
  // Every index, holes included (map would skip them): a hole is no filter.
  const peers: Peer[] = [];
  for (let i = 0; i < filter.length; i++) peers.push(checkFilter(filter[i], `filter[${i}]`));
  return peers;
}

// A host name as DNS and /etc/hosts have them: letters, digits, hyphens
// and underscores in dot-separated labels, the last one not all digits (so
// that "1.2.3" or "01.2.3.4", which the C library would read as addresses,
// are refused rather than resolved).
const HOST_NAME =
  /^(?=.{1,253}\.?$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_-]*[a-z_-][a-z0-9_-]*\.?$/i;

function checkFilter(filter: PeerFilter, what: string): Peer {
  // A misspelt key would otherwise widen the filter to every connection.
  const { hostname, port } = readFields(
    filter,
    ["hostname", "port"],
    `${what} must be an object: { hostname?, port? }`,
    (key) => `unknown ${what} key ${JSON.stringify(key)}: it takes hostname and port`,
  );
  if (port !== undefined && !isPort(port)) {
    throw new TypeError(`${what}.port must be an integer from 1 to 65535, not ${shown(port)}`);
  }
  const peer: Peer = { port: port as number | undefined };
  if (hostname === undefined) return peer;
  if (typeof hostname === "string" && hostname.includes("%")) {
    throw new TypeError(
      `${what}.hostname ${JSON.stringify(hostname)}: a zone id cannot be matched (the kernel's ` +
        `socket addresses here carry none); give the address without it`,
    );
  }
  const bytes = typeof hostname === "string" ? addressBytes(hostname) : null;
  if (bytes) return { ...peer, address: bytes };
  if (typeof hostname === "string" && HOST_NAME.test(hostname)) return { ...peer, name: hostname };
  throw new TypeError(
    `${what}.hostname must be an IP address or a host name, not ${shown(hostname)}`,
  );
}

// --- The look at every descriptor -----------------------------------------------

// setKeepAliveAll with its options and filter already checked (and copied:
// what was checked is what is set, however often it runs).
function tuneAll(settings: CheckedOptions, matchers: Matcher[]): number {
  const ceiling = descriptorCeiling();
  // When the first setting is a TCP option, a socket of another protocol
  // (a connected UDP socket with the same peer) refuses it before anything
  // is set: no need to ask each socket its protocol first.
  const tcpFirst = settings.time !== undefined || settings.interval !== undefined ||
    settings.retries !== undefined || settings.userTimeout !== undefined;
  let tuned = 0;
  for (let fd = 0; fd < ceiling; fd++) {
    // One system call for most numbers: unused (EBADF), a listener or an
    // unconnected socket (ENOTCONN), a file (ENOTSOCK) all fail here.
    const peer = socketName(fd, "peer");
    if (peer === null || !matchesAny(peer, matchers)) continue;
    if (!tcpFirst && getOption(fd, SOL_SOCKET, SO_PROTOCOL) !== IPPROTO_TCP) continue;
    try {
      applySettings(fd, settings);
      tuned++;
    } catch (error) {
      // Closed meanwhile, its number now free or taken by another kind of
      // file (another thread, a Worker, shares the table), or not TCP: skip it.
      const code = (error as SyscallError).errno;
      if (GONE.includes(code)) continue;
      const again = socketName(fd, "peer");
      const address = again && sockaddrAddress(again);
      throw new KeepAliveError(
        "set keepalive on all",
        `descriptor ${fd}`,
        address
          ? formatAddr({
            transport: "tcp",
            hostname: formatBytesAddress(address.bytes),
            port: address.port,
          })
          : "(peer gone)",
        error instanceof Error ? error : new Error(String(error)),
      );
    }
  }
  return tuned;
}

function matchesAny(sockaddr: Uint8Array, matchers: Matcher[]): boolean {
  for (let i = 0; i < matchers.length; i++) if (matches(sockaddr, matchers[i])) return true;
  return false;
}

// Whether a peer's struct sockaddr (IPv4 or IPv6) matches, compared in place.
function matches(sockaddr: Uint8Array, matcher: Matcher): boolean {
  const family = sockaddr[0] | (sockaddr[1] << 8);
  if (family !== AF_INET && family !== AF_INET6) return false;
  if (matcher.port !== undefined && sockaddrPort(sockaddr) !== matcher.port) return false;
  return matcher.addresses === null ||
    matcher.addresses.some((bytes) => sockaddrHasAddress(sockaddr, bytes));
}

// The errno values of a descriptor that is no longer the socket looked at.
const GONE: number[] = [
  ERRNO.EBADF,
  ERRNO.ENOTCONN,
  ERRNO.ENOTSOCK,
  ERRNO.ENOPROTOOPT,
  ERRNO.EOPNOTSUPP,
];

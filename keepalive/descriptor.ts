/**
 * # Which sockets the package takes, and finding each one's descriptor
 *
 * Deno does not expose a socket's file descriptor, and the socket options
 * need one. On Linux it can be found without `/proc` (which Deno refuses
 * without `--allow-all`): ask `getsockname` and `getpeername`, through FFI,
 * about the process's descriptors, and keep the one whose addresses are the
 * socket's `localAddr` and `remoteAddr`. That is one scan per connection or
 * listener; the number found is kept with the socket object and checked on
 * every later use (after a close, the number may belong to another socket).
 *
 * So a socket is known by its addresses, and this module says which objects
 * have them ({@linkcode KeepAliveSocket}): Deno's TCP and TLS connections
 * and listeners, a `Deno.serve` server or its `addr`, and `node:net` /
 * `node:tls` sockets and servers.
 *
 * @module
 */

import type { Duplex } from "node:stream";
import { getOption, lastErrno, libc } from "./_libc.ts";
import {
  AF_INET,
  AF_INET6,
  ERRNO,
  IPPROTO_TCP,
  RLIMIT_NOFILE,
  SO_ACCEPTCONN,
  SO_PROTOCOL,
  SO_TYPE,
  SOCK_STREAM,
  SOL_SOCKET,
  UnsupportedSystemError,
} from "./_linux.ts";
import { KeepAliveError, SyscallError } from "./options.ts";

/**
 * A TCP connection or listener, as Deno hands them out.
 *
 * @example
 * ```ts
 * import { socketDescriptor, type TcpSocket } from "@kakit/keepalive";
 * const socket: TcpSocket = Deno.listen({ port: 0 });
 * socketDescriptor(socket);
 * ```
 */
export type TcpSocket = Deno.TcpConn | Deno.TcpListener;

/**
 * A `node:net` or `node:tls` socket, as far as this package looks at it: its
 * addresses. (`net.Socket` and `tls.TLSSocket` have them once connected.)
 *
 * @example
 * ```ts
 * import net from "node:net";
 * import { type NodeSocketLike, setKeepAlive } from "@kakit/keepalive";
 *
 * const socket: NodeSocketLike = net.connect(8888, "127.0.0.1", () => {
 *   setKeepAlive(socket, { time: 60_000 }); // once connected: it has its addresses
 * });
 * ```
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

/**
 * A `node:net` or `node:tls` server: its listening address.
 *
 * @example
 * ```ts
 * import net from "node:net";
 * import { type NodeServerLike, setKeepAlive } from "@kakit/keepalive";
 *
 * const server: NodeServerLike = net.createServer().listen(8888, () => {
 *   setKeepAlive(server, { time: 60_000 }); // every connection it accepts inherits it
 * });
 * ```
 */
export interface NodeServerLike {
  /** The listening address, or null before `listening` (a string for a Unix socket). */
  address(): { address: string; port: number } | string | null;
}

/**
 * A connection this package can tune and watch: Deno's TCP or TLS, or Node's.
 * A `Duplex` is taken because drivers declare their socket as one (pg's
 * `client.connection.stream`): it must be a `node:net` or `node:tls` socket
 * at run time, or the call throws a `TypeError` saying what it is instead.
 *
 * @example
 * ```ts
 * import { getKeepAliveState, type KeepAliveConnection } from "@kakit/keepalive";
 * const conn: KeepAliveConnection = await Deno.connectTls({ hostname: "example.com", port: 443 });
 * getKeepAliveState(conn).unansweredProbes; // 0
 * ```
 */
export type KeepAliveConnection = Deno.TcpConn | Deno.TlsConn | NodeSocketLike | Duplex;

/**
 * Everything this package can tune: a connection ({@linkcode KeepAliveConnection}),
 * or a listener, whose settings every connection it accepts inherits: Deno's
 * TCP or TLS listener, a `Deno.serve` server or its `addr`, a `node:net` or
 * `node:tls` server.
 *
 * A socket is found by its addresses, so mind what they cannot tell apart:
 * listeners sharing one address with `reusePort` (the first found is
 * tuned); an object whose socket was closed, when a new socket now has the
 * same addresses (the new one is tuned); and a connection's `localAddr`
 * passed alone, which is its listener's address (the listener is tuned).
 *
 * @example
 * ```ts
 * import { type KeepAliveSocket, setKeepAlive } from "@kakit/keepalive";
 * const server: KeepAliveSocket = Deno.serve({ port: 0 }, () => new Response("hi"));
 * setKeepAlive(server, { time: 60_000, interval: 10_000, retries: 3 });
 * ```
 */
export type KeepAliveSocket =
  | KeepAliveConnection
  | Deno.TcpListener
  | Deno.TlsListener
  | Deno.HttpServer<Deno.NetAddr>
  | Deno.NetAddr
  | NodeServerLike;

/**
 * Finds the file descriptor behind a Deno connection or listener: the one
 * TCP socket of this process whose local address (and, for a connection,
 * remote address) match. The first lookup scans the process's descriptors,
 * starting above the last one found (where a newly accepted socket usually
 * is); later ones cost three system calls. Needs `--allow-ffi`.
 *
 * @example
 * ```ts
 * import { socketDescriptor } from "@kakit/keepalive";
 * const listener = Deno.listen({ port: 0 });
 * socketDescriptor(listener); // e.g. 11
 * ```
 */
export function socketDescriptor(socket: KeepAliveSocket): number {
  return onSocket("find descriptor", socket, (fd) => fd);
}

/**
 * Runs `fn` on the socket's descriptor. Whatever fails about this socket is
 * wrapped once, here, with the operation and the socket's addresses (Go's
 * `net.OpError`): a {@linkcode KeepAliveError}. A missing `--allow-ffi` or
 * an unsupported system is about the process, not the socket, and passes
 * through as it is; so does the `TypeError` for a socket of a kind the
 * package does not take.
 */
export function onSocket<T>(op: string, socket: KeepAliveSocket, fn: (fd: number) => T): T {
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

/** A socket's addresses: this side's, and the peer's (null for a listener). */
export interface Endpoints {
  /** This side's address. */
  local: Deno.NetAddr;
  /** The peer's address, or null for a listener. */
  remote: Deno.NetAddr | null;
}

/**
 * A socket's addresses. Throws a `TypeError` for anything this package does
 * not take, and for a `node:net` socket or server that is not connected or
 * listening yet (it has no address to be found by).
 */
export function endpointsOf(socket: KeepAliveSocket): Endpoints {
  if (typeof socket !== "object" || socket === null) {
    throw new TypeError(
      `keepalive takes ${ACCEPTED}, not ${socket === null ? "null" : typeof socket}`,
    );
  }
  let found: Endpoints | null = null;
  if ("remoteAddr" in socket && "localAddr" in socket) { // Deno.TcpConn, Deno.TlsConn
    const { localAddr, remoteAddr } = socket as { localAddr: unknown; remoteAddr: unknown };
    if (isTcp(localAddr) && isTcp(remoteAddr)) found = { local: localAddr, remote: remoteAddr };
  } else if ("addr" in socket) { // Deno.TcpListener, Deno.TlsListener, Deno.serve's server
    const addr = (socket as { addr: unknown }).addr;
    if (isTcp(addr)) found = { local: addr, remote: null };
  } else if ("transport" in socket) { // a Deno.NetAddr: Deno.serve's server.addr
    if (isTcp(socket)) found = { local: socket, remote: null };
  } else {
    found = nodeEndpoints(socket);
  }
  if (!found) {
    const stream = typeof (socket as { pipe?: unknown }).pipe === "function";
    throw new TypeError(
      `keepalive takes ${ACCEPTED}: this is ${
        stream ? "a stream that is not a node:net or node:tls socket" : "none of them"
      }`,
    );
  }
  // An address must be one: a host name would be looked for in vain through
  // every descriptor of the process.
  for (const addr of [found.local, found.remote]) {
    if (addr && addressBytes(addr.hostname) === null) badAddress(addr);
  }
  return found;
}

// Deno.startTls's connections give addresses without `transport`.
function isTcp(addr: unknown): addr is Deno.NetAddr {
  return typeof addr === "object" && addr !== null &&
    ((addr as Deno.Addr).transport === "tcp" ||
      ((addr as { transport?: unknown }).transport === undefined &&
        typeof (addr as Deno.NetAddr).hostname === "string" &&
        typeof (addr as Deno.NetAddr).port === "number"));
}

function tcp(hostname: unknown, port: unknown): Deno.NetAddr | null {
  return typeof hostname === "string" && typeof port === "number"
    ? { transport: "tcp", hostname, port }
    : null;
}

// A node:net or node:tls socket or server's addresses; null for anything else.
function nodeEndpoints(socket: object): Endpoints | null {
  if ("remotePort" in socket || "localPort" in socket) {
    const node = socket as NodeSocketLike;
    const local = tcp(node.localAddress, node.localPort);
    const remote = tcp(node.remoteAddress, node.remotePort);
    if (!local || !remote) {
      throw new TypeError(
        "this node:net socket is not connected (still connecting, or closed): tune it in its " +
          "'connect' event ('secureConnect' for node:tls)",
      );
    }
    return { local, remote };
  }
  if (typeof (socket as NodeServerLike).address !== "function") return null;
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
  return { local: tcp(address.address, address.port) ?? badAddress(address), remote: null };
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
  // open files (a million in some containers: seconds of system calls). If
  // a reset socket with our address was seen, ours is most likely it; but
  // every connection a listener accepted has the same local address, so it
  // may be another one's: look a good way further (64 Ki numbers, about
  // 30 ms), but not to a limit of a million, for a connection that is most
  // likely already gone.
  const end = peerless ? Math.min(limit, fd + 65_536) : limit;
  for (; fd < end; fd++) {
    if (examine(fd, local, remote) === "match") return found(fd);
  }
  if (peerless) {
    throw new SyscallError(
      "getpeername: the connection was reset before it was found",
      ERRNO.ENOTCONN,
    );
  }
  throw new SyscallError("no descriptor of this process holds this socket (closed?)", ERRNO.EBADF);
}

/**
 * What one descriptor number holds, as far as the lookup cares: the socket
 * with these addresses (`match`), nothing (`unused`), a TCP socket with our
 * local address whose peer is gone (`peerless`: reset), or anything else.
 */
export function examine(
  fd: number,
  local: Deno.NetAddr,
  remote: Deno.NetAddr | null,
): "match" | "unused" | "peerless" | "other" {
  const c = libc();
  const address = new Uint8Array(128);
  const length = new Uint32Array(1);
  length[0] = address.length;
  if (c.getsockname(fd, address, length) !== 0) {
    return lastErrno() === ERRNO.EBADF ? "unused" : "other";
  }
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
    const reset = lastErrno() === ERRNO.ENOTCONN &&
      getOption(fd, SOL_SOCKET, SO_ACCEPTCONN) !== 1;
    return reset ? "peerless" : "other";
  }
  return sameAddress(address, remote) ? "match" : "other";
}

/**
 * How many descriptor numbers to look at: the process's limit on open
 * files, at most 1,048,576 (1024 if it cannot be read).
 */
export function openFileLimit(): number {
  const limits = new BigUint64Array(2);
  if (libc().getrlimit(RLIMIT_NOFILE, limits) !== 0) return 1024;
  return Number(limits[0] > 1_048_576n ? 1_048_576n : limits[0]);
}

// --- Comparing addresses -----------------------------------------------------------

// A struct sockaddr_in or sockaddr_in6, compared with Deno's view of it.
// Deno prints addresses the way Rust does (RFC 5952), and so does this.
function sameAddress(sockaddr: Uint8Array, addr: Deno.NetAddr): boolean {
  const found = sockaddrAddress(sockaddr);
  const wanted = addressBytes(addr.hostname);
  return found !== null && wanted !== null && found.port === addr.port &&
    found.bytes.every((byte, i) => byte === wanted[i]);
}

/**
 * A `struct sockaddr`'s address as 16 bytes (IPv4 as `::ffff:a.b.c.d`) and
 * its port; null for a family other than IPv4 and IPv6.
 */
export function sockaddrAddress(sockaddr: Uint8Array): { bytes: Uint8Array; port: number } | null {
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

/**
 * An address as written (`127.0.0.1`, `::1`, `::ffff:127.0.0.1`, `[::1]`,
 * `fe80::1%eth0`) as 16 bytes, IPv4 mapped into IPv6, so that the two ways
 * Deno and Node write an address compare equal; null if it is not an
 * address. Strict: decimal IPv4 octets 0..255, IPv6 groups of 1 to 4 hex
 * digits, at most one `::`, an IPv4 tail only at the end. A zone id
 * (`%eth0`) is dropped: the socket addresses compared carry none here.
 */
export function addressBytes(hostname: string): Uint8Array | null {
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

function ipv4Bytes(text: string): number[] | null {
  const octets = text.split(".");
  if (octets.length !== 4 || !octets.every((o) => /^(0|[1-9][0-9]{0,2})$/.test(o))) return null;
  const values = octets.map(Number);
  return values.every((v) => v <= 255) ? values : null;
}

/** 16 address bytes back to text, for an error message (IPv4-mapped as `a.b.c.d`). */
export function formatBytesAddress(bytes: Uint8Array): string {
  if (bytes.subarray(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff) {
    return bytes.subarray(12).join(".");
  }
  return Array.from({ length: 8 }, (_, i) => ((bytes[2 * i] << 8) | bytes[2 * i + 1]).toString(16))
    .join(":");
}

/** `host:port`, with IPv6 hosts in brackets. */
export function formatAddr(addr: Deno.NetAddr): string {
  return addr.hostname.includes(":")
    ? `[${addr.hostname}]:${addr.port}`
    : `${addr.hostname}:${addr.port}`;
}

/**
 * # Which sockets the package takes, and finding each one's descriptor
 *
 * Deno does not expose a socket's file descriptor, and the socket options
 * need one. On Linux it can be found without `/proc` (which Deno refuses
 * without `--allow-all`): ask `getsockname` and `getpeername`, through FFI,
 * about the process's descriptors, and keep the one whose addresses are the
 * socket's `localAddr` and `remoteAddr`. The number found is kept with the
 * socket object and checked on every later use (after a close, the number
 * may belong to another socket).
 *
 * Where to look (`_fdtable.ts`): first just below the lowest free number,
 * where the kernel put a connection made a moment ago (a few system calls,
 * however many descriptors the process holds); then every number up to the
 * table's capacity, which no open descriptor exceeds (about 0.4 µs per
 * number: a connection made long ago, in a process with thousands of
 * descriptors, costs milliseconds, once).
 *
 * So a socket is known by its addresses, and this module says which objects
 * have them ({@linkcode KeepAliveSocket}): Deno's TCP and TLS connections
 * and listeners, a `Deno.serve` server or its `addr`, and `node:net` /
 * `node:tls` sockets and servers.
 *
 * @module
 */

import {
  addressBytes,
  formatAddr,
  sockaddrIs,
  type WantedAddress,
  wantedAddress,
} from "./_address.ts";
import { descriptorCeiling, lowestFreeDescriptor } from "./_fdtable.ts";
import { getOption, lastErrno, socketName } from "./_libc.ts";
import {
  ERRNO,
  IPPROTO_TCP,
  SO_ACCEPTCONN,
  SO_PROTOCOL,
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
 * A Node stream, as drivers declare their socket (pg's
 * `client.connection.stream` is a `Duplex`): taken where a socket is, and
 * it must be a `node:net` or `node:tls` socket at run time, or the call
 * throws a `TypeError` saying what it is instead. (Declared here rather
 * than imported from `node:stream`, so that the package does not bring
 * Node's globals into a program that has none.)
 *
 * @example
 * ```ts
 * import { type NodeStreamLike, setKeepAlive } from "@kakit/keepalive";
 * import net from "node:net";
 *
 * const stream: NodeStreamLike = net.connect(5432, "127.0.0.1");
 * stream.once?.("connect", () => setKeepAlive(stream, { time: 60_000 }));
 * ```
 */
export interface NodeStreamLike {
  /** Whether it can still be read. */
  readable: boolean;
  /** Whether it can still be written. */
  writable: boolean;
  /** Whether it was destroyed. */
  destroyed: boolean;
  /** Listens for one event, as every Node stream can. */
  once?(event: string, listener: (...args: unknown[]) => void): unknown;
}

/**
 * A connection this package can tune and watch: Deno's TCP or TLS, or
 * Node's, also when a driver declares it as a stream ({@linkcode NodeStreamLike}).
 *
 * @example
 * ```ts
 * import { getKeepAliveState, type KeepAliveConnection } from "@kakit/keepalive";
 * const conn: KeepAliveConnection = await Deno.connectTls({ hostname: "example.com", port: 443 });
 * getKeepAliveState(conn).unansweredProbes; // 0
 * ```
 */
export type KeepAliveConnection =
  | Deno.TcpConn
  | Deno.TlsConn
  | NodeSocketLike
  | NodeStreamLike;

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
 * remote address) match. The first lookup looks just below the lowest free
 * number (where a connection made a moment ago is), then at every number
 * up to the descriptor table's capacity; later ones cost three system
 * calls. Needs `--allow-ffi`.
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

// The descriptor found for each socket object, so that tuning or polling it
// again does not search again. It is checked on every use: after a close,
// the number may belong to another socket.
const descriptors = new WeakMap<object, number>();

// How far below the lowest free number to look first.
const NEAR = 8;

/** A socket's addresses, as bytes to compare the kernel's with. */
interface Target {
  local: WantedAddress;
  remote: WantedAddress | null;
}

function targetOf(local: Deno.NetAddr, remote: Deno.NetAddr | null): Target {
  // endpointsOf has checked that both are addresses.
  return { local: wantedAddress(local)!, remote: remote && wantedAddress(remote)! };
}

function findDescriptor(
  socket: KeepAliveSocket,
  local: Deno.NetAddr,
  remote: Deno.NetAddr | null,
): number {
  const target = targetOf(local, remote);
  const cached = descriptors.get(socket);
  if (cached !== undefined && holds(cached, target) === "match") return cached;
  const found = (fd: number) => {
    descriptors.set(socket, fd);
    return fd;
  };
  // A new descriptor gets the lowest free number: a connection made a
  // moment ago is usually just below the lowest free number now. Nothing
  // else decides where to look first, so the cost does not depend on which
  // socket was found before.
  const lowest = lowestFreeDescriptor();
  const nearFrom = lowest === null ? 0 : Math.max(0, lowest - NEAR);
  const nearTo = lowest ?? 0;
  for (let fd = nearTo - 1; fd >= nearFrom; fd--) {
    if (holds(fd, target) === "match") return found(fd);
  }
  // Then every number up to the table's capacity: every open descriptor is
  // below it, however far apart they are. An unused number costs one
  // system call; another socket, two or three.
  const ceiling = descriptorCeiling();
  let peerless = false;
  for (let fd = 0; fd < ceiling; fd++) {
    if (fd === nearFrom) fd = Math.max(fd, nearTo);
    if (fd >= ceiling) break;
    const what = holds(fd, target);
    if (what === "match") return found(fd);
    peerless ||= what === "peerless";
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
  return holds(fd, targetOf(local, remote));
}

function holds(fd: number, target: Target): "match" | "unused" | "peerless" | "other" {
  const name = socketName(fd, "local");
  if (name === null) return lastErrno() === ERRNO.EBADF ? "unused" : "other";
  if (!sockaddrIs(name, target.local)) return "other";
  if (target.remote === null) {
    // An accepted socket has the listener's address too (and, once reset,
    // no peer either): only the listening socket accepts connections.
    return getOption(fd, SOL_SOCKET, SO_ACCEPTCONN) === 1 && tcpSocket(fd) ? "match" : "other";
  }
  const peer = socketName(fd, "peer");
  if (peer === null) {
    // A connected socket with our address whose peer is gone: reset. It may
    // be the one we look for (a listener has no peer either, and is not it).
    const reset = lastErrno() === ERRNO.ENOTCONN &&
      getOption(fd, SOL_SOCKET, SO_ACCEPTCONN) !== 1 && tcpSocket(fd);
    return reset ? "peerless" : "other";
  }
  // A UDP socket can have the same addresses: only a TCP socket will do.
  return sockaddrIs(peer, target.remote) && tcpSocket(fd) ? "match" : "other";
}

function tcpSocket(fd: number): boolean {
  return getOption(fd, SOL_SOCKET, SO_PROTOCOL) === IPPROTO_TCP;
}

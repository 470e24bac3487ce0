/**
 * # One epoll for every connection
 *
 * A server that reads each connection with `await conn.read(buffer)` holds a
 * `Deno.Conn` and a pending read per connection: about 5 KB each, idle or
 * not. A C server holds the same connections for the kernel's memory alone:
 * it asks `epoll` which sockets have something to say, and reads only those.
 * {@linkcode serveWithEpoll} does that from Deno, through FFI:
 *
 * - the listener stays `Deno.listen`'s (so `--allow-net`, its errors and its
 *   address are Deno's); its descriptor is found once;
 * - `accept4` takes each connection as a plain non-blocking descriptor;
 * - one `epoll_wait` runs off the main thread (`nonblocking: true`), so the
 *   event loop stays free for signals and output; each ready connection gets
 *   a few reads into one shared buffer, so a peer that floods cannot starve
 *   the others;
 * - an idle connection costs an entry in a `Map`: no promise, no timer, no
 *   buffer.
 *
 * The engine keeps no books: it tells an {@linkcode EpollBooks} what
 * happened (a connection arrived, echoed, ended and how), and the server
 * counts, prints and decides, the same way for every engine. Linux only,
 * x86_64 or aarch64, glibc or musl; needs `--allow-ffi`.
 *
 * - https://man7.org/linux/man-pages/man7/epoll.7.html
 * - https://man7.org/linux/man-pages/man2/accept.2.html
 *
 * @module
 */
import {
  ERRNO,
  errno,
  ERRNO_SYMBOLS,
  errnoName,
  openCLibrary,
  SO_KEEPALIVE,
  SOCK_CLOEXEC,
  SOCK_NONBLOCK,
  SOL_SOCKET,
  strerror,
} from "./_linux.ts";
import { socketDescriptor } from "./descriptor.ts";
import { formatAddress } from "./sock_diag.ts";

/**
 * What {@linkcode serveWithEpoll} tells the server, which keeps the books:
 * the counts, the events, the limit on open connections.
 */
export interface EpollBooks {
  /**
   * A connection from `peer` was accepted. Call `turnOn` (it sets
   * `SO_KEEPALIVE` when asked and starts watching the connection; it throws
   * when it cannot) and return whether the connection stays; false closes it.
   */
  admit(peer: string, turnOn: () => void): boolean;
  /** `--echo`: `bytes` went back to `peer`. */
  echoed(peer: string, bytes: number): void;
  /** The connection ended: a FIN (`error` null), or an error such as `ECONNRESET` or `ETIMEDOUT`. */
  ended(peer: string, bytes: number, error: { code: string; message: string } | null): void;
  /** A connection was reset while it waited in the backlog. */
  resetBeforeAccept(): void;
  /** Accepting failed (out of descriptors, most likely); returns how many ms to wait before trying again. */
  acceptFailed(message: string): number;
  /** Accepting worked. */
  acceptSucceeded(): void;
}

/** How {@linkcode serveWithEpoll} serves. */
export interface EpollOptions {
  /** Turn `SO_KEEPALIVE` on for each accepted connection. */
  keepAlive: boolean;
  /** Send back whatever a peer sends. */
  echo: boolean;
}

/** A running engine. */
export interface EpollEngine {
  /** Stops, closes every connection, and resolves with how many were open. */
  close(): Promise<number>;
}

const EPOLLIN = 0x1, EPOLLOUT = 0x4, EPOLL_CTL_ADD = 1, EPOLL_CTL_MOD = 3;
// epoll_create1's and eventfd's flags have the same values as the socket ones.
const CLOEXEC = SOCK_CLOEXEC, NONBLOCK = SOCK_NONBLOCK;
const { EAGAIN, EINTR, ECONNABORTED, EPIPE, ECONNRESET } = ERRNO;
// struct epoll_event is packed on x86_64 (12 bytes), aligned elsewhere (16).
const EVENT_BYTES = Deno.build.arch === "x86_64" ? 12 : 16;
const EVENT_DATA_AT = Deno.build.arch === "x86_64" ? 4 : 8;
const MAX_EVENTS = 1024;
// Reads per ready connection per wake-up (4 x 16 KiB), then the next one.
const READS_PER_TURN = 4;
// Connections accepted per wake-up: a burst of thousands must not queue
// thousands of lines before the server's output gets a turn. The listener
// is level-triggered, so the next epoll_wait reports the rest at once.
const ACCEPTS_PER_TURN = 64;

const SYMBOLS = {
  epoll_create1: { parameters: ["i32"], result: "i32" },
  epoll_ctl: { parameters: ["i32", "i32", "i32", "buffer"], result: "i32" },
  epoll_wait: { parameters: ["i32", "buffer", "i32", "i32"], result: "i32", nonblocking: true },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  accept4: { parameters: ["i32", "buffer", "buffer", "i32"], result: "i32" },
  getpeername: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  write: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  close: { parameters: ["i32"], result: "i32" },
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  ...ERRNO_SYMBOLS,
} as const;
type Libc = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];
let loaded: Libc | undefined;

// One accepted connection: all the engine keeps for it.
interface Connection {
  peer: string;
  bytes: number;
  /** --echo: bytes the peer has not taken back yet; reading waits until they are gone. */
  unsent: Uint8Array | null;
  /** --echo: how many bytes the read being echoed had. */
  echoing: number;
}

/**
 * Serves every connection `listener` accepts from one epoll, telling
 * `books` what happens. Throws (and closes what it opened, not the
 * listener) when FFI is missing, the system is not Linux, or the epoll
 * cannot be made.
 *
 * @example
 * ```ts
 * import { serveWithEpoll } from "@kakit/keepalive/epoll";
 * const listener = Deno.listen({ port: 0 });
 * const engine = serveWithEpoll(listener, { keepAlive: true, echo: false }, {
 *   admit: (peer, turnOn) => (turnOn(), console.log("accepted", peer), true),
 *   echoed: () => {},
 *   ended: (peer, bytes, error) => console.log(peer, "ended", bytes, error?.code ?? "FIN"),
 *   resetBeforeAccept: () => {},
 *   acceptFailed: () => 100,
 *   acceptSucceeded: () => {},
 * });
 * console.log(await engine.close(), "closed on quit");
 * listener.close();
 * ```
 */
export function serveWithEpoll(
  listener: Deno.TcpListener,
  options: EpollOptions,
  books: EpollBooks,
): EpollEngine {
  const libc = loaded ??= openCLibrary(SYMBOLS, "--engine epoll (epoll through FFI)");
  const listenFd = socketDescriptor(listener);
  const epollFd = check(libc, "epoll_create1", libc.epoll_create1(CLOEXEC));
  let wakeFd = -1;
  try {
    wakeFd = check(libc, "eventfd", libc.eventfd(0, NONBLOCK | CLOEXEC));
    control(libc, epollFd, EPOLL_CTL_ADD, listenFd, EPOLLIN);
    control(libc, epollFd, EPOLL_CTL_ADD, wakeFd, EPOLLIN);
  } catch (error) {
    if (wakeFd >= 0) libc.close(wakeFd);
    libc.close(epollFd);
    throw error;
  }
  const state: Engine = {
    libc,
    options,
    books,
    listenFd,
    epollFd,
    open: new Map(),
    buffer: new Uint8Array(16 * 1024),
    closing: false,
    paused: undefined,
  };
  const loop = serve(state, wakeFd);
  let closed: Promise<number> | null = null;
  return {
    // Once: a second call gets the first one's answer (and closes no
    // descriptor twice: its number may belong to someone else by then).
    close: () => closed ??= stop(state, wakeFd, loop),
  };
}

// What the loops below share for one engine.
interface Engine {
  libc: Libc;
  options: EpollOptions;
  books: EpollBooks;
  listenFd: number;
  epollFd: number;
  open: Map<number, Connection>;
  buffer: Uint8Array;
  closing: boolean;
  paused: ReturnType<typeof setTimeout> | undefined;
}

// The loop: wait (off the main thread) for ready descriptors, serve them.
async function serve(engine: Engine, wakeFd: number): Promise<void> {
  const events = new Uint8Array(EVENT_BYTES * MAX_EVENTS);
  const view = new DataView(events.buffer);
  while (!engine.closing) {
    const ready = await engine.libc.epoll_wait(engine.epollFd, events, MAX_EVENTS, -1);
    if (engine.closing) break;
    for (let i = 0; i < ready; i++) {
      const mask = view.getUint32(i * EVENT_BYTES, true);
      const fd = view.getInt32(i * EVENT_BYTES + EVENT_DATA_AT, true);
      if (fd === engine.listenFd) acceptSome(engine);
      else if (fd !== wakeFd) {
        const connection = engine.open.get(fd);
        if (!connection) continue; // closed earlier in this batch
        if (connection.unsent) {
          if (mask & EPOLLOUT || mask & ~EPOLLIN) writeUnsent(engine, fd, connection);
        } else readSome(engine, fd, connection);
      }
    }
  }
}

async function stop(engine: Engine, wakeFd: number, loop: Promise<void>): Promise<number> {
  const { libc } = engine;
  engine.closing = true;
  clearTimeout(engine.paused);
  // Wake the waiting epoll_wait, and let it return before its fd goes.
  libc.write(wakeFd, new BigUint64Array([1n]), 8n);
  await loop;
  const open = engine.open.size;
  for (const fd of engine.open.keys()) libc.close(fd);
  engine.open.clear();
  libc.close(engine.epollFd);
  libc.close(wakeFd);
  return open;
}

// Accepting: the connections waiting in the backlog, until EAGAIN or
// ACCEPTS_PER_TURN of them.
function acceptSome(engine: Engine): void {
  const { libc, books } = engine;
  const address = new Uint8Array(28);
  const length = new Uint32Array(1);
  for (let turn = 0; turn < ACCEPTS_PER_TURN && engine.paused === undefined; turn++) {
    length[0] = address.length;
    const fd = libc.accept4(engine.listenFd, address, length, NONBLOCK | CLOEXEC);
    if (fd < 0) {
      const code = errno(libc);
      if (code === EAGAIN || code === EINTR) return;
      if (code === ECONNABORTED) {
        books.resetBeforeAccept();
        continue;
      }
      // Out of descriptors, most likely: stop watching the listener for a
      // while; the kernel keeps completing connections into the backlog.
      pauseAccepting(engine, books.acceptFailed(`${strerror(libc, code)} (os error ${code})`));
      return;
    }
    books.acceptSucceeded();
    // A connection reset while it waited in the backlog is still handed out,
    // but has no peer any more (ENOTCONN): Deno counts it apart, and so do we.
    length[0] = address.length;
    if (libc.getpeername(fd, address, length) !== 0) {
      libc.close(fd);
      books.resetBeforeAccept();
      continue;
    }
    const peer = peerOf(address);
    const connection = { peer, bytes: 0, unsent: null, echoing: 0 };
    const kept = books.admit(peer, () => {
      // The line the blog is about, as in the C server.
      if (engine.options.keepAlive) {
        const one = new Int32Array([1]);
        check(
          libc,
          "setsockopt SO_KEEPALIVE",
          libc.setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, one, 4),
        );
      }
      control(libc, engine.epollFd, EPOLL_CTL_ADD, fd, EPOLLIN);
      engine.open.set(fd, connection);
    });
    if (!kept) forget(engine, fd);
  }
}

function pauseAccepting(engine: Engine, retryMs: number): void {
  control(engine.libc, engine.epollFd, EPOLL_CTL_MOD, engine.listenFd, 0);
  engine.paused = setTimeout(() => {
    engine.paused = undefined;
    if (engine.closing) return;
    control(engine.libc, engine.epollFd, EPOLL_CTL_MOD, engine.listenFd, EPOLLIN);
    acceptSome(engine);
  }, retryMs);
}

// Reading: a few reads into the shared buffer (the bytes are only counted,
// unless --echo), then the next ready connection.
function readSome(engine: Engine, fd: number, connection: Connection): void {
  const { libc, buffer } = engine;
  for (let turn = 0; turn < READS_PER_TURN; turn++) {
    const n = Number(libc.read(fd, buffer, BigInt(buffer.length)));
    if (n > 0) {
      connection.bytes += n;
      if (engine.options.echo && !echo(engine, fd, connection, buffer.subarray(0, n))) return;
      continue;
    }
    if (n === 0) return end(engine, fd, connection, null);
    const code = errno(libc);
    if (code !== EAGAIN && code !== EINTR) end(engine, fd, connection, code);
    return;
  }
}

// --echo: write the bytes back; what the peer does not take now waits in
// `unsent` (one read's worth at most), and reading stops until it is gone.
// Returns whether reading may go on.
function echo(engine: Engine, fd: number, connection: Connection, bytes: Uint8Array): boolean {
  const sent = Number(engine.libc.write(fd, bytes, BigInt(bytes.length)));
  if (sent === bytes.length) {
    engine.books.echoed(connection.peer, bytes.length);
    return true;
  }
  if (sent < 0) {
    const code = errno(engine.libc);
    if (code !== EAGAIN && code !== EINTR) {
      end(engine, fd, connection, code === EPIPE ? ECONNRESET : code);
      return false;
    }
  }
  connection.unsent = bytes.slice(Math.max(sent, 0));
  connection.echoing = bytes.length;
  control(engine.libc, engine.epollFd, EPOLL_CTL_MOD, fd, EPOLLOUT);
  return false;
}

function writeUnsent(engine: Engine, fd: number, connection: Connection): void {
  const unsent = connection.unsent!;
  const sent = Number(engine.libc.write(fd, unsent, BigInt(unsent.length)));
  if (sent < 0) {
    const code = errno(engine.libc);
    if (code !== EAGAIN && code !== EINTR) {
      end(engine, fd, connection, code === EPIPE ? ECONNRESET : code);
    }
    return;
  }
  if (sent < unsent.length) {
    connection.unsent = unsent.subarray(sent);
    return;
  }
  engine.books.echoed(connection.peer, connection.echoing);
  connection.unsent = null;
  control(engine.libc, engine.epollFd, EPOLL_CTL_MOD, fd, EPOLLIN);
}

// A FIN (code null) or the errno of a read or write: the books tell which.
function end(engine: Engine, fd: number, connection: Connection, code: number | null): void {
  forget(engine, fd);
  const error = code === null ? null : {
    code: errnoName(code),
    message: `${strerror(engine.libc, code)} (os error ${code})`,
  };
  engine.books.ended(connection.peer, connection.bytes, error);
}

function forget(engine: Engine, fd: number): void {
  engine.open.delete(fd);
  engine.libc.close(fd); // also takes it out of the epoll set
}

function control(libc: Libc, epollFd: number, op: number, fd: number, mask: number): void {
  const event = new Uint8Array(EVENT_BYTES);
  const view = new DataView(event.buffer);
  view.setUint32(0, mask, true);
  view.setInt32(EVENT_DATA_AT, fd, true);
  check(libc, "epoll_ctl", libc.epoll_ctl(epollFd, op, fd, event));
}

// The peer's address from accept4's sockaddr_in / sockaddr_in6, formatted
// as Deno formats conn.remoteAddr.
function peerOf(sockaddr: Uint8Array): string {
  const view = new DataView(sockaddr.buffer);
  const port = view.getUint16(2, false);
  return view.getUint16(0, true) === 2
    ? `${formatAddress(sockaddr.subarray(4, 8))}:${port}`
    : `[${formatAddress(sockaddr.subarray(8, 24))}]:${port}`;
}

function check(libc: Libc, call: string, result: number): number {
  if (result >= 0) return result;
  const code = errno(libc);
  throw new Error(`${call} failed: ${strerror(libc, code)} (os error ${code})`);
}

/**
 * # server.ts's engine for many connections: one epoll, no read per connection
 *
 * @run deno run --allow-net --allow-ffi server.ts --engine epoll --max-connections 20000 --backlog 4096
 *
 * `server.ts` reads every connection with `await conn.read(buffer)`: a
 * `Deno.Conn` and its pending read cost about 5 KB of memory each, idle or
 * not, and 10,000 idle connections cost 50-60 MB. A C server holds the same
 * connections for the kernel's memory alone: it asks `epoll` which of its
 * sockets have something to say, and reads only those. This module does
 * that from Deno, through FFI:
 *
 * - the listener is still `Deno.listen`'s (so `--allow-net`, the errors and
 *   the addresses are Deno's), and its descriptor is found once;
 * - `accept4` takes each connection as a plain non-blocking descriptor, and
 *   `SO_KEEPALIVE` is set on it with `setsockopt`, as in the C server;
 * - one `epoll_wait`, run off the main thread (`nonblocking: true`, so it
 *   returns a promise and the event loop stays free for signals and output),
 *   reports the descriptors that can be read; each gets a few reads into one
 *   shared buffer, so a peer that floods cannot starve the others;
 * - an idle connection costs a number in a `Map`: no promise, no timer, no
 *   buffer.
 *
 * It takes the same options and reports the same events and summary as
 * `server.ts`'s `startServer` (whose comments tell the story: a peer's FIN
 * ends a read with 0 bytes, a reset with ECONNRESET, unanswered keepalive
 * probes with ETIMEDOUT). Linux only, x86_64 or aarch64, glibc or musl.
 *
 * - https://man7.org/linux/man-pages/man7/epoll.7.html
 * - https://man7.org/linux/man-pages/man2/accept.2.html
 * - https://docs.deno.com/api/deno/~/Deno.dlopen (nonblocking symbols)
 *
 * @module
 */
import type {
  RunningServer,
  ServerEvent,
  ServerEventBody,
  ServerOptions,
  ServerSummary,
} from "./server.ts";
import {
  getKeepAlive,
  type KeepAliveSettings,
  setKeepAlive,
  socketDescriptor,
  watchKeepAliveAll,
} from "./keepalive.ts";
import { formatAddress, listenerBacklog, openCLibrary } from "./sock_diag.ts";

const EPOLLIN = 0x1;
const EPOLLOUT = 0x4;
const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_MOD = 3;
const EPOLL_CLOEXEC = 0o2000000;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const EFD_NONBLOCK = 0o4000;
const SOL_SOCKET = 1;
const SO_KEEPALIVE = 9;

const EAGAIN = 11;
const EINTR = 4;
const ECONNABORTED = 103;
const ECONNRESET = 104;
const EPIPE = 32;

// struct epoll_event is packed on x86_64 (12 bytes), aligned elsewhere (16).
const EVENT_BYTES = Deno.build.arch === "x86_64" ? 12 : 16;
const EVENT_DATA_AT = Deno.build.arch === "x86_64" ? 4 : 8;
const MAX_EVENTS = 1024;
const READ_BYTES = 16 * 1024;
// Reads per ready connection per wake-up: 64 KiB, then the next connection.
const READS_PER_TURN = 4;
// Connections accepted per wake-up: a burst of thousands must not queue
// thousands of lines before the writer gets a turn (its queue holds 10,000).
const ACCEPTS_PER_TURN = 64;
const ACCEPT_RETRY_MS = 100;
const ACCEPT_RECOVERED_MS = 1000;

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
  strerror: { parameters: ["i32"], result: "pointer" },
  __errno_location: { parameters: [], result: "pointer" },
} as const;
type Libc = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

// One accepted connection: all the engine keeps for it.
interface Connection {
  peer: string;
  bytes: number;
  /** --echo: bytes the peer has not taken back yet; reading waits until they are gone. */
  unsent: Uint8Array | null;
  /** --echo: how many bytes the read being echoed had, for its "echoed" event. */
  echoing: number;
}

/** The engine could not start (no FFI, not Linux, tuning refused): the message is one line. */
export class EpollError extends Error {}

/**
 * Listens and serves like `server.ts`'s `startServer`, with one epoll for
 * every connection. Throws what `Deno.listen` throws, or an
 * {@linkcode EpollError} when FFI is missing (`--allow-ffi`), the system is
 * not Linux, or the listener cannot be tuned.
 */
export function startEpollServer(
  options: ServerOptions,
  onEvent: (event: ServerEvent) => void,
): RunningServer {
  let libc: Libc;
  try {
    libc = openLibc();
  } catch (error) {
    throw new EpollError((error as Error).message);
  }
  const listener = Deno.listen({
    hostname: options.hostname,
    port: options.port,
    tcpBacklog: options.backlog,
  });
  const emit = (event: ServerEventBody, atMs = Date.now()) =>
    onEvent({ time: new Date(atMs).toISOString(), ...event });
  let tuning: KeepAliveSettings | null = null;
  let listenFd: number, epollFd = -1, wakeFd = -1;
  try {
    if (options.tuning) setKeepAlive(listener, options.tuning);
    if (options.tuning || options.watch) tuning = getKeepAlive(listener);
    listenFd = socketDescriptor(listener);
    epollFd = check(libc, "epoll_create1", libc.epoll_create1(EPOLL_CLOEXEC));
    wakeFd = check(libc, "eventfd", libc.eventfd(0, EFD_NONBLOCK | EPOLL_CLOEXEC));
    watchFd(libc, epollFd, EPOLL_CTL_ADD, listenFd, EPOLLIN);
    watchFd(libc, epollFd, EPOLL_CTL_ADD, wakeFd, EPOLLIN);
  } catch (error) {
    if (wakeFd >= 0) libc.close(wakeFd);
    if (epollFd >= 0) libc.close(epollFd);
    listener.close();
    const message = error instanceof Error ? error.message.split("\n")[0] : String(error);
    throw new EpollError(`cannot serve with --engine epoll: ${message}`, { cause: error });
  }

  const summary: Omit<ServerSummary, "connections"> = {
    accepted: 0,
    rejected: 0,
    resetBeforeAccept: 0,
    peerClosed: 0,
    reset: 0,
    timedOut: 0,
    errors: 0,
    closedOnQuit: 0,
    acceptPauses: 0,
  };
  const open = new Map<number, Connection>();
  const buffer = new Uint8Array(READ_BYTES);
  const address = new Uint8Array(28);
  const addressLength = new Uint32Array(1);
  const one = new Int32Array([1]);
  let closing = false;
  let acceptPaused: ReturnType<typeof setTimeout> | undefined;
  let episode: { sinceMs: number; lastFailureMs: number; retries: number } | null = null;
  let recovering: ReturnType<typeof setTimeout> | undefined;

  // --watch, as in server.ts: one look at every connection a second. Its
  // netlink socket opens before the server says it listens: without it (no
  // descriptor left), the server does not start.
  let watcher: { stop(): void } | null = null;
  try {
    if (options.watch) {
      watcher = watchKeepAliveAll(
        { hostname: listener.addr.hostname, port: listener.addr.port },
        (probe, remote) =>
          emit({ event: "probe", peer: formatAddr(remote), ...probe }, Date.now() - probe.agoMs),
        {
          limits: tuning!,
          onError: (error) => emit({ event: "watch-error", message: errorMessage(error) }),
        },
      );
    }
  } catch (error) {
    libc.close(wakeFd);
    libc.close(epollFd);
    listener.close();
    throw new EpollError(`--watch cannot start: ${errorMessage(error)}`, { cause: error });
  }

  emit({
    event: "listening",
    address: formatAddr(listener.addr),
    engine: "epoll",
    backlog: options.backlog,
    kernelBacklog: backlogInKernel(listener.addr),
    keepAlive: options.keepAlive,
    maxConnections: options.maxConnections,
    tuning,
  });
  // Accepting: the connections waiting in the backlog, until EAGAIN or
  // ACCEPTS_PER_TURN of them. The listener is level-triggered: the next
  // epoll_wait reports the rest at once, and the event loop (the lines about
  // the ones just taken, signals) has had its turn in between.
  const acceptAll = () => {
    for (let turn = 0; turn < ACCEPTS_PER_TURN && !closing && acceptPaused === undefined; turn++) {
      addressLength[0] = address.length;
      const fd = libc.accept4(listenFd, address, addressLength, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) {
        const code = errno(libc);
        if (code === EAGAIN || code === EINTR) return;
        if (code === ECONNABORTED) {
          summary.resetBeforeAccept++;
          emit({ event: "reset-before-accept" });
          continue;
        }
        // Out of descriptors (EMFILE), most likely: stop watching the
        // listener and try again in a while; the kernel keeps completing
        // connections into the backlog meanwhile.
        acceptFailed(`${strerror(libc, code)} (os error ${code})`);
        return;
      }
      acceptSucceeded();
      // A connection reset while it waited in the backlog is still handed
      // out, but has no peer any more (ENOTCONN): Deno counts it apart, and
      // so does this engine.
      addressLength[0] = address.length;
      if (libc.getpeername(fd, address, addressLength) !== 0) {
        libc.close(fd);
        summary.resetBeforeAccept++;
        emit({ event: "reset-before-accept" });
        continue;
      }
      admit(fd, peerOf(address));
    }
  };

  const admit = (fd: number, peer: string) => {
    if (open.size >= options.maxConnections) {
      libc.close(fd);
      summary.rejected++;
      emit({ event: "rejected", peer, open: open.size });
      return;
    }
    // The line the blog is about, as in the C server.
    let failure: string | null = null;
    if (options.keepAlive && libc.setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, one, 4) !== 0) {
      failure = `setsockopt SO_KEEPALIVE: ${strerror(libc, errno(libc))}`;
    }
    open.set(fd, { peer, bytes: 0, unsent: null, echoing: 0 });
    summary.accepted++;
    emit({ event: "accepted", peer, keepAlive: options.keepAlive, open: open.size });
    if (
      failure === null && libc.epoll_ctl(epollFd, EPOLL_CTL_ADD, fd, epollEvent(EPOLLIN, fd)) !== 0
    ) {
      failure = `epoll_ctl: ${strerror(libc, errno(libc))}`;
    }
    if (failure !== null) {
      forget(fd);
      summary.errors++;
      emit({ event: "error", peer, message: failure });
    }
  };

  // Reading: a few reads into the shared buffer (the bytes are only counted,
  // unless --echo), then the next ready connection.
  const readSome = (fd: number, connection: Connection) => {
    for (let turn = 0; turn < READS_PER_TURN; turn++) {
      const n = Number(libc.read(fd, buffer, BigInt(buffer.length)));
      if (n > 0) {
        connection.bytes += n;
        if (options.echo && !echo(fd, connection, buffer.subarray(0, n))) return;
        continue;
      }
      if (n === 0) {
        forget(fd);
        summary.peerClosed++;
        emit({ event: "peer-closed", peer: connection.peer, bytes: connection.bytes });
        return;
      }
      const code = errno(libc);
      if (code === EAGAIN || code === EINTR) return;
      ended(fd, connection, code);
      return;
    }
  };

  // --echo: write the bytes back; what the peer does not take now waits in
  // `unsent` (one read's worth at most), and reading stops until it is gone.
  // Returns whether reading may go on.
  const echo = (fd: number, connection: Connection, bytes: Uint8Array): boolean => {
    const sent = Number(libc.write(fd, bytes, BigInt(bytes.length)));
    if (sent === bytes.length) {
      emit({ event: "echoed", peer: connection.peer, bytes: bytes.length });
      return true;
    }
    if (sent < 0) {
      const code = errno(libc);
      if (code !== EAGAIN && code !== EINTR) {
        ended(fd, connection, code === EPIPE ? ECONNRESET : code);
        return false;
      }
    }
    connection.unsent = bytes.slice(Math.max(sent, 0));
    connection.echoing = bytes.length;
    watchFd(libc, epollFd, EPOLL_CTL_MOD, fd, EPOLLOUT);
    return false;
  };

  const writeUnsent = (fd: number, connection: Connection) => {
    const unsent = connection.unsent!;
    const sent = Number(libc.write(fd, unsent, BigInt(unsent.length)));
    if (sent < 0) {
      const code = errno(libc);
      if (code !== EAGAIN && code !== EINTR) {
        ended(fd, connection, code === EPIPE ? ECONNRESET : code);
      }
      return;
    }
    if (sent < unsent.length) {
      connection.unsent = unsent.subarray(sent);
      return;
    }
    emit({ event: "echoed", peer: connection.peer, bytes: connection.echoing });
    connection.unsent = null;
    watchFd(libc, epollFd, EPOLL_CTL_MOD, fd, EPOLLIN);
  };

  // How a connection ended, from the errno of its read or write.
  const ended = (fd: number, connection: Connection, code: number) => {
    forget(fd);
    const { peer, bytes } = connection;
    const gaveUp = GAVE_UP[code];
    if (code === ECONNRESET) {
      summary.reset++;
      emit({ event: "reset", peer, bytes });
    } else if (gaveUp) {
      summary.timedOut++;
      emit({ event: "timed-out", peer, bytes, code: gaveUp });
    } else {
      summary.errors++;
      emit({ event: "error", peer, message: `${strerror(libc, code)} (os error ${code})` });
    }
  };

  const forget = (fd: number) => {
    open.delete(fd);
    libc.close(fd); // also takes it out of the epoll set
  };

  // One line when accepting stops working, one when it works again, as in server.ts.
  const acceptFailed = (message: string) => {
    clearTimeout(recovering);
    recovering = undefined;
    const now = performance.now();
    if (episode) {
      episode.retries++;
      episode.lastFailureMs = now;
    } else {
      episode = { sinceMs: now, lastFailureMs: now, retries: 0 };
      summary.acceptPauses++;
      emit({ event: "accept-error", message });
    }
    watchFd(libc, epollFd, EPOLL_CTL_MOD, listenFd, 0);
    acceptPaused = setTimeout(() => {
      acceptPaused = undefined;
      if (closing) return;
      watchFd(libc, epollFd, EPOLL_CTL_MOD, listenFd, EPOLLIN);
      acceptAll();
    }, ACCEPT_RETRY_MS);
  };
  const acceptSucceeded = () => {
    if (!episode || recovering !== undefined) return;
    const { sinceMs, lastFailureMs, retries } = episode;
    recovering = setTimeout(() => {
      emit({ event: "accept-resumed", failedMs: Math.round(lastFailureMs - sinceMs), retries });
      episode = null;
      recovering = undefined;
    }, ACCEPT_RECOVERED_MS);
  };

  // The loop: wait (off the main thread) for ready descriptors, serve them.
  const events = new Uint8Array(EVENT_BYTES * MAX_EVENTS);
  const eventsView = new DataView(events.buffer);
  const loop = (async () => {
    while (!closing) {
      const ready = await libc.epoll_wait(epollFd, events, MAX_EVENTS, -1);
      if (closing) break;
      for (let i = 0; i < ready; i++) {
        const at = i * EVENT_BYTES;
        const mask = eventsView.getUint32(at, true);
        const fd = eventsView.getInt32(at + EVENT_DATA_AT, true);
        if (fd === listenFd) acceptAll();
        else if (fd === wakeFd) continue;
        else {
          const connection = open.get(fd);
          if (!connection) continue; // closed earlier in this batch
          if (connection.unsent) {
            if (mask & EPOLLOUT || mask & ~EPOLLIN) writeUnsent(fd, connection);
          } else readSome(fd, connection);
        }
      }
    }
  })();

  let closed: Promise<ServerSummary> | null = null;
  return {
    addr: listener.addr,
    // Once: a second call gets the first one's summary (and closes no
    // descriptor twice: its number may belong to someone else by then).
    close() {
      closed ??= closeOnce();
      return closed;
    },
  };

  async function closeOnce(): Promise<ServerSummary> {
    closing = true;
    watcher?.stop();
    clearTimeout(acceptPaused);
    clearTimeout(recovering);
    // Wake the waiting epoll_wait, and let it return before its fd goes.
    libc.write(wakeFd, new BigUint64Array([1n]), 8n);
    await loop;
    listener.close();
    summary.closedOnQuit = open.size;
    for (const fd of open.keys()) libc.close(fd);
    open.clear();
    libc.close(epollFd);
    libc.close(wakeFd);
    const { accepted, rejected, resetBeforeAccept } = summary;
    const result = { connections: accepted + rejected + resetBeforeAccept, ...summary };
    emit({ event: "summary", ...result });
    return result;
  }
}

// The errors that end a connection whose keepalive probes went unanswered
// (as keepalive.ts's keepAliveGaveUp tells them from Deno's errors).
const GAVE_UP: Record<number, "ETIMEDOUT" | "ENETUNREACH" | "EHOSTUNREACH"> = {
  110: "ETIMEDOUT",
  101: "ENETUNREACH",
  113: "EHOSTUNREACH",
};

// What the kernel made of --backlog; null if it cannot be read.
function backlogInKernel(addr: Deno.NetAddr): number | null {
  try {
    return listenerBacklog(addr);
  } catch {
    return null;
  }
}

function epollEvent(mask: number, fd: number): Uint8Array {
  const event = new Uint8Array(EVENT_BYTES);
  const view = new DataView(event.buffer);
  view.setUint32(0, mask, true);
  view.setInt32(EVENT_DATA_AT, fd, true);
  return event;
}

function watchFd(libc: Libc, epollFd: number, op: number, fd: number, mask: number) {
  check(libc, "epoll_ctl", libc.epoll_ctl(epollFd, op, fd, epollEvent(mask, fd)));
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

function formatAddr(addr: Deno.NetAddr): string {
  return addr.hostname.includes(":")
    ? `[${addr.hostname}]:${addr.port}`
    : `${addr.hostname}:${addr.port}`;
}

function check(libc: Libc, call: string, result: number): number {
  if (result < 0) {
    const code = errno(libc);
    throw new Error(`${call} failed: ${strerror(libc, code)} (os error ${code})`);
  }
  return result;
}

function errno(libc: Libc): number {
  const pointer = libc.__errno_location();
  return pointer ? new Deno.UnsafePointerView(pointer).getInt32() : 0;
}

function strerror(libc: Libc, code: number): string {
  const pointer = libc.strerror(code);
  return pointer ? Deno.UnsafePointerView.getCString(pointer) : `errno ${code}`;
}

function errorMessage(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).split("\n")[0];
}

let loaded: Libc | undefined;
function openLibc(): Libc {
  return loaded ??= openCLibrary(SYMBOLS, "--engine epoll (epoll through FFI)");
}

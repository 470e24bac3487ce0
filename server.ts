/**
 * # A TCP server that turns keepalive on for every connection
 *
 * @run deno run --allow-net server.ts [--hostname 0.0.0.0] [--port 8888] [--no-keepalive] [--max-connections 1000] [--json]
 * @run deno run --allow-net --allow-ffi server.ts --idle 2 --interval 1 --count 3 [--user-timeout 10] --watch
 * @run deno run --allow-net server.ts --echo
 * @run deno run --allow-net --allow-ffi server.ts --engine epoll --max-connections 20000 --backlog 4096
 *
 * The Deno version of the C server in the blog post "套接字选项SO_KEEPALIVE":
 * it listens on port 8888, calls `setKeepAlive(true)` on every connection it
 * accepts, and then does nothing, so the connections sit idle. An idle
 * connection with `SO_KEEPALIVE` on is probed by the kernel after
 * `net.ipv4.tcp_keepalive_time` seconds of silence (7200 by default); when the
 * peer answers nothing happens, and when it stops answering the next read
 * fails with "timed out". This server prints both: the connections it
 * accepts, and how each one ended.
 *
 * - https://docs.deno.com/api/deno/~/Deno.listen
 * - https://docs.deno.com/api/deno/~/Deno.TcpConn.prototype.setKeepAlive
 * - https://man7.org/linux/man-pages/man7/tcp.7.html (tcp_keepalive_time)
 *
 * Deno's `setKeepAlive(true)` cannot change the 7200 s, nor the interval and
 * the count: `--idle`, `--interval`, `--count` and `--user-timeout` set
 * them for this server's connections only, through `keepalive.ts` (FFI, so
 * `--allow-ffi`), and
 * `--watch` prints each probe the kernel sends and whether it was answered:
 * once a second it reads every connection's `TCP_INFO` in one netlink
 * request (`sock_diag.ts`), so 10,000 connections cost one look, not 10,000.
 *
 * The file reads top to bottom as the story: listening and keepalive, the
 * accept loop, the read loop and what each ending means; then the command
 * line; then printing, which never waits for the terminal (`cli.ts`).
 *
 * For thousands of idle connections, `--engine epoll` serves them all from
 * one epoll (`epoll_server.ts`, through FFI) instead of a pending read
 * each: the same events, about a third of the memory (the README's "Holding
 * 10,000 connections" has the benchmark).
 *
 * Copying this file into your project? Copy `keepalive.ts`, `sock_diag.ts`,
 * `keepalive_flags.ts`, `epoll_server.ts` and `cli.ts` beside it and map
 * `@std/cli` in your `deno.json` (the README's "Copying a file into your
 * project" has the lines). It needs `--allow-net`, plus `--allow-ffi` for
 * the tuning flags and `--engine epoll`.
 *
 * @module
 */
import {
  type CommandIO,
  eventPrinter,
  type OutputDroppedEvent,
  parseCommandLine,
  parseFlags,
  parseHostname,
  parseInteger,
  runAgainWith,
  showTyped,
  UsageError,
  waitForQuit,
} from "./cli.ts";
import {
  getKeepAlive,
  keepAliveGaveUp,
  type KeepAliveOptions,
  type KeepAliveSettings,
  type ProbeEvent,
  setKeepAlive,
  watchKeepAliveAll,
} from "./keepalive.ts";
import {
  describeKeepAlive,
  describeProbe,
  missingFfiPermission,
  parseTuningFlags,
  TUNING_FLAGS,
  TUNING_HELP,
} from "./keepalive_flags.ts";
import { EpollError, startEpollServer } from "./epoll_server.ts";
import { listenerBacklog } from "./sock_diag.ts";
export type { KeepAliveOptions, KeepAliveSettings, ProbeEvent } from "./keepalive.ts";
export { type CommandIO, UsageError } from "./cli.ts";

/** What the server does, from its command-line flags. */
export interface ServerOptions {
  /** The address to listen on; `0.0.0.0` is every IPv4 address, `::` every address. */
  hostname: string;
  /** The port to listen on; 0 lets the kernel pick a free one. */
  port: number;
  /**
   * How many completed connections the kernel may queue until they are
   * accepted (`listen`'s backlog; the kernel caps it at `net.core.somaxconn`).
   */
  backlog: number;
  /** Whether to turn `SO_KEEPALIVE` on for each accepted connection. */
  keepAlive: boolean;
  /** Connections over this many are closed as soon as they are accepted. */
  maxConnections: number;
  /** Per-connection keepalive times (milliseconds), set on the listener; null for the system's. */
  tuning: KeepAliveOptions | null;
  /** Report every keepalive probe on every connection. */
  watch: boolean;
  /** Send back whatever a peer sends (the C server only read). */
  echo: boolean;
  /** Print events as JSON lines instead of text. */
  json: boolean;
  /**
   * How connections are read: "deno", a `Deno.Conn` and a pending read each
   * (this file, the story); "epoll", one epoll for all of them through FFI
   * (`epoll_server.ts`), for thousands of idle connections at a C server's
   * cost. Same events either way.
   */
  engine: "deno" | "epoll";
}

// ## Listening
//
// The C server: socket, bind, listen(fd, 5), accept, setsockopt(SO_KEEPALIVE).
// Deno's Deno.listen does the first three; the rest is below.

/** A server started by {@linkcode startServer}. */
export interface RunningServer {
  /** Where it listens, with the real port when 0 was asked for. */
  addr: Deno.NetAddr;
  /** Closes the listener and every connection; resolves with the summary. */
  close(): Promise<ServerSummary>;
}

/** The listener could not be tuned (not Linux, no FFI): the message is one line. */
export class TuningError extends Error {}

/**
 * Listens, accepts every connection, turns keepalive on, and reads each
 * connection until it ends, calling `onEvent` for everything that happens.
 * Throws what `Deno.listen` throws (port in use, no permission), or a
 * {@linkcode TuningError} when the listener cannot be tuned or `--watch` cannot start.
 *
 * @example
 * ```ts ignore
 * import { startServer } from "./server.ts";
 * const server = startServer(
 *   {
 *     hostname: "127.0.0.1",
 *     port: 0,
 *     backlog: 511,
 *     keepAlive: true,
 *     maxConnections: 10,
 *     tuning: { time: 60_000, interval: 10_000, retries: 3 },
 *     watch: false,
 *     json: false,
 *   },
 *   (event) => console.log(event),
 * );
 * // ... later
 * console.log(await server.close());
 * ```
 */
export function startServer(
  options: ServerOptions,
  onEvent: (event: ServerEvent) => void,
): RunningServer {
  const listener = Deno.listen({
    hostname: options.hostname,
    port: options.port,
    tcpBacklog: options.backlog,
  });
  // Per-connection times go on the listener, once: every connection it
  // accepts inherits them, so accepting costs nothing extra. (--watch alone
  // only reads them back: that proves FFI works before any connection
  // depends on it.)
  let tuning: KeepAliveSettings | null = null;
  try {
    if (options.tuning) setKeepAlive(listener, options.tuning);
    if (options.tuning || options.watch) tuning = getKeepAlive(listener);
  } catch (error) {
    listener.close();
    throw new TuningError(`cannot tune keepalive: ${errorMessage(error)}`, { cause: error });
  }
  const server: Server = {
    options,
    // Stamped now, or when it happened: a probe is seen after it was sent.
    emit: (event, atMs = Date.now()) => onEvent({ time: new Date(atMs).toISOString(), ...event }),
    summary: emptySummary(),
    open: new Set(),
    readers: new Set(),
    closing: false,
  };
  // --watch: one watcher for every connection, looking at all of them at
  // once each second (one netlink request, not one per connection). Its
  // socket opens now, before the server says it listens: without it (no
  // descriptor left), the server does not start.
  let watcher: { stop(): void } | null = null;
  try {
    if (options.watch) watcher = watchProbes(listener, tuning!, server);
  } catch (error) {
    listener.close();
    throw new TuningError(`--watch cannot start: ${errorMessage(error)}`, { cause: error });
  }
  server.emit({
    event: "listening",
    address: formatAddr(listener.addr),
    engine: "deno",
    backlog: options.backlog,
    kernelBacklog: tuning ? backlogInKernel(listener.addr) : null,
    keepAlive: options.keepAlive,
    maxConnections: options.maxConnections,
    tuning,
  });
  const accepting = acceptLoop(listener, server);
  let closed: Promise<ServerSummary> | null = null;
  return {
    addr: listener.addr,
    // Once: a second call gets the first one's summary.
    close() {
      closed ??= closeOnce();
      return closed;
    },
  };

  async function closeOnce(): Promise<ServerSummary> {
    server.closing = true;
    watcher?.stop();
    listener.close();
    await accepting;
    server.summary.closedOnQuit = server.open.size;
    for (const conn of server.open) conn.close();
    server.open.clear();
    await Promise.all(server.readers);
    const { accepted, rejected, resetBeforeAccept } = server.summary;
    const summary = { connections: accepted + rejected + resetBeforeAccept, ...server.summary };
    server.emit({ event: "summary", ...summary });
    return summary;
  }
}

// What the loops below share for one running server. No globals: a test
// can run several servers in one process.
interface Server {
  options: ServerOptions;
  emit: (event: ServerEventBody, atMs?: number) => void;
  summary: Omit<ServerSummary, "connections">;
  open: Set<Deno.TcpConn>;
  readers: Set<Promise<void>>;
  closing: boolean;
}

function emptySummary(): Server["summary"] {
  return {
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
}

// ## Accepting, and SO_KEEPALIVE on each connection

async function acceptLoop(listener: Deno.TcpListener, server: Server): Promise<void> {
  const trouble = acceptTrouble(server);
  while (!server.closing) {
    let conn: Deno.TcpConn;
    try {
      conn = await listener.accept();
    } catch (error) {
      if (server.closing) break;
      if (wasResetInBacklog(error)) {
        // The peer reset the connection while it waited in the backlog: the
        // kernel had completed it, and it was gone before we saw who it was.
        server.summary.resetBeforeAccept++;
        server.emit({ event: "reset-before-accept" });
        trouble.succeeded();
      } else {
        // Out of file descriptors, most likely (see "When accepting fails for
        // a while", below). The kernel keeps completing connections into the
        // backlog meanwhile.
        trouble.failed(error);
        await new Promise((resolve) => setTimeout(resolve, ACCEPT_RETRY_MS));
      }
      continue;
    }
    trouble.succeeded();
    admit(conn, server);
  }
  trouble.stop();
}

// Deno reads the peer's address right after accept(); a connection reset in
// the backlog has none (ENOTCONN), or the kernel says so itself (ECONNABORTED).
function wasResetInBacklog(error: unknown): boolean {
  return error instanceof Deno.errors.NotConnected ||
    error instanceof Deno.errors.ConnectionAborted;
}

function admit(conn: Deno.TcpConn, server: Server): void {
  const peer = formatAddr(conn.remoteAddr);
  // A bound on open connections keeps a flood of clients from taking every
  // file descriptor (and with them, the listener).
  if (server.open.size >= server.options.maxConnections) {
    conn.close();
    server.summary.rejected++;
    server.emit({ event: "rejected", peer, open: server.open.size });
    return;
  }
  server.open.add(conn);
  server.summary.accepted++;
  // The line the blog is about: SO_KEEPALIVE on the accepted socket. The
  // kernel arms the keepalive timer right away; the first probe goes out
  // after tcp_keepalive_time seconds (or --idle) without traffic. It comes
  // before the "accepted" line, so whoever reads that line finds it armed.
  let failure: unknown = null;
  try {
    if (server.options.keepAlive) conn.setKeepAlive(true);
  } catch (error) {
    failure = error;
  }
  server.emit({
    event: "accepted",
    peer,
    keepAlive: server.options.keepAlive,
    open: server.open.size,
  });
  if (failure !== null) {
    // Accepted, and ended at once: counted with the connections that failed.
    server.open.delete(conn);
    conn.close();
    server.summary.errors++;
    server.emit({ event: "error", peer, message: errorMessage(failure) });
    return;
  }
  const reader = readUntilEnd(conn, peer, server);
  server.readers.add(reader);
  reader.finally(() => server.readers.delete(reader));
}

// ## Reading until the end
//
// The reads are what make the kernel's verdict visible: a peer that closes
// shows up as the end of the stream, a reset as ConnectionReset, and
// unanswered keepalive probes as TimedOut (ETIMEDOUT; or the error of the
// last probe, when this side lost its route to the peer). This server never
// writes (unless --echo), so nothing else can time a connection out.

// The server never looks at what peers send, it only counts the bytes, so
// every connection reads into this one buffer. Reads overwrite each other's
// bytes, which is harmless for counting, and an idle connection then costs
// no buffer of its own (a 16 KiB buffer each would be 16 KiB per idle
// connection). With --echo the bytes matter: another connection's read can
// land in the shared buffer before this one's bytes are copied out, so an
// echoing connection reads into a buffer of its own.
const discardBuffer = new Uint8Array(16 * 1024);
const ECHO_BUFFER_BYTES = 4096;

async function readUntilEnd(conn: Deno.TcpConn, peer: string, server: Server): Promise<void> {
  const { options, summary } = server;
  let bytes = 0;
  try {
    const buffer = options.echo ? new Uint8Array(ECHO_BUFFER_BYTES) : discardBuffer;
    for (;;) {
      const n = await conn.read(buffer);
      if (n === null) break;
      bytes += n;
      if (options.echo) await echo(conn, buffer.subarray(0, n), peer, server);
    }
    summary.peerClosed++;
    server.emit({ event: "peer-closed", peer, bytes });
  } catch (error) {
    // On quit the server closes what is still open, and those reads fail:
    // not counted here (they are "closed on quit"). A connection that ended
    // by itself while the server was quitting is still in `open`, and is
    // counted like any other.
    if (server.closing && !server.open.has(conn)) return;
    const gaveUp = keepAliveGaveUp(error);
    if (error instanceof Deno.errors.ConnectionReset) {
      summary.reset++;
      server.emit({ event: "reset", peer, bytes });
    } else if (gaveUp) {
      summary.timedOut++;
      server.emit({ event: "timed-out", peer, bytes, code: gaveUp });
    } else {
      summary.errors++;
      server.emit({ event: "error", peer, message: errorMessage(error) });
    }
  } finally {
    if (server.open.delete(conn)) conn.close();
  }
}

// --echo: the bytes go back before the next read, so a peer that sends
// faster than it reads is slowed down by TCP itself, and nothing piles up
// here.
async function echo(conn: Deno.TcpConn, bytes: Uint8Array, peer: string, server: Server) {
  for (let rest = bytes; rest.length > 0;) rest = rest.subarray(await conn.write(rest));
  server.emit({ event: "echoed", peer, bytes: bytes.length });
}

// --watch: the kernel's probes on every connection, from each socket's
// TCP_INFO, read for all of them at once through NETLINK_SOCK_DIAG
// (keepalive.ts, sock_diag.ts). The connections inherited their limits from
// the listener, so the listener's say how many probes end one.
// Throws when the watcher cannot start; a later failure is a watch-error event.
function watchProbes(listener: Deno.TcpListener, tuning: KeepAliveSettings, server: Server) {
  const { hostname, port } = listener.addr;
  return watchKeepAliveAll(
    { hostname, port },
    (probe, remote) =>
      server.emit({ event: "probe", peer: formatAddr(remote), ...probe }, Date.now() - probe.agoMs),
    {
      limits: tuning,
      onError: (error) => server.emit({ event: "watch-error", message: errorMessage(error) }),
    },
  );
}

// ## When accepting fails for a while

// While accept() fails for a reason that lasts (EMFILE: the process is out of
// file descriptors until a connection closes), try again this often...
const ACCEPT_RETRY_MS = 100;
// ...and call it over once accepting has worked this long without failing:
// descriptors come back one at a time as connections close, and each lets one
// accept through before the next fails, all in the same episode.
const ACCEPT_RECOVERED_MS = 1000;

// One line when accepting stops working and one when it works again, not one
// per retry. It is not a connection failing, so it is not counted with them.
function acceptTrouble(server: Server) {
  let episode: { sinceMs: number; lastFailureMs: number; retries: number } | null = null;
  let recovering: ReturnType<typeof setTimeout> | undefined;
  return {
    failed(error: unknown) {
      clearTimeout(recovering);
      recovering = undefined;
      if (episode) {
        episode.retries++;
        episode.lastFailureMs = performance.now();
        return;
      }
      episode = { sinceMs: performance.now(), lastFailureMs: performance.now(), retries: 0 };
      server.summary.acceptPauses++;
      server.emit({ event: "accept-error", message: errorMessage(error) });
    },
    succeeded() {
      if (!episode || recovering !== undefined) return;
      const { sinceMs, lastFailureMs, retries } = episode;
      recovering = setTimeout(() => {
        const failedMs = Math.round(lastFailureMs - sinceMs);
        server.emit({ event: "accept-resumed", failedMs, retries });
        episode = null;
        recovering = undefined;
      }, ACCEPT_RECOVERED_MS);
    },
    stop: () => clearTimeout(recovering),
  };
}

// ## The command line

/** The `--help` text. */
export const HELP = `Usage: deno run --allow-net [--allow-ffi] server.ts [options]

Listens for TCP connections, turns keepalive on for each one, and reports how
each connection ends. Quit with Enter, Ctrl-C or SIGTERM.

Options:
  --hostname ADDRESS      address to listen on (default 0.0.0.0; :: for IPv6 too)
  --port N                port to listen on, 0..65535 (default 8888; 0 picks a free port)
  --backlog N             connections the kernel may hold until they are accepted, 1..65535
                          (default 511, as Deno's and Node's; raise it for bursts of
                          connections; the kernel caps it at net.core.somaxconn, 4096 by default)
  --no-keepalive          leave SO_KEEPALIVE off on accepted connections
  --max-connections N     close connections beyond N open ones at once, 1..1000000 (default 1000)
  --engine deno|epoll     deno (default): a Deno.Conn and a pending read per connection, as
                          this file tells it; epoll: one epoll for every connection through FFI
                          (epoll_server.ts, needs --allow-ffi): about 1.3 KB per idle
                          connection at 10,000 instead of 6; same events
  --echo                  send back whatever a peer sends (each read reported: "sent N bytes,
                          echoed back")
  --json                  print one JSON object per event instead of text
  -h, --help              show this help

${TUNING_HELP}

Permissions: --allow-net (to listen and accept), and --allow-ffi for
--engine epoll and the per-connection flags (Deno cannot set them itself yet).

Exit codes: 0 after a quit (Enter, Ctrl-C, SIGTERM), 1 when it cannot listen
or a permission is missing, 2 for bad flags.`;

/**
 * Parses the command-line flags. Throws a {@linkcode UsageError} for
 * anything it cannot use; returns `"help"` for `--help`.
 *
 * @example
 * ```ts
 * import { parseServerArgs } from "./server.ts";
 * parseServerArgs(["--port", "0", "--hostname", "::"]);
 * // { hostname: "::", port: 0, backlog: 511, keepAlive: true, maxConnections: 1000, tuning: null, watch: false, echo: false, json: false, engine: "deno" }
 * ```
 */
export function parseServerArgs(args: string[]): ServerOptions | "help" {
  const flags = parseFlags(args, {
    string: ["hostname", "port", "backlog", "max-connections", "engine", ...TUNING_FLAGS],
    boolean: ["keepalive", "json", "watch", "echo"],
    negatable: ["keepalive"],
    default: {
      hostname: "0.0.0.0",
      port: "8888",
      backlog: "511",
      "max-connections": "1000",
      engine: "deno",
    },
  });
  if (flags.help) return "help";
  const tuning = parseTuningFlags(flags);
  if (tuning && !flags.keepalive) {
    throw new UsageError(
      "--no-keepalive cannot be combined with --idle, --interval, --count or --user-timeout",
    );
  }
  return {
    hostname: parseHostname("--hostname", flags.hostname!),
    port: parseInteger("--port", flags.port!, 0, 65535),
    backlog: parseInteger("--backlog", flags.backlog!, 1, 65535),
    keepAlive: flags.keepalive,
    maxConnections: parseInteger("--max-connections", flags["max-connections"]!, 1, 1_000_000),
    tuning,
    watch: flags.watch,
    echo: flags.echo,
    json: flags.json,
    engine: parseEngine(flags.engine!),
  };
}

function parseEngine(text: string): ServerOptions["engine"] {
  if (text === "deno" || text === "epoll") return text;
  throw new UsageError(`--engine must be deno or epoll, not ${showTyped(text)}`);
}

// ## Printing

/** Everything the server reports, one object per event. `--json` prints these as they are. */
export type ServerEvent = { time: string } & ServerEventBody;

/** A {@linkcode ServerEvent} before it is stamped with the time. */
export type ServerEventBody =
  | {
    event: "listening";
    address: string;
    /** Which engine serves the connections (`--engine`). */
    engine: "deno" | "epoll";
    /** The backlog asked for (`--backlog`). */
    backlog: number;
    /**
     * The backlog the kernel holds (capped at `net.core.somaxconn`), read
     * when FFI is allowed (`--engine epoll`, tuning, `--watch`); null otherwise.
     */
    kernelBacklog: number | null;
    keepAlive: boolean;
    maxConnections: number;
    /** What the kernel holds for the listener (ms), with --watch or tuning; null otherwise. */
    tuning: KeepAliveSettings | null;
  }
  | { event: "accepted"; peer: string; keepAlive: boolean; open: number }
  | { event: "rejected"; peer: string; open: number }
  | { event: "reset-before-accept" }
  | { event: "echoed"; peer: string; bytes: number }
  | { event: "peer-closed"; peer: string; bytes: number }
  | { event: "reset"; peer: string; bytes: number }
  | {
    event: "timed-out";
    peer: string;
    bytes: number;
    /** ETIMEDOUT; ENETUNREACH or EHOSTUNREACH when this side lost its route to the peer. */
    code: string;
  }
  | { event: "error"; peer: string; message: string }
  | { event: "watch-error"; message: string }
  | { event: "accept-error"; message: string }
  | { event: "accept-resumed"; failedMs: number; retries: number }
  | ({ event: "probe"; peer: string } & ProbeEvent)
  | Omit<OutputDroppedEvent, "time">
  | ({ event: "summary" } & ServerSummary);

/**
 * What happened to every connection, printed when the server quits. Each
 * connection the kernel completed and the server took from its backlog was
 * accepted, rejected, or reset before it could be accepted; each accepted
 * one ended one way.
 */
export interface ServerSummary {
  /** accepted + rejected + resetBeforeAccept. */
  connections: number;
  /** Connections accepted and kept. */
  accepted: number;
  /** Connections closed at once because --max-connections were open. */
  rejected: number;
  /** Connections the peer reset while they waited in the backlog. */
  resetBeforeAccept: number;
  /** Accepted connections the peer closed with a FIN. */
  peerClosed: number;
  /** Accepted connections the peer reset (RST). */
  reset: number;
  /** Accepted connections that timed out: keepalive probes went unanswered. */
  timedOut: number;
  /** Accepted connections that failed otherwise. */
  errors: number;
  /** Accepted connections still open when the server quit, and closed by it. */
  closedOnQuit: number;
  /** Times accepting stopped working for a while (out of descriptors) and resumed. */
  acceptPauses: number;
}

/**
 * Formats a server event as one line of text, for people. `enterQuits`
 * (default true) says whether the listening line may promise that Enter
 * quits: not when stdin is not a terminal (a background job, a service).
 */
export function formatServerEvent(
  event: ServerEvent,
  how: { enterQuits: boolean } = { enterQuits: true },
): string {
  return `${event.time} ${describeServerEvent(event, how)}`;
}

// "engine epoll, backlog 4096"; and what the kernel made of a larger one.
function describeQueue(event: { engine: string; backlog: number; kernelBacklog: number | null }) {
  const { engine, backlog, kernelBacklog } = event;
  const queue = kernelBacklog !== null && kernelBacklog < backlog
    ? `backlog ${kernelBacklog}: ${backlog} asked, capped at net.core.somaxconn`
    : kernelBacklog === null && backlog > SOMAXCONN_DEFAULT
    ? `backlog ${backlog} asked, at most net.core.somaxconn, ${SOMAXCONN_DEFAULT} by default`
    : `backlog ${backlog}`;
  return `engine ${engine}, ${queue}`;
}

// What the kernel made of --backlog, when FFI is allowed; null if it cannot
// be read (the listener works the same either way).
function backlogInKernel(addr: Deno.NetAddr): number | null {
  try {
    return listenerBacklog(addr);
  } catch {
    return null;
  }
}

// Linux's default net.core.somaxconn since 5.4.
const SOMAXCONN_DEFAULT = 4096;

// The times keepalive uses; with keepalive off there are none to tell (the
// listener's are only the sysctls' defaults), and --watch can see only the
// peer's probes.
function describeListenerTuning(event: { keepAlive: boolean; tuning: KeepAliveSettings | null }) {
  if (!event.tuning) return "";
  return event.keepAlive
    ? ` (${describeKeepAlive(event.tuning)})`
    : " (--watch sees only the peer's probes)";
}

function describeServerEvent(event: ServerEventBody, how: { enterQuits: boolean }): string {
  switch (event.event) {
    case "listening":
      return `listening on ${event.address} (${describeQueue(event)}), keepalive ${
        event.keepAlive ? "on" : "off"
      } for accepted connections${
        describeListenerTuning(event)
      }, at most ${event.maxConnections} ` +
        `at once; ${how.enterQuits ? "Enter" : "SIGTERM"} quits`;
    case "accepted":
      return `accepted ${event.peer}, keepalive ${
        event.keepAlive ? "on" : "off"
      } (${event.open} open)`;
    case "echoed":
      return `${event.peer} sent ${plural(event.bytes, "byte")}, echoed back`;
    case "rejected":
      return `rejected ${event.peer}: already ${event.open} open (--max-connections)`;
    case "reset-before-accept":
      return "a connection was reset by its peer while it waited to be accepted";
    case "peer-closed":
      return `${event.peer} closed by peer after ${plural(event.bytes, "byte")}`;
    case "reset":
      return `${event.peer} reset by peer after ${plural(event.bytes, "byte")}`;
    case "timed-out":
      return `${event.peer} timed out: keepalive probes went unanswered, ` +
        (event.code === "ETIMEDOUT"
          ? "the peer is gone"
          : `and the last could not be sent (${event.code}: this side lost its route to the peer)`);
    case "error":
      return `${event.peer} error: ${event.message}`;
    case "watch-error":
      return `cannot watch probes any more: ${event.message}`;
    case "accept-error":
      return `accept failed: ${event.message}; retrying every ${ACCEPT_RETRY_MS} ms, ` +
        `connections wait in the backlog meanwhile`;
    case "accept-resumed":
      return `accepting again after ${
        (event.failedMs / 1000).toFixed(2)
      } s and ${event.retries} retries`;
    case "probe":
      return `${event.peer} ${describeProbe(event)}`;
    case "output-dropped":
      return `${event.lines} lines of output dropped: stdout was not being read`;
    case "summary":
      return `summary: ${plural(event.connections, "connection")}: ${event.accepted} accepted, ` +
        `${event.rejected} rejected, ${event.resetBeforeAccept} reset before accept; of the accepted, ` +
        `${event.peerClosed} closed by peer, ${event.reset} reset, ${event.timedOut} timed out, ` +
        `${event.errors} errors, ${event.closedOnQuit} closed on quit` +
        (event.acceptPauses
          ? `; accepting stopped for a while (${plural(event.acceptPauses, "time")})`
          : "");
  }
}

// ## The command

/**
 * The command: parse flags, listen, report events until the user quits,
 * then close everything and print the summary. Returns the exit code: 0 after
 * a normal quit, 1 when the server cannot listen, 2 for bad flags. Tests
 * pass their own `io` (quit, stdout, stderr).
 */
export async function main(args: string[], io: CommandIO = {}): Promise<number> {
  const stderr = io.stderr ?? ((line: string) => console.error(line));
  const options = parseCommandLine("server.ts", args, parseServerArgs, HELP, stderr);
  if (typeof options === "number") return options;
  // Ask before listening: a missing permission should stop us before any
  // client connects, not after.
  const ffi = missingFfiPermission(
    { ...options, epoll: options.engine === "epoll" },
    import.meta.url,
    args,
  );
  if (ffi) {
    stderr(`server.ts: ${ffi}`);
    return 1;
  }
  const enterQuits = io.quit === undefined && Deno.stdin.isTerminal();
  const out = eventPrinter({
    json: options.json,
    format: (event: ServerEvent) => formatServerEvent(event, { enterQuits }),
    output: io.stdout,
  });
  // Listen for Enter, Ctrl-C and SIGTERM first: a signal listener takes a
  // descriptor, and when descriptors run short the listener (not the signal
  // handler, half-way through serving) should be what fails, in one line.
  const quit = (io.quit ?? waitForQuit)();
  let server: RunningServer;
  try {
    server = options.engine === "epoll"
      ? startEpollServer(options, out.print)
      : startServer(options, out.print);
  } catch (error) {
    stderr(`server.ts: ${describeListenError(error, options, args)}`);
    return 1;
  }
  await quit;
  await server.close();
  // The summary gets a moment to go out, not more: a stalled stdout must not
  // keep the server from quitting.
  await out.flush();
  return 0;
}

function describeListenError(error: unknown, options: ServerOptions, args: string[]): string {
  if (error instanceof TuningError || error instanceof EpollError) return error.message;
  const where = formatAddr({ transport: "tcp", hostname: options.hostname, port: options.port });
  if (error instanceof Deno.errors.NotCapable) {
    const ffi = options.tuning || options.watch || options.engine === "epoll"
      ? ["--allow-ffi"]
      : [];
    return `listening on ${where} needs the --allow-net permission: ` +
      runAgainWith(["--allow-net", ...ffi], import.meta.url, args);
  }
  if (error instanceof Deno.errors.AddrInUse) {
    return `cannot listen on ${where}: the port is already in use`;
  }
  if (error instanceof Deno.errors.AddrNotAvailable) {
    return `cannot listen on ${where}: ${options.hostname} is not an address of this machine`;
  }
  if (error instanceof Deno.errors.PermissionDenied) {
    return `cannot listen on ${where}: ports below 1024 need root (or CAP_NET_BIND_SERVICE)`;
  }
  if (/lookup address/.test(errorMessage(error))) {
    return `cannot listen on ${where}: cannot resolve ${showTyped(options.hostname)}`;
  }
  return `cannot listen on ${where}: ${errorMessage(error)}`;
}

// Small helpers that client.ts repeats on purpose, so that each script reads
// on its own.

/** `host:port`, with IPv6 hosts in brackets. */
function formatAddr(addr: Deno.NetAddr): string {
  return addr.hostname.includes(":")
    ? `[${addr.hostname}]:${addr.port}`
    : `${addr.hostname}:${addr.port}`;
}

function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

function errorMessage(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).split("\n")[0];
}

if (import.meta.main) Deno.exit(await main(Deno.args));

// Real runs (Deno 2.9.6, Linux 6.18). A client connected, stayed idle for one
// probe, and quit; then Ctrl-C quit the server:
//
//   $ deno run --allow-net --allow-ffi server.ts --idle 2 --interval 1 --count 3 --watch
//   2026-11-25T20:08:03.075Z listening on 0.0.0.0:8888 (engine deno, backlog 511), keepalive on for accepted connections (idle 2 s, interval 1 s, 3 probes, user timeout off), at most 1000 at once; Enter quits
//   2026-11-25T20:08:04.073Z accepted 127.0.0.1:33626, keepalive on (1 open)
//   2026-11-25T20:08:06.102Z 127.0.0.1:33626 probe answered, after 2.01 s idle
//   2026-11-25T20:08:07.216Z 127.0.0.1:33626 closed by peer after 0 bytes
//   2026-11-25T20:08:07.747Z summary: 1 connection: 1 accepted, 0 rejected, 0 reset before accept; of the accepted, 1 closed by peer, 0 reset, 0 timed out, 0 errors, 0 closed on quit
//
// The same server in a network namespace, its client in another, joined by a
// veth cable that was cut one second after the client connected:
//
//   $ sudo ip netns exec srv deno run --allow-net --allow-ffi server.ts --hostname :: --idle 2 --interval 1 --count 3 --watch
//   2026-11-25T20:08:12.387Z listening on [::]:8888 (engine deno, backlog 511), keepalive on for accepted connections (idle 2 s, interval 1 s, 3 probes, user timeout off), at most 1000 at once; Enter quits
//   2026-11-25T20:08:13.590Z accepted [fd6b:61::2]:55972, keepalive on (1 open)
//   2026-11-25T20:08:15.616Z [fd6b:61::2]:55972 probe 1/3 unanswered
//   2026-11-25T20:08:16.820Z [fd6b:61::2]:55972 probe 2/3 unanswered
//   2026-11-25T20:08:17.823Z [fd6b:61::2]:55972 probe 3/3 unanswered
//   2026-11-25T20:08:18.686Z [fd6b:61::2]:55972 timed out: keepalive probes went unanswered, the peer is gone
//   2026-11-25T20:08:20.562Z summary: 1 connection: 1 accepted, 0 rejected, 0 reset before accept; of the accepted, 0 closed by peer, 0 reset, 1 timed out, 0 errors, 0 closed on quit
//
// Out of file descriptors (40 clients against a table of 48): one line when
// accepting stops, one when it works again, the clients waiting meanwhile:
//
//   $ prlimit --nofile=48:48 deno run --allow-net server.ts --hostname 127.0.0.1 --port 9125
//   2026-11-25T20:08:26.751Z accept failed: Too many open files (os error 24); retrying every 100 ms, connections wait in the backlog meanwhile
//   2026-11-25T20:08:29.278Z accepting again after 1.43 s and 14 retries
//
//   $ deno run --allow-net server.ts --keepalive=no
//   server.ts: --keepalive takes no value, not "no": write --keepalive or --no-keepalive (see --help)
//   $ deno run --allow-net server.ts --hostname [::1
//   server.ts: --hostname "[::1" is not an address: unmatched bracket (see --help)
//   $ deno run --allow-net server.ts --idle 2 --watch
//   server.ts: --idle and --watch need the --allow-ffi permission: deno run --allow-net --allow-ffi server.ts --idle 2 --watch

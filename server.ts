/**
 * # A TCP server that turns keepalive on for every connection
 *
 * @run deno run --allow-net server.ts [--hostname 0.0.0.0] [--port 8888] [--no-keepalive] [--json]
 * @run deno run --allow-net --allow-ffi server.ts --idle 2 --interval 1 --count 3 --watch
 *
 * The Deno version of the C server in the blog post "套接字选项SO_KEEPALIVE":
 * it listens on port 8888, calls `setKeepAlive(true)` on every connection it
 * accepts, and then only reads, so the connections sit idle. An idle
 * connection with `SO_KEEPALIVE` on is probed by the kernel after
 * `net.ipv4.tcp_keepalive_time` seconds of silence (7200 by default); when
 * the peer answers nothing happens, and when it stops answering the read
 * fails with "timed out". This server prints both: the connections it
 * accepts, and how each one ended.
 *
 * - https://docs.deno.com/api/deno/~/Deno.listen
 * - https://docs.deno.com/api/deno/~/Deno.TcpConn.prototype.setKeepAlive
 * - https://man7.org/linux/man-pages/man7/tcp.7.html (tcp_keepalive_time)
 *
 * This file runs on its own (copy it; map `@std/cli` in your deno.json).
 * What Deno cannot do yet, it asks of the kit's package `@kakit/keepalive`,
 * loaded only when a flag needs it: the per-connection times (`--idle`,
 * `--interval`, `--count`, `--user-timeout`), `--watch` (every probe, from
 * the kernel's TCP_INFO) and `--engine epoll` (one epoll for thousands of
 * connections). Those need `--allow-ffi`. The small helpers at the end
 * (strict flags, escaping, a line writer that never blocks) repeat
 * client.ts's on purpose, so that each file stands alone.
 *
 * @module
 */
import { parseArgs } from "@std/cli/parse-args";

/**
 * The kit's package, as main loads it when a flag needs it. The type is for
 * the type checker only: copied alone, the script never loads the package.
 */
export type Keepalive =
  & typeof import("@kakit/keepalive")
  & typeof import("@kakit/keepalive/flags")
  & typeof import("@kakit/keepalive/sock-diag")
  & typeof import("@kakit/keepalive/epoll");
/** What the kernel holds for a socket's keepalive (milliseconds), from the package. */
export type KeepAliveSettings = import("@kakit/keepalive").KeepAliveSettings;
/** A probe the package's watcher saw. */
export type ProbeEvent = import("@kakit/keepalive").ProbeEvent;
/** The package's words for keepalive times and probes. */
export type Words = Pick<Keepalive, "describeKeepAlive" | "describeProbe">;

// ## Listening, accepting, SO_KEEPALIVE, reading until the end
//
// The C server: socket, bind, listen(fd, 5), accept, setsockopt(SO_KEEPALIVE),
// then a read that waits. Deno.listen does the first three; the rest is here.

/** A running server: where it listens, and how to stop it. */
export interface RunningServer {
  addr: Deno.NetAddr;
  /** Closes the listener and every connection; resolves with the summary. */
  close(): Promise<ServerSummary>;
}

/**
 * Listens and serves with a `Deno.TcpConn` and a pending read per
 * connection, calling `onEvent` for everything that happens. Throws what
 * `Deno.listen` throws, or a one-line `Error` when the package cannot tune
 * or watch (`ka` is the package, loaded by `main` when a flag needs it).
 */
export function startServer(
  options: ServerOptions,
  onEvent: (event: ServerEvent) => void,
  ka: Keepalive | null = null,
): RunningServer {
  const listener = Deno.listen({
    hostname: options.hostname,
    port: options.port,
    tcpBacklog: options.backlog,
  });
  const books = new Books(options, onEvent);
  let engine: Engine;
  let tuning: ReturnType<typeof tuneListener> | null = null;
  try {
    if (ka && (options.tuning || options.watch)) {
      tuning = tuneListener(ka, listener, options, books);
    }
    engine = options.engine === "epoll"
      ? epollEngine(ka!, listener, options, books)
      : denoEngine(listener, options, books);
    books.emit({
      event: "listening",
      address: formatAddr(listener.addr),
      engine: options.engine,
      backlog: options.backlog,
      kernelBacklog: ka ? kernelBacklog(ka, listener.addr) : null,
      keepAlive: options.keepAlive,
      maxConnections: options.maxConnections,
      tuning: tuning?.settings ?? null,
    });
    if (tuning?.watcher) engine = { ...engine, watcher: tuning.watcher };
  } catch (error) {
    tuning?.watcher?.stop();
    listener.close();
    throw error;
  }
  let closed: Promise<ServerSummary> | null = null;
  return { addr: listener.addr, close: () => closed ??= stop(listener, engine, books) };
}

interface Engine {
  /** Stops serving; resolves with how many connections were still open (then closed). */
  close(): Promise<number>;
  watcher?: { stop(): void };
}

async function stop(listener: Deno.TcpListener, engine: Engine, books: Books) {
  books.closing = true;
  engine.watcher?.stop();
  const closedOnQuit = await engine.close();
  try {
    listener.close();
  } catch { /* the deno engine closed it to end its accept loop */ }
  return books.finish(closedOnQuit);
}

// The deno engine: the story as the blog tells it.
function denoEngine(listener: Deno.TcpListener, options: ServerOptions, books: Books): Engine {
  const open = new Set<Deno.TcpConn>();
  const readers = new Set<Promise<void>>();
  const accepting = (async () => {
    while (!books.closing) {
      let conn: Deno.TcpConn;
      try {
        conn = await listener.accept();
      } catch (error) {
        if (books.closing) break;
        // A peer that reset while it waited in the backlog has no address
        // left (ENOTCONN); anything else is most likely EMFILE: no
        // descriptor until a connection closes. The backlog fills meanwhile.
        if (error instanceof Deno.errors.NotConnected) books.resetBeforeAccept();
        else if (error instanceof Deno.errors.ConnectionAborted) books.resetBeforeAccept();
        else await delay(books.acceptFailed(errorMessage(error)));
        continue;
      }
      books.acceptSucceeded();
      const peer = formatAddr(conn.remoteAddr);
      // The line the blog is about: SO_KEEPALIVE on the accepted socket. The
      // kernel arms the keepalive timer at once; the first probe goes out
      // after tcp_keepalive_time seconds (or --idle) without traffic.
      if (!books.admit(peer, () => options.keepAlive && conn.setKeepAlive(true))) {
        conn.close();
        continue;
      }
      open.add(conn);
      const reader = readUntilEnd(conn, peer, options.echo, books, open);
      readers.add(reader);
      reader.finally(() => readers.delete(reader));
    }
  })();
  return {
    async close() {
      listener.close();
      await accepting;
      const left = open.size;
      for (const conn of open) conn.close();
      open.clear();
      await Promise.all(readers);
      return left;
    },
  };
}

// The server never looks at what peers send, it only counts the bytes, so
// every connection reads into this one buffer, and an idle connection costs
// no buffer of its own. --echo needs the bytes: a buffer per connection.
const discard = new Uint8Array(16 * 1024);

// The reads make the kernel's verdict visible: a FIN ends the stream, a
// reset is ConnectionReset, unanswered probes are TimedOut (ETIMEDOUT). This
// server never writes (unless --echo), so nothing else can time a
// connection out.
async function readUntilEnd(
  conn: Deno.TcpConn,
  peer: string,
  echo: boolean,
  books: Books,
  open: Set<Deno.TcpConn>,
): Promise<void> {
  let bytes = 0;
  const buffer = echo ? new Uint8Array(4096) : discard;
  try {
    for (let n; (n = await conn.read(buffer)) !== null;) {
      bytes += n;
      if (!echo) continue;
      // The bytes go back before the next read: a peer that sends faster
      // than it reads is slowed down by TCP itself.
      for (let rest = buffer.subarray(0, n); rest.length;) {
        rest = rest.subarray(await conn.write(rest));
      }
      books.echoed(peer, n);
    }
    books.ended(peer, bytes, null);
  } catch (error) {
    // On quit the server closed the connection under the read: counted as
    // closed on quit, not here. One that ended by itself meanwhile counts.
    if (books.closing && !open.has(conn)) return;
    books.ended(peer, bytes, { code: errorCode(error), message: errorMessage(error) });
  } finally {
    if (open.delete(conn)) conn.close();
  }
}

// Deno's error classes, as the C library names them (repeated in client.ts on purpose).
function errorCode(error: unknown): string {
  if (error instanceof Deno.errors.ConnectionReset) return "ECONNRESET";
  if (error instanceof Deno.errors.BrokenPipe) return "ECONNRESET";
  if (error instanceof Deno.errors.TimedOut) return "ETIMEDOUT";
  if (error instanceof Deno.errors.NetworkUnreachable) return "ENETUNREACH";
  return String((error as { code?: unknown } | null)?.code ?? "");
}

// ## The books: one set for both engines
//
// Every connection the kernel completed and the server took from its
// backlog was accepted, rejected (over --max-connections), or reset before
// it could be accepted; each accepted one ended one way.

// While accept() fails for a reason that lasts (EMFILE), try again this
// often, and call it over once accepting has worked this long: one line when
// accepting stops and one when it works again, not one per retry.
const ACCEPT_RETRY_MS = 100, ACCEPT_RECOVERED_MS = 1000;

/** The counts, the events and the limit on open connections, for either engine. */
class Books {
  closing = false;
  open = 0;
  counts: Omit<ServerSummary, "connections"> = {
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
  trouble:
    | { since: number; last: number; retries: number; timer?: ReturnType<typeof setTimeout> }
    | null = null;

  constructor(readonly options: ServerOptions, readonly onEvent: (event: ServerEvent) => void) {}

  /** Stamped now, or when it happened: a probe is seen after it was sent. */
  emit(event: ServerEventBody, atMs = Date.now()) {
    this.onEvent({ time: new Date(atMs).toISOString(), ...event } as ServerEvent);
  }

  /** A connection arrived: kept (true), or over --max-connections or failed (close it). */
  admit(peer: string, turnOn: () => void): boolean {
    // A bound on open connections keeps a flood of clients from taking every
    // descriptor (and with them, the listener).
    if (this.open >= this.options.maxConnections) {
      this.counts.rejected++;
      this.emit({ event: "rejected", peer, open: this.open });
      return false;
    }
    this.counts.accepted++;
    this.open++;
    let failure: unknown = null;
    try {
      turnOn();
    } catch (error) {
      failure = error;
    }
    this.emit({ event: "accepted", peer, keepAlive: this.options.keepAlive, open: this.open });
    if (failure === null) return true;
    this.open--;
    this.counts.errors++;
    this.emit({ event: "error", peer, message: errorMessage(failure) });
    return false;
  }

  echoed(peer: string, bytes: number) {
    this.emit({ event: "echoed", peer, bytes });
  }

  /** How a connection ended: a FIN (null), a reset, unanswered probes, or another error. */
  ended(peer: string, bytes: number, error: { code: string; message: string } | null) {
    this.open--;
    const code = error?.code;
    if (!error) {
      this.counts.peerClosed++;
      this.emit({ event: "peer-closed", peer, bytes });
    } else if (code === "ECONNRESET") {
      this.counts.reset++;
      this.emit({ event: "reset", peer, bytes });
    } else if (code === "ETIMEDOUT" || code === "ENETUNREACH" || code === "EHOSTUNREACH") {
      this.counts.timedOut++;
      this.emit({ event: "timed-out", peer, bytes, code });
    } else {
      this.counts.errors++;
      this.emit({ event: "error", peer, message: error.message });
    }
  }

  /** The peer reset the connection while it waited in the backlog. */
  resetBeforeAccept() {
    this.counts.resetBeforeAccept++;
    this.emit({ event: "reset-before-accept" });
  }

  /** Returns how long to wait before accepting again. */
  acceptFailed(message: string): number {
    clearTimeout(this.trouble?.timer);
    if (this.trouble) {
      Object.assign(this.trouble, { last: performance.now(), timer: undefined });
      this.trouble.retries++;
    } else {
      this.trouble = { since: performance.now(), last: performance.now(), retries: 0 };
      this.counts.acceptPauses++;
      this.emit({ event: "accept-error", message });
    }
    return ACCEPT_RETRY_MS;
  }

  acceptSucceeded() {
    if (!this.trouble || this.trouble.timer !== undefined) return;
    const { since, last, retries } = this.trouble;
    this.trouble.timer = setTimeout(() => {
      this.emit({ event: "accept-resumed", failedMs: Math.round(last - since), retries });
      this.trouble = null;
    }, ACCEPT_RECOVERED_MS);
  }

  /** The summary, once every connection is accounted for. */
  finish(closedOnQuit: number): ServerSummary {
    clearTimeout(this.trouble?.timer);
    this.counts.closedOnQuit = closedOnQuit;
    const { accepted, rejected, resetBeforeAccept } = this.counts;
    const summary = { connections: accepted + rejected + resetBeforeAccept, ...this.counts };
    this.emit({ event: "summary", ...summary });
    return summary;
  }
}

// ## What the package adds: times per connection, --watch, --engine epoll

// Times go on the listener, once: every connection it accepts inherits
// them. --watch opens its netlink socket now, before the server says it
// listens: without a descriptor for it, the server does not start.
function tuneListener(ka: Keepalive, listener: Deno.TcpListener, o: ServerOptions, books: Books) {
  try {
    if (o.tuning) ka.setKeepAlive(listener, o.tuning);
    const settings = ka.getKeepAlive(listener);
    const { hostname, port } = listener.addr;
    const watcher = o.watch
      ? ka.watchKeepAliveAll(
        { hostname, port },
        (probe: ProbeEvent, remote: Deno.NetAddr) =>
          books.emit(
            { event: "probe", peer: formatAddr(remote), ...probe },
            Date.now() - probe.agoMs,
          ),
        {
          limits: settings,
          onError: (error: unknown) =>
            books.emit({ event: "watch-error", message: errorMessage(error) }),
        },
      )
      : undefined;
    return { settings, watcher };
  } catch (error) {
    const what = o.tuning ? "cannot tune keepalive" : "--watch cannot start";
    throw new Error(`${what}: ${errorMessage(error)}`, { cause: error });
  }
}

// What the kernel made of --backlog (capped at somaxconn); null if unknown.
function kernelBacklog(ka: Keepalive, addr: Deno.NetAddr): number | null {
  try {
    return ka.listenerBacklog(addr);
  } catch {
    return null;
  }
}

function epollEngine(ka: Keepalive, listener: Deno.TcpListener, o: ServerOptions, books: Books) {
  try {
    return ka.serveWithEpoll(listener, o, books);
  } catch (error) {
    throw new Error(`cannot serve with --engine epoll: ${errorMessage(error)}`, { cause: error });
  }
}

// ## The command line

/** What the server does, from its command-line flags. */
export interface ServerOptions {
  /** The address to listen on; `0.0.0.0` is every IPv4 address, `::` every address. */
  hostname: string;
  /** The port to listen on; 0 lets the kernel pick a free one. */
  port: number;
  /** Connections the kernel may queue until they are accepted (capped at net.core.somaxconn). */
  backlog: number;
  /** Whether to turn `SO_KEEPALIVE` on for each accepted connection. */
  keepAlive: boolean;
  /** Connections over this many are closed as soon as they are accepted. */
  maxConnections: number;
  /** Per-connection times in milliseconds (the package's `setKeepAlive` options), or null. */
  tuning: { time?: number; interval?: number; retries?: number; userTimeout?: number } | null;
  /** Report every keepalive probe on every connection. */
  watch: boolean;
  /** Send back whatever a peer sends (the C server only read). */
  echo: boolean;
  /** Print events as JSON lines instead of text. */
  json: boolean;
  /** "deno": a `Deno.TcpConn` and a pending read each; "epoll": one epoll for all (the package). */
  engine: "deno" | "epoll";
}

/** The `--help` text. */
export const HELP = `Usage: deno run --allow-net [--allow-ffi] server.ts [options]

Listens for TCP connections, turns keepalive on for each one, and reports how
each connection ends. Quit with Enter, Ctrl-C or SIGTERM.

Options:
  --hostname ADDRESS      address to listen on (default 0.0.0.0; :: for IPv6 too)
  --port N                port to listen on, 0..65535 (default 8888; 0 picks a free port)
  --backlog N             connections the kernel may hold until they are accepted, 1..65535
                          (default 511; the kernel caps it at net.core.somaxconn)
  --no-keepalive          leave SO_KEEPALIVE off on accepted connections
  --max-connections N     close connections beyond N open ones at once, 1..1000000 (default 1000)
  --echo                  send back whatever a peer sends
  --json                  print one JSON object per event instead of text
  -h, --help              show this help

With the kit's package @kakit/keepalive (loaded only for these; --allow-ffi, Linux):
  --idle SECONDS          silence before the first probe, 1..32767 (tcp_keepalive_time)
  --interval SECONDS      time between unanswered probes, 1..32767 (tcp_keepalive_intvl)
  --count N               unanswered probes before the connection fails, 1..127 (tcp_keepalive_probes)
  --user-timeout SECONDS  how long sent data may stay unacknowledged, 0..2147483; 0 (default)
                          leaves it to retransmissions, about 15 min. Once a probe is out, it is
                          also how long the peer may stay silent, instead of --count
  --watch                 print each keepalive probe as the kernel sends or answers it
  --engine deno|epoll     deno (default): a Deno.Conn and a pending read per connection;
                          epoll: one epoll for every connection, about 1.3 KB per idle
                          connection at 10,000 instead of 6; same events

Exit codes: 0 after a quit (Enter, Ctrl-C, SIGTERM), 1 when it cannot listen,
a permission or the package is missing, 2 for bad flags.`;

// (Repeated in client.ts on purpose.) The per-connection flags: each stands in for a sysctl, in its units, within
// the kernel's per-socket limits; the package takes milliseconds.
const TUNING = {
  idle: { option: "time", min: 1, max: 32767, ms: 1000 },
  interval: { option: "interval", min: 1, max: 32767, ms: 1000 },
  count: { option: "retries", min: 1, max: 127, ms: 1 },
  "user-timeout": { option: "userTimeout", min: 0, max: 2147483, ms: 1000 },
} as const;

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
  const tuningFlags = Object.keys(TUNING) as (keyof typeof TUNING)[];
  const flags = parseFlags(args, {
    string: ["hostname", "port", "backlog", "max-connections", "engine", ...tuningFlags],
    boolean: ["keepalive", "json", "watch", "echo"],
    negatable: ["keepalive"],
  });
  if (flags.help) return "help";
  const tuning: Record<string, number> = {};
  for (const flag of tuningFlags) {
    const { option, min, max, ms } = TUNING[flag];
    if (flags[flag] !== undefined) {
      tuning[option] = parseInteger(`--${flag}`, flags[flag], min, max) * ms;
    }
  }
  const tuned = Object.keys(tuning).length > 0;
  if (tuned && !flags.keepalive) {
    throw new UsageError(
      "--no-keepalive cannot be combined with --idle, --interval, --count or --user-timeout",
    );
  }
  const engine = flags.engine ?? "deno";
  if (engine !== "deno" && engine !== "epoll") {
    throw new UsageError(`--engine must be deno or epoll, not ${showTyped(engine)}`);
  }
  return {
    hostname: parseHostname("--hostname", flags.hostname ?? "0.0.0.0"),
    port: parseInteger("--port", flags.port ?? "8888", 0, 65535),
    backlog: parseInteger("--backlog", flags.backlog ?? "511", 1, 65535),
    keepAlive: flags.keepalive,
    maxConnections: parseInteger("--max-connections", flags["max-connections"] ?? "1000", 1, 1e6),
    tuning: tuned ? tuning : null,
    watch: flags.watch,
    echo: flags.echo,
    json: flags.json,
    engine,
  };
}

// ## Printing

/** Everything the server reports, one object per event. `--json` prints these as they are. */
export type ServerEvent = { time: string } & ServerEventBody;

/**
 * What happened to every connection, printed when the server quits: each
 * connection taken from the backlog was accepted, rejected or reset before
 * it could be; each accepted one ended one way (docs/scripts.md).
 */
export interface ServerSummary {
  connections: number;
  accepted: number;
  rejected: number;
  resetBeforeAccept: number;
  peerClosed: number;
  reset: number;
  timedOut: number;
  errors: number;
  closedOnQuit: number;
  /** Times accepting stopped for a while (out of descriptors) and resumed. */
  acceptPauses: number;
}

/** A {@linkcode ServerEvent} before it is stamped with the time. */
export type ServerEventBody =
  | {
    event: "listening";
    address: string;
    engine: "deno" | "epoll";
    backlog: number;
    /** What the kernel holds (capped at net.core.somaxconn), read when the package is loaded. */
    kernelBacklog: number | null;
    keepAlive: boolean;
    maxConnections: number;
    /** What the kernel holds for the listener (ms), with --watch or tuning; null otherwise. */
    tuning: KeepAliveSettings | null;
  }
  | { event: "accepted"; peer: string; keepAlive: boolean; open: number }
  | { event: "rejected"; peer: string; open: number }
  | { event: "reset-before-accept" }
  | { event: "echoed" | "peer-closed" | "reset"; peer: string; bytes: number }
  /** `code` is ETIMEDOUT, or ENETUNREACH / EHOSTUNREACH when this side lost its route. */
  | { event: "timed-out"; peer: string; bytes: number; code: string }
  | { event: "error"; peer: string; message: string }
  | { event: "watch-error" | "accept-error"; message: string }
  | { event: "accept-resumed"; failedMs: number; retries: number }
  | ({ event: "probe"; peer: string } & ProbeEvent)
  | { event: "output-dropped"; lines: number }
  | ({ event: "summary" } & ServerSummary);

/**
 * Formats a server event as one line of text, for people. `enterQuits`
 * says whether the listening line may promise that Enter quits: not when
 * stdin is not a terminal (a background job, a service). `ka`, the package,
 * words the keepalive times and the probes.
 */
export function formatServerEvent(
  event: ServerEvent,
  how: { enterQuits: boolean; ka?: Words | null } = { enterQuits: true },
): string {
  return `${event.time} ${describe(event, how)}`;
}

function describe(e: ServerEventBody, how: { enterQuits: boolean; ka?: Words | null }) {
  switch (e.event) {
    case "listening":
      return `listening on ${e.address} (${describeQueue(e)}), keepalive ${onOff(e.keepAlive)} ` +
        `for accepted connections${describeTimes(e, how.ka)}, at most ${e.maxConnections} at ` +
        `once; ${how.enterQuits ? "Enter" : "SIGTERM"} quits`;
    case "accepted":
      return `accepted ${e.peer}, keepalive ${onOff(e.keepAlive)} (${e.open} open)`;
    case "echoed":
      return `${e.peer} sent ${plural(e.bytes, "byte")}, echoed back`;
    case "rejected":
      return `rejected ${e.peer}: already ${e.open} open (--max-connections)`;
    case "reset-before-accept":
      return "a connection was reset by its peer while it waited to be accepted";
    case "peer-closed":
      return `${e.peer} closed by peer after ${plural(e.bytes, "byte")}`;
    case "reset":
      return `${e.peer} reset by peer after ${plural(e.bytes, "byte")}`;
    case "timed-out":
      return `${e.peer} timed out: keepalive probes went unanswered, ` +
        (e.code === "ETIMEDOUT"
          ? "the peer is gone"
          : `and the last could not be sent (${e.code}: this side lost its route to the peer)`);
    case "error":
      return `${e.peer} error: ${e.message}`;
    case "watch-error":
      return `cannot watch probes any more: ${e.message}`;
    case "accept-error":
      return `accept failed: ${e.message}; retrying every ${ACCEPT_RETRY_MS} ms, ` +
        `connections wait in the backlog meanwhile`;
    case "accept-resumed":
      return `accepting again after ${(e.failedMs / 1000).toFixed(2)} s and ${e.retries} retries`;
    case "probe":
      return `${e.peer} ${how.ka ? how.ka.describeProbe(e) : e.kind}`;
    case "output-dropped":
      return `${e.lines} lines of output dropped: stdout was not being read`;
    case "summary":
      return `summary: ${plural(e.connections, "connection")}: ${e.accepted} accepted, ` +
        `${e.rejected} rejected, ${e.resetBeforeAccept} reset before accept; of the accepted, ` +
        `${e.peerClosed} closed by peer, ${e.reset} reset, ${e.timedOut} timed out, ` +
        `${e.errors} errors, ${e.closedOnQuit} closed on quit` +
        (e.acceptPauses
          ? `; accepting stopped for a while (${plural(e.acceptPauses, "time")})`
          : "");
  }
}

// "engine epoll, backlog 4096"; and what the kernel made of a larger one
// (4096 is Linux's default net.core.somaxconn since 5.4).
function describeQueue(
  { engine, backlog, kernelBacklog }: {
    engine: string;
    backlog: number;
    kernelBacklog: number | null;
  },
) {
  if (kernelBacklog !== null && kernelBacklog < backlog) {
    return `engine ${engine}, backlog ${kernelBacklog}: ${backlog} asked, capped at net.core.somaxconn`;
  }
  return kernelBacklog === null && backlog > 4096
    ? `engine ${engine}, backlog ${backlog} asked, at most net.core.somaxconn, 4096 by default`
    : `engine ${engine}, backlog ${backlog}`;
}

// The times keepalive uses; with keepalive off there are none to tell, and
// --watch can see only the peer's probes.
function describeTimes(
  e: { keepAlive: boolean; tuning: KeepAliveSettings | null },
  ka?: Words | null,
) {
  if (!e.tuning) return "";
  if (!e.keepAlive) return " (--watch sees only the peer's probes)";
  return ka ? ` (${ka.describeKeepAlive(e.tuning)})` : "";
}

// ## The command

/** Where the command reads and writes; tests pass their own. */
export interface CommandIO {
  /** Resolves when the user asks to quit (default: Enter, Ctrl-C or SIGTERM). */
  quit?: () => Promise<unknown>;
  /** Where event lines go (default: stdout). It may stall; the server does not. */
  stdout?: { write(bytes: Uint8Array): Promise<number> };
  /** Where error lines go (default: stderr). */
  stderr?: (line: string) => void;
}

/**
 * The command: parse flags, listen, report events until the user quits,
 * then close everything and print the summary. Returns the exit code: 0
 * after a quit, 1 when the server cannot listen or something is missing, 2
 * for bad flags.
 */
export async function main(args: string[], io: CommandIO = {}): Promise<number> {
  const stderr = io.stderr ?? printError;
  let options: ServerOptions | "help";
  try {
    options = parseServerArgs(args);
  } catch (error) {
    stderr(`server.ts: ${errorMessage(error)} (see --help)`);
    return 2;
  }
  if (options === "help") return writeHelp(HELP, "server.ts");
  const needs = packageFlags(options);
  // Ask before listening: a missing permission or package should stop us
  // before any client connects, not after.
  let ka: Keepalive | null = null;
  if (needs.length > 0) {
    try {
      ka = await loadPackage();
    } catch (error) {
      stderr(`server.ts: ${need(needs)} ${MISSING_PACKAGE} (${errorMessage(error)})`);
      return 1;
    }
    // The blanket --allow-ffi, or one narrowed to the C library's path.
    const support = ka.keepAliveTuningSupport();
    if (!support.available) {
      stderr(
        support.missing === "permission"
          ? `server.ts: ${need(needs)} the --allow-ffi permission: ` +
            runAgainWith(["--allow-net", "--allow-ffi"], args)
          : `server.ts: ${need(needs)} Linux: ${support.message}`,
      );
      return 1;
    }
  }
  const enterQuits = io.quit === undefined && Deno.stdin.isTerminal();
  // Every open connection may say something at once (a mass close, a burst
  // of reads), and all of it waits for one turn of the writer: the queue
  // holds a few lines per connection before it drops any.
  const out = lineWriter(
    io.stdout ?? Deno.stdout,
    (lines): ServerEvent => ({ time: now(), event: "output-dropped", lines }),
    (event: ServerEvent) =>
      options.json ? JSON.stringify(event) : formatServerEvent(event, { enterQuits, ka }),
    Math.max(10_000, 4 * options.maxConnections),
  );
  // Listen for Enter, Ctrl-C and SIGTERM first: a signal listener takes a
  // descriptor, and when descriptors run short, listening (not the signal
  // handler, half-way through serving) should be what fails, in one line.
  const quit = (io.quit ?? waitForQuit)();
  let server: RunningServer;
  try {
    server = startServer(options, out.print, ka);
  } catch (error) {
    stderr(`server.ts: ${describeListenError(error, options, args)}`);
    return 1;
  }
  await quit;
  await server.close();
  // The summary gets half a second to go out, not more: a stalled stdout
  // must not keep the server from quitting.
  await out.flush(500);
  return 0;
}

// The flags that need the package, as the user typed them.
function packageFlags(o: ServerOptions): string[] {
  const tuned = Object.entries(TUNING).filter(([, t]) => o.tuning?.[t.option] !== undefined);
  return [
    ...tuned.map(([flag]) => `--${flag}`),
    ...(o.watch ? ["--watch"] : []),
    ...(o.engine === "epoll" ? ["--engine epoll"] : []),
  ];
}

async function loadPackage(): Promise<Keepalive> {
  const parts = await Promise.all([
    import("@kakit/keepalive"),
    import("@kakit/keepalive/flags"),
    import("@kakit/keepalive/sock-diag"),
    import("@kakit/keepalive/epoll"),
  ]);
  return Object.assign({}, ...parts);
}

// "--idle needs", "--idle and --watch need", "--idle, --count and --watch need".
function need(flags: string[]): string {
  return flags.length > 1
    ? `${flags.slice(0, -1).join(", ")} and ${flags.at(-1)} need`
    : `${flags[0]} needs`;
}

const MISSING_PACKAGE = "the kit's package @kakit/keepalive: copy the kit's keepalive/ folder " +
  `beside this script and add "@kakit/keepalive": "./keepalive/mod.ts" to "imports" in deno.json`;

function describeListenError(error: unknown, options: ServerOptions, args: string[]): string {
  const where = formatAddr({ transport: "tcp", hostname: options.hostname, port: options.port });
  if (error instanceof Deno.errors.NotCapable) {
    const ffi = packageFlags(options).length > 0 ? ["--allow-ffi"] : [];
    return `listening on ${where} needs the --allow-net permission: ` +
      runAgainWith(["--allow-net", ...ffi], args);
  }
  if (!(error instanceof Error) || error.cause) return errorMessage(error); // the package's
  const why = error instanceof Deno.errors.AddrInUse
    ? "the port is already in use"
    : error instanceof Deno.errors.AddrNotAvailable
    ? `${options.hostname} is not an address of this machine`
    : error instanceof Deno.errors.PermissionDenied
    ? "ports below 1024 need root (or CAP_NET_BIND_SERVICE)"
    : /lookup address/.test(error.message)
    ? `cannot resolve ${showTyped(options.hostname)}`
    : errorMessage(error);
  return `cannot listen on ${where}: ${why}`;
}

// ## Small helpers, repeated in client.ts on purpose: each script stands alone

/** Bad command-line input: one line, exit code 2. */
export class UsageError extends Error {
  /** Named, so that a stack trace (there should be none) says what it is. */
  override name = "UsageError";
}

// What someone typed, quoted for a message: control and format characters
// (escape sequences, bidi overrides) escaped, long values cut.
function showTyped(text: string, max = 40): string {
  const quoted = JSON.stringify(text.slice(0, max)).replace(
    /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu,
    (c) => `\\u${c.codePointAt(0)!.toString(16).padStart(4, "0")}`,
  );
  return text.length > max ? `${quoted.slice(0, -1)}..." (${text.length} characters)` : quoted;
}

// Strict flags over parseArgs: an unknown flag, a boolean with a value
// (--json=0), a missing value, a flag given twice or a stray argument is a
// UsageError, where parseArgs would guess.
function parseFlags<S extends string, B extends string>(
  args: string[],
  spec: { string: S[]; boolean: B[]; negatable?: B[] },
): { [K in S]?: string } & { [K in B | "help"]: boolean } {
  const seen = new Set<string>();
  const normalized: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--") {
      if (i + 1 < args.length) {
        throw new UsageError(`unexpected argument ${showTyped(args[i + 1])}`);
      }
      break;
    }
    if (!/^--?[^-]/.test(arg) || /^-[0-9]/.test(arg)) {
      throw new UsageError(arg ? `unexpected argument ${showTyped(arg)}` : "an empty argument");
    }
    const [written, inline] = arg.includes("=")
      ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)]
      : [arg, undefined];
    const bare = written === "-h" ? "help" : written.replace(/^--/, "");
    const name = bare.startsWith("no-") && spec.negatable?.includes(bare.slice(3) as B)
      ? bare.slice(3)
      : bare;
    const isBoolean = name === "help" || spec.boolean.includes(name as B);
    if (!isBoolean && !spec.string.includes(name as S)) {
      throw new UsageError(`unknown flag ${showTyped(written)}`);
    }
    if (seen.has(name)) throw new UsageError(`--${name} is given twice`);
    seen.add(name);
    if (isBoolean && inline !== undefined) {
      throw new UsageError(`${written} takes no value, not ${showTyped(inline)}`);
    }
    const value = isBoolean ? undefined : inline ?? args[++i];
    if (!isBoolean && !value) throw new UsageError(`--${name} needs a value`);
    normalized.push(isBoolean ? `--${bare}` : `--${name}=${value}`);
  }
  return parseArgs(normalized, {
    string: spec.string,
    boolean: [...spec.boolean, "help"],
    negatable: spec.negatable,
    default: Object.fromEntries((spec.negatable ?? []).map((name) => [name, true])),
  }) as never;
}

// A whole number in min..max: decimal digits only, compared exactly.
function parseInteger(flag: string, text: string, min: number, max: number): number {
  if (!/^[0-9]+$/.test(text) || BigInt(text) < BigInt(min) || BigInt(text) > BigInt(max)) {
    throw new UsageError(
      `${flag} must be an integer from ${min} to ${max}, not ${showTyped(text)}`,
    );
  }
  return Number(text);
}

// An IPv6 address (brackets optional), a dotted IPv4 address, or a host name.
function parseHostname(flag: string, text: string): string {
  const bare = /^\[.*\]$/.test(text) ? text.slice(1, -1) : text;
  const shown = `${flag} ${showTyped(text)}`;
  if (text.startsWith("[") !== text.endsWith("]")) {
    throw new UsageError(`${shown} is not an address: unmatched bracket`);
  }
  if (bare.includes("%")) throw new UsageError(`${shown}: zone ids (%eth0) are not supported`);
  if (bare.includes(":")) {
    if (/^[0-9A-Fa-f:.]+$/.test(bare) && URL.canParse(`http://[${bare}]/`)) return bare;
    throw new UsageError(`${shown} is not an IPv6 address`);
  }
  if (bare !== text) throw new UsageError(`${shown}: brackets are for IPv6 addresses only`);
  const label = "[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?";
  if (bare.length > 253 || !new RegExp(`^${label}(\\.${label})*\\.?$`).test(bare)) {
    throw new UsageError(`${shown} is not an address or host name`);
  }
  // The C library would read 0177.0.0.1 as octal and 2130706433 as 127.0.0.1.
  const octet = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
  if (
    /^([0-9]+|0x[0-9a-f]*)$/i.test(bare.replace(/\.$/, "").split(".").at(-1)!) &&
    !new RegExp(`^${octet}(\\.${octet}){3}$`).test(bare)
  ) {
    throw new UsageError(
      `${shown} is not an IPv4 address: write four numbers 0..255 without leading zeros`,
    );
  }
  return bare;
}

// This command again, with permissions added: copy it, and it runs.
function runAgainWith(permissions: string[], args: string[]): string {
  const quote = (arg: string) =>
    /^[\w.,:=\/+@%-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`;
  const path = decodeURIComponent(new URL(import.meta.url).pathname);
  const here = `${Deno.cwd()}/`;
  const script = path.startsWith(here) ? path.slice(here.length) : path;
  return ["deno", "run", ...permissions, script, ...args].map(quote).join(" ");
}

// Lines out without ever waiting: console.log blocks while stdout is full (a
// paused terminal, a stalled pipe), and a server waiting there serves no one.
// Lines queue and go out in the background, many per write; past `maxQueued`
// they are dropped and counted, and a line says how many once the output
// takes lines again. A closed output drops everything after it.
function lineWriter<E>(
  output: { write(bytes: Uint8Array): Promise<number> },
  dropped: (lines: number) => E,
  format: (event: E) => string,
  maxQueued = 10_000,
) {
  const queue: string[] = [];
  let lost = 0, writing = false, broken = false, idle = Promise.resolve();
  const noteLost = () => lost && (queue.push(format(dropped(lost))), lost = 0);
  const drain = async () => {
    try {
      for (; noteLost() || queue.length;) {
        const bytes = new TextEncoder().encode(queue.splice(0, 512).join("\n") + "\n");
        for (let sent = 0; sent < bytes.length;) sent += await output.write(bytes.subarray(sent));
      }
    } catch {
      broken = true;
      queue.length = 0;
    }
    writing = false;
  };
  const start = () => writing || broken || (writing = true, idle = drain());
  return {
    print(event: E) {
      if (broken) return;
      if (queue.length >= maxQueued) return void lost++;
      noteLost();
      queue.push(format(event));
      start();
    },
    /** Waits until every line is out, or `timeoutMs` passes. */
    async flush(timeoutMs: number) {
      start();
      let timer;
      await Promise.race([idle, new Promise((done) => timer = setTimeout(done, timeoutMs))]);
      clearTimeout(timer);
    },
  };
}

// Resolves when the user asks to quit: Enter (the C programs' getchar()),
// Ctrl-C or SIGTERM. A closed stdin (a background job, a service) is not a
// request to quit. The signal listeners stay, so that a second Ctrl-C while
// the server closes down does not kill it halfway.
function waitForQuit(): Promise<unknown> {
  return new Promise((quit) => {
    for (const signal of ["SIGINT", "SIGTERM"] as const) {
      Deno.addSignalListener(signal, () => quit(signal));
    }
    (async () => {
      const buffer = new Uint8Array(256);
      const terminal = Deno.stdin.isTerminal();
      for (;;) {
        const n = await Deno.stdin.read(buffer).catch(() => undefined);
        if (n === undefined || (n === null && !terminal)) return; // only a signal quits
        if (n === null) await delay(100); // Ctrl-D at a terminal ends one read
        else if (buffer.subarray(0, n).includes(0x0a)) return quit("enter");
      }
    })();
  });
}

// Writes the help; stdout full (> /dev/full) is one line and exit 1.
function writeHelp(help: string, script: string): number {
  try {
    const bytes = new TextEncoder().encode(help + "\n");
    for (let sent = 0; sent < bytes.length;) sent += Deno.stdout.writeSync(bytes.subarray(sent));
    return 0;
  } catch (error) {
    printError(`${script}: cannot write the help: ${errorMessage(error)}`);
    return 1;
  }
}

// One line on stderr, or nothing when stderr cannot be written: the exit
// code still tells.
function printError(line: string): void {
  try {
    Deno.stderr.writeSync(new TextEncoder().encode(line + "\n"));
  } catch { /* 2> /dev/full */ }
}

const formatAddr = ({ hostname, port }: Deno.NetAddr) =>
  hostname.includes(":") ? `[${hostname}]:${port}` : `${hostname}:${port}`;
const plural = (n: number, noun: string) => `${n} ${noun}${n === 1 ? "" : "s"}`;
const onOff = (on: boolean) => on ? "on" : "off";
const errorMessage = (error: unknown) =>
  (error instanceof Error ? error.message : String(error)).split("\n")[0];
const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
const now = () => new Date().toISOString();

if (import.meta.main) Deno.exit(await main(Deno.args));

// A real run (Deno 2.9.6, Linux): a client connected, stayed idle for a few
// probes, and quit; then Ctrl-C quit the server.
//
//   $ deno run --allow-net --allow-ffi server.ts --idle 2 --interval 1 --count 3 --watch
//   2026-11-25T20:08:03.075Z listening on 0.0.0.0:8888 (engine deno, backlog 511), keepalive on for accepted connections (idle 2 s, interval 1 s, 3 probes, user timeout off), at most 1000 at once; Enter quits
//   2026-11-25T20:08:04.088Z accepted 127.0.0.1:33626, keepalive on (1 open)
//   2026-11-25T20:08:06.102Z 127.0.0.1:33626 probe answered, after 2.01 s idle (seen 0.93 s later)
//   2026-11-25T20:08:09.391Z 127.0.0.1:33626 closed by peer after 0 bytes
//   2026-11-25T20:08:11.204Z summary: 1 connection: 1 accepted, 0 rejected, 0 reset before accept; of the accepted, 1 closed by peer, 0 reset, 0 timed out, 0 errors, 0 closed on quit

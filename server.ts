/**
 * # A TCP server that turns keepalive on for every connection
 *
 * @run deno run --allow-net server.ts [--hostname 0.0.0.0] [--port 8888] [--no-keepalive] [--max-connections 1000] [--json]
 * @run deno run --allow-net --allow-ffi server.ts --idle 2 --interval 1 --count 3 [--user-timeout 10] --watch
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
 * Deno's `setKeepAlive(true)` cannot change the 7200 s: `--idle`,
 * `--interval`, `--count` and `--user-timeout` set them for this server's
 * connections only, through `keepalive.ts` (FFI, so `--allow-ffi`), and
 * `--watch` prints each probe the kernel sends and whether it was answered.
 *
 * Copying this file into your project? It needs `@std/cli` in your import
 * map (`deno add jsr:@std/cli`), `keepalive.ts` beside it, and `--allow-net`
 * (plus `--allow-ffi` for the tuning flags).
 *
 * @module
 */
import { parseArgs } from "@std/cli/parse-args";
import {
  describeKeepAlive,
  getKeepAlive,
  type KeepAliveOptions,
  type KeepAliveSettings,
  type ProbeEvent,
  setKeepAlive,
  watchKeepAlive,
} from "./keepalive.ts";
export type { KeepAliveOptions, KeepAliveSettings, ProbeEvent } from "./keepalive.ts";

/** What the server does, from its command-line flags. */
export interface ServerOptions {
  /** The address to listen on; `0.0.0.0` is every IPv4 address, `::` every address. */
  hostname: string;
  /** The port to listen on; 0 lets the kernel pick a free one. */
  port: number;
  /** Whether to turn `SO_KEEPALIVE` on for each accepted connection. */
  keepAlive: boolean;
  /** Connections over this many are closed as soon as they are accepted. */
  maxConnections: number;
  /** Per-connection keepalive times (milliseconds), set on the listener; null for the system's. */
  tuning: KeepAliveOptions | null;
  /** Report every keepalive probe on every connection. */
  watch: boolean;
  /** Print events as JSON lines instead of text. */
  json: boolean;
}

/** Bad command-line input: the message is one line, and the exit code is 2. */
export class UsageError extends Error {}

/** The listener could not be tuned (not Linux, no FFI): the message is one line. */
export class TuningError extends Error {}

/** The `--help` text. */
export const HELP = `Usage: deno run --allow-net server.ts [options]

Listens for TCP connections, turns keepalive on for each one, and reports how
each connection ends. Quit with Enter, Ctrl-C or SIGTERM.

Options:
  --hostname ADDRESS     address to listen on (default 0.0.0.0; :: for IPv6 too)
  --port N               port to listen on, 0..65535 (default 8888; 0 picks a free port)
  --no-keepalive         leave SO_KEEPALIVE off on accepted connections
  --max-connections N    close connections beyond N open ones at once (default 1000)
  --json                 print one JSON object per event instead of text
  -h, --help             show this help

Per-connection keepalive (each one turns keepalive on; needs --allow-ffi, Linux only):
  --idle SECONDS         silence before the first probe, 1..32767 (system: tcp_keepalive_time)
  --interval SECONDS     time between unanswered probes, 1..32767 (system: tcp_keepalive_intvl)
  --count N              unanswered probes before the connection times out, 1..127 (tcp_keepalive_probes)
  --user-timeout SECONDS how long sent data may stay unacknowledged (0: about 15 min), and once
                         a probe is out, how long the peer may stay silent (overrides --count);
                         0..2147483
  --watch                print each probe the kernel sends, answered or not

Permissions: --allow-net (to listen and accept), and --allow-ffi for the
per-connection flags (Deno cannot set them itself yet).`;

/**
 * Parses the command-line flags. Throws {@linkcode UsageError} for anything
 * it cannot use; returns `"help"` for `--help`.
 *
 * @example
 * ```ts
 * import { parseServerArgs } from "./server.ts";
 * parseServerArgs(["--port", "0", "--hostname", "::"]);
 * // { hostname: "::", port: 0, keepAlive: true, maxConnections: 1000, tuning: null, watch: false, json: false }
 * ```
 */
export function parseServerArgs(args: string[]): ServerOptions | "help" {
  const flags = parseArgs(args, {
    string: ["hostname", "port", "max-connections", "idle", "interval", "count", "user-timeout"],
    boolean: ["keepalive", "json", "help", "watch"],
    negatable: ["keepalive"],
    alias: { h: "help" },
    default: { hostname: "0.0.0.0", port: "8888", "max-connections": "1000", keepalive: true },
    unknown: (arg: string) => {
      throw new UsageError(
        arg === ""
          ? "an empty argument: every flag needs a value that is not empty"
          : /^-[0-9]/.test(arg)
          ? `${arg} is not a valid value: no flag takes a negative number`
          : arg.startsWith("-")
          ? `unknown flag ${arg}`
          : `unexpected argument ${JSON.stringify(arg)}`,
      );
    },
  }) as {
    hostname: string;
    port: string;
    "max-connections": string;
    keepalive: boolean;
    json: boolean;
    help: boolean;
    watch: boolean;
    _: unknown[];
    idle?: string;
    interval?: string;
    count?: string;
    "user-timeout"?: string;
  };
  if (flags.help) return "help";
  // Arguments after "--" bypass the check above; this script takes none.
  if (flags._.length > 0) {
    throw new UsageError(`unexpected argument ${JSON.stringify(String(flags._[0]))}`);
  }
  const tuning = parseTuning(flags);
  if (tuning && !flags.keepalive) {
    throw new UsageError(
      "--no-keepalive cannot be combined with --idle, --interval, --count or --user-timeout",
    );
  }
  return {
    hostname: parseHostname(flags.hostname),
    port: parseInteger("--port", flags.port, 0, 65535),
    keepAlive: flags.keepalive,
    maxConnections: parseInteger("--max-connections", flags["max-connections"], 1, 1_000_000),
    tuning,
    watch: flags.watch,
    json: flags.json,
  };
}

// The flags are in seconds, like the sysctls; the library takes milliseconds,
// like Deno's proposed setKeepAlive({ time, interval, retries }).
function parseTuning(
  flags: { idle?: string; interval?: string; count?: string; "user-timeout"?: string },
): KeepAliveOptions | null {
  const tuning: KeepAliveOptions = {};
  if (flags.idle !== undefined) tuning.time = parseInteger("--idle", flags.idle, 1, 32767) * 1000;
  if (flags.interval !== undefined) {
    tuning.interval = parseInteger("--interval", flags.interval, 1, 32767) * 1000;
  }
  if (flags.count !== undefined) tuning.retries = parseInteger("--count", flags.count, 1, 127);
  if (flags["user-timeout"] !== undefined) {
    tuning.userTimeout = parseInteger("--user-timeout", flags["user-timeout"], 0, 2147483) * 1000;
  }
  return Object.keys(tuning).length > 0 ? tuning : null;
}

function parseHostname(value: string): string {
  if (value === "") throw new UsageError("--hostname needs a value");
  // Accept "[::1]" as well as "::1": brackets are how IPv6 is written next to a port.
  return value.replace(/^\[(.*)\]$/, "$1");
}

function parseInteger(flag: string, value: string, min: number, max: number): number {
  if (value === "") throw new UsageError(`${flag} needs a value`);
  if (!/^[0-9]+$/.test(value) || Number(value) < min || Number(value) > max) {
    throw new UsageError(
      `${flag} must be an integer from ${min} to ${max}, not ${JSON.stringify(value)}`,
    );
  }
  return Number(value);
}

/** Everything the server reports, one object per event. `--json` prints these as they are. */
export type ServerEvent =
  & { time: string }
  & (
    | {
      event: "listening";
      address: string;
      keepAlive: boolean;
      maxConnections: number;
      /** What the kernel holds for the listener (ms), with --watch or tuning; null otherwise. */
      tuning: KeepAliveSettings | null;
    }
    | { event: "accepted"; peer: string; keepAlive: boolean; open: number }
    | { event: "rejected"; peer: string; reason: string }
    | { event: "peer-closed"; peer: string; bytes: number }
    | { event: "reset"; peer: string; bytes: number }
    | { event: "timed-out"; peer: string; bytes: number }
    | { event: "error"; peer: string; message: string }
    | { event: "accept-error"; message: string }
    | ({ event: "probe"; peer: string } & ProbeEvent)
    | ({ event: "summary" } & ServerSummary)
  );

/** How many connections ended which way, printed when the server quits. */
export interface ServerSummary {
  /** Connections accepted (and kept: rejected ones are not counted here). */
  accepted: number;
  /** Connections the peer closed with a FIN. */
  peerClosed: number;
  /** Connections the peer reset (RST). */
  reset: number;
  /** Connections that timed out: keepalive probes went unanswered. */
  timedOut: number;
  /** Connections that failed otherwise, and failed accepts. */
  errors: number;
  /** Connections closed at once because --max-connections were open. */
  rejected: number;
  /** Connections still open when the server quit, and closed by it. */
  closedOnQuit: number;
}

/** A server started by {@linkcode startServer}. */
export interface RunningServer {
  /** Where it listens, with the real port when 0 was asked for. */
  addr: Deno.NetAddr;
  /** Closes the listener and every connection; resolves with the summary. */
  close(): Promise<ServerSummary>;
}

// The server never looks at what peers send, it only counts the bytes, so
// every connection reads into this one buffer. Reads overwrite each other's
// bytes, which is harmless here, and an idle connection then costs no buffer
// of its own: a 16 KiB buffer per connection would cost 16 KiB of memory per
// idle connection.
const discardBuffer = new Uint8Array(16 * 1024);

/**
 * Listens, accepts every connection, turns keepalive on, and reads each
 * connection until it ends, calling `onEvent` for everything that happens.
 * Throws what `Deno.listen` throws (port in use, no permission), or a
 * {@linkcode TuningError} when the listener cannot be tuned.
 *
 * @example
 * ```ts ignore
 * import { startServer } from "./server.ts";
 * const server = startServer(
 *   {
 *     hostname: "127.0.0.1",
 *     port: 0,
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
  const emit = (event: DistributiveOmit<ServerEvent, "time">) =>
    onEvent({ time: new Date().toISOString(), ...event } as ServerEvent);
  const summary: ServerSummary = {
    accepted: 0,
    peerClosed: 0,
    reset: 0,
    timedOut: 0,
    errors: 0,
    rejected: 0,
    closedOnQuit: 0,
  };
  const open = new Set<Deno.TcpConn>();
  const readers = new Set<Promise<void>>();
  let closing = false;

  const listener = Deno.listen({ hostname: options.hostname, port: options.port });
  // Per-connection times go on the listener, once: every connection it
  // accepts inherits them, so accepting costs nothing extra.
  // (--watch alone only reads them back: that proves FFI works before any
  // connection depends on it.)
  let tuning: KeepAliveSettings | null = null;
  if (options.tuning || options.watch) {
    try {
      if (options.tuning) setKeepAlive(listener, options.tuning);
      tuning = getKeepAlive(listener);
    } catch (error) {
      listener.close();
      throw new TuningError(
        `cannot tune keepalive on ${formatAddr(listener.addr)}: ${errorMessage(error)}`,
      );
    }
  }
  emit({
    event: "listening",
    address: formatAddr(listener.addr),
    keepAlive: options.keepAlive,
    maxConnections: options.maxConnections,
    tuning,
  });

  // Read a connection until it ends. The reads are what make the kernel's
  // verdict visible: a peer that closes shows up as end of stream, a reset as
  // ConnectionReset, and unanswered keepalive probes as TimedOut (ETIMEDOUT).
  // This server never writes, so nothing else can time a connection out.
  async function readUntilEnd(conn: Deno.TcpConn, peer: string) {
    let bytes = 0;
    // --watch: the kernel's probes on this connection, from TCP_INFO.
    let watcher: { stop(): void } | null = null;
    if (options.watch) {
      try {
        watcher = watchKeepAlive(conn, (probe) => emit({ event: "probe", peer, ...probe }));
      } catch (error) {
        emit({ event: "error", peer, message: `cannot watch: ${errorMessage(error)}` });
      }
    }
    try {
      for (;;) {
        const n = await conn.read(discardBuffer);
        if (n === null) break;
        bytes += n;
      }
      summary.peerClosed++;
      emit({ event: "peer-closed", peer, bytes });
    } catch (error) {
      if (closing) return; // we closed it ourselves, on quit
      if (error instanceof Deno.errors.ConnectionReset) {
        summary.reset++;
        emit({ event: "reset", peer, bytes });
      } else if (error instanceof Deno.errors.TimedOut) {
        summary.timedOut++;
        emit({ event: "timed-out", peer, bytes });
      } else {
        summary.errors++;
        emit({ event: "error", peer, message: errorMessage(error) });
      }
    } finally {
      watcher?.stop();
      if (open.delete(conn)) conn.close();
    }
  }

  const acceptLoop = (async () => {
    while (!closing) {
      let conn: Deno.TcpConn;
      try {
        conn = await listener.accept();
      } catch (error) {
        if (closing) return;
        summary.errors++;
        emit({ event: "accept-error", message: errorMessage(error) });
        // A connection reset while it waited in the backlog fails accept()
        // with ENOTCONN; the next one is fine. Running out of file
        // descriptors (EMFILE) fails every accept() until a connection
        // closes: wait a little instead of spinning.
        if (!(error instanceof Deno.errors.NotConnected)) {
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
        continue;
      }
      const peer = formatAddr(conn.remoteAddr);
      // A bound on open connections keeps a flood of clients from taking
      // every file descriptor (and with them, the listener).
      if (open.size >= options.maxConnections) {
        conn.close();
        summary.rejected++;
        emit({
          event: "rejected",
          peer,
          reason: `already ${open.size} open, the --max-connections limit`,
        });
        continue;
      }
      // The line the blog is about: SO_KEEPALIVE on the accepted socket. The
      // kernel arms the keepalive timer right away; the first probe goes out
      // after tcp_keepalive_time seconds without traffic.
      try {
        if (options.keepAlive) conn.setKeepAlive(true);
      } catch (error) {
        conn.close();
        summary.errors++;
        emit({ event: "error", peer, message: errorMessage(error) });
        continue;
      }
      open.add(conn);
      summary.accepted++;
      emit({ event: "accepted", peer, keepAlive: options.keepAlive, open: open.size });
      const reader = readUntilEnd(conn, peer);
      readers.add(reader);
      reader.finally(() => readers.delete(reader));
    }
  })();

  return {
    addr: listener.addr,
    async close() {
      closing = true;
      listener.close();
      await acceptLoop;
      summary.closedOnQuit = open.size;
      for (const conn of open) conn.close();
      open.clear();
      await Promise.all(readers);
      emit({ event: "summary", ...summary });
      return { ...summary };
    },
  };
}

/** Formats a server event as one line of text, for people. */
export function formatServerEvent(event: ServerEvent): string {
  const text = (() => {
    switch (event.event) {
      case "listening":
        return `listening on ${event.address}, keepalive ${
          event.keepAlive ? "on" : "off"
        } for accepted connections${
          event.tuning ? ` (${describeKeepAlive(event.tuning)})` : ""
        }, at most ${event.maxConnections} at once; Enter quits`;
      case "accepted":
        return `accepted ${event.peer}, keepalive ${
          event.keepAlive ? "on" : "off"
        } (${event.open} open)`;
      case "rejected":
        return `rejected ${event.peer}: ${event.reason}`;
      case "peer-closed":
        return `${event.peer} closed by peer after ${event.bytes} bytes`;
      case "reset":
        return `${event.peer} reset by peer after ${event.bytes} bytes`;
      case "timed-out":
        return `${event.peer} timed out: keepalive probes went unanswered, the peer is gone`;
      case "error":
        return `${event.peer} error: ${event.message}`;
      case "accept-error":
        return `accept failed: ${event.message}`;
      case "probe":
        return `${event.peer} ${formatProbe(event)}`;
      case "summary":
        return `summary: ${event.accepted} accepted, ${event.peerClosed} closed by peer, ${event.reset} reset, ` +
          `${event.timedOut} timed out, ${event.errors} errors, ${event.rejected} rejected, ` +
          `${event.closedOnQuit} closed on quit`;
    }
  })();
  return `${event.time} ${text}`;
}

function formatProbe(probe: ProbeEvent): string {
  switch (probe.kind) {
    case "answered":
      return `probe answered, after ${(probe.idleMs / 1000).toFixed(2)} s idle`;
    case "unanswered":
      return probe.of === null
        ? `probe ${probe.probe} unanswered (dead after ${
          probe.userTimeoutMs / 1000
        } s of silence: user timeout)`
        : `probe ${probe.probe}/${probe.of} unanswered`;
    case "late-answer":
      return `answered at last, after ${probe.unanswered} unanswered probes`;
    case "peer-probe":
      return "probed us; answered";
  }
}

/**
 * The command: parse flags, listen, report events until the user quits,
 * then close everything and print the summary. Returns the exit code: 0 after
 * a normal quit, 1 when the server cannot listen, 2 for bad flags.
 * `quit` replaces "Enter, Ctrl-C or SIGTERM" (for tests).
 */
export async function main(
  args: string[],
  quit: () => Promise<unknown> = waitForQuit,
): Promise<number> {
  let options: ServerOptions | "help";
  try {
    options = parseServerArgs(args);
  } catch (error) {
    console.error(`server.ts: ${errorMessage(error)} (see --help)`);
    return 2;
  }
  if (options === "help") {
    console.log(HELP);
    return 0;
  }
  const print = options.json
    ? (event: ServerEvent) => console.log(JSON.stringify(event))
    : (event: ServerEvent) => console.log(formatServerEvent(event));
  // Ask before listening: a missing permission should stop us before any
  // client connects, not after.
  if (
    (options.tuning || options.watch) &&
    Deno.permissions.querySync({ name: "ffi" }).state !== "granted"
  ) {
    console.error(`server.ts: ${FFI_NEEDED}`);
    return 1;
  }
  let server: RunningServer;
  try {
    server = startServer(options, print);
  } catch (error) {
    console.error(`server.ts: ${describeListenError(error, options)}`);
    return 1;
  }
  await quit();
  await server.close();
  return 0;
}

// Quit the way the C server's getchar() did: on Enter. Ctrl-C and SIGTERM
// quit too, cleanly. A closed stdin (the server runs in the background, or
// as a service) is not a request to quit: then only a signal stops it.
function waitForQuit(): Promise<string> {
  return new Promise((resolve) => {
    const signals: Deno.Signal[] = ["SIGINT", "SIGTERM"];
    const onSignal = () => done("signal");
    const done = (why: string) => {
      for (const signal of signals) Deno.removeSignalListener(signal, onSignal);
      resolve(why);
    };
    for (const signal of signals) Deno.addSignalListener(signal, onSignal);
    (async () => {
      const buffer = new Uint8Array(256);
      // Ctrl-D at a terminal ends one read, not the terminal: keep
      // listening there. Elsewhere end of input is final: keep serving.
      const terminal = Deno.stdin.isTerminal();
      for (;;) {
        let n: number | null;
        try {
          n = await Deno.stdin.read(buffer);
        } catch {
          return; // no usable stdin: only a signal quits
        }
        if (n === null && !terminal) return;
        if (n === null) await new Promise((resolve) => setTimeout(resolve, 100));
        else if (buffer.subarray(0, n).includes(0x0a)) return done("enter");
      }
    })();
  });
}

const FFI_NEEDED = "--idle, --interval, --count, --user-timeout and --watch need the --allow-ffi " +
  "permission: deno run --allow-net --allow-ffi server.ts";

function describeListenError(error: unknown, options: ServerOptions): string {
  if (error instanceof TuningError) return error.message;
  const where = formatAddr({ transport: "tcp", hostname: options.hostname, port: options.port });
  if (error instanceof Deno.errors.NotCapable) {
    return `listening on ${where} needs the --allow-net permission: deno run --allow-net server.ts`;
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
    return `cannot listen on ${where}: cannot resolve ${JSON.stringify(options.hostname)}`;
  }
  return `cannot listen on ${where}: ${errorMessage(error)}`;
}

/** `host:port`, with IPv6 hosts in brackets. */
function formatAddr(addr: Deno.Addr): string {
  if (addr.transport !== "tcp" && addr.transport !== "udp") return addr.transport;
  return addr.hostname.includes(":")
    ? `[${addr.hostname}]:${addr.port}`
    : `${addr.hostname}:${addr.port}`;
}

function errorMessage(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).split("\n")[0];
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

if (import.meta.main) Deno.exit(await main(Deno.args));

// Real runs (Deno 2.9.6, Linux 6.18). A client connected, stayed idle for one
// probe, and quit; then Enter quit the server:
//
//   $ deno run --allow-net --allow-ffi server.ts --idle 2 --interval 1 --count 3 --watch
//   2026-11-25T14:07:46.213Z listening on 0.0.0.0:8888, keepalive on for accepted connections (idle 2 s, interval 1 s, 3 probes, user timeout 0 s), at most 1000 at once; Enter quits
//   2026-11-25T14:07:46.717Z accepted 127.0.0.1:58264, keepalive on (1 open)
//   2026-11-25T14:07:48.732Z 127.0.0.1:58264 probe answered, after 2.02 s idle
//   2026-11-25T14:07:49.502Z 127.0.0.1:58264 closed by peer after 0 bytes
//   2026-11-25T14:07:50.695Z summary: 1 accepted, 1 closed by peer, 0 reset, 0 timed out, 0 errors, 0 rejected, 0 closed on quit
//
// The same server in a network namespace, its client in another, joined by a
// veth cable that was cut one second after the client connected:
//
//   $ sudo ip netns exec A deno run --allow-net --allow-ffi server.ts --hostname :: --idle 2 --interval 1 --count 3 --watch
//   2026-11-25T14:07:55.867Z listening on [::]:8888, keepalive on for accepted connections (idle 2 s, interval 1 s, 3 probes, user timeout 0 s), at most 1000 at once; Enter quits
//   2026-11-25T14:07:56.566Z accepted [fd6b:61::2]:51670, keepalive on (1 open)
//   2026-11-25T14:07:58.587Z [fd6b:61::2]:51670 probe 1/3 unanswered
//   2026-11-25T14:07:59.796Z [fd6b:61::2]:51670 probe 2/3 unanswered
//   2026-11-25T14:08:00.806Z [fd6b:61::2]:51670 probe 3/3 unanswered
//   2026-11-25T14:08:01.657Z [fd6b:61::2]:51670 timed out: keepalive probes went unanswered, the peer is gone
//   2026-11-25T14:08:04.548Z summary: 1 accepted, 0 closed by peer, 0 reset, 1 timed out, 0 errors, 0 rejected, 0 closed on quit
//
//   $ deno run --allow-net server.ts --port 99999
//   server.ts: --port must be an integer from 0 to 65535, not "99999" (see --help)
//   $ deno run --allow-net server.ts --watch
//   server.ts: --idle, --interval, --count, --user-timeout and --watch need the --allow-ffi permission: deno run --allow-net --allow-ffi server.ts

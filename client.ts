/**
 * # A TCP client that connects and stays idle
 *
 * @run deno run --allow-net client.ts [--hostname 127.0.0.1] [--port 8888] [--keepalive] [--connect-timeout 10] [--json]
 * @run deno run --allow-net --allow-ffi client.ts --idle 2 --interval 1 --count 3 [--user-timeout 10] --watch
 * @run deno run --allow-net client.ts --send hello --send-after 20
 *
 * The Deno version of the C client in the blog post "套接字选项SO_KEEPALIVE":
 * it connects to the server and then sends nothing, so the connection is
 * idle and the server's keepalive probes are the only traffic on it. The
 * kernel answers those probes by itself; no read ever returns them (only
 * `--watch`, below, shows them, from the kernel's own counters). What the
 * reads do see is how the connection ends: the server closes it, resets it,
 * or (with `--keepalive`, when the server has vanished) the client's own
 * probes go unanswered and the read fails with "timed out".
 *
 * - https://docs.deno.com/api/deno/~/Deno.connect
 * - https://docs.deno.com/api/deno/~/Deno.TcpConn.prototype.setKeepAlive
 *
 * `--idle`, `--interval`, `--count` and `--user-timeout` tune this side's
 * keepalive through `keepalive.ts` (FFI, so `--allow-ffi`), and `--watch`
 * prints the probes: the server's (which this side's kernel answers) and,
 * with keepalive on here, this side's own.
 *
 * `--send TEXT --send-after SECONDS` breaks the silence once: after that
 * long idle, the client sends one line, as an app sends its next request on
 * a pooled connection. Against `server.ts --echo` the line comes back; behind
 * a NAT that forgot the idle connection it never arrives, and the kernel
 * retransmits it until `--user-timeout` (or about 15 minutes) runs out.
 *
 * The file reads top to bottom as the story: connecting, keepalive on this
 * side, the read and what each ending means; then the command line; then
 * printing, which never waits for the terminal (`cli.ts`).
 *
 * Copying this file into your project? Copy `keepalive.ts`,
 * `keepalive_flags.ts` and `cli.ts` beside it and map `@std/cli` in your
 * `deno.json` (the README's "Copying a file into your project" has the
 * lines). It needs `--allow-net`, plus `--allow-ffi` for the tuning flags.
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
  setUserTimeout,
  watchKeepAlive,
} from "./keepalive.ts";
import {
  describeKeepAlive,
  describeProbe,
  missingFfiPermission,
  parseTuningFlags,
  TUNING_FLAGS,
  TUNING_HELP,
} from "./keepalive_flags.ts";
export type { KeepAliveOptions, KeepAliveSettings, ProbeEvent } from "./keepalive.ts";
export { type CommandIO, UsageError } from "./cli.ts";

/** What the client does, from its command-line flags. */
export interface ClientOptions {
  /** The server's address or host name. */
  hostname: string;
  /** The server's port. */
  port: number;
  /**
   * Whether to turn `SO_KEEPALIVE` on for this side too (the C client did
   * not). Implied by the keepalive times, not by a user timeout alone.
   */
  keepAlive: boolean;
  /** How long a connect may take before the client gives up, in ms; null to wait as long as the kernel does. */
  connectTimeoutMs: number | null;
  /** Per-connection keepalive times (milliseconds); null for the system's. */
  tuning: KeepAliveOptions | null;
  /** Report every keepalive probe on the connection. */
  watch: boolean;
  /** One line to send after the connection has been idle `afterMs`; null to send nothing. */
  send: { text: string; afterMs: number } | null;
  /** Print events as JSON lines instead of text. */
  json: boolean;
}

// ## Connecting
//
// The C client: socket, connect to 127.0.0.1:8888, then getchar(). A connect
// to an address that never answers waits for the kernel's SYN retries
// (tcp_syn_retries: about two minutes); the user may quit meanwhile, and
// --connect-timeout bounds it.

/**
 * Connects to the server, or gives up: `"quit"` when `quitting` resolves
 * first, `"timeout"` after `connectTimeoutMs`. Throws what `Deno.connect`
 * throws (refused, unreachable, host not found, no permission).
 *
 * @example
 * ```ts ignore
 * import { connect } from "./client.ts";
 * const conn = await connect({ hostname: "::1", port: 8888, connectTimeoutMs: 5_000 }, new Promise(() => {}));
 * ```
 */
export async function connect(
  options: Pick<ClientOptions, "hostname" | "port" | "connectTimeoutMs">,
  quitting: Promise<unknown>,
): Promise<Deno.TcpConn | "quit" | "timeout"> {
  const giveUp = new AbortController();
  quitting.then(() => giveUp.abort("quit"));
  const timer = options.connectTimeoutMs === null
    ? undefined
    : setTimeout(() => giveUp.abort("timeout"), options.connectTimeoutMs);
  try {
    return await Deno.connect({
      hostname: options.hostname,
      port: options.port,
      signal: giveUp.signal,
    });
  } catch (error) {
    if (giveUp.signal.aborted) return giveUp.signal.reason;
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

// ## Keepalive on this side
//
// The C client left SO_KEEPALIVE off: only the server probes, and this
// side's kernel answers. Turn it on here to have the client notice a server
// that vanished, too; the tuning flags also set when and how often it probes.
// A user timeout alone leaves keepalive off: it bounds how long sent data may
// go unacknowledged, which matters with or without probes.

function turnOnKeepAlive(conn: Deno.TcpConn, options: ClientOptions): KeepAliveSettings | null {
  if (options.keepAlive) conn.setKeepAlive(true);
  if (options.tuning && options.keepAlive) setKeepAlive(conn, options.tuning);
  else if (options.tuning?.userTimeout !== undefined) {
    setUserTimeout(conn, options.tuning.userTimeout);
  }
  return options.tuning || options.watch ? getKeepAlive(conn) : null;
}

// ## Holding the connection until it ends

/** How a connection ended. */
export type ClientOutcome = "quit" | "server-closed" | "reset" | "timed-out" | "error";

/**
 * Reads the connection until it ends, counting the bytes the server sends
 * (they are never printed: nothing from a peer goes to the terminal raw).
 * With `send`, sends one line after that long idle and reports each read
 * as `received`. Resolves with how it ended; `quit` resolves it with "quit"
 * early.
 */
export async function holdConnection(
  conn: Deno.TcpConn,
  quit: Promise<unknown>,
  onEvent: (event: ClientEvent) => void,
  options: { watch?: boolean; send?: ClientOptions["send"] } = {},
): Promise<ClientOutcome> {
  // Stamped now, or when it happened: a probe is seen after it was sent.
  const emit = (event: ClientEventBody, atMs = Date.now()) =>
    onEvent({ time: new Date(atMs).toISOString(), ...event });
  // --watch: the kernel's probes on this connection, from TCP_INFO.
  const watcher = options.watch
    ? watchKeepAlive(conn, (probe) => emit({ event: "probe", ...probe }, Date.now() - probe.agoMs))
    : null;
  const progress = { bytes: 0, sent: 0 };
  const send = options.send;
  const sender = send
    ? setTimeout(() => sendLine(conn, send.text, progress, emit), send.afterMs)
    : undefined;
  const reading = readUntilEnd(conn, progress, send ? emit : null);
  const outcome = await Promise.race([reading, quit.then(() => "quit" as const)]);
  clearTimeout(sender);
  watcher?.stop();
  if (outcome === "quit") {
    emit({ event: "quit", bytes: progress.bytes });
    conn.close();
    await reading; // it ends now, with the close
  } else if (outcome.ending === "error") {
    emit({ event: "error", message: outcome.message });
  } else if (outcome.ending === "timed-out") {
    emit({ event: "timed-out", bytes: progress.bytes, code: outcome.code, sent: progress.sent });
  } else {
    emit({ event: outcome.ending, bytes: progress.bytes });
  }
  try {
    conn.close();
  } catch { /* already closed */ }
  return outcome === "quit" ? "quit" : outcome.ending;
}

// --send: one line, written whole (a short write goes on with the rest). A
// failed write needs no report of its own: the read below fails the same way.
async function sendLine(
  conn: Deno.TcpConn,
  text: string,
  progress: { sent: number },
  emit: (event: ClientEventBody) => void,
) {
  let bytes = new TextEncoder().encode(`${text}\n`);
  try {
    while (bytes.length > 0) {
      const n = await conn.write(bytes);
      progress.sent += n;
      bytes = bytes.subarray(n);
    }
    emit({ event: "sent", bytes: progress.sent });
  } catch { /* the read reports it */ }
}

// The read is what makes the kernel's verdict visible: end of stream when
// the server closes, ConnectionReset for a reset, and TimedOut (ETIMEDOUT)
// when this side's keepalive probes go unanswered or what it sent stays
// unacknowledged for the user timeout (or the error of the last probe, when
// this side lost its route to the server). A small buffer is enough: the
// bytes are only counted, in `progress`.
async function readUntilEnd(
  conn: Deno.TcpConn,
  progress: { bytes: number },
  onReceived: ((event: ClientEventBody) => void) | null,
): Promise<
  | { ending: "server-closed" | "reset" }
  | { ending: "timed-out"; code: string }
  | { ending: "error"; message: string }
> {
  const buffer = new Uint8Array(4096);
  try {
    for (;;) {
      const n = await conn.read(buffer);
      if (n === null) return { ending: "server-closed" };
      progress.bytes += n;
      onReceived?.({ event: "received", bytes: n });
    }
  } catch (error) {
    if (error instanceof Deno.errors.ConnectionReset) return { ending: "reset" };
    const code = keepAliveGaveUp(error);
    if (code) return { ending: "timed-out", code };
    return { ending: "error", message: errorMessage(error) };
  }
}

// ## The command line

/** The `--help` text. */
export const HELP = `Usage: deno run --allow-net client.ts [options]

Connects to a TCP server, sends nothing (unless told to), and reports how the
connection ends. Quit with Enter, Ctrl-C or SIGTERM.

Options:
  --hostname ADDRESS      server address or host name (default 127.0.0.1; ::1 for IPv6)
  --port N                server port, 1..65535 (default 8888)
  --keepalive             turn SO_KEEPALIVE on for this side too (default off, like the C client)
  --connect-timeout SECONDS
                          give up connecting after this long, 1..86400 (default: when the
                          kernel gives up, about 2 minutes for an address that never answers)
  --send TEXT             send TEXT and a newline once, after --send-after (at most 1000
                          characters; against server.ts --echo it comes back)
  --send-after SECONDS    send it this long after connecting (the connection is idle until
                          then), 0..86400 (default 0; with --send-after alone the line is "hello")
  --json                  print one JSON object per event instead of text
  -h, --help              show this help

${TUNING_HELP}
  (--idle, --interval and --count imply --keepalive. --user-timeout alone does not: it bounds
  how long sent data may go unacknowledged, with keepalive on or off. --watch alone does not:
  it shows the server's probes, which this side's kernel answers with keepalive off.)

Exit codes: 0 when you quit or the server closed the connection cleanly,
1 when the connection was lost (reset, timed out) or could not be made,
2 for bad flags.

Permissions: --allow-net (to connect), and --allow-ffi for the per-connection
flags (Deno cannot set them itself yet).`;

/**
 * Parses the command-line flags. Throws a `UsageError` for anything it
 * cannot use; returns `"help"` for `--help`.
 *
 * @example
 * ```ts
 * import { parseClientArgs } from "./client.ts";
 * parseClientArgs(["--hostname", "::1", "--keepalive"]);
 * // { hostname: "::1", port: 8888, keepAlive: true, connectTimeoutMs: null, tuning: null, watch: false, send: null, json: false }
 * ```
 */
export function parseClientArgs(args: string[]): ClientOptions | "help" {
  const flags = parseFlags(args, {
    string: ["hostname", "port", "connect-timeout", "send", "send-after", ...TUNING_FLAGS],
    boolean: ["keepalive", "json", "watch"],
    default: { hostname: "127.0.0.1", port: "8888" },
  });
  if (flags.help) return "help";
  const tuning = parseTuningFlags(flags);
  const connectTimeout = flags["connect-timeout"];
  return {
    hostname: parseHostname("--hostname", flags.hostname!),
    port: parseInteger("--port", flags.port!, 1, 65535),
    keepAlive: flags.keepalive || tuning?.time !== undefined || tuning?.interval !== undefined ||
      tuning?.retries !== undefined,
    connectTimeoutMs: connectTimeout === undefined
      ? null
      : parseInteger("--connect-timeout", connectTimeout, 1, 86400) * 1000,
    tuning,
    watch: flags.watch,
    send: parseSend(flags.send, flags["send-after"]),
    json: flags.json,
  };
}

function parseSend(text: string | undefined, after: string | undefined): ClientOptions["send"] {
  if (text === undefined && after === undefined) return null;
  // Characters, not UTF-16 units: an emoji is one.
  if (text !== undefined && ([...text].length > 1000 || /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/u.test(text))) {
    throw new UsageError(
      `--send takes at most 1000 characters and no control characters, not ${showTyped(text)}`,
    );
  }
  const afterMs = after === undefined ? 0 : parseInteger("--send-after", after, 0, 86400) * 1000;
  return { text: text ?? "hello", afterMs };
}

// ## Printing

/** Everything the client reports, one object per event. `--json` prints these as they are. */
export type ClientEvent = { time: string } & ClientEventBody;

/** A {@linkcode ClientEvent} before it is stamped with the time. */
export type ClientEventBody =
  | {
    event: "connected";
    local: string;
    remote: string;
    keepAlive: boolean;
    /** What the kernel holds for the connection (ms), with --watch or tuning; null otherwise. */
    tuning: KeepAliveSettings | null;
  }
  | ({ event: "probe" } & ProbeEvent)
  | { event: "sent"; bytes: number }
  | { event: "received"; bytes: number }
  | { event: "server-closed"; bytes: number }
  | { event: "reset"; bytes: number }
  | {
    event: "timed-out";
    bytes: number;
    /** ETIMEDOUT; ENETUNREACH or EHOSTUNREACH when this side lost its route to the server. */
    code: string;
    /** Bytes this side had sent (--send): with any, the server had stopped acknowledging them. */
    sent: number;
  }
  | { event: "error"; message: string }
  | { event: "quit"; bytes: number }
  | Omit<OutputDroppedEvent, "time">;

/**
 * Formats a client event as one line of text, for people. `enterQuits`
 * (default true) says whether the connected line may promise that Enter
 * quits: not when stdin is not a terminal (a background job).
 */
export function formatClientEvent(
  event: ClientEvent,
  how: { enterQuits: boolean } = { enterQuits: true },
): string {
  return `${event.time} ${describeClientEvent(event, how)}`;
}

function describeClientEvent(event: ClientEventBody, how: { enterQuits: boolean }): string {
  switch (event.event) {
    case "connected":
      return `connected from ${event.local} to ${event.remote}, keepalive ${
        event.keepAlive ? "on" : "off"
      }${describeTuning(event)}; ${how.enterQuits ? "Enter" : "SIGTERM"} quits`;
    case "probe":
      return describeProbe(event);
    case "server-closed":
      return `the server closed the connection (${plural(event.bytes, "byte")} received)`;
    case "reset":
      return `the connection was reset (${plural(event.bytes, "byte")} received)`;
    case "sent":
      return `sent ${plural(event.bytes, "byte")}`;
    case "received":
      return `received ${plural(event.bytes, "byte")}`;
    case "timed-out":
      if (event.sent > 0 && event.code === "ETIMEDOUT") {
        return `the connection timed out: the server stopped acknowledging what was sent ` +
          `(retransmissions or the user timeout ran out)`;
      }
      return "the connection timed out: keepalive probes went unanswered, " +
        (event.code === "ETIMEDOUT"
          ? "the server is gone"
          : `and the last could not be sent (${event.code}: this side lost its route to the server)`);
    case "error":
      return `connection error: ${event.message}`;
    case "quit":
      return `quitting: closing the connection (${plural(event.bytes, "byte")} received)`;
    case "output-dropped":
      return `${event.lines} lines of output dropped: stdout was not being read`;
  }
}

// ## The command

/**
 * The command: parse flags, connect, hold the connection until the user
 * quits or the connection ends. Returns the exit code: 0 when the user quit
 * or the server closed cleanly, 1 when the connection was lost or could not
 * be made, 2 for bad flags. Tests pass their own `io` (quit, stdout, stderr).
 */
export async function main(args: string[], io: CommandIO = {}): Promise<number> {
  const stderr = io.stderr ?? ((line: string) => console.error(line));
  const options = parseCommandLine("client.ts", args, parseClientArgs, HELP, stderr);
  if (typeof options === "number") return options;
  // Ask before connecting: a missing permission should stop us before the
  // server sees a connection.
  const ffi = missingFfiPermission(options, import.meta.url, args);
  if (ffi) {
    stderr(`client.ts: ${ffi}`);
    return 1;
  }
  const enterQuits = io.quit === undefined && Deno.stdin.isTerminal();
  const out = eventPrinter({
    json: options.json,
    format: (event: ClientEvent) => formatClientEvent(event, { enterQuits }),
    output: io.stdout,
  });
  // Listen for Enter and signals from the start, so the user can quit a
  // connect that hangs.
  const quitting = (io.quit ?? waitForQuit)();
  const code = await connectAndHold(options, args, quitting, out.print, stderr);
  await out.flush(); // a moment for the last lines, not more
  return code;
}

async function connectAndHold(
  options: ClientOptions,
  args: string[],
  quitting: Promise<unknown>,
  print: (event: ClientEvent) => void,
  stderr: (line: string) => void,
): Promise<number> {
  const where = formatAddr({ transport: "tcp", hostname: options.hostname, port: options.port });
  let conn: Deno.TcpConn | "quit" | "timeout";
  try {
    conn = await connect(options, quitting);
  } catch (error) {
    stderr(`client.ts: ${describeConnectError(error, where, options, args)}`);
    return 1;
  }
  if (conn === "quit") {
    stderr("client.ts: quit before the connection was made");
    return 0;
  }
  if (conn === "timeout") {
    stderr(
      `client.ts: cannot connect to ${where}: no answer within ${
        options.connectTimeoutMs! / 1000
      } s (--connect-timeout)`,
    );
    return 1;
  }
  let tuning: KeepAliveSettings | null;
  try {
    tuning = turnOnKeepAlive(conn, options);
  } catch (error) {
    conn.close();
    stderr(`client.ts: cannot set keepalive: ${errorMessage(error)}`);
    return 1;
  }
  print({
    time: new Date().toISOString(),
    event: "connected",
    local: formatAddr(conn.localAddr),
    remote: formatAddr(conn.remoteAddr),
    keepAlive: options.keepAlive,
    tuning,
  });
  const outcome = await holdConnection(conn, quitting, print, {
    watch: options.watch,
    send: options.send,
  });
  return outcome === "quit" || outcome === "server-closed" ? 0 : 1;
}

// `where` is the address as the user gave it, already checked by parseHostname.
function describeConnectError(
  error: unknown,
  where: string,
  options: ClientOptions,
  args: string[],
): string {
  const message = errorMessage(error);
  if (error instanceof Deno.errors.NotCapable) {
    const ffi = options.tuning || options.watch ? ["--allow-ffi"] : [];
    return `connecting to ${where} needs the --allow-net permission: ` +
      runAgainWith(["--allow-net", ...ffi], import.meta.url, args);
  }
  if (error instanceof Deno.errors.AddrNotAvailable) {
    return `cannot connect to ${where}: this machine has no address to reach it from ` +
      `(is its network interface down?)`;
  }
  if (error instanceof Deno.errors.ConnectionRefused) {
    return `cannot connect to ${where}: connection refused (is the server running?)`;
  }
  if (error instanceof Deno.errors.NotConnected || error instanceof Deno.errors.ConnectionReset) {
    return `cannot connect to ${where}: the server reset the connection as soon as it was made`;
  }
  if (error instanceof Deno.errors.TimedOut) {
    return `cannot connect to ${where}: timed out (the server does not answer)`;
  }
  if (error instanceof Deno.errors.NetworkUnreachable || /unreachable|no route/i.test(message)) {
    return `cannot connect to ${where}: unreachable (${message})`;
  }
  // getaddrinfo's EAI_AGAIN: the name server did not answer (or not in
  // time). That is not "no such host": trying again may work.
  if (/temporary failure in name resolution/i.test(message)) {
    return `cannot connect to ${where}: the name server did not answer ` +
      `(a temporary failure in name resolution; try again, or give an IP address)`;
  }
  if (/lookup address/.test(message)) return `cannot connect to ${where}: host name not found`;
  return `cannot connect to ${where}: ${message}`;
}

// The settings in the connected line: all of them with keepalive on; with it
// off, only a user timeout, if one was set.
function describeTuning(event: { keepAlive: boolean; tuning: KeepAliveSettings | null }): string {
  if (!event.tuning) return "";
  if (event.keepAlive) return ` (${describeKeepAlive(event.tuning)})`;
  return event.tuning.userTimeout ? `, user timeout ${event.tuning.userTimeout / 1000} s` : "";
}

// Small helpers that server.ts repeats on purpose, so that each script reads
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

// Real runs (Deno 2.9.6, Linux 6.18), against the server above, quitting
// with Enter after a few seconds:
//
//   $ deno run --allow-net client.ts
//   2026-11-25T20:08:04.088Z connected from 127.0.0.1:33626 to 127.0.0.1:8888, keepalive off; Enter quits
//   2026-11-25T20:08:07.213Z quitting: closing the connection (0 bytes received)
//
// Against a port whose SYNs are dropped (a full backlog here; a firewall or a
// vanished host elsewhere), without --connect-timeout the kernel would retry
// for about two minutes:
//
//   $ deno run --allow-net client.ts --port 9126 --connect-timeout 2
//   client.ts: cannot connect to 127.0.0.1:9126: no answer within 2 s (--connect-timeout)
//   (exit code 1, after 2.08 s)
//
//   $ deno run --allow-net client.ts --port 1
//   client.ts: cannot connect to 127.0.0.1:1: connection refused (is the server running?)
//   $ deno run --allow-net client.ts --hostname no-such-host.invalid
//   client.ts: cannot connect to no-such-host.invalid:8888: host name not found
//   $ deno run --allow-net client.ts --json=0
//   client.ts: --json takes no value, not "0" (see --help)

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
 * - https://man7.org/linux/man-pages/man7/tcp.7.html (tcp_keepalive_time, TCP_USER_TIMEOUT)
 *
 * `--send TEXT --send-after SECONDS` breaks the silence once: after that
 * long idle, the client sends one line, as an app sends its next request on
 * a pooled connection. Against `server.ts --echo` the line comes back; behind
 * a NAT that forgot the idle connection it never arrives, and the kernel
 * retransmits it until `--user-timeout` (or about 15 minutes) runs out.
 *
 * This file runs on its own (copy it; map `@std/cli` in your deno.json).
 * What Deno cannot do yet, it asks of the kit's package `@kakit/keepalive`,
 * loaded only when a flag needs it: this side's times (`--idle`,
 * `--interval`, `--count`, `--user-timeout`) and `--watch` (every probe on
 * the connection, the server's and this side's, from the kernel's
 * TCP_INFO). Those need `--allow-ffi`. The small helpers at the end (strict
 * flags, escaping, a line writer that never blocks) repeat server.ts's on
 * purpose, so that each file stands alone.
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
  & typeof import("@kakit/keepalive/flags");
/** What the kernel holds for a socket's keepalive (milliseconds), from the package. */
export type KeepAliveSettings = import("@kakit/keepalive").KeepAliveSettings;
/** A probe the package's watcher saw. */
export type ProbeEvent = import("@kakit/keepalive").ProbeEvent;
/** The package's words for keepalive times and probes. */
export type Words = Pick<Keepalive, "describeKeepAlive" | "describeProbe">;

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
 * ```ts
 * import { connect } from "./client.ts";
 * using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
 * const { hostname, port } = listener.addr;
 * const neverQuit = new Promise(() => {});
 * const conn = await connect({ hostname, port, connectTimeoutMs: 5_000 }, neverQuit);
 * if (typeof conn !== "string") conn.close(); // otherwise "quit" or "timeout"
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
// that vanished, too; the tuning flags (the package) also set when and how
// often it probes. A user timeout alone leaves keepalive off: it bounds how
// long sent data may go unacknowledged, which matters with or without probes.

function turnOnKeepAlive(
  conn: Deno.TcpConn,
  options: ClientOptions,
  ka: Keepalive | null,
): KeepAliveSettings | null {
  if (options.keepAlive) conn.setKeepAlive(true);
  if (!ka) return null;
  if (options.tuning && options.keepAlive) ka.setKeepAlive(conn, options.tuning);
  else if (options.tuning?.userTimeout !== undefined) {
    ka.setUserTimeout(conn, options.tuning.userTimeout);
  }
  return ka.getKeepAlive(conn);
}

// ## Holding the connection until it ends

/** How a connection ended. */
export type ClientOutcome = "quit" | "server-closed" | "reset" | "timed-out" | "error";

/**
 * Reads the connection until it ends, counting the bytes the server sends
 * (they are never printed: nothing from a peer goes to the terminal raw).
 * With `send`, sends one line after that long idle and reports each read
 * as `received`. With `watch`, reports each keepalive probe (that needs
 * `ka`, the package, as `main` loads it). Resolves with how it ended;
 * `quit` resolves it with "quit" early.
 */
export async function holdConnection(
  conn: Deno.TcpConn,
  quit: Promise<unknown>,
  onEvent: (event: ClientEvent) => void,
  options: { watch?: boolean; send?: ClientOptions["send"] } = {},
  ka: Pick<Keepalive, "watchKeepAlive"> | null = null,
): Promise<ClientOutcome> {
  // Stamped now, or when it happened: a probe is seen after it was sent.
  const emit = (event: ClientEventBody, atMs = Date.now()) =>
    onEvent({ time: new Date(atMs).toISOString(), ...event });
  if (options.watch && !ka) throw new TypeError("holdConnection: watch needs ka, the package");
  // --watch: the kernel's probes on this connection, from its TCP_INFO.
  const onProbe = (probe: ProbeEvent) =>
    emit({ event: "probe", ...probe }, Date.now() - probe.agoMs);
  const watcher = options.watch && ka ? ka.watchKeepAlive(conn, onProbe) : null;
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
// unacknowledged for the user timeout (or the error of the last probe,
// ENETUNREACH or EHOSTUNREACH, when this side lost its route to the
// server). A small buffer is enough: the bytes are only counted.
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
    for (let n; (n = await conn.read(buffer)) !== null;) {
      progress.bytes += n;
      onReceived?.({ event: "received", bytes: n });
    }
    return { ending: "server-closed" };
  } catch (error) {
    const code = errorCode(error);
    if (code === "ECONNRESET") return { ending: "reset" };
    if (code === "ETIMEDOUT" || code === "ENETUNREACH" || code === "EHOSTUNREACH") {
      return { ending: "timed-out", code };
    }
    return { ending: "error", message: errorMessage(error) };
  }
}

// Deno's error classes, as the C library names them (repeated in server.ts on purpose).
function errorCode(error: unknown): string {
  if (error instanceof Deno.errors.ConnectionReset) return "ECONNRESET";
  if (error instanceof Deno.errors.BrokenPipe) return "ECONNRESET";
  if (error instanceof Deno.errors.TimedOut) return "ETIMEDOUT";
  if (error instanceof Deno.errors.NetworkUnreachable) return "ENETUNREACH";
  return String((error as { code?: unknown } | null)?.code ?? "");
}

// ## The command line

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
  /** Per-connection times in milliseconds (the package's `setKeepAlive` options), or null. */
  tuning: { time?: number; interval?: number; retries?: number; userTimeout?: number } | null;
  /** Report every keepalive probe on the connection. */
  watch: boolean;
  /** One line to send after the connection has been idle `afterMs`; null to send nothing. */
  send: { text: string; afterMs: number } | null;
  /** Print events as JSON lines instead of text. */
  json: boolean;
}

/** The `--help` text. */
export const HELP = `Usage: deno run --allow-net [--allow-ffi] client.ts [options]

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

With the kit's package @kakit/keepalive (loaded only for these; --allow-ffi, Linux):
  --idle SECONDS          silence before the first probe, 1..32767 (tcp_keepalive_time)
  --interval SECONDS      time between unanswered probes, 1..32767 (tcp_keepalive_intvl)
  --count N               unanswered probes before the connection fails, 1..127 (tcp_keepalive_probes)
  --user-timeout SECONDS  how long sent data may stay unacknowledged, 0..2147483; 0 (default)
                          leaves it to retransmissions, about 15 min. Once a probe is out, it is
                          also how long the peer may stay silent, instead of --count
  --watch                 print each keepalive probe as the kernel sends or answers it
  (--idle, --interval and --count imply --keepalive. --user-timeout alone does not: it bounds
  how long sent data may go unacknowledged, with keepalive on or off. --watch alone does not:
  it shows the server's probes, which this side's kernel answers with keepalive off.)

Exit codes: 0 when you quit or the server closed the connection cleanly,
1 when the connection was lost (reset, timed out) or could not be made, or
a permission or the package is missing, 2 for bad flags.`;

// (Repeated in server.ts on purpose.) The per-connection flags: each stands in for a sysctl, in its units, within
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
 * import { parseClientArgs } from "./client.ts";
 * parseClientArgs(["--hostname", "::1", "--keepalive"]);
 * // { hostname: "::1", port: 8888, keepAlive: true, connectTimeoutMs: null, tuning: null, watch: false, send: null, json: false }
 * ```
 */
export function parseClientArgs(args: string[]): ClientOptions | "help" {
  const tuningFlags = Object.keys(TUNING) as (keyof typeof TUNING)[];
  const flags = parseFlags(args, {
    string: ["hostname", "port", "connect-timeout", "send", "send-after", ...tuningFlags],
    boolean: ["keepalive", "json", "watch"],
  });
  if (flags.help) return "help";
  const tuning: Record<string, number> = {};
  for (const flag of tuningFlags) {
    const { option, min, max, ms } = TUNING[flag];
    if (flags[flag] !== undefined) {
      tuning[option] = parseInteger(`--${flag}`, flags[flag], min, max) * ms;
    }
  }
  const connectTimeout = flags["connect-timeout"];
  return {
    hostname: parseHostname("--hostname", flags.hostname ?? "127.0.0.1"),
    port: parseInteger("--port", flags.port ?? "8888", 1, 65535),
    // The times are keepalive's: asking for them asks for keepalive.
    keepAlive: flags.keepalive || ["time", "interval", "retries"].some((o) => o in tuning),
    connectTimeoutMs: connectTimeout === undefined
      ? null
      : parseInteger("--connect-timeout", connectTimeout, 1, 86400) * 1000,
    tuning: Object.keys(tuning).length > 0 ? tuning : null,
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
  | { event: "sent" | "received" | "server-closed" | "reset" | "quit"; bytes: number }
  | {
    event: "timed-out";
    bytes: number;
    /** ETIMEDOUT; ENETUNREACH or EHOSTUNREACH when this side lost its route to the server. */
    code: string;
    /** Bytes this side had sent (--send): with any, the server had stopped acknowledging them. */
    sent: number;
  }
  | { event: "error"; message: string }
  | { event: "output-dropped"; lines: number };

/**
 * Formats a client event as one line of text, for people. `enterQuits`
 * says whether the connected line may promise that Enter quits: not when
 * stdin is not a terminal (a background job). `ka`, the package, words the
 * keepalive times and the probes.
 *
 * @example
 * ```ts
 * import { formatClientEvent } from "./client.ts";
 * formatClientEvent({ time: "2026-11-25T20:08:07.213Z", event: "quit", bytes: 0 });
 * // "2026-11-25T20:08:07.213Z quitting: closing the connection (0 bytes received)"
 * ```
 */
export function formatClientEvent(
  event: ClientEvent,
  how: { enterQuits: boolean; ka?: Words | null } = { enterQuits: true },
): string {
  return `${event.time} ${describe(event, how)}`;
}

function describe(e: ClientEventBody, how: { enterQuits: boolean; ka?: Words | null }): string {
  switch (e.event) {
    case "connected":
      return `connected from ${e.local} to ${e.remote}, keepalive ${onOff(e.keepAlive)}` +
        `${describeTimes(e, how.ka)}; ${how.enterQuits ? "Enter" : "SIGTERM"} quits`;
    case "probe":
      return how.ka ? how.ka.describeProbe(e) : e.kind;
    case "server-closed":
      return `the server closed the connection (${plural(e.bytes, "byte")} received)`;
    case "reset":
      return `the connection was reset (${plural(e.bytes, "byte")} received)`;
    case "sent":
      return `sent ${plural(e.bytes, "byte")}`;
    case "received":
      return `received ${plural(e.bytes, "byte")}`;
    case "timed-out":
      if (e.sent > 0 && e.code === "ETIMEDOUT") {
        return `the connection timed out: the server stopped acknowledging what was sent ` +
          `(retransmissions or the user timeout ran out)`;
      }
      return "the connection timed out: keepalive probes went unanswered, " +
        (e.code === "ETIMEDOUT"
          ? "the server is gone"
          : `and the last could not be sent (${e.code}: this side lost its route to the server)`);
    case "error":
      return `connection error: ${e.message}`;
    case "quit":
      return `quitting: closing the connection (${plural(e.bytes, "byte")} received)`;
    case "output-dropped":
      return `${e.lines} lines of output dropped: stdout was not being read`;
  }
  // Unreachable with the package's types; copied alone, the checker cannot know.
  return "";
}

// The settings in the connected line: all of them with keepalive on; with it
// off, only a user timeout, if one was set.
function describeTimes(
  e: { keepAlive: boolean; tuning: KeepAliveSettings | null },
  ka?: Words | null,
) {
  if (!e.tuning) return "";
  if (e.keepAlive) return ka ? ` (${ka.describeKeepAlive(e.tuning)})` : "";
  return e.tuning.userTimeout ? `, user timeout ${e.tuning.userTimeout / 1000} s` : "";
}

// ## The command

/** Where the command reads and writes; tests pass their own. */
export interface CommandIO {
  /** Resolves when the user asks to quit (default: Enter, Ctrl-C or SIGTERM). */
  quit?: () => Promise<unknown>;
  /** Where event lines go (default: stdout). It may stall; the client does not. */
  stdout?: { write(bytes: Uint8Array): Promise<number> };
  /** Where error lines go (default: stderr). */
  stderr?: (line: string) => void;
}

/**
 * The command: parse flags, connect, hold the connection until the user
 * quits or the connection ends. Returns the exit code: 0 when the user quit
 * or the server closed cleanly, 1 when the connection was lost or could not
 * be made or something is missing, 2 for bad flags.
 */
export async function main(args: string[], io: CommandIO = {}): Promise<number> {
  const stderr = io.stderr ?? printError;
  let options: ClientOptions | "help";
  try {
    options = parseClientArgs(args);
  } catch (error) {
    stderr(`client.ts: ${errorMessage(error)} (see --help)`);
    return 2;
  }
  if (options === "help") return writeHelp(HELP, "client.ts");
  const needs = packageFlags(options);
  // Ask before connecting: a missing permission or package should stop us
  // before the server sees a connection.
  let ka: Keepalive | null = null;
  if (needs.length > 0) {
    try {
      ka = await loadPackage();
    } catch (error) {
      stderr(`client.ts: ${need(needs)} ${MISSING_PACKAGE} (${errorMessage(error)})`);
      return 1;
    }
    // The blanket --allow-ffi, or one narrowed to the C library's path.
    const support = ka.keepAliveTuningSupport();
    if (!support.available) {
      stderr(
        support.missing === "permission"
          ? `client.ts: ${need(needs)} the --allow-ffi permission: ` +
            runAgainWith(["--allow-net", "--allow-ffi"], args)
          : `client.ts: ${need(needs)} Linux: ${support.message}`,
      );
      return 1;
    }
  }
  const enterQuits = io.quit === undefined && Deno.stdin.isTerminal();
  const out = lineWriter(
    io.stdout ?? Deno.stdout,
    (lines): ClientEvent => ({ time: now(), event: "output-dropped", lines }),
    (event: ClientEvent) =>
      options.json ? JSON.stringify(event) : formatClientEvent(event, { enterQuits, ka }),
  );
  // Listen for Enter and signals from the start, so the user can quit a
  // connect that hangs.
  const quitting = (io.quit ?? waitForQuit)();
  const code = await connectAndHold(options, args, quitting, out.print, stderr, ka);
  // The last lines get half a second to go out, not more: a stalled stdout
  // must not keep the client from quitting.
  await out.flush(500);
  return code;
}

// The flags that need the package, as the user typed them.
function packageFlags(o: ClientOptions): string[] {
  const tuned = Object.entries(TUNING).filter(([, t]) => o.tuning?.[t.option] !== undefined);
  return [...tuned.map(([flag]) => `--${flag}`), ...(o.watch ? ["--watch"] : [])];
}

// "--idle needs", "--idle and --watch need", "--idle, --count and --watch need".
function need(flags: string[]): string {
  return flags.length > 1
    ? `${flags.slice(0, -1).join(", ")} and ${flags.at(-1)} need`
    : `${flags[0]} needs`;
}

async function loadPackage(): Promise<Keepalive> {
  const parts = await Promise.all([
    import("@kakit/keepalive"),
    import("@kakit/keepalive/flags"),
  ]);
  return Object.assign({}, ...parts);
}

const MISSING_PACKAGE = "the kit's package @kakit/keepalive: copy the kit's keepalive/ folder " +
  `beside this script and add "@kakit/keepalive": "./keepalive/mod.ts" to "imports" in deno.json`;

async function connectAndHold(
  options: ClientOptions,
  args: string[],
  quitting: Promise<unknown>,
  print: (event: ClientEvent) => void,
  stderr: (line: string) => void,
  ka: Keepalive | null,
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
    const seconds = options.connectTimeoutMs! / 1000;
    stderr(
      `client.ts: cannot connect to ${where}: no answer within ${seconds} s (--connect-timeout)`,
    );
    return 1;
  }
  let tuning: KeepAliveSettings | null;
  try {
    tuning = turnOnKeepAlive(conn, options, ka);
  } catch (error) {
    conn.close();
    stderr(`client.ts: cannot set keepalive: ${errorMessage(error)}`);
    return 1;
  }
  print({
    time: now(),
    event: "connected",
    local: formatAddr(conn.localAddr),
    remote: formatAddr(conn.remoteAddr),
    keepAlive: options.keepAlive,
    tuning,
  });
  const { watch, send } = options;
  const outcome = await holdConnection(conn, quitting, print, { watch, send }, ka);
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
    const ffi = packageFlags(options).length > 0 ? ["--allow-ffi"] : [];
    return `connecting to ${where} needs the --allow-net permission: ` +
      runAgainWith(["--allow-net", ...ffi], args);
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

// ## Small helpers, repeated in server.ts on purpose: each script stands alone

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

// Real runs (Deno 2.9.6, Linux), against server.ts, quitting with Enter
// after a few seconds:
//
//   $ deno run --allow-net client.ts
//   2026-11-25T20:08:04.088Z connected from 127.0.0.1:33626 to 127.0.0.1:8888, keepalive off; Enter quits
//   2026-11-25T20:08:07.213Z quitting: closing the connection (0 bytes received)
//
// With --watch, against `server.ts --idle 2 --interval 1 --count 3`: this
// side's kernel answers the server's probes, every 2 s of silence (quit here
// with SIGTERM, from a background job):
//
//   $ deno run --allow-net --allow-ffi client.ts --port 42615 --watch
//   2026-12-03T06:30:05.229Z connected from 127.0.0.1:46676 to 127.0.0.1:42615, keepalive off; SIGTERM quits
//   2026-12-03T06:30:07.247Z probed by the peer; our kernel answered (in the 0.20 s before it was seen)
//   2026-12-03T06:30:09.261Z probed by the peer; our kernel answered (in the 0.20 s before it was seen)
//   2026-12-03T06:30:10.694Z quitting: closing the connection (0 bytes received)
//
// Copied alone (only @std/cli mapped), the flags that need the package say
// what to add, and exit 1:
//
//   $ deno run --allow-net --allow-ffi client.ts --idle 2
//   client.ts: --idle needs the kit's package @kakit/keepalive: copy its keepalive/ folder beside this script and add "workspace": ["./keepalive"] to your deno.json (docs/copying.md) (Import "@kakit/keepalive" not a dependency and not in import map from "file:///tmp/tmp.qG8Cl41eaK/client.ts")
//   $ deno run --allow-net client.ts --count 3 --watch
//   client.ts: --count and --watch need the --allow-ffi permission: deno run --allow-net --allow-ffi client.ts --count 3 --watch
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

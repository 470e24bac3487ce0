/**
 * # A TCP client that connects and stays idle
 *
 * @run deno run --allow-net client.ts [--hostname 127.0.0.1] [--port 8888] [--keepalive] [--json]
 * @run deno run --allow-net --allow-ffi client.ts --idle 2 --interval 1 --count 3 [--user-timeout 10] --watch
 *
 * The Deno version of the C client in the blog post "套接字选项SO_KEEPALIVE":
 * it connects to the server and then sends nothing, so the connection is
 * idle and the server's keepalive probes are the only traffic on it. The
 * kernel answers those probes by itself; this program never sees them. What
 * it does see is how the connection ends: the server closes it, resets it,
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

/** What the client does, from its command-line flags. */
export interface ClientOptions {
  /** The server's address or host name. */
  hostname: string;
  /** The server's port. */
  port: number;
  /** Whether to turn `SO_KEEPALIVE` on for this side too (the C client did not). */
  keepAlive: boolean;
  /** Per-connection keepalive times (milliseconds); null for the system's. Implies keepAlive. */
  tuning: KeepAliveOptions | null;
  /** Report every keepalive probe on the connection. */
  watch: boolean;
  /** Print events as JSON lines instead of text. */
  json: boolean;
}

/** Bad command-line input: the message is one line, and the exit code is 2. */
export class UsageError extends Error {}

/** The `--help` text. */
export const HELP = `Usage: deno run --allow-net client.ts [options]

Connects to a TCP server, sends nothing, and reports how the connection ends.
Quit with Enter, Ctrl-C or SIGTERM.

Options:
  --hostname ADDRESS   server address or host name (default 127.0.0.1; ::1 for IPv6)
  --port N             server port, 1..65535 (default 8888)
  --keepalive          turn SO_KEEPALIVE on for this side too (default off, like the C client)
  --json               print one JSON object per event instead of text
  -h, --help           show this help

Per-connection keepalive (each one implies --keepalive; needs --allow-ffi, Linux only):
  --idle SECONDS         silence before the first probe, 1..32767 (system: tcp_keepalive_time)
  --interval SECONDS     time between unanswered probes, 1..32767 (system: tcp_keepalive_intvl)
  --count N              unanswered probes before the connection times out, 1..127 (tcp_keepalive_probes)
  --user-timeout SECONDS how long sent data may stay unacknowledged (0: about 15 min), and once
                         a probe is out, how long the peer may stay silent (overrides --count);
                         0..2147483
  --watch                print each probe: the server's, and this side's own

Exit codes: 0 when you quit or the server closed the connection cleanly,
1 when the connection was lost (reset, timed out) or could not be made,
2 for bad flags.

Permissions: --allow-net (to connect), and --allow-ffi for the per-connection
flags (Deno cannot set them itself yet).`;

/**
 * Parses the command-line flags. Throws {@linkcode UsageError} for anything
 * it cannot use; returns `"help"` for `--help`.
 *
 * @example
 * ```ts
 * import { parseClientArgs } from "./client.ts";
 * parseClientArgs(["--hostname", "::1", "--keepalive"]);
 * // { hostname: "::1", port: 8888, keepAlive: true, tuning: null, watch: false, json: false }
 * ```
 */
export function parseClientArgs(args: string[]): ClientOptions | "help" {
  const flags = parseArgs(args, {
    string: ["hostname", "port", "idle", "interval", "count", "user-timeout"],
    boolean: ["keepalive", "json", "help", "watch"],
    alias: { h: "help" },
    default: { hostname: "127.0.0.1", port: "8888" },
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
  if (flags.hostname === "") throw new UsageError("--hostname needs a value");
  const tuning = parseTuning(flags);
  return {
    // Accept "[::1]" as well as "::1": brackets are how IPv6 is written next to a port.
    hostname: flags.hostname.replace(/^\[(.*)\]$/, "$1"),
    port: parseInteger("--port", flags.port, 1, 65535),
    keepAlive: flags.keepalive || tuning !== null,
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

function parseInteger(flag: string, value: string, min: number, max: number): number {
  if (value === "") throw new UsageError(`${flag} needs a value`);
  if (!/^[0-9]+$/.test(value) || Number(value) < min || Number(value) > max) {
    throw new UsageError(
      `${flag} must be an integer from ${min} to ${max}, not ${JSON.stringify(value)}`,
    );
  }
  return Number(value);
}

/** Everything the client reports, one object per event. `--json` prints these as they are. */
export type ClientEvent =
  & { time: string }
  & (
    | {
      event: "connected";
      local: string;
      remote: string;
      keepAlive: boolean;
      /** What the kernel holds for the connection (ms), with --watch or tuning; null otherwise. */
      tuning: KeepAliveSettings | null;
    }
    | ({ event: "probe" } & ProbeEvent)
    | { event: "server-closed"; bytes: number }
    | { event: "reset"; bytes: number }
    | { event: "timed-out"; bytes: number }
    | { event: "error"; message: string }
    | { event: "quit"; bytes: number }
  );

/** How a connection ended. */
export type ClientOutcome = "quit" | "server-closed" | "reset" | "timed-out" | "error";

/**
 * Reads the connection until it ends, counting the bytes the server sends
 * (they are never printed: nothing from a peer goes to the terminal raw).
 * Resolves with how it ended; `quit` resolves it with "quit" early.
 */
export async function holdConnection(
  conn: Deno.TcpConn,
  quit: Promise<unknown>,
  onEvent: (event: ClientEvent) => void,
  options: { watch?: boolean } = {},
): Promise<ClientOutcome> {
  const emit = (event: DistributiveOmit<ClientEvent, "time">) =>
    onEvent({ time: new Date().toISOString(), ...event } as ClientEvent);
  // --watch: the kernel's probes on this connection, from TCP_INFO.
  const watcher = options.watch
    ? watchKeepAlive(conn, (probe) => emit({ event: "probe", ...probe }))
    : null;
  let bytes = 0;
  let quitting = false;

  // The read is what makes the kernel's verdict visible: end of stream when
  // the server closes, ConnectionReset for a reset, and TimedOut (ETIMEDOUT)
  // when our own keepalive probes go unanswered. A small buffer is enough:
  // the bytes are only counted.
  const reading = (async (): Promise<ClientOutcome> => {
    const buffer = new Uint8Array(4096);
    try {
      for (;;) {
        const n = await conn.read(buffer);
        if (n === null) break;
        bytes += n;
      }
      emit({ event: "server-closed", bytes });
      return "server-closed";
    } catch (error) {
      if (quitting) return "quit";
      if (error instanceof Deno.errors.ConnectionReset) {
        emit({ event: "reset", bytes });
        return "reset";
      }
      if (error instanceof Deno.errors.TimedOut) {
        emit({ event: "timed-out", bytes });
        return "timed-out";
      }
      emit({ event: "error", message: errorMessage(error) });
      return "error";
    }
  })();

  const outcome = await Promise.race([reading, quit.then(() => "quit" as const)]);
  watcher?.stop();
  if (outcome === "quit") {
    quitting = true;
    emit({ event: "quit", bytes });
  }
  try {
    conn.close();
  } catch { /* already closed */ }
  await reading;
  return outcome;
}

/** Formats a client event as one line of text, for people. */
export function formatClientEvent(event: ClientEvent): string {
  const text = (() => {
    switch (event.event) {
      case "connected":
        return `connected from ${event.local} to ${event.remote}, keepalive ${
          event.keepAlive ? "on" : "off"
        }${
          event.tuning && event.keepAlive ? ` (${describeKeepAlive(event.tuning)})` : ""
        }; Enter quits`;
      case "probe":
        return formatProbe(event);
      case "server-closed":
        return `the server closed the connection (${event.bytes} bytes received)`;
      case "reset":
        return `the connection was reset (${event.bytes} bytes received)`;
      case "timed-out":
        return `the connection timed out: keepalive probes went unanswered, the server is gone`;
      case "error":
        return `connection error: ${event.message}`;
      case "quit":
        return `quitting: closing the connection (${event.bytes} bytes received)`;
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
      return `the server answered at last, after ${probe.unanswered} unanswered probes`;
    case "peer-probe":
      return "the server probed us; our kernel answered";
  }
}

/**
 * The command: parse flags, connect, hold the connection until the user
 * quits or the connection ends. Returns the exit code: 0 when the user quit
 * or the server closed cleanly, 1 when the connection was lost or could not
 * be made, 2 for bad flags. `quit` replaces "Enter, Ctrl-C or SIGTERM" (for tests).
 */
export async function main(
  args: string[],
  quit: () => Promise<unknown> = waitForQuit,
): Promise<number> {
  let options: ClientOptions | "help";
  try {
    options = parseClientArgs(args);
  } catch (error) {
    console.error(`client.ts: ${errorMessage(error)} (see --help)`);
    return 2;
  }
  if (options === "help") {
    console.log(HELP);
    return 0;
  }
  const print = options.json
    ? (event: ClientEvent) => console.log(JSON.stringify(event))
    : (event: ClientEvent) => console.log(formatClientEvent(event));

  // Ask before connecting: a missing permission should stop us before the
  // server sees a connection.
  if (
    (options.tuning || options.watch) &&
    Deno.permissions.querySync({ name: "ffi" }).state !== "granted"
  ) {
    console.error(`client.ts: ${FFI_NEEDED}`);
    return 1;
  }
  // Listen for Enter and signals from the start: a connect to an address
  // that never answers takes about two minutes of SYN retries to fail, and
  // the user may not want to wait for it.
  const quitting = quit();
  const connecting = new AbortController();
  quitting.then(() => connecting.abort());
  let conn: Deno.TcpConn;
  try {
    conn = await Deno.connect({
      hostname: options.hostname,
      port: options.port,
      signal: connecting.signal,
    });
  } catch (error) {
    if (connecting.signal.aborted) {
      console.error(`client.ts: quit before the connection was made`);
      return 0;
    }
    console.error(`client.ts: ${describeConnectError(error, options)}`);
    return 1;
  }
  // The C client left SO_KEEPALIVE off: only the server probes. Turn it on
  // here to have the client notice a server that vanished, too; the tuning
  // flags also set when and how often this side probes.
  let tuning: KeepAliveSettings | null = null;
  try {
    if (options.keepAlive) conn.setKeepAlive(true);
    if (options.tuning) setKeepAlive(conn, options.tuning);
    if (options.tuning || options.watch) tuning = getKeepAlive(conn);
  } catch (error) {
    conn.close();
    console.error(`client.ts: ${describeTuningError(error)}`);
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
  const outcome = await holdConnection(conn, quitting, print, { watch: options.watch });
  return outcome === "quit" || outcome === "server-closed" ? 0 : 1;
}

// Quit the way the C client's getchar() did: on Enter. Ctrl-C and SIGTERM
// quit too, cleanly. A closed stdin (the client runs in the background) is
// not a request to quit: then only a signal, or the connection's end, stops it.
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
      // listening there. Elsewhere end of input is final: keep the connection.
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
  "permission: deno run --allow-net --allow-ffi client.ts";

function describeTuningError(error: unknown): string {
  if (error instanceof Deno.errors.NotCapable) return FFI_NEEDED;
  return `cannot set keepalive: ${errorMessage(error)}`;
}

function describeConnectError(error: unknown, options: ClientOptions): string {
  const where = formatAddr({ transport: "tcp", hostname: options.hostname, port: options.port });
  if (error instanceof Deno.errors.NotCapable) {
    return `connecting to ${where} needs the --allow-net permission: deno run --allow-net client.ts`;
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
  if (
    error instanceof Deno.errors.NetworkUnreachable ||
    /unreachable|no route to host/i.test(errorMessage(error))
  ) {
    return `cannot connect to ${where}: unreachable (${errorMessage(error)})`;
  }
  if (/lookup address/.test(errorMessage(error))) {
    return `cannot connect to ${where}: host name not found`;
  }
  return `cannot connect to ${where}: ${errorMessage(error)}`;
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

// Real runs (Deno 2.9.6, Linux 6.18), against the server above, quitting
// with Enter after a few seconds:
//
//   $ deno run --allow-net client.ts
//   2026-11-25T14:07:46.721Z connected from 127.0.0.1:58264 to 127.0.0.1:8888, keepalive off; Enter quits
//   2026-11-25T14:07:49.502Z quitting: closing the connection (0 bytes received)
//
//   $ deno run --allow-net client.ts --port 1
//   client.ts: cannot connect to 127.0.0.1:1: connection refused (is the server running?)
//   $ deno run --allow-net client.ts --idle 2
//   client.ts: --idle, --interval, --count, --user-timeout and --watch need the --allow-ffi permission: deno run --allow-net --allow-ffi client.ts

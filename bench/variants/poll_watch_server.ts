/**
 * # A server that watches every connection's probes the way @kakit/keepalive does today
 *
 * @run deno run --allow-net --allow-ffi bench/variants/poll_watch_server.ts --port 0 --idle 2
 *
 * Flags: `--hostname` (127.0.0.1), `--port` (8888), `--backlog` (511), and
 * `--idle S`, `--interval S`, `--count N` for the keepalive times (set on
 * the listener through `@kakit/keepalive`; the system's when none is given).
 *
 * The bench's row for "today's per-connection poll watcher": the smallest
 * server that accepts connections, turns keepalive on, reads each one until
 * it ends, and calls `watchKeepAlive` from `@kakit/keepalive` on every
 * connection. That watcher reads the connection's `TCP_INFO` through FFI
 * five times a second, so its cost grows with the number of connections,
 * idle or not; `bench/scale.ts` measures that cost (CPU, and the probes
 * reported against the kernel's own count).
 *
 * It prints one JSON line per event, named as `server.ts --json` names
 * them: `listening` (`address`), `accepted`, `probe` (the watcher's event),
 * `peer-closed`, `reset`, `timed-out`, `error`. Printing never waits: lines
 * queue, and one writer drains them. SIGTERM ends it.
 *
 * @module
 */
import { parseArgs } from "@std/cli/parse-args";
import { setKeepAlive, watchKeepAlive } from "@kakit/keepalive";

const USAGE = "usage: deno run --allow-net --allow-ffi bench/variants/poll_watch_server.ts " +
  "[--hostname H] [--port N] [--backlog N] [--idle S] [--interval S] [--count N]";

// ## The command line

interface Options {
  hostname: string;
  port: number;
  backlog: number;
  /** Keepalive times for the listener (ms), inherited by every connection; null: the system's. */
  keepAlive: { time: number; interval: number; retries: number } | null;
}

function parseOptions(args: string[]): Options {
  const flags = parseArgs(args, {
    string: ["hostname", "port", "backlog", "idle", "interval", "count"],
    default: { hostname: "127.0.0.1", port: "8888", backlog: "511" },
    unknown: (flag: string) => usageError(`unknown flag ${flag}`),
  });
  const tuned = flags.idle !== undefined || flags.interval !== undefined ||
    flags.count !== undefined;
  return {
    hostname: flags.hostname,
    port: integer("--port", flags.port, 0, 65535),
    backlog: integer("--backlog", flags.backlog, 1, 65535),
    keepAlive: tuned
      ? {
        time: integer("--idle", flags.idle ?? "7200", 1, 32767) * 1000,
        interval: integer("--interval", flags.interval ?? "75", 1, 32767) * 1000,
        retries: integer("--count", flags.count ?? "9", 1, 127),
      }
      : null,
  };
}

function integer(flag: string, text: string, min: number, max: number): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < min || value > max) {
    usageError(`${flag} must be an integer from ${min} to ${max}, not ${JSON.stringify(text)}`);
  }
  return value;
}

function usageError(message: string): never {
  console.error(`poll_watch_server: ${message}; ${USAGE}`);
  Deno.exit(2);
}

// ## Printing, which never waits for the reader

const encoder = new TextEncoder();
const queued: string[] = [];
let draining = false;

function print(event: Record<string, unknown>): void {
  queued.push(JSON.stringify(event));
  if (!draining) drain();
}

async function drain(): Promise<void> {
  draining = true;
  try {
    while (queued.length > 0) {
      const bytes = encoder.encode(queued.splice(0, 512).join("\n") + "\n");
      for (let sent = 0; sent < bytes.length;) {
        sent += await Deno.stdout.write(bytes.subarray(sent));
      }
    }
  } catch {
    queued.length = 0; // nobody reads any more
  } finally {
    draining = false;
  }
}

// ## Listening, accepting, reading, watching

// Nothing is done with what peers send, so every read lands in this one buffer.
const sharedBuffer = new Uint8Array(16 * 1024);

async function serve(options: Options): Promise<void> {
  const listener = Deno.listen({
    hostname: options.hostname,
    port: options.port,
    tcpBacklog: options.backlog,
  });
  // Set once on the listener: every accepted connection inherits the times.
  if (options.keepAlive) setKeepAlive(listener, options.keepAlive);
  print({ event: "listening", address: `${listener.addr.hostname}:${listener.addr.port}` });
  let open = 0;
  for (;;) {
    let conn: Deno.TcpConn;
    try {
      conn = await listener.accept();
    } catch (error) {
      // Out of descriptors, most likely: the backlog holds the rest meanwhile.
      print({ event: "error", peer: null, message: messageOf(error) });
      await new Promise((resolve) => setTimeout(resolve, 100));
      continue;
    }
    const peer = `${conn.remoteAddr.hostname}:${conn.remoteAddr.port}`;
    open++;
    conn.setKeepAlive(true);
    print({ event: "accepted", peer, open });
    readUntilEnd(conn, peer).finally(() => open--);
  }
}

async function readUntilEnd(conn: Deno.TcpConn, peer: string): Promise<void> {
  let bytes = 0;
  let watcher: { stop(): void } | null = null;
  try {
    // The per-connection poll: TCP_INFO five times a second, for as long as
    // the connection lives.
    watcher = watchKeepAlive(conn, (probe) => print({ event: "probe", peer, ...probe }));
    for (;;) {
      const n = await conn.read(sharedBuffer);
      if (n === null) break;
      bytes += n;
    }
    print({ event: "peer-closed", peer, bytes });
  } catch (error) {
    if (error instanceof Deno.errors.ConnectionReset) print({ event: "reset", peer, bytes });
    else if (error instanceof Deno.errors.TimedOut) {
      print({ event: "timed-out", peer, bytes, code: "ETIMEDOUT" });
    } else print({ event: "error", peer, message: messageOf(error) });
  } finally {
    watcher?.stop();
    try {
      conn.close();
    } catch {
      // already closed
    }
  }
}

function messageOf(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).split("\n")[0];
}

if (import.meta.main) {
  try {
    await serve(parseOptions(Deno.args));
  } catch (error) {
    console.error(`poll_watch_server: ${messageOf(error)}`);
    Deno.exit(1);
  }
}

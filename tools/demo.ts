/**
 * # The blog's keepalive experiment, run and explained in 12 seconds
 *
 * @run deno run -A tools/demo.ts        (or: deno task demo)
 *
 * Starts `server.ts` and `client.ts` on loopback, as the blog did in two
 * terminals, but with a 2 s keepalive idle time and interval set on the
 * server's sockets alone (no root, no sysctl), so the probes the blog waited
 * two minutes for come every 2 s. Both scripts run with `--watch`, which
 * reads each socket's `TCP_INFO` and prints every probe the kernel sends and
 * every answer. Before that, the demo asks the kernel (through
 * `/proc/net/tcp`) when the first probe is due; after 11 s it compares what
 * it saw with what the settings predict, and explains what the system
 * defaults would do. It changes nothing and exits by itself.
 *
 * Why `-A`: the scripts need `--allow-net` and `--allow-ffi`, but Deno
 * refuses every path under `/proc` unless the script runs with
 * `--allow-all`; `--allow-read=/proc` is not enough (denoland/deno issue
 * 27564).
 *
 * @module
 */
import { type ClientEvent, formatClientEvent } from "../client.ts";
import {
  findTcpSocket,
  parseEndpoint,
  readKeepaliveProbesSent,
  readTcpSockets,
  type TcpSocket,
} from "@kakit/keepalive/proc-net";
import { formatServerEvent, type ServerEvent } from "../server.ts";
import { readKeepaliveSysctls, SysctlError } from "../sysctl.ts";
import { parseCommandLine, parseFlags, printError } from "./cli.ts";
import * as words from "@kakit/keepalive/flags";

// The scripts it runs are at the project root, one folder up.
const ROOT = `${import.meta.dirname}/..`;

/** The `--help` text. */
export const HELP = `Usage: deno run -A tools/demo.ts     (or: deno task demo)

Runs server.ts and client.ts on loopback with a 2 s keepalive idle time and
interval set on the server's sockets (no root, no sysctl changed), shows the
kernel's keepalive timer and every probe for 11 s, compares what it saw with
what the settings predict, and exits by itself (0 when the probes came as
predicted, 1 otherwise). Ctrl-C stops it and both scripts.

Options:
  -h, --help   show this help

Permissions: -A. Deno refuses every path under /proc without --allow-all,
even with --allow-read=/proc (denoland/deno issue 27564).`;

/**
 * Runs the demo; returns the exit code: 0, 1 when something could not be
 * observed, 2 for arguments it does not take.
 */
export async function main(args: string[] = []): Promise<number> {
  // Misuse is 2 and a help that cannot be written (> /dev/full) is 1, each
  // one line, even when stderr cannot take it either.
  const options = parseCommandLine(
    "demo.ts",
    args,
    (args) => parseFlags(args, { string: [], boolean: [] }).help ? "help" : {},
    HELP,
  );
  if (typeof options === "number") return options;
  // Ctrl-C or SIGTERM must not leave the two scripts running without us:
  // they quit on Enter or a signal, and nobody would send either.
  const children = new Set<Deno.ChildProcess>();
  const stop = () => {
    for (const child of children) child.kill("SIGTERM");
    Deno.exit(130);
  };
  Deno.addSignalListener("SIGINT", stop);
  Deno.addSignalListener("SIGTERM", stop);
  try {
    return await runDemo(children);
  } finally {
    Deno.removeSignalListener("SIGINT", stop);
    Deno.removeSignalListener("SIGTERM", stop);
  }
}

// The server's per-socket settings, and how long to watch: long enough for
// five probes at one every max(idle, interval) seconds.
const IDLE = 2, INTERVAL = 2, COUNT = 3, WATCH_SECONDS = 11;

async function runDemo(children: Set<Deno.ChildProcess>): Promise<number> {
  // Step 1: the settings. They are the kernel's, per network namespace, and
  // every socket with SO_KEEPALIVE on uses them unless it sets its own.
  const sysctls = await showSettings();
  if (!sysctls) return 1;

  // Step 2: the blog's two terminals, as two processes. The server sets a
  // 2 s idle time and interval on its listener, which every accepted
  // connection inherits; both sides watch the probes.
  say(
    `\nStarting server.ts (--idle ${IDLE} --interval ${INTERVAL} --count ${COUNT}) and client.ts, both with --watch:`,
  );
  const tuning = ["--idle", `${IDLE}`, "--interval", `${INTERVAL}`, "--count", `${COUNT}`];
  await using server = spawn(children, "server.ts", [
    ...["--hostname", "127.0.0.1", "--port", "0", ...tuning, "--watch"],
  ]);
  const listening = await server.next("listening");
  const port = Number(String(listening.address).match(/:(\d+)$/)![1]);
  await using client = spawn(children, "client.ts", ["--port", String(port), "--watch"]);
  const connected = await client.next("connected");
  await server.next("accepted");
  const probesBefore = await readKeepaliveProbesSent();
  const start = performance.now();

  // Step 3: ask the kernel when the first probe is due.
  if (!await showTimers(String(connected.local), String(connected.remote))) return 1;

  // Step 4: watch. Each probe is an empty segment the server's kernel sends
  // after `idle` seconds of silence; the client's kernel answers it. Neither
  // program sends or receives a byte: --watch sees them in TCP_INFO.
  say(`\nWatching for ${WATCH_SECONDS} s:`);
  await new Promise((resolve) =>
    setTimeout(resolve, WATCH_SECONDS * 1000 - (performance.now() - start))
  );

  // Step 5: quit the way the blog did: Enter in the server's terminal. The
  // server's watcher takes a last look first, so a probe may still be seen.
  say("\nPressing Enter in the server's terminal:");
  await server.write("\n");
  await server.next("summary");
  await client.next("server-closed");
  const [serverCode, clientCode] = [await server.exitCode(), await client.exitCode()];
  const watchedSeconds = (performance.now() - start) / 1000;
  say(`server.ts exited ${serverCode}, client.ts exited ${clientCode}.`);

  // Step 6: what was seen, against what the settings predict. Both scripts
  // have exited, so every line counted here is one printed above, and the
  // kernel's counter covers the same time.
  const probesCounted = (await readKeepaliveProbesSent()) - probesBefore;
  const answered = server.events.filter((event) =>
    event.event === "probe" && event.kind === "answered"
  );
  const answeredByClient = client.events.filter((event) => event.kind === "peer-probe");
  showSeen(watchedSeconds, answered, answeredByClient.length, probesCounted);
  explainSettings(sysctls);
  if (answered.length === 0) {
    console.error("demo.ts: no probe was seen; the kernel did not do what the settings predict");
    return 1;
  }
  return serverCode === 0 && clientCode === 0 ? 0 : 1;
}

// Prints the keepalive sysctls; null (and one line on stderr) if they
// cannot be read.
async function showSettings(): Promise<Record<string, number> | null> {
  let sysctls: Record<string, number>;
  try {
    sysctls = await readKeepaliveSysctls();
  } catch (error) {
    if (error instanceof SysctlError && error.hint === "allow-all") {
      console.error(
        "demo.ts: Deno refuses to read /proc without --allow-all (denoland/deno issue 27564); " +
          "run: deno run -A tools/demo.ts",
      );
    } else {
      console.error(`demo.ts: ${error instanceof Error ? error.message : String(error)}`);
    }
    return null;
  }
  say("The kernel's keepalive settings (per network namespace):");
  for (const [key, value] of Object.entries(sysctls)) say(`  ${key} = ${value}`);
  return sysctls;
}

// /proc/net/tcp has a row per socket with the timer pending on it; for an
// idle socket with SO_KEEPALIVE on, that is the keepalive timer, and
// `tm->when` is how long until the first probe.
async function showTimers(clientAddress: string, serverAddress: string): Promise<boolean> {
  const clientEnd = parseEndpoint(clientAddress);
  const serverEnd = parseEndpoint(serverAddress);
  const rows = await readTcpSockets();
  const serverSocket = findTcpSocket(rows, serverEnd, clientEnd);
  const clientSocket = findTcpSocket(rows, clientEnd, serverEnd);
  if (!serverSocket || !clientSocket) {
    console.error("demo.ts: the connection is not in /proc/net/tcp; cannot show its timers");
    return false;
  }
  say("\nWhat the kernel holds for the connection (/proc/net/tcp):");
  say(`  server's socket ${serverAddress}: ${describeTimer(serverSocket)}`);
  say(`  client's socket ${clientAddress}: ${describeTimer(clientSocket)}`);
  return true;
}

function showSeen(
  watchedSeconds: number,
  answered: Record<string, unknown>[],
  answeredByClient: number,
  probesCounted: number,
): void {
  const cadence = Math.max(IDLE, INTERVAL);
  // TCP_INFO says how long the connection was silent before each probe.
  const silences = answered.map((event) => Number(event.idleMs) / 1000);
  const meanSilence = silences.reduce((a, b) => a + b, 0) / silences.length;
  say(`
What was seen in the ${
    watchedSeconds.toFixed(1)
  } s the connection was watched, and what the settings predict:
  - probes the server's kernel sent and the client answered: ${answered.length}
    (predicted: one every max(idle, interval) = max(${IDLE}, ${INTERVAL}) = ${cadence} s, so ${
    Math.floor(watchedSeconds / cadence)
  }, or one fewer if the last was due as the server quit)
  - probes the client saw arrive and answered: ${answeredByClient}
  - silence before each probe: ${silences.length ? `${meanSilence.toFixed(2)} s on average` : "n/a"}
  - keepalive probes the kernel counted for every socket in this network namespace
    (TcpExt TCPKeepAlive): ${probesCounted}; ${explainProbeCount(answered.length, probesCounted)}`);
}

function explainSettings(sysctls: Record<string, number>): void {
  const time = sysctls["net.ipv4.tcp_keepalive_time"];
  const intvl = sysctls["net.ipv4.tcp_keepalive_intvl"];
  const probes = sysctls["net.ipv4.tcp_keepalive_probes"];
  say(`
What the numbers mean:
  - Without --idle and --interval, this connection would use the system's settings:
    the first probe after ${time} s of silence, then one every max(${time}, ${intvl}) = ${
    Math.max(time, intvl)
  } s.
    The blog set tcp_keepalive_time=120 (intvl stayed 75), so it saw one every 2 minutes.
  - --idle alone is not enough for a steady cadence: with --idle ${IDLE} and the system's
    interval of ${intvl} s, a healthy peer is probed every max(${IDLE}, ${intvl}) = ${
    Math.max(IDLE, intvl)
  } s.
  - If the client vanished (no FIN, no RST: a pulled cable, a NAT that forgot the flow),
    the server would send ${COUNT} probes ${INTERVAL} s apart and then fail the connection
    with ETIMEDOUT: server.ts prints "timed out" after ${IDLE} + ${COUNT} x ${INTERVAL} = ${
    IDLE + COUNT * INTERVAL
  } s.
    With the system's settings: ${time} + ${probes} x ${intvl} = ${time + probes * intvl} s.
  - deno task test cuts a virtual cable in a network namespace and checks exactly that.`);
}

/**
 * Says why the kernel's probe counter, which counts every socket in the
 * network namespace, may differ from the probes the server's watcher saw.
 *
 * @example
 * ```ts
 * import { explainProbeCount } from "./demo.ts";
 * explainProbeCount(5, 5); // "the same as the server's: no other socket here sent a probe meanwhile"
 * ```
 */
export function explainProbeCount(seen: number, counted: number): string {
  if (counted === seen) {
    return "the same as the server's: no other socket here sent a probe meanwhile";
  }
  if (counted > seen) {
    return `${counted - seen} more than the server's: the counter is per namespace, and other ` +
      `sockets in it with keepalive on sent ${counted - seen === 1 ? "that one" : "those"} ` +
      `(other programs' connections; under npx, npm's own connection to its registry is one)`;
  }
  return `${seen - counted} fewer than the server's watcher reported, which should not happen: ` +
    `it reports only what the kernel's TCP_INFO shows (please report this)`;
}

function describeTimer(socket: TcpSocket): string {
  if (socket.timer === "keepalive") {
    return `keepalive timer armed, first probe due in ${socket.timerSeconds.toFixed(2)} s`;
  }
  if (socket.timer === "none") return "no timer pending (SO_KEEPALIVE is off on this side)";
  return `${socket.timer} timer pending, ${socket.timerSeconds.toFixed(2)} s left`;
}

function say(text: string) {
  console.log(text);
}

/**
 * Runs one of the kit's scripts with `--json`, echoes each of its events as
 * the script's own text line as soon as it arrives, and keeps them.
 */
function spawn(children: Set<Deno.ChildProcess>, script: string, args: string[]) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", "--allow-ffi", script, "--json", ...args],
    cwd: ROOT,
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  children.add(child);
  const label = script.replace(".ts", "").padStart(6);
  const events: Record<string, unknown>[] = [];
  let wake = () => {};
  const pump = (async () => {
    for await (const event of readEvents(child.stdout)) {
      events.push(event);
      const text = script === "server.ts"
        ? formatServerEvent(event as ServerEvent, { enterQuits: true, ka: words })
        : formatClientEvent(event as ClientEvent, { enterQuits: true, ka: words });
      say(`  ${label} | ${text}`);
      wake();
    }
    wake();
  })();
  const stdin = child.stdin.getWriter();
  let cursor = 0;
  return {
    events,
    /** The next event named `name` (after the last one asked for), within 15 s. */
    async next(name: string): Promise<Record<string, unknown>> {
      const deadline = performance.now() + 15_000;
      for (;;) {
        for (; cursor < events.length; cursor++) {
          if (events[cursor].event === name) return events[cursor++];
        }
        const more = new Promise<void>((resolve) => wake = resolve);
        let timerId: ReturnType<typeof setTimeout> | undefined;
        const timer = new Promise<"late">((resolve) => {
          timerId = setTimeout(() => resolve("late"), Math.max(0, deadline - performance.now()));
        });
        const result = await Promise.race([more, pump.then(() => "ended" as const), timer]);
        clearTimeout(timerId);
        if (result === "late") throw new Error(`${script} did not report ${name} in time`);
        if (result === "ended" && cursor >= events.length) {
          throw new Error(`${script} ended before reporting ${name}`);
        }
      }
    },
    write: (text: string) => stdin.write(new TextEncoder().encode(text)),
    /** Its exit code, once it has exited and every line it printed is in `events`. */
    async exitCode(): Promise<number> {
      await stdin.close().catch(() => {});
      const { code } = await child.status;
      await pump;
      return code;
    },
    async [Symbol.asyncDispose]() {
      try {
        child.kill();
      } catch { /* already exited */ }
      await stdin.close().catch(() => {});
      await child.status;
      await pump;
    },
  };
}

async function* readEvents(stream: ReadableStream<Uint8Array>) {
  let partial = "";
  for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
    const lines = (partial + chunk).split("\n");
    partial = lines.pop()!;
    for (const line of lines) yield JSON.parse(line) as Record<string, unknown>;
  }
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (error) {
    printError(`demo.ts: ${error instanceof Error ? error.message : String(error)}`);
    Deno.exit(1);
  }
}

// A real run (Deno 2.9.6, Linux 6.18):
//
//   $ deno run -A tools/demo.ts
//   The kernel's keepalive settings (per network namespace):
//     net.ipv4.tcp_keepalive_time = 7200
//     net.ipv4.tcp_keepalive_intvl = 75
//     net.ipv4.tcp_keepalive_probes = 9
//
//   Starting server.ts (--idle 2 --interval 2 --count 3) and client.ts, both with --watch:
//     server | 2026-11-25T21:08:32.842Z listening on 127.0.0.1:45565 (engine deno, backlog 511), keepalive on for accepted connections (idle 2 s, interval 2 s, 3 probes, user timeout off), at most 1000 at once; Enter quits
//     server | 2026-11-25T21:08:32.919Z accepted 127.0.0.1:57730, keepalive on (1 open)
//     client | 2026-11-25T21:08:32.942Z connected from 127.0.0.1:57730 to 127.0.0.1:45565, keepalive off; Enter quits
//
//   What the kernel holds for the connection (/proc/net/tcp):
//     server's socket 127.0.0.1:45565: keepalive timer armed, first probe due in 1.96 s
//     client's socket 127.0.0.1:57730: no timer pending (SO_KEEPALIVE is off on this side)
//
//   Watching for 11 s:
//     server | 2026-11-25T21:08:34.949Z 127.0.0.1:57730 probe answered, after 2.03 s idle
//     client | 2026-11-25T21:08:34.956Z probed by the peer; our kernel answered
//     server | 2026-11-25T21:08:36.958Z 127.0.0.1:57730 probe answered, after 2.01 s idle
//     client | 2026-11-25T21:08:36.965Z probed by the peer; our kernel answered
//     server | 2026-11-25T21:08:39.168Z 127.0.0.1:57730 probe answered, after 2.02 s idle
//     client | 2026-11-25T21:08:39.174Z probed by the peer; our kernel answered
//     server | 2026-11-25T21:08:41.175Z 127.0.0.1:57730 probe answered, after 2.02 s idle
//     client | 2026-11-25T21:08:41.182Z probed by the peer; our kernel answered
//     server | 2026-11-25T21:08:43.188Z 127.0.0.1:57730 probe answered, after 2.02 s idle
//     client | 2026-11-25T21:08:43.191Z probed by the peer; our kernel answered
//
//   What was seen in 11 s, and what the settings predict:
//     - probes the server's kernel sent and the client answered: 5
//       (predicted: one every max(idle, interval) = max(2, 2) = 2 s, so 5)
//     - probes the client saw arrive and answered: 5
//     - silence before each probe: 2.02 s on average
//     - keepalive probes the kernel counted for every socket in this network namespace
//       (TcpExt TCPKeepAlive): 5; the same as the server's: no other socket here sent a probe meanwhile
//
//   What the numbers mean:
//     - Without --idle and --interval, this connection would use the system's settings:
//       the first probe after 7200 s of silence, then one every max(7200, 75) = 7200 s.
//       The blog set tcp_keepalive_time=120 (intvl stayed 75), so it saw one every 2 minutes.
//     - --idle alone is not enough for a steady cadence: with --idle 2 and the system's
//       interval of 75 s, a healthy peer is probed every max(2, 75) = 75 s.
//     - If the client vanished (no FIN, no RST: a pulled cable, a NAT that forgot the flow),
//       the server would send 3 probes 2 s apart and then fail the connection
//       with ETIMEDOUT: server.ts prints "timed out" after 2 + 3 x 2 = 8 s.
//       With the system's settings: 7200 + 9 x 75 = 7875 s.
//     - deno task test cuts a virtual cable in a network namespace and checks exactly that.
//
//   Pressing Enter in the server's terminal:
//     client | 2026-11-25T21:08:43.956Z the server closed the connection (0 bytes received)
//     server | 2026-11-25T21:08:43.958Z summary: 1 connection: 1 accepted, 0 rejected, 0 reset before accept; of the accepted, 0 closed by peer, 0 reset, 0 timed out, 0 errors, 1 closed on quit
//   server.ts exited 0, client.ts exited 0.

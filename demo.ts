/**
 * # The blog's keepalive experiment, run and explained in a few seconds
 *
 * @run deno run -A demo.ts        (or: deno task demo)
 *
 * Starts `server.ts` and `client.ts` on loopback, as the blog did in two
 * terminals, then asks the kernel (through `/proc/net/tcp`) what it did
 * with their sockets: the server's socket has its keepalive timer armed and
 * says when the first probe is due, the client's has none. It shows the
 * keepalive sysctls that decide that timing, explains what happens when the
 * timer fires, and tells how to see probes without waiting two hours. It
 * needs no root, changes nothing, and exits by itself.
 *
 * Why `-A`: the two scripts need only `--allow-net`, but Deno refuses every
 * path under `/proc` unless the script runs with `--allow-all`;
 * `--allow-read=/proc` is not enough (denoland/deno issue 27564).
 *
 * @module
 */
import { type ClientEvent, formatClientEvent } from "./client.ts";
import { findTcpSocket, readTcpSockets, type TcpSocket } from "./proc_net.ts";
import { formatServerEvent, type ServerEvent } from "./server.ts";
import { readKeepaliveSysctls, SysctlError } from "./sysctl.ts";

const HERE = new URL(".", import.meta.url).pathname;

/** Runs the demo; returns the exit code (0, or 1 when something could not be observed). */
export async function main(): Promise<number> {
  // Step 1: the settings. They are the kernel's, per network namespace, and
  // every socket with SO_KEEPALIVE on uses them unless it sets its own.
  let sysctls: Record<string, number>;
  try {
    sysctls = await readKeepaliveSysctls();
  } catch (error) {
    if (error instanceof SysctlError && error.hint === "allow-all") {
      console.error(
        "demo.ts: Deno refuses to read /proc without --allow-all (denoland/deno issue 27564); " +
          "run: deno run -A demo.ts",
      );
    } else {
      console.error(`demo.ts: ${error instanceof Error ? error.message : String(error)}`);
    }
    return 1;
  }
  const time = sysctls["net.ipv4.tcp_keepalive_time"];
  const intvl = sysctls["net.ipv4.tcp_keepalive_intvl"];
  const probes = sysctls["net.ipv4.tcp_keepalive_probes"];
  say("The kernel's keepalive settings (per network namespace):");
  for (const [key, value] of Object.entries(sysctls)) say(`  ${key} = ${value}`);

  // Step 2: the blog's two terminals, as two processes with --allow-net only.
  say("\nStarting server.ts and client.ts on 127.0.0.1, as the blog did in two terminals:");
  await using server = spawn("server.ts", ["--hostname", "127.0.0.1", "--port", "0", "--json"]);
  const listening = await server.next("listening");
  const port = Number(String(listening.address).match(/:(\d+)$/)![1]);
  await using client = spawn("client.ts", ["--port", String(port), "--json"]);
  const connected = await client.next("connected");
  await server.next("accepted");

  // Step 3: ask the kernel. /proc/net/tcp has a row per socket with the
  // timer pending on it; for an idle socket with SO_KEEPALIVE on, that is
  // the keepalive timer, and `tm->when` is how long until the first probe.
  const clientEnd = parseEndpoint(connected.local);
  const serverEnd = parseEndpoint(connected.remote);
  const rows = await readTcpSockets();
  const serverSocket = findTcpSocket(rows, serverEnd, clientEnd);
  const clientSocket = findTcpSocket(rows, clientEnd, serverEnd);
  if (!serverSocket || !clientSocket) {
    console.error("demo.ts: the connection is not in /proc/net/tcp; cannot show its timers");
    return 1;
  }
  say("\nWhat the kernel holds for the connection (/proc/net/tcp):");
  say(`  server's socket ${connected.remote}: ${describeTimer(serverSocket)}`);
  say(`  client's socket ${connected.local}: ${describeTimer(clientSocket)}`);
  await new Promise((resolve) => setTimeout(resolve, 2000));
  const later = findTcpSocket(await readTcpSockets(), serverEnd, clientEnd);
  if (later) say(`  2 s later, the server's timer: ${describeTimer(later)}`);

  // Step 4: what the numbers mean.
  const cadence = Math.max(time, intvl);
  say(`
What happens next:
  - After ${time} s without traffic (tcp_keepalive_time) the server's kernel sends a
    probe: an empty ACK. The client's kernel answers it; neither program notices.
  - While the client answers, a probe goes out every max(time, intvl) = ${cadence} s.
    The blog set time=120 (intvl stayed 75), so it saw one every 2 minutes.
  - If the client vanished (no FIN, no RST: a pulled cable, a NAT that forgot the
    flow), the server would send ${probes} probes ${intvl} s apart and then fail the
    connection with ETIMEDOUT: server.ts would print "timed out" after
    ${time} + ${probes} x ${intvl} = ${time + probes * intvl} s.`);

  say(`
To see probes without waiting ${time} s:
  - deno task test runs this experiment in a throwaway network namespace with
    time=2, and checks the probes the kernel counted (needs root).
  - Or lower the settings for the whole host (root; every program is affected),
    run 'tcpdump -i lo -nn port 8888' beside 'deno task server' and 'deno task client',
    and put the old values back afterwards:
      sudo deno run -A sysctl.ts time=120 intvl=75
      sudo deno run -A sysctl.ts time=${time} intvl=${intvl}`);

  // Step 5: quit the way the blog did: Enter in the server's terminal.
  say("\nPressing Enter in the server's terminal:");
  await server.write("\n");
  await server.next("summary");
  await client.next("server-closed");
  const [serverCode, clientCode] = [await server.exitCode(), await client.exitCode()];
  say(`server.ts exited ${serverCode}, client.ts exited ${clientCode}.`);
  return serverCode === 0 && clientCode === 0 ? 0 : 1;
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

function parseEndpoint(text: unknown): { hostname: string; port: number } {
  const [, hostname, port] = String(text).match(/^\[?(.*?)\]?:(\d+)$/)!;
  return { hostname, port: Number(port) };
}

/**
 * Runs one of the kit's scripts with --allow-net and `--json`, echoes each of
 * its events as the script's own text line, and hands them out one by one.
 */
function spawn(script: string, args: string[]) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net", script, ...args],
    cwd: HERE,
    stdin: "piped",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const label = script.replace(".ts", "").padStart(6);
  const events = readEvents(child.stdout);
  const stdin = child.stdin.getWriter();
  const deadline = AbortSignal.timeout(15_000);
  return {
    /** The next event named `name`, echoing every event on the way. */
    async next(name: string): Promise<Record<string, unknown>> {
      for (;;) {
        const result = await Promise.race([
          events.next(),
          new Promise<never>((_, reject) =>
            deadline.addEventListener(
              "abort",
              () => reject(new Error(`${script} did not report ${name} in time`)),
            )
          ),
        ]);
        if (result.done) throw new Error(`${script} ended before reporting ${name}`);
        const event = result.value;
        const text = script === "server.ts"
          ? formatServerEvent(event as ServerEvent)
          : formatClientEvent(event as ClientEvent);
        say(`  ${label} | ${text}`);
        if (event.event === name) return event;
      }
    },
    write: (text: string) => stdin.write(new TextEncoder().encode(text)),
    async exitCode(): Promise<number> {
      await stdin.close().catch(() => {});
      return (await child.status).code;
    },
    async [Symbol.asyncDispose]() {
      try {
        child.kill();
      } catch { /* already exited */ }
      await stdin.close().catch(() => {});
      await child.status;
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
    Deno.exit(await main());
  } catch (error) {
    console.error(`demo.ts: ${error instanceof Error ? error.message : String(error)}`);
    Deno.exit(1);
  }
}

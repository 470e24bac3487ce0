import { assert, assertEquals, assertMatch, assertThrows } from "@std/assert";
import net from "node:net";
import { main, parseServerArgs, UsageError } from "../server.ts";
import { findTcpSocket, readTcpSockets, type TcpSocket } from "../proc_net.ts";
import { spawnScript } from "./_helpers.ts";

// --- Flags -----------------------------------------------------------------

Deno.test("server flags default to the C server: every IPv4 address, port 8888, keepalive on", () => {
  assertEquals(parseServerArgs([]), {
    hostname: "0.0.0.0",
    port: 8888,
    keepAlive: true,
    maxConnections: 1000,
    tuning: null,
    watch: false,
    json: false,
  });
});

Deno.test("server flags take a port, an IPv6 hostname with or without brackets, and --no-keepalive", () => {
  assertEquals(
    parseServerArgs(["--port", "0", "--hostname", "[::1]", "--no-keepalive", "--json"]),
    {
      hostname: "::1",
      port: 0,
      keepAlive: false,
      maxConnections: 1000,
      tuning: null,
      watch: false,
      json: true,
    },
  );
  assertEquals(parseServerArgs(["--hostname=::", "--max-connections=5"]), {
    hostname: "::",
    port: 8888,
    keepAlive: true,
    maxConnections: 5,
    tuning: null,
    watch: false,
    json: false,
  });
  assertEquals(parseServerArgs(["--help"]), "help");
  assertEquals(parseServerArgs(["-h"]), "help");
});

Deno.test("server tuning flags are seconds, become milliseconds, and contradict --no-keepalive", () => {
  const options = parseServerArgs([
    "--idle",
    "2",
    "--interval",
    "1",
    "--count",
    "3",
    "--user-timeout=0",
  ]);
  assertEquals(options !== "help" && options.tuning, {
    time: 2_000,
    interval: 1_000,
    retries: 3,
    userTimeout: 0,
  });
  assertThrows(
    () => parseServerArgs(["--idle", "5", "--no-keepalive"]),
    UsageError,
    "--no-keepalive cannot",
  );
  for (
    const flag of ["--idle=0", "--interval=32768", "--count=128", "--user-timeout=-1", "--count=x"]
  ) {
    assertThrows(() => parseServerArgs([flag]), UsageError, flag.split("=")[0]);
  }
});

Deno.test("server flags refuse ports outside 0..65535, non-integers, unknown flags and stray arguments", () => {
  for (const port of ["65536", "-1", "1.5", "abc", "", " 80", "0x50"]) {
    assertThrows(() => parseServerArgs([`--port=${port}`]), UsageError, "--port");
  }
  assertThrows(() => parseServerArgs(["--port"]), UsageError, "--port needs a value");
  assertThrows(() => parseServerArgs(["--port", "-1"]), UsageError, "-1 is not a valid value");
  assertThrows(() => parseServerArgs(["--max-connections", "0"]), UsageError, "--max-connections");
  assertThrows(() => parseServerArgs(["--bogus"]), UsageError, "unknown flag --bogus");
  assertThrows(() => parseServerArgs(["8888"]), UsageError, "unexpected argument");
  assertThrows(() => parseServerArgs(["--hostname="]), UsageError, "--hostname needs a value");
});

Deno.test("server exits 2 with one line and a hint for bad flags", async () => {
  const server = spawnScript("server.ts", ["--port", "99999"]);
  const { code, stderr } = await server.finish();
  assertEquals(code, 2);
  assertEquals(stderr.trim().split("\n").length, 1);
  assertMatch(stderr, /--port must be an integer from 0 to 65535.*see --help/);
});

Deno.test("server exits 1 with one line when the port is in use", async () => {
  using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const code = await main(["--hostname", "127.0.0.1", "--port", String(taken.addr.port)]);
  assertEquals(code, 1);
  const server = spawnScript("server.ts", [
    "--hostname",
    "127.0.0.1",
    "--port",
    String(taken.addr.port),
  ]);
  const { stderr } = await server.finish();
  assertEquals(
    stderr,
    `server.ts: cannot listen on 127.0.0.1:${taken.addr.port}: the port is already in use\n`,
  );
});

Deno.test("server refuses arguments after --, and says what an empty value is", () => {
  assertThrows(
    () => parseServerArgs(["--", "--port", "0"]),
    UsageError,
    'unexpected argument "--port"',
  );
  assertThrows(() => parseServerArgs(["--hostname", ""]), UsageError, "an empty argument");
});

Deno.test("server without --allow-net exits 1 and names the flag to add", async () => {
  const server = spawnScript("server.ts", ["--port", "0"], { permissions: [] });
  const { code, stderr } = await server.finish();
  assertEquals(code, 1);
  assertMatch(stderr, /needs the --allow-net permission/);
  assert(!stderr.includes("    at "), `no stack trace expected:\n${stderr}`);
});

// --- What the kernel does with the server's sockets ---------------------------

const keepaliveTimeSeconds = Number(
  await Deno.readTextFile("/proc/sys/net/ipv4/tcp_keepalive_time"),
);

/** The kernel's row for a connection, found from Deno's view of it. */
async function kernelSocket(conn: Deno.Conn): Promise<TcpSocket> {
  const socket = findTcpSocket(await readTcpSockets(), conn.remoteAddr, conn.localAddr);
  if (!socket) throw new Error(`no /proc/net/tcp row for ${JSON.stringify(conn.remoteAddr)}`);
  return socket;
}

function startServer(args: string[]) {
  return spawnScript("server.ts", ["--port", "0", "--json", ...args]);
}

async function listeningPort(server: ReturnType<typeof startServer>): Promise<number> {
  const listening = await server.waitForEvent("listening");
  return Number(String(listening.address).match(/:(\d+)$/)![1]);
}

for (const hostname of ["127.0.0.1", "::1"]) {
  Deno.test(`server arms the kernel's keepalive timer on an accepted connection (${hostname})`, async () => {
    await using server = startServer(["--hostname", hostname]);
    const port = await listeningPort(server);
    using conn = await Deno.connect({ hostname, port: port });
    await server.waitForEvent("accepted");
    // The server's end: keepalive timer pending, first probe due in about
    // tcp_keepalive_time seconds. Our end never turned keepalive on.
    const serverSide = await kernelSocket(conn);
    assertEquals(serverSide.timer, "keepalive");
    assert(
      serverSide.timerSeconds > keepaliveTimeSeconds - 10 &&
        serverSide.timerSeconds <= keepaliveTimeSeconds,
      `first probe due in ${serverSide.timerSeconds} s, expected about ${keepaliveTimeSeconds} s`,
    );
    const clientSide = findTcpSocket(await readTcpSockets(), conn.localAddr, conn.remoteAddr);
    assertEquals(clientSide?.timer, "none");
  });
}

Deno.test("server with --no-keepalive leaves the accepted connection without a keepalive timer", async () => {
  await using server = startServer(["--hostname", "127.0.0.1", "--no-keepalive"]);
  const port = await listeningPort(server);
  using conn = await Deno.connect({ hostname: "127.0.0.1", port: port });
  const accepted = await server.waitForEvent("accepted");
  assertEquals(accepted.keepAlive, false);
  assertEquals((await kernelSocket(conn)).timer, "none");
});

Deno.test("server listening on :: accepts IPv4 and IPv6 clients", async () => {
  await using server = startServer(["--hostname", "::"]);
  const port = await listeningPort(server);
  using v4 = await Deno.connect({ hostname: "127.0.0.1", port: port });
  assertEquals(
    (await server.waitForEvent("accepted")).peer,
    `[::ffff:127.0.0.1]:${v4.localAddr.port}`,
  );
  using v6 = await Deno.connect({ hostname: "::1", port: port });
  await server.waitForLine((line) => line.includes(`"peer":"[::1]:${v6.localAddr.port}"`));
  assertEquals((await kernelSocket(v6)).timer, "keepalive");
});

// --- How connections end, and how the server quits ---------------------------

Deno.test("server reports a peer's close, a peer's reset, and keeps serving", async () => {
  await using server = startServer(["--hostname", "127.0.0.1"]);
  const port = await listeningPort(server);
  const closing = await Deno.connect({ hostname: "127.0.0.1", port: port });
  await closing.write(new TextEncoder().encode("hello\x1b[2J"));
  closing.close();
  const closed = await server.waitForEvent("peer-closed");
  assertEquals(closed.peer, `127.0.0.1:${closing.localAddr.port}`);
  assertEquals(closed.bytes, 9);

  // node:net can close with a reset (SO_LINGER 0); Deno's own API cannot.
  const resetting = net.connect(port, "127.0.0.1");
  await new Promise((resolve) => resetting.once("connect", resolve));
  const resettingPort = resetting.localPort;
  await server.waitForLine((line) =>
    line.includes(`"accepted","peer":"127.0.0.1:${resettingPort}"`)
  );
  resetting.resetAndDestroy();
  const reset = await server.waitForEvent("reset");
  assertEquals(reset.peer, `127.0.0.1:${resettingPort}`);

  using still = await Deno.connect({ hostname: "127.0.0.1", port: port });
  assertEquals((await server.waitForEvent("accepted")).open, 1);
  assertEquals((await kernelSocket(still)).state, "ESTABLISHED");
});

Deno.test("server never prints what a peer sends", async () => {
  await using server = startServer(["--hostname", "127.0.0.1"]);
  const port = await listeningPort(server);
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: port });
  await conn.write(new TextEncoder().encode("SECRET\x1b]0;title\x07"));
  conn.close();
  await server.waitForEvent("peer-closed");
  await server.write("\n");
  const { stdout } = await server.finish();
  assert(!stdout.includes("SECRET") && !stdout.includes("\x1b"), stdout);
});

Deno.test("server closes connections over --max-connections at once and says so", async () => {
  await using server = startServer(["--hostname", "127.0.0.1", "--max-connections", "1"]);
  const port = await listeningPort(server);
  using first = await Deno.connect({ hostname: "127.0.0.1", port: port });
  await server.waitForEvent("accepted");
  const second = await Deno.connect({ hostname: "127.0.0.1", port: port });
  const rejected = await server.waitForEvent("rejected");
  assertEquals(rejected.peer, `127.0.0.1:${second.localAddr.port}`);
  // The rejected connection is closed by the server: our read sees its end.
  assertEquals(await second.read(new Uint8Array(1)), null);
  second.close();
  assertEquals((await kernelSocket(first)).state, "ESTABLISHED");
});

Deno.test("server quits on Enter with exit 0, closes its connections, and prints a summary", async () => {
  await using server = startServer(["--hostname", "127.0.0.1"]);
  const port = await listeningPort(server);
  using conn = await Deno.connect({ hostname: "127.0.0.1", port: port });
  await server.waitForEvent("accepted");
  await server.write("\n");
  const summary = await server.waitForEvent("summary");
  assertEquals([summary.accepted, summary.closedOnQuit, summary.errors], [1, 1, 0]);
  const { code, stderr } = await server.finish();
  assertEquals([code, stderr], [0, ""]);
  // Closing its own connections is not an error, nor a close by the peer.
  assert(!server.lines.some((line) => /"(error|peer-closed)"/.test(line)), server.lines.join("\n"));
  // The server closed our connection on its way out.
  assertEquals(await conn.read(new Uint8Array(1)), null);
});

Deno.test("server quits on SIGTERM with exit 0 and a summary, and a closed stdin does not quit it", async () => {
  await using server = startServer(["--hostname", "127.0.0.1"]);
  const port = await listeningPort(server);
  await server.closeStdin();
  await new Promise((resolve) => setTimeout(resolve, 500));
  // Still serving after its stdin closed:
  using conn = await Deno.connect({ hostname: "127.0.0.1", port: port });
  await server.waitForEvent("accepted");
  server.child.kill("SIGTERM");
  const summary = await server.waitForEvent("summary");
  assertEquals([summary.accepted, summary.closedOnQuit, summary.errors], [1, 1, 0]);
  assertEquals((await server.finish()).code, 0);
  assertEquals(await conn.read(new Uint8Array(1)), null);
});

Deno.test("server prints one line of text per event, with a timestamp and the peer", async () => {
  await using server = spawnScript("server.ts", ["--port", "0", "--hostname", "127.0.0.1"]);
  const listening = await server.waitForLine((line) => line.includes("listening on"));
  assertMatch(listening, /^\d{4}-\d\d-\d\dT[\d:.]+Z listening on 127\.0\.0\.1:\d+, keepalive on/);
  const port = Number(listening.match(/127\.0\.0\.1:(\d+)/)![1]);
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await server.waitForLine((line) =>
    line.includes(`accepted 127.0.0.1:${conn.localAddr.port}, keepalive on`)
  );
  conn.close();
  await server.waitForLine((line) =>
    line.endsWith(`127.0.0.1:${conn.localAddr.port} closed by peer after 0 bytes`)
  );
  server.child.kill("SIGINT");
  await server.waitForLine((line) =>
    /summary: 1 accepted, 1 closed by peer, 0 reset, 0 timed out/.test(line)
  );
  assertEquals((await server.finish()).code, 0);
});

/**
 * Tests for server.ts: its flags, what the kernel does with its sockets, how
 * connections end, how it quits, and that it never stalls on its own output
 * or on a descriptor table that ran out. On loopback; no root needed.
 */
import { assert, assertEquals, assertMatch, assertStringIncludes, assertThrows } from "@std/assert";
import net from "node:net";
import { main, parseServerArgs, UsageError } from "../server.ts";
import { findTcpSocket, readTcpSockets, type TcpSocket } from "@kakit/keepalive/proc-net";
import {
  assertSummaryAddsUp,
  delay,
  type ScriptProcess,
  SERVER_ENGINE,
  spawnScript,
} from "./_helpers.ts";

// --- Flags -----------------------------------------------------------------

Deno.test("server flags default to the C server: every IPv4 address, port 8888, keepalive on", () => {
  assertEquals(parseServerArgs([]), {
    hostname: "0.0.0.0",
    port: 8888,
    backlog: 511,
    keepAlive: true,
    maxConnections: 1000,
    tuning: null,
    watch: false,
    echo: false,
    json: false,
    engine: "deno",
  });
});

Deno.test("server flags take a port, an IPv6 hostname with or without brackets, and --no-keepalive", () => {
  assertEquals(
    parseServerArgs(["--port", "0", "--hostname", "[::1]", "--no-keepalive", "--json"]),
    {
      hostname: "::1",
      port: 0,
      backlog: 511,
      keepAlive: false,
      maxConnections: 1000,
      tuning: null,
      watch: false,
      echo: false,
      json: true,
      engine: "deno",
    },
  );
  assertEquals(parseServerArgs(["--hostname=::", "--max-connections=5"]), {
    hostname: "::",
    port: 8888,
    backlog: 511,
    keepAlive: true,
    maxConnections: 5,
    tuning: null,
    watch: false,
    echo: false,
    json: false,
    engine: "deno",
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
  for (const port of ["65536", "-1", "1.5", "abc", " 80", "0x50"]) {
    assertThrows(
      () => parseServerArgs([`--port=${port}`]),
      UsageError,
      "--port must be an integer",
    );
  }
  assertThrows(
    () => parseServerArgs(["--port", "-1"]),
    UsageError,
    '--port must be an integer from 0 to 65535, not "-1"',
  );
  for (const args of [["--port"], ["--port", ""], ["--port="]]) {
    assertThrows(() => parseServerArgs(args), UsageError, "--port needs a value");
  }
  assertThrows(() => parseServerArgs(["--max-connections", "0"]), UsageError, "--max-connections");
  assertThrows(() => parseServerArgs(["--bogus"]), UsageError, 'unknown flag "--bogus"');
  assertThrows(() => parseServerArgs(["8888"]), UsageError, "unexpected argument");
  assertThrows(
    () => parseServerArgs(["--", "--port", "0"]),
    UsageError,
    'unexpected argument "--port"',
  );
  for (const args of [["--hostname="], ["--hostname", ""]]) {
    assertThrows(() => parseServerArgs(args), UsageError, "--hostname needs a value");
  }
});

Deno.test("server boolean flags take no value: --keepalive=no, --json=0, --watch=yes are misuse", () => {
  for (
    const arg of [
      "--keepalive=no",
      "--keepalive=false",
      "--json=0",
      "--watch=yes",
      "--no-keepalive=1",
    ]
  ) {
    assertThrows(() => parseServerArgs([arg]), UsageError, "takes no value");
  }
});

Deno.test("server refuses a flag given twice, even when the last value would do", () => {
  assertThrows(
    () => parseServerArgs(["--port", "abc", "--port", "0"]),
    UsageError,
    "--port is given twice",
  );
  assertThrows(() => parseServerArgs(["--keepalive", "--no-keepalive"]), UsageError, "given twice");
  assertThrows(
    () => parseServerArgs(["--idle", "2", "--idle=3"]),
    UsageError,
    "--idle is given twice",
  );
});

Deno.test("server refuses addresses that are not ones, showing what was typed", () => {
  for (
    const [typed, message] of [
      ["::gg", '--hostname "::gg" is not an IPv6 address'],
      ["[::1", '--hostname "[::1" is not an address: unmatched bracket'],
      ["a\x1b[2Jb", '--hostname "a\\u001b[2Jb" is not an address or host name'],
    ]
  ) {
    assertThrows(() => parseServerArgs(["--hostname", typed]), UsageError, message);
  }
});

/** Runs server.ts with these arguments to its end and checks it was one line of misuse. */
async function assertMisuse(args: string[], message: RegExp): Promise<string> {
  const { code, stderr } = await spawnScript("server.ts", args).finish();
  assertEquals(code, 2, stderr);
  assertEquals(stderr.split("\n").length, 2, `one line expected:\n${stderr}`);
  assertMatch(stderr, message);
  // deno-lint-ignore no-control-regex -- control bytes are what this looks for
  assert(!/[\x00-\x09\x0b-\x1f\x7f]/.test(stderr), `raw control bytes: ${JSON.stringify(stderr)}`);
  return stderr;
}

Deno.test("server exits 2 with one line and a hint for bad flags", async () => {
  await assertMisuse(["--port", "99999"], /--port must be an integer from 0 to 65535.*see --help/);
  await assertMisuse(["--port", ""], /^server\.ts: --port needs a value \(see --help\)$/m);
  await assertMisuse(["--keepalive=no"], /--keepalive takes no value, not "no"/);
  await assertMisuse(["--port", "abc", "--port", "0"], /--port is given twice/);
  await assertMisuse(["--hostname", "::gg"], /"::gg" is not an IPv6 address/);
  await assertMisuse(["--hostname", "[::1"], /"\[::1" is not an address: unmatched bracket/);
});

Deno.test("a hostile --hostname reaches the terminal escaped and short", async () => {
  const stderr = await assertMisuse(
    ["--hostname", `\x1b]0;owned\x07${"x".repeat(100_000)}`],
    /is not an address or host name/,
  );
  assert(stderr.length < 200, `${stderr.length} characters`);
  assertMatch(stderr, /\\u001b\]0;owned\\u0007x+\.\.\." \(100010 characters\)/);
});

Deno.test("server exits 1 with one line when the port is in use", async () => {
  using taken = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const errors: string[] = [];
  const code = await main(["--hostname", "127.0.0.1", "--port", String(taken.addr.port)], {
    stderr: (line) => errors.push(line),
  });
  assertEquals([code, errors], [1, [
    `server.ts: cannot listen on 127.0.0.1:${taken.addr.port}: the port is already in use`,
  ]]);
});

Deno.test("server without --allow-net exits 1 with a command that adds it to the user's own", async () => {
  const server = spawnScript("server.ts", ["--port", "0", "--hostname", "::1", "--json"], {
    permissions: [],
  });
  const { code, stderr } = await server.finish();
  assertEquals(code, 1);
  // (With the epoll engine, asked for by tests/epoll_engine_test.ts, FFI is
  // checked first, and the command adds both.)
  assertEquals(
    stderr,
    SERVER_ENGINE === "epoll"
      ? "server.ts: --engine epoll needs the --allow-ffi permission: deno run --allow-net " +
        "--allow-ffi server.ts --port 0 --hostname ::1 --json --engine epoll\n"
      : "server.ts: listening on [::1]:0 needs the --allow-net permission: " +
        "deno run --allow-net server.ts --port 0 --hostname ::1 --json\n",
  );
  // With a tuning flag and --allow-ffi already given, the command keeps it.
  const tuned = spawnScript("server.ts", ["--port", "0", "--watch"], {
    permissions: ["--allow-ffi"],
  });
  assertStringIncludes(
    (await tuned.finish()).stderr,
    "permission: deno run --allow-net --allow-ffi server.ts --port 0 --watch" +
      (SERVER_ENGINE === "epoll" ? " --engine epoll\n" : "\n"),
  );
});

// --- What the kernel does with the server's sockets ---------------------------

const keepaliveTimeSeconds = Number(
  await Deno.readTextFile("/proc/sys/net/ipv4/tcp_keepalive_time"),
);

/** The kernel's row for the server's end of a connection, found from the client's view of it. */
async function kernelSocket(conn: Deno.Conn): Promise<TcpSocket> {
  const socket = findTcpSocket(await readTcpSockets(), conn.remoteAddr, conn.localAddr);
  if (!socket) throw new Error(`no /proc/net/tcp row for ${JSON.stringify(conn.remoteAddr)}`);
  return socket;
}

function startServer(args: string[], options: Parameters<typeof spawnScript>[2] = {}) {
  return spawnScript("server.ts", ["--port", "0", "--json", ...args], options);
}

async function listeningPort(server: ScriptProcess): Promise<number> {
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

Deno.test("server --backlog reaches the kernel's listen queue, and is checked", async () => {
  assertThrows(() => parseServerArgs(["--backlog", "0"]), UsageError, "--backlog");
  assertThrows(() => parseServerArgs(["--backlog", "65536"]), UsageError, "--backlog");
  const somaxconn = Number(await Deno.readTextFile("/proc/sys/net/core/somaxconn"));
  for (const backlog of [511, 1000, somaxconn + 1]) {
    await using server = startServer(["--hostname", "127.0.0.1", "--backlog", String(backlog)]);
    const port = await listeningPort(server);
    // It says what it asked for, and what the kernel holds when it can read
    // that (FFI: the epoll engine here, or tuning flags).
    const listening = await server.waitForEvent("listening");
    assertEquals([listening.engine, listening.backlog], [SERVER_ENGINE, backlog]);
    assertEquals(
      listening.kernelBacklog,
      SERVER_ENGINE === "epoll" ? Math.min(backlog, somaxconn) : null,
    );
    // ss shows a listener's queue limit as its Send-Q (the kernel caps it at somaxconn).
    const { stdout } = await new Deno.Command("ss", {
      args: ["-Hltn", `sport = :${port}`],
    }).output();
    const columns = new TextDecoder().decode(stdout).trim().split(/\s+/);
    assertEquals(Number(columns[2]), Math.min(backlog, somaxconn), columns.join(" "));
  }
});

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
  assertEquals([rejected.peer, rejected.open], [`127.0.0.1:${second.localAddr.port}`, 1]);
  // The rejected connection is closed by the server: our read sees its end.
  assertEquals(await second.read(new Uint8Array(1)), null);
  second.close();
  assertEquals((await kernelSocket(first)).state, "ESTABLISHED");
  await server.write("\n");
  const summary = await server.waitForEvent("summary");
  assertSummaryAddsUp(summary);
  assertEquals([summary.connections, summary.accepted, summary.rejected], [2, 1, 1]);
});

Deno.test("server quits on Enter with exit 0, closes its connections, and prints a summary", async () => {
  await using server = startServer(["--hostname", "127.0.0.1"]);
  const port = await listeningPort(server);
  using conn = await Deno.connect({ hostname: "127.0.0.1", port: port });
  await server.waitForEvent("accepted");
  await server.write("\n");
  const summary = await server.waitForEvent("summary");
  assertSummaryAddsUp(summary);
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
  await delay(500);
  // Still serving after its stdin closed:
  using conn = await Deno.connect({ hostname: "127.0.0.1", port: port });
  await server.waitForEvent("accepted");
  server.child.kill("SIGTERM");
  const summary = await server.waitForEvent("summary");
  assertSummaryAddsUp(summary);
  assertEquals([summary.accepted, summary.closedOnQuit, summary.errors], [1, 1, 0]);
  assertEquals((await server.finish()).code, 0);
  assertEquals(await conn.read(new Uint8Array(1)), null);
});

Deno.test("a second SIGTERM while the server closes down does not kill it halfway", async () => {
  await using server = startServer(["--hostname", "127.0.0.1"]);
  const port = await listeningPort(server);
  const sockets = await openConnections(port, 300);
  await server.waitForLine((line) => line.includes('"open":300'));
  server.child.kill("SIGTERM");
  await delay(5);
  server.child.kill("SIGTERM");
  server.child.kill("SIGINT");
  const summary = await server.waitForEvent("summary");
  assertSummaryAddsUp(summary);
  assertEquals([summary.accepted, summary.closedOnQuit], [300, 300]);
  assertEquals((await server.finish()).code, 0);
  for (const socket of sockets) socket.destroy();
});

Deno.test("server prints one line of text per event, with a timestamp and the peer", async () => {
  await using server = spawnScript("server.ts", ["--port", "0", "--hostname", "127.0.0.1"]);
  const listening = await server.waitForLine((line) => line.includes("listening on"));
  assertMatch(
    listening,
    /^\d{4}-\d\d-\d\dT[\d:.]+Z listening on 127\.0\.0\.1:\d+ \(engine (deno|epoll), backlog 511\), keepalive on/,
  );
  // Its stdin is a pipe, not a terminal: it does not promise that Enter quits.
  assertMatch(listening, /; SIGTERM quits$/);
  const port = Number(listening.match(/127\.0\.0\.1:(\d+)/)![1]);
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  await server.waitForLine((line) =>
    line.includes(`accepted 127.0.0.1:${conn.localAddr.port}, keepalive on`)
  );
  await conn.write(new Uint8Array([1]));
  conn.close();
  await server.waitForLine((line) =>
    line.endsWith(`127.0.0.1:${conn.localAddr.port} closed by peer after 1 byte`)
  );
  server.child.kill("SIGINT");
  await server.waitForLine((line) =>
    line.endsWith(
      "summary: 1 connection: 1 accepted, 0 rejected, 0 reset before accept; of the accepted, " +
        "1 closed by peer, 0 reset, 0 timed out, 0 errors, 0 closed on quit",
    )
  );
  assertEquals((await server.finish()).code, 0);
});

Deno.test('server with --watch says "user timeout off", not "0 s", and JSON keeps 0', async () => {
  const permissions = ["--allow-net", "--allow-ffi"];
  await using text = spawnScript("server.ts", ["--port", "0", "--hostname", "::1", "--watch"], {
    permissions,
  });
  const line = await text.waitForLine((line) => line.includes("listening on"));
  assertMatch(line, /\(idle \d+ s, interval \d+ s, \d+ probes, user timeout off\)/);
  await using json = startServer(["--hostname", "::1", "--watch"], { permissions });
  assertEquals(
    ((await json.waitForEvent("listening")).tuning as { userTimeout: number }).userTimeout,
    0,
  );
});

Deno.test("server --no-keepalive --watch does not print times that keepalive does not use", async () => {
  await using server = spawnScript(
    "server.ts",
    ["--port", "0", "--hostname", "127.0.0.1", "--no-keepalive", "--watch"],
    { permissions: ["--allow-net", "--allow-ffi"] },
  );
  const line = await server.waitForLine((line) => line.includes("listening on"));
  assertStringIncludes(
    line,
    "keepalive off for accepted connections (--watch sees only the peer's",
  );
  assert(!/idle \d+ s|probes,/.test(line), line);
});

Deno.test("server --watch stamps each answered probe with when it was answered, not when it was seen", async () => {
  // Probes every 2 s on an idle connection; the watcher looks once a second,
  // so a line stamped at its look is up to a second late.
  await using server = startServer(
    ["--hostname", "127.0.0.1", "--idle", "2", "--interval", "2", "--watch"],
    { permissions: ["--allow-net", "--allow-ffi"] },
  );
  const port = await listeningPort(server);
  using _conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const acceptedAt = Date.parse(String((await server.waitForEvent("accepted")).time));
  const answered = () =>
    server.lines.filter((line) => line.includes('"kind":"answered"')).map((line) =>
      JSON.parse(line)
    );
  for (let waited = 0; answered().length < 3; waited += 100) {
    assert(waited < 15_000, `${answered().length} probes answered in 15 s`);
    await delay(100);
  }
  const probes = answered().slice(0, 3);
  // The k-th probe is due 2k s after the connection's last packet; the
  // kernel's timers fire up to an eighth late.
  probes.forEach((probe, i) => {
    const dueMs = 2_000 * (i + 1);
    const stampedMs = Date.parse(String(probe.time)) - acceptedAt;
    assert(
      stampedMs >= dueMs - 100 && stampedMs <= dueMs * 1.125 + 250,
      `probe ${i + 1} stamped ${stampedMs} ms after the connection, due at ${dueMs}: ${
        JSON.stringify(probe)
      }`,
    );
  });
});

// --- Never stalled: not by its own output, not by a full descriptor table -----

/** Opens `count` connections, `batch` at a time, each given up after 3 s; resolves with the ones made. */
async function openConnections(port: number, count: number, batch = 250): Promise<net.Socket[]> {
  const sockets: net.Socket[] = [];
  for (let done = 0; done < count; done += batch) {
    const made = await Promise.all(
      Array.from(
        { length: Math.min(batch, count - done) },
        () =>
          new Promise<net.Socket | null>((resolve) => {
            const socket = net.connect(port, "127.0.0.1");
            const timer = setTimeout(() => (socket.destroy(), resolve(null)), 3_000);
            socket.once("connect", () => (clearTimeout(timer), resolve(socket)));
            socket.once("error", () => (clearTimeout(timer), resolve(null)));
          }),
      ),
    );
    sockets.push(...made.filter((socket) => socket !== null));
  }
  return sockets;
}

/**
 * How many of the server's sockets on `port` are still open after waiting up
 * to `timeoutMs` for them to close, from the kernel's table.
 */
async function socketsLeftAfter(port: number, timeoutMs: number): Promise<number> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const left = (await readTcpSockets()).filter((socket) =>
      socket.localPort === port && socket.state !== "LISTEN" && socket.state !== "TIME_WAIT"
    ).length;
    if (left === 0 || performance.now() > deadline) {
      return left;
    }
    await delay(100);
  }
}

Deno.test("a server whose stdout nobody reads keeps accepting and reading, and quits on SIGTERM at once", async () => {
  // A pipe holds 64 KiB: 1500 accepted lines and 1500 closed lines are more
  // than four times that. console.log would stop the server at the first
  // full pipe, with about 600 accepted and the backlog (511) full after.
  await using server = startServer(["--hostname", "127.0.0.1", "--max-connections", "5000"], {
    readStdout: false,
  });
  const port = await waitForListener(server);
  const sockets = await openConnections(port, 1500);
  assertEquals(sockets.length, 1500, "connects timed out: the server stopped accepting");
  // Each client sends a byte and closes; the server must read each to its end
  // and close its side, leaving nothing in CLOSE_WAIT.
  for (const socket of sockets) socket.end("x");
  const left = await socketsLeftAfter(port, 10_000);
  assertEquals(left, 0, `${left} connections not read to their end`);

  const start = performance.now();
  server.child.kill("SIGTERM");
  const status = await Promise.race([server.child.status, delay(5_000).then(() => null)]);
  const seconds = (performance.now() - start) / 1000;
  if (status === null) throw new Error("SIGTERM did not end the server within 5 s, stdout stalled");
  assertEquals(status.code, 0);
  assert(seconds < 3, `SIGTERM took ${seconds.toFixed(2)} s with stdout stalled`);
});

Deno.test("a server whose stdout stalls and then drains reports every connection, and the summary adds up", async () => {
  await using server = startServer(["--hostname", "127.0.0.1", "--max-connections", "5000"], {
    readStdout: false,
  });
  const port = await waitForListener(server);
  const sockets = await openConnections(port, 1200);
  for (const socket of sockets) socket.end("x");
  assertEquals(await socketsLeftAfter(port, 10_000), 0, "connections not read to their end");
  server.readStdout();
  server.child.kill("SIGTERM");
  const summary = await server.waitForEvent("summary");
  assertSummaryAddsUp(summary);
  assertEquals((await server.finish()).code, 0);
  assertEquals(
    [summary.connections, summary.accepted, summary.peerClosed, summary.errors],
    [1200, 1200, 1200, 0],
  );
  const events = server.lines.map((line) => JSON.parse(line).event);
  assertEquals(events.filter((event) => event === "accepted").length, 1200);
  assertEquals(events.filter((event) => event === "peer-closed").length, 1200);
});

/** The port of a server whose stdout is not read: from the kernel's table, by its pid. */
async function waitForListener(server: ScriptProcess): Promise<number> {
  for (let tries = 0; tries < 100; tries++) {
    const inodes = await socketInodes(server.child.pid);
    const listener = (await readTcpSockets()).find((socket) =>
      socket.state === "LISTEN" && inodes.has(socket.inode)
    );
    if (listener) return listener.localPort;
    await delay(100);
  }
  throw new Error("the server did not listen");
}

async function socketInodes(pid: number): Promise<Set<number>> {
  const inodes = new Set<number>();
  try {
    for await (const entry of Deno.readDir(`/proc/${pid}/fd`)) {
      const link = await Deno.readLink(`/proc/${pid}/fd/${entry.name}`).catch(() => "");
      const inode = link.match(/^socket:\[(\d+)\]$/)?.[1];
      if (inode) inodes.add(Number(inode));
    }
  } catch { /* not started yet */ }
  return inodes;
}

Deno.test("out of descriptors: one line when accepting fails, one when it works again, and no errors", async () => {
  // A descriptor table of 48: Deno takes about 20, so about 25 connections fit.
  await using server = startServer(["--hostname", "127.0.0.1"], {
    prefix: ["prlimit", "--nofile=48:48", "--"],
  });
  const port = await listeningPort(server);
  const sockets = await openConnections(port, 60);
  assertEquals(sockets.length, 60, "the kernel completes connections into the backlog meanwhile");
  await server.waitForEvent("accept-error");
  await delay(1_000); // ten retries or so, each of which used to print a line
  // Five of those waiting in the backlog reset before the server gets to them.
  const accepted = new Set(
    server.lines.filter((line) => line.includes('"accepted"')).map((line) => JSON.parse(line).peer),
  );
  const waiting = sockets.filter((socket) => !accepted.has(`127.0.0.1:${socket.localPort}`));
  assert(waiting.length >= 5, `${waiting.length} waiting`);
  for (const socket of waiting.slice(0, 5)) socket.resetAndDestroy();
  await delay(200);
  // Closing the accepted ones gives descriptors back: the rest are accepted.
  for (const socket of sockets) if (!socket.destroyed) socket.end();
  const resumed = await server.waitForEvent("accept-resumed");
  assert(Number(resumed.retries) >= 5, `${resumed.retries} retries`);
  await server.write("\n");
  const summary = await server.waitForEvent("summary");
  assertSummaryAddsUp(summary);
  assertEquals((await server.finish()).code, 0);
  const count = (event: string) =>
    server.lines.filter((line) => line.includes(`"event":"${event}"`)).length;
  assertEquals([count("accept-error"), count("accept-resumed")], [1, 1]);
  assertEquals(count("reset-before-accept"), 5);
  assertEquals(
    [summary.connections, summary.accepted, summary.resetBeforeAccept, summary.errors],
    [60, 55, 5, 0],
  );
  assertEquals(summary.acceptPauses, 1);
});

Deno.test("a connection reset while it waits in the backlog is counted as such, not as an error", async () => {
  await using server = startServer(["--hostname", "127.0.0.1"]);
  const port = await listeningPort(server);
  // Stop the server, so that connections wait in its backlog; reset two there.
  server.child.kill("SIGSTOP");
  try {
    const sockets = await openConnections(port, 3);
    for (const socket of sockets.slice(0, 2)) socket.resetAndDestroy();
    await delay(200);
  } finally {
    server.child.kill("SIGCONT");
  }
  await server.waitForEvent("accepted");
  await delay(300);
  await server.write("\n");
  const summary = await server.waitForEvent("summary");
  assertSummaryAddsUp(summary);
  assertEquals(
    [summary.connections, summary.accepted, summary.resetBeforeAccept, summary.errors],
    [3, 1, 2, 0],
  );
  assert(!server.lines.some((line) => line.includes('"accept-error"')), server.lines.join("\n"));
});

Deno.test("server --echo sends each peer back exactly its own bytes, with others sending at once", async () => {
  await using server = spawnScript("server.ts", [
    "--hostname",
    "127.0.0.1",
    "--port",
    "0",
    "--echo",
    "--json",
  ]);
  const port = Number(String((await server.waitForEvent("listening")).address).split(":").at(-1));
  // Four peers each send 2,000 lines of their own letter, in small writes
  // that interleave with the others', then read everything that comes back.
  const echoOf = async (letter: string) => {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    const line = new TextEncoder().encode(`${letter.repeat(7)}\n`);
    const reading = (async () => {
      let text = "";
      const decoder = new TextDecoder();
      for await (const chunk of conn.readable) text += decoder.decode(chunk, { stream: true });
      return text;
    })();
    for (let i = 0; i < 2_000; i++) await conn.write(line);
    await conn.closeWrite();
    return await reading;
  };
  const echoes = await Promise.all(["A", "B", "C", "D"].map(echoOf));
  for (const [i, letter] of ["A", "B", "C", "D"].entries()) {
    assertEquals(echoes[i].length, 16_000, `${letter}: bytes back`);
    assertEquals(
      echoes[i],
      `${letter.repeat(7)}\n`.repeat(2_000),
      `${letter} got someone else's bytes`,
    );
  }
});

Deno.test("too few descriptors for --watch: one line and exit 1 before listening, or a clean run; never a panic after listening", async () => {
  // Deno itself takes about 20 descriptors; the signal listeners, the
  // listener and --watch's netlink socket take the next few. Whichever the
  // server's own code is refused, it says so in one line, or it starts and
  // quits cleanly. (With one descriptor left, Deno panics inside
  // Deno.addSignalListener itself: no script can catch that, and it comes
  // first, before anything is printed; it is skipped here with Deno's own
  // start-up panics.)
  const outcomes: string[] = [];
  for (let limit = 22; limit <= 34; limit++) {
    const server = startServer(["--hostname", "127.0.0.1", "--watch"], {
      permissions: ["--allow-net", "--allow-ffi"],
      prefix: ["prlimit", `--nofile=${limit}:${limit}`, "--"],
    });
    const listened = await server.waitForEvent("listening", 5_000).then(() => true, () => false);
    if (listened) {
      await delay(1_500); // a look or two of the watcher
      try {
        server.child.kill("SIGTERM");
      } catch { /* it died: see below */ }
    }
    const { code, stdout, stderr } = await server.finish(10_000);
    if (stderr.includes("Deno has panicked") && !listened) continue; // Deno's own start-up
    assert(!stderr.includes("panicked"), `limit ${limit}: ${stderr}`);
    if (listened) {
      assertEquals(code, 0, `limit ${limit}: ${stderr}`);
      assert(stdout.includes('"event":"summary"'), `limit ${limit}: no summary`);
      outcomes.push("ran");
    } else {
      assertEquals(code, 1, `limit ${limit}: ${stderr}`);
      // (Deno may warn that it could not load the system's certificates.)
      const lines = stderr.split("\n").filter((line) => line && !line.includes("Warning"));
      assertEquals(lines.length, 1, `limit ${limit}: ${stderr}`);
      assertMatch(lines[0], /^server\.ts: .*(Too many open files|errno 24)/);
      outcomes.push("refused");
    }
  }
  assert(outcomes.includes("ran") && outcomes.includes("refused"), outcomes.join(" "));
});

import { assert, assertEquals, assertMatch, assertThrows } from "@std/assert";
import net from "node:net";
import { main, parseClientArgs, UsageError } from "../client.ts";
import { findTcpSocket, readTcpSockets } from "../proc_net.ts";
import { spawnScript } from "./_helpers.ts";

// --- Flags -----------------------------------------------------------------

Deno.test("client flags default to the C client: 127.0.0.1, port 8888, keepalive off", () => {
  assertEquals(parseClientArgs([]), {
    hostname: "127.0.0.1",
    port: 8888,
    keepAlive: false,
    tuning: null,
    watch: false,
    json: false,
  });
});

Deno.test("client flags take an IPv6 hostname with or without brackets, --keepalive and --json", () => {
  assertEquals(
    parseClientArgs(["--hostname", "[::1]", "--port", "9000", "--keepalive", "--json"]),
    {
      hostname: "::1",
      port: 9000,
      keepAlive: true,
      tuning: null,
      watch: false,
      json: true,
    },
  );
  assertEquals(parseClientArgs(["--hostname=::1"]), {
    hostname: "::1",
    port: 8888,
    keepAlive: false,
    tuning: null,
    watch: false,
    json: false,
  });
  assertEquals(parseClientArgs(["--help"]), "help");
});

Deno.test("client tuning flags are seconds, become milliseconds, and imply --keepalive", () => {
  assertEquals(
    parseClientArgs([
      "--idle",
      "2",
      "--interval=1",
      "--count",
      "3",
      "--user-timeout",
      "10",
      "--watch",
    ]),
    {
      hostname: "127.0.0.1",
      port: 8888,
      keepAlive: true,
      tuning: { time: 2_000, interval: 1_000, retries: 3, userTimeout: 10_000 },
      watch: true,
      json: false,
    },
  );
  for (
    const [flag, value] of [
      ["--idle", "0"],
      ["--idle", "32768"],
      ["--interval", "1.5"],
      ["--count", "128"],
      ["--count", "0"],
      ["--user-timeout", "2147484"],
      ["--idle", ""],
    ]
  ) {
    assertThrows(() => parseClientArgs([`${flag}=${value}`]), UsageError, flag);
  }
});

Deno.test("client flags refuse ports outside 1..65535, non-integers, unknown flags and stray arguments", () => {
  for (const port of ["0", "65536", "1.5", "abc", "", "+80"]) {
    assertThrows(() => parseClientArgs([`--port=${port}`]), UsageError, "--port");
  }
  assertThrows(() => parseClientArgs(["--port", "-1"]), UsageError, "-1 is not a valid value");
  assertThrows(
    () => parseClientArgs(["--no-such-flag"]),
    UsageError,
    "unknown flag --no-such-flag",
  );
  assertThrows(() => parseClientArgs(["localhost"]), UsageError, "unexpected argument");
});

Deno.test("client exits 2 with one line and a hint for bad flags", async () => {
  const client = spawnScript("client.ts", ["--port", "0"]);
  const { code, stderr } = await client.finish();
  assertEquals(code, 2);
  assertEquals(stderr.trim().split("\n").length, 1);
  assertMatch(stderr, /--port must be an integer from 1 to 65535.*see --help/);
});

// --- Connecting ----------------------------------------------------------------

/** A port on which nothing listens (it was free a moment ago). */
function freePort(hostname: string): number {
  using listener = Deno.listen({ hostname, port: 0 });
  return listener.addr.port;
}

Deno.test("client exits 1 with one line when the connection is refused (IPv4 and IPv6)", async () => {
  for (const hostname of ["127.0.0.1", "::1"]) {
    const client = spawnScript("client.ts", [
      "--hostname",
      hostname,
      "--port",
      String(freePort(hostname)),
    ]);
    const { code, stderr } = await client.finish();
    assertEquals(code, 1);
    assertMatch(
      stderr.trim(),
      /^client\.ts: cannot connect to .*: connection refused \(is the server running\?\)$/,
    );
  }
});

Deno.test("client exits 1 with one line when the host name is not found", async () => {
  const client = spawnScript("client.ts", ["--hostname", "no-such-host.invalid"]);
  const { code, stderr } = await client.finish();
  assertEquals(code, 1);
  assertEquals(
    stderr,
    "client.ts: cannot connect to no-such-host.invalid:8888: host name not found\n",
  );
});

Deno.test("client quits on Enter while a connect is still waiting for an answer", async () => {
  // A listener whose accept queue is full drops new SYNs: the connect hangs.
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0, tcpBacklog: 0 });
  using _filler = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  const code = await main(["--port", String(listener.addr.port)], () => delay(300));
  assertEquals(code, 0);
  const client = spawnScript("client.ts", ["--port", String(listener.addr.port)]);
  await delay(300);
  await client.write("\n");
  const { code: exitCode, stdout, stderr } = await client.finish(5_000);
  assertEquals([exitCode, stdout, stderr], [
    0,
    "",
    "client.ts: quit before the connection was made\n",
  ]);
});

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

Deno.test("client without --allow-net exits 1 and names the flag to add", async () => {
  const client = spawnScript("client.ts", [], { permissions: [] });
  const { code, stderr } = await client.finish();
  assertEquals(code, 1);
  assertMatch(stderr, /needs the --allow-net permission/);
  assert(!stderr.includes("    at "), `no stack trace expected:\n${stderr}`);
});

// --- Holding the connection --------------------------------------------------

const keepaliveTimeSeconds = Number(
  await Deno.readTextFile("/proc/sys/net/ipv4/tcp_keepalive_time"),
);

/** Listens on loopback and hands out the accepted connections. */
function listen(hostname = "127.0.0.1") {
  const listener = Deno.listen({ hostname, port: 0 });
  return {
    port: listener.addr.port,
    accept: () => listener.accept(),
    [Symbol.dispose]: () => listener.close(),
  };
}

for (const [hostname, flags] of [["127.0.0.1", []], ["::1", ["--keepalive"]]] as const) {
  const keepAlive = flags.length > 0;
  Deno.test(
    `client ${keepAlive ? "with" : "without"} --keepalive ${
      keepAlive ? "arms" : "leaves off"
    } the kernel's keepalive timer (${hostname})`,
    async () => {
      using listener = listen(hostname);
      await using client = spawnScript("client.ts", [
        "--hostname",
        hostname,
        "--port",
        String(listener.port),
        "--json",
        ...flags,
      ]);
      using accepted = await listener.accept();
      const connected = await client.waitForEvent("connected");
      const local = hostname.includes(":") ? `[${hostname}]` : hostname;
      assertEquals(connected.local, `${local}:${accepted.remoteAddr.port}`);
      assertEquals(connected.keepAlive, keepAlive);
      const clientSide = findTcpSocket(
        await readTcpSockets(),
        accepted.remoteAddr,
        accepted.localAddr,
      );
      if (!clientSide) throw new Error("the client's socket is not in /proc/net/tcp");
      assertEquals(clientSide.timer, keepAlive ? "keepalive" : "none");
      if (keepAlive) {
        assert(clientSide.timerSeconds > keepaliveTimeSeconds - 10, `${clientSide.timerSeconds} s`);
      }
    },
  );
}

Deno.test("client exits 0 when the server closes the connection, and never prints what it sent", async () => {
  using listener = listen();
  await using client = spawnScript("client.ts", ["--port", String(listener.port)]);
  const accepted = await listener.accept();
  await client.waitForLine((line) => line.includes("connected from"));
  await accepted.write(new TextEncoder().encode("SECRET\x1b[2J\x07"));
  accepted.close();
  await client.waitForLine((line) =>
    line.endsWith("the server closed the connection (11 bytes received)")
  );
  const { code, stdout } = await client.finish();
  assertEquals(code, 0);
  assert(!stdout.includes("SECRET") && !stdout.includes("\x1b"), stdout);
});

Deno.test("client exits 1 and says so when the server resets the connection", async () => {
  // node:net can close with a reset (SO_LINGER 0); Deno's own API cannot.
  const accepted = Promise.withResolvers<net.Socket>();
  const server = net.createServer(accepted.resolve);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  try {
    const port = (server.address() as net.AddressInfo).port;
    await using client = spawnScript("client.ts", ["--port", String(port), "--json"]);
    await client.waitForEvent("connected");
    (await accepted.promise).resetAndDestroy();
    await client.waitForEvent("reset");
    assertEquals((await client.finish()).code, 1);
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
});

Deno.test("client quits on Enter with exit 0 and closes the connection", async () => {
  using listener = listen();
  await using client = spawnScript("client.ts", ["--port", String(listener.port), "--json"]);
  using accepted = await listener.accept();
  await client.waitForEvent("connected");
  await client.write("\n");
  await client.waitForEvent("quit");
  const { code, stderr } = await client.finish();
  assertEquals([code, stderr], [0, ""]);
  assert(!client.lines.some((line) => line.includes('"error"')), client.lines.join("\n"));
  assertEquals(await accepted.read(new Uint8Array(1)), null);
});

Deno.test("client quits on SIGTERM with exit 0, and a closed stdin does not quit it", async () => {
  using listener = listen();
  await using client = spawnScript("client.ts", ["--port", String(listener.port), "--json"]);
  using accepted = await listener.accept();
  await client.waitForEvent("connected");
  await client.closeStdin();
  await new Promise((resolve) => setTimeout(resolve, 500));
  assert(!client.lines.some((line) => line.includes('"quit"')), "quit after stdin closed");
  const socket = findTcpSocket(await readTcpSockets(), accepted.localAddr, accepted.remoteAddr);
  assertEquals(socket?.state, "ESTABLISHED");
  client.child.kill("SIGTERM");
  await client.waitForEvent("quit");
  assertEquals((await client.finish()).code, 0);
  assertEquals(await accepted.read(new Uint8Array(1)), null);
});

Deno.test("client quits on Ctrl-C (SIGINT) with exit 0 and no error", async () => {
  using listener = listen();
  await using client = spawnScript("client.ts", ["--port", String(listener.port), "--json"]);
  using accepted = await listener.accept();
  await client.waitForEvent("connected");
  client.child.kill("SIGINT");
  await client.waitForEvent("quit");
  const { code, stderr } = await client.finish();
  assertEquals([code, stderr], [0, ""]);
  assert(!client.lines.some((line) => line.includes('"error"')), client.lines.join("\n"));
  assertEquals(await accepted.read(new Uint8Array(1)), null);
});

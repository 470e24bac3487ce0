import { assert, assertEquals, assertMatch, assertThrows } from "@std/assert";
import net from "node:net";
import { main, parseClientArgs, UsageError } from "../client.ts";
import { findTcpSocket, readTcpSockets } from "@kakit/keepalive/proc-net";
import { delay, netnsTest, run, runOk, spawnScript, withNetns, withOwnMounts } from "./_helpers.ts";

// --- Flags -----------------------------------------------------------------

Deno.test("client flags default to the C client: 127.0.0.1, port 8888, keepalive off", () => {
  assertEquals(parseClientArgs([]), {
    hostname: "127.0.0.1",
    port: 8888,
    keepAlive: false,
    connectTimeoutMs: null,
    tuning: null,
    watch: false,
    send: null,
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
      connectTimeoutMs: null,
      tuning: null,
      watch: false,
      send: null,
      json: true,
    },
  );
  assertEquals(parseClientArgs(["--hostname=::1"]), {
    hostname: "::1",
    port: 8888,
    keepAlive: false,
    connectTimeoutMs: null,
    tuning: null,
    watch: false,
    send: null,
    json: false,
  });
  assertEquals(parseClientArgs(["--help"]), "help");
  assertEquals(
    (parseClientArgs(["--connect-timeout", "5"]) as { connectTimeoutMs: number }).connectTimeoutMs,
    5_000,
  );
  for (const value of ["0", "-1", "1.5", "86401", ""]) {
    assertThrows(
      () => parseClientArgs([`--connect-timeout=${value}`]),
      UsageError,
      "--connect-timeout",
    );
  }
});

Deno.test("client --send and --send-after: one line after an idle time, checked like every flag", () => {
  const send = (args: string[]) => (parseClientArgs(args) as { send: unknown }).send;
  assertEquals(send(["--send", "ping", "--send-after", "7"]), { text: "ping", afterMs: 7_000 });
  assertEquals(send(["--send-after", "0"]), { text: "hello", afterMs: 0 });
  assertEquals(send(["--send", "x"]), { text: "x", afterMs: 0 });
  for (const args of [["--send-after", "-1"], ["--send-after", "86401"], ["--send-after", "1.5"]]) {
    assertThrows(() => parseClientArgs(args), UsageError, "--send-after");
  }
  assertEquals(send(["--send", "\u{1F600}".repeat(1000)]), {
    text: "\u{1F600}".repeat(1000),
    afterMs: 0,
  });
  for (const text of ["a\u001b[2J", "x".repeat(1001), "a\u200eb", "\u{1F600}".repeat(1001)]) {
    assertThrows(() => parseClientArgs(["--send", text]), UsageError, "--send takes");
  }
});

Deno.test("client --user-timeout alone sets TCP_USER_TIMEOUT and leaves keepalive off", () => {
  const options = parseClientArgs(["--user-timeout", "4"]);
  assertEquals((options as { keepAlive: boolean }).keepAlive, false);
  assertEquals((options as { tuning: unknown }).tuning, { userTimeout: 4_000 });
  assertEquals((parseClientArgs(["--count", "3"]) as { keepAlive: boolean }).keepAlive, true);
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
      connectTimeoutMs: null,
      tuning: { time: 2_000, interval: 1_000, retries: 3, userTimeout: 10_000 },
      watch: true,
      send: null,
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
  assertThrows(
    () => parseClientArgs(["--port", "-1"]),
    UsageError,
    '--port must be an integer from 1 to 65535, not "-1"',
  );
  assertThrows(
    () => parseClientArgs(["--no-such-flag"]),
    UsageError,
    'unknown flag "--no-such-flag"',
  );
  assertThrows(() => parseClientArgs(["localhost"]), UsageError, "unexpected argument");
  assertThrows(
    () => parseClientArgs(["--hostname", "::gg"]),
    UsageError,
    '"::gg" is not an IPv6 address',
  );
  assertThrows(() => parseClientArgs(["--hostname", "[::1"]), UsageError, "unmatched bracket");
});

Deno.test("client boolean flags take no value, and no flag may be given twice", () => {
  for (const arg of ["--keepalive=no", "--keepalive=maybe", "--json=0", "--watch=yes"]) {
    assertThrows(() => parseClientArgs([arg]), UsageError, "takes no value");
  }
  assertThrows(
    () => parseClientArgs(["--port", "1", "--port", "2"]),
    UsageError,
    "--port is given twice",
  );
  assertThrows(() => parseClientArgs(["--keepalive", "--keepalive"]), UsageError, "given twice");
  // There is no --no-keepalive on the client: leaving --keepalive out says no.
  assertThrows(() => parseClientArgs(["--no-keepalive"]), UsageError, "unknown flag");
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

netnsTest("client exits 1 with one line when the host name is not found", async () => {
  await withNetns(async (ns) => {
    // Host names looked up in /etc/hosts only: a name not there is not found,
    // as a name server would say, and no query leaves the machine.
    const nsswitch = await Deno.makeTempFile();
    try {
      await Deno.writeTextFile(nsswitch, "hosts: files\n");
      const result = await run(
        withOwnMounts(ns, `mount --bind ${nsswitch} /etc/nsswitch.conf`, [
          Deno.execPath(),
          "run",
          "--allow-net",
          "client.ts",
          "--hostname",
          "no-such-host.invalid",
        ]),
      );
      assertEquals(result.code, 1, result.stderr);
      assertEquals(
        result.stderr,
        "client.ts: cannot connect to no-such-host.invalid:8888: host name not found\n",
      );
    } finally {
      await Deno.remove(nsswitch);
    }
  });
});

/**
 * A port on loopback where a connect hangs: a listener whose accept queue
 * is full drops new SYNs, as a blackholed address would.
 */
async function hangingPort() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0, tcpBacklog: 0 });
  const filler = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  return {
    port: listener.addr.port,
    [Symbol.dispose]() {
      filler.close();
      listener.close();
    },
  };
}

/** Whether a connection to `port` is still in SYN_SENT. */
async function connecting(port: number): Promise<boolean> {
  return (await readTcpSockets()).some((socket) =>
    socket.remotePort === port && socket.state === "SYN_SENT"
  );
}

Deno.test("client quits on Enter while a connect is still waiting for an answer", async () => {
  using hanging = await hangingPort();
  const errors: string[] = [];
  let connectWasPending = false;
  const code = await main(["--port", String(hanging.port)], {
    quit: async () => {
      await delay(300);
      connectWasPending = await connecting(hanging.port);
    },
    stderr: (line) => errors.push(line),
  });
  assert(connectWasPending, "the connect did not hang: this test proves nothing");
  assertEquals([code, errors], [0, ["client.ts: quit before the connection was made"]]);
  assert(!(await connecting(hanging.port)), "the connect was left pending");

  const client = spawnScript("client.ts", ["--port", String(hanging.port)]);
  await delay(300);
  await client.write("\n");
  const { code: exitCode, stdout, stderr } = await client.finish(5_000);
  assertEquals([exitCode, stdout, stderr], [
    0,
    "",
    "client.ts: quit before the connection was made\n",
  ]);
});

Deno.test("client --connect-timeout gives up on a connect that hangs, with exit 1 and its own words", async () => {
  using hanging = await hangingPort();
  const start = performance.now();
  const client = spawnScript("client.ts", [
    "--port",
    String(hanging.port),
    "--connect-timeout",
    "1",
  ]);
  await client.closeStdin();
  const { code, stderr } = await client.finish(10_000);
  const seconds = (performance.now() - start) / 1000;
  assertEquals([code, stderr], [
    1,
    `client.ts: cannot connect to 127.0.0.1:${hanging.port}: no answer within 1 s (--connect-timeout)\n`,
  ]);
  // Deno starts in about 0.1-0.5 s; the kernel alone would retry its SYN for minutes.
  assert(seconds > 1 && seconds < 4, `gave up after ${seconds.toFixed(2)} s`);
});

const SILENT_DNS_SERVER = `
  const socket = require("node:dgram").createSocket("udp4");
  socket.on("message", () => {});
  socket.bind(53, "127.0.0.1", () => console.log("bound"));`;

netnsTest(
  "a name server that never answers is reported as such, not as a host that does not exist",
  async () => {
    await withNetns(async (ns) => {
      // A name server that takes every query and answers none: a UDP socket on
      // port 53 that never replies (Node is here: Deno comes from npx).
      const silent = new Deno.Command(ns.exec[0], {
        args: [...ns.exec.slice(1), "node", "-e", SILENT_DNS_SERVER],
        stdout: "piped",
        stderr: "inherit",
      }).spawn();
      await using _silent = {
        async [Symbol.asyncDispose]() {
          silent.kill("SIGKILL");
          await silent.status;
        },
      };
      await new Response(silent.stdout).body!.getReader().read(); // "bound"
      const resolvConf = await Deno.makeTempFile();
      try {
        await Deno.writeTextFile(
          resolvConf,
          "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
        );
        // A private mount namespace sees that file as /etc/resolv.conf; the host's is untouched.
        const start = performance.now();
        const result = await run(
          withOwnMounts(ns, `mount --bind ${resolvConf} /etc/resolv.conf`, [
            Deno.execPath(),
            "run",
            "--allow-net",
            "client.ts",
            "--hostname",
            "keepalive-kit.example",
          ]),
        );
        const seconds = (performance.now() - start) / 1000;
        assertEquals(result.code, 1, result.stderr);
        // The resolver waited out its 1 s timeout: the server took the query and kept quiet.
        assert(seconds >= 0.9, `answered after ${seconds.toFixed(2)} s: not a silent server`);
        assertEquals(
          result.stderr,
          "client.ts: cannot connect to keepalive-kit.example:8888: the name server did not answer " +
            "(a temporary failure in name resolution; try again, or give an IP address)\n",
        );
      } finally {
        await Deno.remove(resolvConf);
      }
    });
  },
);

Deno.test("a client whose stdout never drains still connects, holds and quits at once", async () => {
  using listener = listen();
  let written = 0;
  const stalled = { write: () => (written++, new Promise<number>(() => {})) };
  const quit = Promise.withResolvers<void>();
  const running = main(["--port", String(listener.port), "--json"], {
    stdout: stalled,
    quit: () => quit.promise,
  });
  using accepted = await listener.accept();
  await delay(200);
  quit.resolve();
  const start = performance.now();
  assertEquals(await running, 0);
  assert(performance.now() - start < 2_000, "quitting waited for stdout");
  assertEquals(written, 1, "the connected line was handed to stdout");
  assertEquals(await accepted.read(new Uint8Array(1)), null, "the connection was closed");
});

Deno.test("client without --allow-net exits 1 with a command that adds it to the user's own", async () => {
  const client = spawnScript("client.ts", ["--hostname", "::1", "--keepalive"], {
    permissions: [],
  });
  const { code, stderr } = await client.finish();
  assertEquals(code, 1);
  assertEquals(
    stderr,
    "client.ts: connecting to [::1]:8888 needs the --allow-net permission: " +
      "deno run --allow-net client.ts --hostname ::1 --keepalive\n",
  );
});

Deno.test("client --watch alone leaves keepalive off on its side; the tuning flags turn it on", () => {
  assertEquals((parseClientArgs(["--watch"]) as { keepAlive: boolean }).keepAlive, false);
  assertEquals((parseClientArgs(["--count", "3"]) as { keepAlive: boolean }).keepAlive, true);
});

netnsTest("a client with no address to reach the server from says so in plain words", async () => {
  await withNetns(async (ns) => {
    // With its only interface down, the namespace has no address at all.
    await runOk(["ip", "-n", ns.name, "link", "set", "lo", "down"]);
    const result = await run([
      ...ns.exec,
      Deno.execPath(),
      "run",
      "--allow-net",
      "client.ts",
      "--hostname",
      "::1",
    ]);
    assertEquals([result.code, result.stderr], [
      1,
      "client.ts: cannot connect to [::1]:8888: this machine has no address to reach it " +
      "from (is its network interface down?)\n",
    ]);
  });
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
  await delay(500);
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

// --- Sending one line (--send) ------------------------------------------------

Deno.test("client --send goes out after --send-after, and server.ts --echo sends it back (::1)", async () => {
  await using server = spawnScript("server.ts", [
    "--hostname",
    "::1",
    "--port",
    "0",
    "--echo",
    "--json",
  ]);
  const { address } = await server.waitForEvent("listening");
  const port = String(address).split(":").at(-1)!;
  const started = performance.now();
  await using client = spawnScript("client.ts", [
    "--hostname",
    "::1",
    "--port",
    port,
    "--send",
    "ping",
    "--send-after",
    "1",
    "--json",
  ]);
  await client.waitForEvent("connected");
  assertEquals((await client.waitForEvent("sent")).bytes, 5); // "ping\n"
  const idle = (performance.now() - started) / 1000;
  assert(idle >= 1, `sent after ${idle.toFixed(2)} s, before --send-after 1`);
  assertEquals((await client.waitForEvent("received")).bytes, 5);
  assertEquals((await server.waitForEvent("echoed")).bytes, 5);
});

Deno.test("client --user-timeout alone: the kernel holds TCP_USER_TIMEOUT and no keepalive timer", async () => {
  using listener = listen();
  await using client = spawnScript("client.ts", [
    "--port",
    String(listener.port),
    "--user-timeout",
    "4",
    "--json",
  ], { permissions: ["--allow-net", "--allow-ffi"] });
  using accepted = await listener.accept();
  const connected = await client.waitForEvent("connected");
  assertEquals(connected.keepAlive, false);
  const tuning = connected.tuning as { enabled: boolean; userTimeout: number };
  assertEquals([tuning.enabled, tuning.userTimeout], [false, 4_000]);
  const clientSide = findTcpSocket(await readTcpSockets(), accepted.remoteAddr, accepted.localAddr);
  assertEquals(clientSide?.timer, "none");
});

// --- What the package adds (loaded on demand) -----------------------------------

Deno.test("client --idle --interval --count load the package: the kernel holds the times, and the connected line says them", async () => {
  using listener = listen();
  await using client = spawnScript("client.ts", [
    "--port",
    String(listener.port),
    "--idle",
    "2",
    "--interval",
    "1",
    "--count",
    "3",
  ], { permissions: ["--allow-net", "--allow-ffi"] });
  using accepted = await listener.accept();
  const line = await client.waitForLine((line) => line.includes("connected from"));
  assert(
    line.endsWith(
      "keepalive on (idle 2 s, interval 1 s, 3 probes, user timeout off); SIGTERM quits",
    ),
    line,
  );
  const clientSide = findTcpSocket(await readTcpSockets(), accepted.remoteAddr, accepted.localAddr);
  assertEquals(clientSide?.timer, "keepalive");
  assert(clientSide!.timerSeconds <= 2, `first probe in ${clientSide!.timerSeconds} s, not 2`);
});

Deno.test("client --watch loads the package and reports the server's probes, stamped when they were seen", async () => {
  await using server = spawnScript("server.ts", [
    "--hostname",
    "127.0.0.1",
    "--port",
    "0",
    "--idle",
    "1",
    "--interval",
    "1",
    "--json",
  ], { permissions: ["--allow-net", "--allow-ffi"] });
  const { address } = await server.waitForEvent("listening");
  const port = String(address).split(":").at(-1)!;
  await using client = spawnScript("client.ts", ["--port", port, "--watch"], {
    permissions: ["--allow-net", "--allow-ffi"],
  });
  const connected = await client.waitForLine((line) => line.includes("connected from"));
  // The kernel answers the server's probes; --watch sees them in TCP_INFO.
  const probe = await client.waitForLine((line) => line.includes("probed by the peer"));
  assertMatch(probe, /^\S+Z probed by the peer; our kernel answered \(in the \d+\.\d\d s before/);
  const [connectedAt, probedAt] = [connected, probe].map((line) => Date.parse(line.split(" ")[0]));
  assert(probedAt >= connectedAt, `a probe stamped before the connection: ${probe}`);
});

import { assert, assertEquals, assertMatch, assertRejects, assertThrows } from "@std/assert";
import net from "node:net";
import {
  getKeepAlive,
  getKeepAliveState,
  isValidKeepAliveValue,
  KEEPALIVE_LIMITS,
  KeepAliveError,
  keepAliveGaveUp,
  type KeepAliveOption,
  setKeepAlive,
  socketDescriptor,
  SyscallError,
} from "@kakit/keepalive";
import { findTcpSocket, readTcpSockets } from "@kakit/keepalive/proc-net";
import { delay, run } from "./_helpers.ts";

/** A connected pair on loopback: the accepted end and the connecting end. */
async function connectedPair(
  hostname: string,
  listenerOptions?: Parameters<typeof setKeepAlive>[1],
) {
  const listener = Deno.listen({ hostname, port: 0 });
  if (listenerOptions !== undefined) setKeepAlive(listener, listenerOptions);
  const client = await Deno.connect({ hostname, port: listener.addr.port });
  const server = await listener.accept();
  return {
    listener,
    client,
    server,
    [Symbol.dispose]() {
      for (const socket of [client, server, listener]) socket.close();
    },
  };
}

const defaults = {
  time: Number(await Deno.readTextFile("/proc/sys/net/ipv4/tcp_keepalive_time")) * 1000,
  interval: Number(await Deno.readTextFile("/proc/sys/net/ipv4/tcp_keepalive_intvl")) * 1000,
  retries: Number(await Deno.readTextFile("/proc/sys/net/ipv4/tcp_keepalive_probes")),
};

for (const hostname of ["127.0.0.1", "::1"]) {
  Deno.test(`setKeepAlive on a connection: the kernel holds exactly the values asked for (${hostname})`, async () => {
    using pair = await connectedPair(hostname);
    assertEquals(getKeepAlive(pair.client), { enabled: false, ...defaults, userTimeout: 0 });
    setKeepAlive(pair.client, { time: 5_000, interval: 2_000, retries: 4, userTimeout: 7_500 });
    assertEquals(getKeepAlive(pair.client), {
      enabled: true,
      time: 5_000,
      interval: 2_000,
      retries: 4,
      userTimeout: 7_500,
    });
    // The other end of the pair is a different socket, and untouched.
    assertEquals(getKeepAlive(pair.server).enabled, false);
    // The kernel's own table agrees: the keepalive timer is armed for 5 s.
    const row = findTcpSocket(
      await readTcpSockets(),
      pair.client.localAddr,
      pair.client.remoteAddr,
    );
    assertEquals(row?.timer, "keepalive");
    if (!row || row.timerSeconds > 5 || row.timerSeconds < 4) {
      throw new Error(`timer ${row?.timerSeconds} s`);
    }
  });

  Deno.test(`a connection accepted from a tuned listener inherits its settings (${hostname})`, async () => {
    using pair = await connectedPair(hostname, {
      time: 3_000,
      interval: 1_000,
      retries: 2,
      userTimeout: 4_000,
    });
    assertEquals(getKeepAlive(pair.server), {
      enabled: true,
      time: 3_000,
      interval: 1_000,
      retries: 2,
      userTimeout: 4_000,
    });
    assertEquals(getKeepAlive(pair.client).enabled, false);
  });
}

Deno.test("setKeepAlive leaves fields it is not given at their current values, and false turns keepalive off", async () => {
  using pair = await connectedPair("127.0.0.1");
  setKeepAlive(pair.client, { interval: 3_000 });
  assertEquals(getKeepAlive(pair.client), {
    enabled: true,
    ...defaults,
    interval: 3_000,
    userTimeout: 0,
  });
  setKeepAlive(pair.client, false);
  assertEquals(getKeepAlive(pair.client).enabled, false);
  const row = findTcpSocket(await readTcpSockets(), pair.client.localAddr, pair.client.remoteAddr);
  assertEquals(row?.timer, "none");
});

Deno.test("bad values are refused with a TypeError naming the field, and leave the socket unchanged", async () => {
  using pair = await connectedPair("127.0.0.1");
  setKeepAlive(pair.client, { time: 9_000, interval: 3_000, retries: 5, userTimeout: 1_000 });
  const before = getKeepAlive(pair.client);
  const bad: [Record<string, unknown>, string][] = [
    [{ time: 0 }, "time must be whole seconds"],
    [{ time: -1 }, "time must be whole seconds"],
    [{ time: 999 }, "time must be whole seconds"],
    [{ time: 1_500 }, "time must be whole seconds"],
    [{ time: 32_768_000 }, "time must be whole seconds in milliseconds, 1000..32767000"],
    [{ interval: 0 }, "interval must be whole seconds"],
    [{ interval: NaN }, "interval must be whole seconds"],
    [{ retries: 0 }, "retries must be an integer from 1 to 127"],
    [{ retries: 128 }, "retries must be an integer from 1 to 127, not 128"],
    [{ retries: 1.5 }, "retries must be an integer from 1 to 127"],
    [{ userTimeout: -1 }, "userTimeout must be an integer from 0"],
    [
      { time: "5000" },
      'time must be whole seconds in milliseconds, 1000..32767000 (a multiple of 1000), not "5000"',
    ],
    // A valid field beside a bad one: nothing at all is set.
    [{ time: 2_000, retries: 128 }, "retries must be"],
    [{ time: 2_000, idle: 5 }, 'unknown keepalive option "idle"'],
  ];
  for (const [options, message] of bad) {
    assertThrows(() => setKeepAlive(pair.client, options), TypeError, message);
    assertEquals(getKeepAlive(pair.client), before, JSON.stringify(options));
  }
  assertThrows(
    () => setKeepAlive(pair.client, null as never),
    TypeError,
    "must be a boolean or an object",
  );
});

Deno.test("a listener is told from its accepted connections, even one the peer reset", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  // Look up another socket first, so that the search for the listener
  // starts above it and meets the reset socket before the listener.
  using other = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  socketDescriptor(other);
  // An accepted socket that was reset keeps the listener's address and has
  // no peer, like the listener: only SO_ACCEPTCONN tells them apart.
  const resetting = net.connect(listener.addr.port, "127.0.0.1");
  await new Promise((resolve) => resetting.once("connect", resolve));
  using reset = await listener.accept();
  resetting.resetAndDestroy();
  await assertRejects(() => reset.read(new Uint8Array(1)), Deno.errors.ConnectionReset);

  setKeepAlive(listener, { time: 3_000 });
  assertEquals(getKeepAlive(listener).time, 3_000);
  using client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  using accepted = await listener.accept();
  assertEquals(getKeepAlive(accepted).time, 3_000);
  assertEquals(getKeepAlive(client).enabled, false);
});

Deno.test("a dual-stack listener passes its settings to an IPv4 client's connection", async () => {
  using listener = Deno.listen({ hostname: "::", port: 0 });
  setKeepAlive(listener, { time: 4_000, retries: 2 });
  using client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  using accepted = await listener.accept();
  assertEquals(accepted.remoteAddr.hostname, "::ffff:127.0.0.1");
  assertEquals(getKeepAlive(accepted), getKeepAlive(listener));
  assertEquals(getKeepAlive(accepted).retries, 2);
  assertEquals(getKeepAlive(client).enabled, false);
});

Deno.test("socketDescriptor finds a different descriptor for each end and for the listener", async () => {
  using pair = await connectedPair("::1");
  const fds = [pair.listener, pair.client, pair.server].map(socketDescriptor);
  assertEquals(new Set(fds).size, 3);
  // Every one is the socket the kernel lists under that inode.
  for (const fd of fds) assertMatch(await Deno.readLink(`/proc/self/fd/${fd}`), /^socket:\[\d+\]$/);
  const inode = Number((await Deno.readLink(`/proc/self/fd/${fds[1]}`)).match(/\d+/)![0]);
  const row = findTcpSocket(await readTcpSockets(), pair.client.localAddr, pair.client.remoteAddr);
  assertEquals(row?.inode, inode);
});

Deno.test("getKeepAliveState reports a fresh idle connection: no probes, no data", async () => {
  using pair = await connectedPair("127.0.0.1");
  const state = getKeepAliveState(pair.client);
  assertEquals([state.unansweredProbes, state.dataSegmentsIn, state.dataSegmentsOut], [0, 0, 0]);
  assertEquals([state.established, state.unackedSegments, state.notSentBytes], [true, 0, 0]);
  await delay(300);
  if (getKeepAliveState(pair.client).sinceLastDataMs < 250) {
    throw new Error("the silence is not counted");
  }
  await pair.server.write(new Uint8Array([1, 2, 3]));
  await pair.client.read(new Uint8Array(3));
  const after = getKeepAliveState(pair.client);
  assertEquals(after.dataSegmentsIn, 1);
  if (after.sinceLastDataMs > 1_000) throw new Error(`sinceLastDataMs ${after.sinceLastDataMs}`);
});

Deno.test("without --allow-ffi, tuning fails with a message naming the flag, and plain Deno code still runs", async () => {
  const script = await Deno.makeTempFile({ suffix: ".ts" });
  try {
    await Deno.writeTextFile(
      script,
      `import { setKeepAlive } from ${
        JSON.stringify(new URL("../keepalive/mod.ts", import.meta.url).href)
      };
       const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
       console.log("listening without ffi");
       try { setKeepAlive(listener, { time: 2000 }); } catch (error) { console.log(error.message); }
       listener.close();`,
    );
    const { code, stdout } = await run([Deno.execPath(), "run", "--allow-net", script]);
    assertEquals(code, 0);
    assertEquals(stdout.trim().split("\n"), [
      "listening without ffi",
      `per-connection keepalive tuning needs --allow-ffi=/lib/${Deno.build.arch}-linux-gnu/libc.so.6 ` +
      "(the C library; or --allow-ffi): it calls setsockopt through FFI",
    ]);
  } finally {
    await Deno.remove(script);
  }
});

Deno.test("a failure names the operation and the socket's addresses, and keeps the cause and its errno code", async () => {
  const pair = await connectedPair("::1");
  const [local, remote] = [pair.client.localAddr, pair.client.remoteAddr];
  pair[Symbol.dispose]();
  // Closed: no descriptor of this process is that socket any more.
  for (
    const [call, op] of [
      [() => setKeepAlive(pair.client, { time: 2_000 }), "set keepalive"],
      [() => getKeepAlive(pair.client), "get keepalive"],
      [() => getKeepAliveState(pair.client), "read TCP_INFO"],
      [() => socketDescriptor(pair.client), "find descriptor"],
    ] as const
  ) {
    const error = assertThrows(call, KeepAliveError);
    assertEquals(
      [error.op, error.local, error.remote, error.code],
      [op, `[::1]:${local.port}`, `[::1]:${remote.port}`, "EBADF"],
    );
    assertMatch(
      error.message,
      new RegExp(`^${op} \\[::1\\]:${local.port}->\\[::1\\]:${remote.port}: `),
    );
    assert(error.cause instanceof SyscallError, String(error.cause));
    assertEquals((error.cause as SyscallError).code, "EBADF");
  }
  // A listener is named as one.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  listener.close();
  const error = assertThrows(() => getKeepAlive(listener), KeepAliveError);
  assertEquals([
    error.remote,
    error.message.startsWith(`get keepalive listener 127.0.0.1:${listener.addr.port}: `),
  ], [
    null,
    true,
  ]);
});

Deno.test("the range check refuses what the kernel would refuse, and the kernel takes what it passes", async () => {
  using pair = await connectedPair("127.0.0.1");
  for (const [option, { min, max }] of Object.entries(KEEPALIVE_LIMITS)) {
    for (const value of [min, max]) {
      assert(isValidKeepAliveValue(option as KeepAliveOption, value));
      setKeepAlive(pair.client, { [option]: value });
    }
    assert(!isValidKeepAliveValue(option as KeepAliveOption, max + 1));
    assert(!isValidKeepAliveValue(option as KeepAliveOption, min - 1));
  }
  assertEquals(getKeepAlive(pair.client), {
    enabled: true,
    time: KEEPALIVE_LIMITS.time.max,
    interval: KEEPALIVE_LIMITS.interval.max,
    retries: KEEPALIVE_LIMITS.retries.max,
    userTimeout: KEEPALIVE_LIMITS.userTimeout.max,
  });
});

Deno.test("a connection reset before its descriptor is found fails fast with ENOTCONN, not a full scan", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const resetting = net.connect(listener.addr.port, "127.0.0.1");
  await new Promise((resolve) => resetting.once("connect", resolve));
  using accepted = await listener.accept();
  resetting.resetAndDestroy();
  await assertRejects(() => accepted.read(new Uint8Array(1)), Deno.errors.ConnectionReset);
  // The socket is still open here, with no peer: the search recognises it
  // instead of going on to the open-file limit and ending with EBADF.
  const error = assertThrows(() => getKeepAlive(accepted), KeepAliveError);
  assertEquals(error.code, "ENOTCONN", error.message);
  // The listener itself is still found: it has no peer either, but it listens.
  assertEquals(getKeepAlive(listener).enabled, false);
});

Deno.test("keepAliveGaveUp tells keepalive's verdicts from other read errors", () => {
  assertEquals(
    keepAliveGaveUp(new Deno.errors.TimedOut("Connection timed out (os error 110)")),
    "ETIMEDOUT",
  );
  assertEquals(keepAliveGaveUp(new Deno.errors.NetworkUnreachable("unreachable")), "ENETUNREACH");
  assertEquals(
    keepAliveGaveUp(Object.assign(new Error("No route to host"), { code: "EHOSTUNREACH" })),
    "EHOSTUNREACH",
  );
  assertEquals(keepAliveGaveUp(new Deno.errors.ConnectionReset("reset")), null);
  assertEquals(keepAliveGaveUp("ETIMEDOUT"), null);
});

Deno.test("keepAliveGaveUp knows a node:net socket's timeout (the drivers' sockets), not only Deno's", () => {
  // What node:net's 'error' event carries when the kernel gave up on the
  // probes: an Error whose code is the C library's name, not Deno's class.
  const nodeError = Object.assign(new Error("read ETIMEDOUT"), {
    code: "ETIMEDOUT",
    syscall: "read",
  });
  assertEquals(keepAliveGaveUp(nodeError), "ETIMEDOUT");
  assertEquals(keepAliveGaveUp(new Deno.errors.TimedOut("x")), "ETIMEDOUT");
  assertEquals(keepAliveGaveUp(Object.assign(new Error("x"), { code: "ECONNRESET" })), null);
});

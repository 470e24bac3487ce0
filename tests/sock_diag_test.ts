/**
 * Tests for @kakit/keepalive/sock-diag (and its command, tools/sock_diag.ts):
 * what the kernel's NETLINK_SOCK_DIAG answer says about real loopback sockets
 * of this process, compared with what Deno says about them. No root needed.
 */
import { assert, assertEquals, assertStringIncludes, assertThrows } from "@std/assert";
import { DiagError, formatAddress, SockDiag } from "@kakit/keepalive/sock-diag";
import { run } from "./_helpers.ts";

Deno.test("sock_diag finds a listener and its IPv4 and IPv6 connections, as Deno names them", async () => {
  using listener = Deno.listen({ hostname: "::", port: 0, tcpBacklog: 300 });
  const { port } = listener.addr;
  using v4 = await Deno.connect({ hostname: "127.0.0.1", port });
  using v4Accepted = await listener.accept();
  using v6 = await Deno.connect({ hostname: "::1", port });
  using v6Accepted = await listener.accept();
  v6Accepted.setKeepAlive(true);
  using diag = new SockDiag();

  const mine = diag.tcpSockets({ localPort: port });
  assertEquals(mine.length, 3, "the listener and two accepted connections, not the clients' ends");
  const listening = mine.find((s) => s.state === "listen")!;
  assertEquals(listening.sendQueue, 300, "a listener's send queue is its backlog");
  const find = (conn: Deno.TcpConn) =>
    mine.find((s) => s.remote.port === conn.remoteAddr.port && s.state === "established")!;
  for (const conn of [v4Accepted, v6Accepted]) {
    const socket = find(conn);
    assertEquals(socket.remote, { ...conn.remoteAddr });
    assertEquals(socket.local, { ...conn.localAddr });
    assertEquals(socket.tcpInfo!.getUint8(0), 1, "tcpi_state ESTABLISHED");
    assertEquals(socket.tcpInfo!.getUint8(3), 0, "no unanswered probe");
  }
  assertEquals(find(v4Accepted).remote.hostname, "::ffff:127.0.0.1");
  assertEquals(find(v4Accepted).timer, "none");
  assertEquals(find(v6Accepted).timer, "keepalive");
  assert(find(v6Accepted).timerMs > 7_000_000, "the first probe is due in about 7200 s");
  assert(find(v4Accepted).cookie !== find(v6Accepted).cookie);

  // The clients' ends have the server's port as their remote port: found
  // by another local port, in IPv4 and IPv6 dumps. (Another program may hold
  // the same local port towards another peer: only ours are looked at.)
  const toUs = (socket: { remote: Deno.NetAddr }) => socket.remote.port === port;
  const client = diag.tcpSockets({ localPort: v4.localAddr.port, families: ["ipv4"] });
  assertEquals(client.filter(toUs).map((s) => [s.family, s.remote.hostname]), [[
    "ipv4",
    "127.0.0.1",
  ]]);
  const v6Client = diag.tcpSockets({ localPort: v6.localAddr.port, families: ["ipv6"] });
  assertEquals(v6Client.filter(toUs).map((s) => s.remote.hostname), ["::1"]);
  assertEquals(
    diag.tcpSockets({ localPort: v6.localAddr.port, families: ["ipv4"] }).filter(toUs),
    [],
  );
  assertEquals(diag.tcpSockets({ localPort: port, states: ["listen"] }).length, 1);
});

Deno.test("sock_diag compares a socket's local address in place, IPv4-mapped or not", async () => {
  using dual = Deno.listen({ hostname: "::", port: 0 });
  using v4 = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  using toDual = await Deno.connect({ hostname: "127.0.0.1", port: dual.addr.port });
  using toV4 = await Deno.connect({ hostname: "127.0.0.1", port: v4.addr.port });
  using _a = await dual.accept();
  using _b = await v4.accept();
  using diag = new SockDiag();
  const loopback4 = new Uint8Array([127, 0, 0, 1]);
  const mapped = new Uint8Array([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]);
  const loopback6 = new Uint8Array(16).fill(0, 0, 15).fill(1, 15);
  const other4 = new Uint8Array([127, 0, 0, 2]);
  const answers = (port: number) => {
    const found: boolean[][] = [];
    diag.forEachTcpSocket({ localPort: port, states: ["established"] }, (entry) => {
      found.push([loopback4, mapped, loopback6, other4].map((a) => entry.localAddressIs(a)));
    });
    return found;
  };
  // An IPv4 client of a `::` listener is an IPv6 socket at ::ffff:127.0.0.1.
  assertEquals(answers(dual.addr.port), [[true, true, false, false]]);
  assertEquals(answers(v4.addr.port), [[true, true, false, false]]);
  assertEquals([toDual.localAddr.port > 0, toV4.localAddr.port > 0], [true, true]);
});

Deno.test("sock_diag sees bytes waiting to be read, and a closing connection's state", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const conn = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  using accepted = await listener.accept();
  await conn.write(new Uint8Array(1234));
  using diag = new SockDiag();
  const waiting = () => diag.tcpSockets({ localPort: listener.addr.port, states: ["established"] });
  for (let i = 0; i < 50 && waiting()[0]?.receiveQueue !== 1234; i++) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  assertEquals(waiting()[0]?.receiveQueue, 1234);
  conn.close();
  for (let i = 0; i < 50; i++) {
    const [socket] = diag.tcpSockets({ localPort: listener.addr.port, states: ["close-wait"] });
    if (socket) {
      assertEquals(socket.remote.port, accepted.remoteAddr.port);
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error("the server's end never showed close-wait");
});

Deno.test("sock_diag answers the next request right after a visitor threw in the middle of a dump", async () => {
  using a = Deno.listen({ hostname: "127.0.0.1", port: 0, tcpBacklog: 500 });
  using b = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  // Enough sockets on port A for a dump of several reads.
  const clients = await Promise.all(
    Array.from({ length: 300 }, () => Deno.connect({ hostname: "127.0.0.1", port: a.addr.port })),
  );
  const accepted: Deno.TcpConn[] = [];
  for (let i = 0; i < clients.length; i++) accepted.push(await a.accept());
  using diag = new SockDiag();
  assertThrows(
    () =>
      diag.forEachTcpSocket({ localPort: a.addr.port }, () => {
        throw new Error("stop");
      }),
    Error,
    "stop",
  );
  const onB = diag.tcpSockets({ localPort: b.addr.port });
  assertEquals(onB.map((s) => [s.state, s.local.port]), [["listen", b.addr.port]]);
  assertEquals(diag.tcpSockets({ localPort: a.addr.port, states: ["established"] }).length, 300);
  for (const conn of [...clients, ...accepted]) conn.close();
});

Deno.test("sock_diag refuses a bad filter and a closed diag with one clear error", () => {
  const diag = new SockDiag();
  assertThrows(() => diag.tcpSockets({ localPort: 65536 }), TypeError, "localPort");
  assertThrows(
    // deno-lint-ignore no-explicit-any
    () => diag.tcpSockets({ states: ["open" as any] }),
    TypeError,
    'unknown TCP state "open"',
  );
  diag.close();
  diag.close(); // twice is fine
  assertThrows(() => diag.tcpSockets(), DiagError, "closed");
});

Deno.test("sock_diag formats addresses as Deno does (RFC 5952)", () => {
  const v6 = (...groups: number[]) => new Uint8Array(groups.flatMap((g) => [g >> 8, g & 0xff]));
  assertEquals(formatAddress(new Uint8Array([10, 0, 0, 1])), "10.0.0.1");
  assertEquals(formatAddress(v6(0, 0, 0, 0, 0, 0, 0, 0)), "::");
  assertEquals(formatAddress(v6(0, 0, 0, 0, 0, 0, 0, 1)), "::1");
  assertEquals(formatAddress(v6(1, 0, 0, 0, 0, 0, 0, 0)), "1::");
  assertEquals(formatAddress(v6(0x2001, 0xdb8, 0, 0, 1, 0, 0, 1)), "2001:db8::1:0:0:1");
  assertEquals(formatAddress(v6(0x2001, 0, 0, 1, 0, 0, 0, 1)), "2001:0:0:1::1");
  assertEquals(formatAddress(v6(0x2001, 0xdb8, 0, 1, 1, 1, 1, 1)), "2001:db8:0:1:1:1:1:1");
  assertEquals(formatAddress(v6(0, 0, 0, 0, 0, 0xffff, 0x7f00, 1)), "::ffff:127.0.0.1");
  assertEquals(formatAddress(v6(0xfe80, 0, 0, 0, 0xabcd, 0, 0, 0)), "fe80::abcd:0:0:0");
});

Deno.test("sock_diag takes exactly the documented families and refuses anything else, naming them", () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const localPort = listener.addr.port;
  using diag = new SockDiag();
  const takes = 'families takes "ipv4", "ipv6"';
  // "IPv4" used to find nothing, and "ipv5" to ask for IPv6: both refused.
  for (const family of ["IPv4", "ipv5", "IPV6", "inet", "", 4]) {
    assertThrows(
      () => diag.tcpSockets({ localPort, families: [family as never] }),
      TypeError,
      `unknown address family ${JSON.stringify(family)}: ${takes}`,
    );
  }
  // A bad family after a good one: refused before anything is asked.
  let visited = 0;
  assertThrows(
    () =>
      diag.forEachTcpSocket({ localPort, families: ["ipv4", "ipv5" as never] }, () => visited++),
    TypeError,
    '"ipv5"',
  );
  assertEquals(visited, 0);
  assertThrows(() => diag.tcpSockets({ families: [] }), TypeError, "at least one of");
  assertThrows(() => diag.tcpSockets({ families: "ipv4" as never }), TypeError, "must be a list");
  assertThrows(() => diag.tcpSockets({ states: [] }), TypeError, "states must be a list");
  assertThrows(
    () => diag.tcpSockets({ states: ["LISTEN" as never] }),
    TypeError,
    'unknown TCP state "LISTEN": states takes "established"',
  );
  // A misspelt key would otherwise ask for every socket of the namespace.
  assertThrows(
    () => diag.tcpSockets({ localport: localPort } as never),
    TypeError,
    'unknown filter key "localport"',
  );
  assertThrows(() => diag.tcpSockets(null as never), TypeError, "must be an object");
  // The documented values find the listener, once each.
  assertEquals(diag.tcpSockets({ localPort, families: ["ipv4"] }).length, 1);
  assertEquals(diag.tcpSockets({ localPort, families: ["ipv4", "ipv4"] }).length, 1);
});

Deno.test("sock_diag reads its filter once: every family is asked about the port that was checked", () => {
  using v4 = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  using v6 = Deno.listen({ hostname: "::1", port: 0 });
  let reads = 0;
  // The IPv4 listener's port, then the IPv6 one's on every later read.
  const filter = {
    get localPort() {
      return reads++ === 0 ? v4.addr.port : v6.addr.port;
    },
    states: ["listen"] as const,
  };
  using diag = new SockDiag();
  const found = diag.tcpSockets(filter).map((s) => `${s.local.hostname} ${s.local.port}`);
  assertEquals(found, [`127.0.0.1 ${v4.addr.port}`]);
});

Deno.test("tools/sock_diag.ts, the command, escapes what was typed in its error line", async () => {
  const typed = "--port=\u202e1\x9b2\u2028";
  const { code, stdout, stderr } = await run([
    Deno.execPath(),
    "run",
    "--allow-ffi",
    "tools/sock_diag.ts",
    typed,
    "x".repeat(10_000),
  ]);
  assertEquals([code, stdout], [2, ""]);
  assertEquals(stderr.split("\n").length, 2, "one line");
  // No bidi override, no C1 control (0x9b is a CSI), no line separator:
  // each written out instead.
  assert(!/[\u202e\x80-\x9f\u2028]/.test(stderr), JSON.stringify(stderr));
  assertStringIncludes(stderr, "--port=\\u202e1\\u009b2\\u2028 xxx");
  assertStringIncludes(stderr, `(${typed.length + 1 + 10_000} characters)`);
  assert(stderr.length < 200, `${stderr.length} characters`);
});

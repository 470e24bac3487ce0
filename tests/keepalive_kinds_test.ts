/**
 * Tests for the socket kinds @kakit/keepalive takes (Deno TCP and TLS, Deno.serve,
 * node:net and node:tls) and for setKeepAliveAll, on loopback: every value is
 * read back from the kernel with getsockopt, never taken on trust.
 */
import { assert, assertEquals, assertThrows } from "@std/assert";
import net from "node:net";
import tls from "node:tls";
import {
  getKeepAlive,
  getKeepAliveState,
  type KeepAliveSocket,
  setKeepAlive,
  setKeepAliveAll,
  setKeepAliveAllEvery,
} from "@kakit/keepalive";
import { delay, run } from "./_helpers.ts";

// A certificate for 127.0.0.1 and ::1 signed by a CA made for this run
// (rustls, behind Deno's TLS, refuses a self-signed one as a server's).
async function testCertificate(): Promise<{ ca: string; cert: string; key: string }> {
  const dir = await Deno.makeTempDir();
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  const steps = [
    [
      "openssl",
      "req",
      "-x509",
      ...ec,
      "-days",
      "1",
      "-subj",
      "/CN=keepalive-kit test CA",
      "-keyout",
      `${dir}/ca.key`,
      "-out",
      `${dir}/ca.pem`,
    ],
    [
      "openssl",
      "req",
      ...ec,
      "-subj",
      "/CN=keepalive-kit test",
      "-keyout",
      `${dir}/key.pem`,
      "-out",
      `${dir}/leaf.csr`,
    ],
    [
      "openssl",
      "x509",
      "-req",
      "-in",
      `${dir}/leaf.csr`,
      "-CA",
      `${dir}/ca.pem`,
      "-CAkey",
      `${dir}/ca.key`,
      "-CAcreateserial",
      "-days",
      "1",
      "-extfile",
      `${dir}/leaf.ext`,
      "-out",
      `${dir}/cert.pem`,
    ],
  ];
  try {
    await Deno.writeTextFile(
      `${dir}/leaf.ext`,
      "subjectAltName=IP:127.0.0.1,IP:::1\nbasicConstraints=CA:FALSE\n",
    );
    for (const step of steps) {
      const made = await run(step);
      if (made.code !== 0) throw new Error(`${step.slice(0, 2).join(" ")}: ${made.stderr}`);
    }
    const read = (name: string) => Deno.readTextFile(`${dir}/${name}`);
    return { ca: await read("ca.pem"), cert: await read("cert.pem"), key: await read("key.pem") };
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const tuning = { time: 7_000, interval: 3_000, retries: 4, userTimeout: 20_000 };
const readBack = { enabled: true, ...tuning };

// The accepted end of a connection, as the package can find it: by the
// addresses the client sees, the other way round.
function acceptedEnd(client: Deno.TcpConn | Deno.TlsConn): KeepAliveSocket {
  const local = client.localAddr as Deno.NetAddr;
  const remote = client.remoteAddr as Deno.NetAddr;
  return {
    localAddress: remote.hostname,
    localPort: remote.port,
    remoteAddress: local.hostname,
    remotePort: local.port,
  };
}

Deno.test("a Deno.TlsConn and a Deno.TlsListener are tuned, and accepted TLS connections inherit (IPv4, IPv6)", async () => {
  const { ca, cert, key } = await testCertificate();
  for (const hostname of ["127.0.0.1", "::1"]) {
    using listener = Deno.listenTls({ hostname, port: 0, cert, key });
    setKeepAlive(listener, tuning);
    assertEquals(getKeepAlive(listener), readBack);
    const accepting = listener.accept();
    using client = await Deno.connectTls({ hostname, port: listener.addr.port, caCerts: [ca] });
    using accepted = await accepting;
    await Promise.all([client.handshake(), accepted.handshake()]);
    assertEquals(getKeepAlive(accepted), readBack, `${hostname}: the accepted end inherits`);
    setKeepAlive(client, { time: 5_000 });
    assertEquals(getKeepAlive(client).time, 5_000);
    assertEquals(getKeepAliveState(client).established, true);
    // Deno.startTls: a TCP connection upgraded (its addresses carry no transport).
    const acceptingPlain = listener.accept();
    const plain = await Deno.connect({ hostname, port: listener.addr.port });
    using upgraded = await Deno.startTls(plain, { hostname, caCerts: [ca] });
    using acceptedTls = await acceptingPlain;
    await Promise.all([upgraded.handshake(), acceptedTls.handshake()]);
    setKeepAlive(upgraded, { time: 11_000 });
    assertEquals(getKeepAlive(upgraded).time, 11_000);
  }
});

Deno.test("a Deno.serve server, or its addr, is tuned, and the connections it accepts inherit", async () => {
  await using server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () => new Response("ok"),
  );
  setKeepAlive(server, tuning);
  assertEquals(getKeepAlive(server.addr), readBack);
  // A client connection kept open, so its accepted end can be looked at.
  using client = await Deno.connect({ hostname: "127.0.0.1", port: server.addr.port });
  await client.write(new TextEncoder().encode("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
  await client.read(new Uint8Array(1024));
  assertEquals(getKeepAlive(acceptedEnd(client)), readBack);
});

Deno.test("node:net sockets and servers are tuned by their addresses (IPv4, IPv6)", async () => {
  for (const host of ["127.0.0.1", "::1"]) {
    const server = net.createServer((socket) => socket.on("data", () => {}).on("error", () => {}));
    await new Promise<void>((resolve) => server.listen(0, host, resolve));
    try {
      setKeepAlive(server, tuning);
      assertEquals(getKeepAlive(server), readBack, `${host}: server`);
      const socket = net.connect((server.address() as net.AddressInfo).port, host);
      assertThrows(
        () => setKeepAlive(socket, tuning),
        TypeError,
        "not connected (still connecting",
      );
      await new Promise((resolve) => socket.once("connect", resolve));
      setKeepAlive(socket, { time: 2_000, retries: 2 });
      assertEquals(getKeepAlive(socket).time, 2_000, `${host}: socket`);
      assertEquals(getKeepAlive(socket).retries, 2);
      socket.destroy();
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  }
});

Deno.test("node:tls sockets and servers are tuned too", async () => {
  const { ca, cert, key } = await testCertificate();
  const server = tls.createServer({ cert, key }, (socket) => socket.on("error", () => {}));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  try {
    setKeepAlive(server, tuning);
    assertEquals(getKeepAlive(server), readBack);
    const socket = tls.connect({
      host: "127.0.0.1",
      port: (server.address() as net.AddressInfo).port,
      ca: [ca],
    });
    await new Promise((resolve) => socket.once("secureConnect", resolve));
    setKeepAlive(socket, { time: 9_000 });
    assertEquals(getKeepAlive(socket).time, 9_000);
    socket.destroy();
  } finally {
    await new Promise((resolve) => server.close(resolve));
  }
});

Deno.test("anything else is a TypeError that says what keepalive takes", async () => {
  const takes = "keepalive takes a Deno.TcpConn";
  for (const wrong of [null, 42, "127.0.0.1:80", {}, { port: 80 }, []]) {
    assertThrows(
      () => setKeepAlive(wrong as never, true),
      TypeError,
      wrong === null ? "not null" : takes,
    );
  }
  assertThrows(
    () => getKeepAlive({ transport: "unix", path: "/tmp/x" } as never),
    TypeError,
    takes,
  );
  const unixServer = net.createServer();
  const path = `${await Deno.makeTempDir()}/sock`;
  await new Promise<void>((resolve) => unixServer.listen(path, resolve));
  try {
    assertThrows(() => setKeepAlive(unixServer, true), TypeError, "Unix socket");
  } finally {
    await new Promise((resolve) => unixServer.close(resolve));
  }
  assertThrows(() => setKeepAlive(net.createServer(), true), TypeError, "not listening (not yet");
});

Deno.test("setKeepAliveAll tunes exactly the connections to the peer it is given, and says how many", async () => {
  using a = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  using b = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const toA = await Promise.all(
    [1, 2].map(() => Deno.connect({ hostname: "127.0.0.1", port: a.addr.port })),
  );
  const toB = await Deno.connect({ hostname: "127.0.0.1", port: b.addr.port });
  const accepted = [await a.accept(), await a.accept(), await b.accept()];
  try {
    assertEquals(
      setKeepAliveAll({ time: 13_000 }, { hostname: "127.0.0.1", port: a.addr.port }),
      2,
    );
    for (const conn of toA) assertEquals(getKeepAlive(conn).time, 13_000);
    assert(getKeepAlive(toB).time !== 13_000, "a connection to another port was tuned");
    for (const conn of accepted) {
      assert(getKeepAlive(conn).time !== 13_000, "a listener's side was tuned");
    }
    // The same peer written as IPv4-mapped IPv6, as node:net may write it.
    assertEquals(
      setKeepAliveAll({ time: 14_000 }, { hostname: "::ffff:127.0.0.1", port: b.addr.port }),
      1,
    );
    assertEquals(getKeepAlive(toB).time, 14_000);
    // Without a filter: every connected socket of the process, both ends.
    assert(setKeepAliveAll({ retries: 5 }) >= 6);
    for (const conn of [...toA, toB, ...accepted]) assertEquals(getKeepAlive(conn).retries, 5);
    assertThrows(() => setKeepAliveAll({ time: 1_500 }), TypeError, "time");
    assertThrows(() => setKeepAliveAll(true, { port: 0 }), TypeError, "filter.port");
  } finally {
    for (const conn of [...toA, toB, ...accepted]) conn.close();
  }
});

Deno.test("setKeepAliveAll reaches fetch's pooled connection", async () => {
  // The server learns the port of fetch's connection from each request.
  const ports: number[] = [];
  await using server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (_request, info) => {
      ports.push(info.remoteAddr.port);
      return new Response("ok");
    },
  );
  const url = `http://127.0.0.1:${server.addr.port}/`;
  await (await fetch(url)).text();
  // The pool keeps the connection; the filter names the server, so only the
  // client's end (whose peer is the server) is tuned.
  assertEquals(setKeepAliveAll(tuning, { hostname: "127.0.0.1", port: server.addr.port }), 1);
  const pooled = {
    localAddress: "127.0.0.1",
    localPort: ports[0],
    remoteAddress: "127.0.0.1",
    remotePort: server.addr.port,
  };
  assertEquals(getKeepAlive(pooled), readBack, "read back from fetch's own socket");
  const accepted = { ...pooled, localPort: server.addr.port, remotePort: ports[0] };
  assert(getKeepAlive(accepted).time !== tuning.time, "the server's end was tuned too");
  await (await fetch(url)).text();
  assertEquals(ports[1], ports[0], "the second request did not reuse the pooled connection");
});

Deno.test("setKeepAliveAllEvery tunes connections made after it started, until stopped", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const filter = { hostname: "127.0.0.1", port: listener.addr.port };
  const every = setKeepAliveAllEvery(100, { time: 17_000 }, filter);
  try {
    assertEquals(every.tuned(), 0);
    using later = await Deno.connect(filter);
    using _accepted = await listener.accept();
    await delay(350);
    assertEquals(getKeepAlive(later).time, 17_000);
    assertEquals(every.tuned(), 1);
    every.stop();
    using afterStop = await Deno.connect(filter);
    using _accepted2 = await listener.accept();
    await delay(350);
    assert(getKeepAlive(afterStop).time !== 17_000, "tuned after stop()");
  } finally {
    every.stop();
  }
  assertThrows(() => setKeepAliveAllEvery(10, true), TypeError, "everyMs");
});

Deno.test("a filter's address is parsed strictly: nothing that is not an address stands for one", () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  // Never connected to: these are only filter values, each refused.
  for (
    const bad of [
      "383.0.0.1",
      "10.0.0.300",
      "256.256.256.256",
      "1.2.3",
      "01.2.3.4",
      "::256.0.0.1",
      "::1.2.3",
      "1::2::3",
      "0x7f::1",
      "12xyz::",
      "+1::",
      "1_0::",
      "00001::",
      "1.2.3.4::",
      "::1.2.3.4:5",
      "::a.b",
      "127.0.0.1%eth0",
      "1:2:3:4:5:6:7:8:9",
      "1:2:3:4:5:6:7",
      "",
      "[::1",
    ]
  ) {
    assertThrows(
      () => setKeepAliveAll(true, { hostname: bad, port: listener.addr.port }),
      TypeError,
      "filter.hostname",
      bad,
    );
  }
  for (
    const good of [
      "::1",
      "[::1]",
      "::",
      "1::",
      "::ffff:127.0.0.1",
      "FE80::A:0:0:1",
      "1:2:3:4:5:6:7:8",
      "1::2:3:4:5:6:7",
      "::1.2.3.4",
      "0.0.0.0",
    ]
  ) {
    assertEquals(setKeepAliveAll(true, { hostname: good, port: listener.addr.port }), 0, good);
  }
  assertThrows(() => setKeepAliveAll(true, { hostname: "fe80::1%lo" }), TypeError, "zone id");
  assertThrows(
    () => setKeepAliveAll(true, { host: "10.0.0.5" } as never),
    TypeError,
    'unknown filter key "host"',
  );
  assertThrows(() => setKeepAliveAll(true, [] as never), TypeError, "empty list");
  assertThrows(() => setKeepAliveAllEvery(2 ** 31, true), TypeError, "everyMs");
  assertThrows(() => setKeepAliveAllEvery(1_000, true, {}, "x" as never), TypeError, "onError");
  assertThrows(
    () => setKeepAlive({ transport: "tcp", hostname: "localhost", port: 80 }, true),
    TypeError,
    "IP addresses",
  );
});

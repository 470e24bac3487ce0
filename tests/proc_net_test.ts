/**
 * Tests for @kakit/keepalive/proc-net's parsers, on tables captured from a
 * real kernel (Linux 6.18): a listener and an accepted connection with
 * SO_KEEPALIVE on, over IPv4, IPv6 and IPv4-mapped IPv6. Pure: no /proc is
 * read here.
 */
import { assertEquals, assertThrows } from "@std/assert";
import {
  findTcpSocket,
  parseEndpoint,
  parseNetstat,
  parseProcNetTcp,
} from "@kakit/keepalive/proc-net";

// 127.0.0.1:33849 listens; 127.0.0.1:35512 connected to it; the accepted
// socket has keepalive on (timer 02, 719999 ticks: 7199.99 s to the first probe).
const TCP =
  `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   1: 0100007F:8439 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31770 1 00000000149650ff 100 0 0 10 0
   2: 0100007F:8439 0100007F:8AB8 01 00000000:00000000 02:000AFC7F 00000000     0        0 31772 2 00000000951c738d 20 0 0 10 -1
   4: 0100007F:8AB8 0100007F:8439 01 00000000:00000000 00:00000000 00000000     0        0 31771 2 0000000013b1a283 20 0 0 10 -1
`;

// [::]:37551 listens; [::1]:34114 connected (its accepted socket has
// keepalive on), and so did 127.0.0.1:57186, which the listener sees as
// ::ffff:127.0.0.1.
const TCP6 =
  `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:92AF 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31773 1 000000008349c96b 100 0 0 10 0
   1: 00000000000000000000000001000000:92AF 00000000000000000000000001000000:8542 01 00000000:00000000 02:000AFC7F 00000000     0        0 31775 2 000000004fc2c332 20 0 0 10 -1
   2: 0000000000000000FFFF00000100007F:92AF 0000000000000000FFFF00000100007F:DF62 01 00000000:00000000 00:00000000 00000000     0        0 31777 1 000000003f521b2a 20 0 0 10 -1
`;

Deno.test("parseProcNetTcp reads IPv4 rows: addresses, state, the keepalive timer in seconds, inode", () => {
  const [listener, accepted, client] = parseProcNetTcp(TCP);
  assertEquals(listener, {
    localAddress: "127.0.0.1",
    localPort: 33849,
    remoteAddress: "0.0.0.0",
    remotePort: 0,
    state: "LISTEN",
    timer: "none",
    timerSeconds: 0,
    retransmits: 0,
    unansweredProbes: 0,
    inode: 31770,
  });
  assertEquals(
    [accepted.state, accepted.timer, accepted.timerSeconds, accepted.remotePort, accepted.inode],
    ["ESTABLISHED", "keepalive", 7199.99, 35512, 31772],
  );
  assertEquals([client.timer, client.localPort], ["none", 35512]);
});

Deno.test("parseProcNetTcp reads IPv6 rows, compressed as Deno prints them, and IPv4-mapped ones", () => {
  const rows = parseProcNetTcp(TCP6);
  assertEquals(rows.map((row) => `${row.localAddress} ${row.remoteAddress}`), [
    ":: ::",
    "::1 ::1",
    "::ffff:127.0.0.1 ::ffff:127.0.0.1",
  ]);
  assertEquals(rows.map((row) => row.remotePort), [0, 34114, 57186]);
  assertEquals(rows[1].timer, "keepalive");
});

Deno.test("parseProcNetTcp reads the unanswered-probe count and skips lines that are not rows", () => {
  // The accepted row above, after two unanswered probes (the 'timeout' column).
  const probed = TCP.split("\n")[2].replace(/ 0 31772 /, " 2 31772 ");
  assertEquals(parseProcNetTcp(`header\n${probed}\n\n  garbage\n`).map((r) => r.unansweredProbes), [
    2,
  ]);
});

Deno.test("findTcpSocket matches Deno's addresses, IPv4 against IPv4-mapped rows too", () => {
  const rows = [...parseProcNetTcp(TCP), ...parseProcNetTcp(TCP6)];
  const accepted = findTcpSocket(rows, { hostname: "127.0.0.1", port: 33849 }, {
    hostname: "127.0.0.1",
    port: 35512,
  });
  assertEquals(accepted?.inode, 31772);
  const v6 = findTcpSocket(rows, { hostname: "::1", port: 37551 }, {
    hostname: "::1",
    port: 34114,
  });
  assertEquals(v6?.inode, 31775);
  const mapped = findTcpSocket(rows, { hostname: "::ffff:127.0.0.1", port: 37551 }, {
    hostname: "127.0.0.1",
    port: 57186,
  });
  assertEquals(mapped?.inode, 31777);
  assertEquals(
    findTcpSocket(rows, { hostname: "::1", port: 1 }, { hostname: "::1", port: 2 }),
    undefined,
  );
});

Deno.test("parseEndpoint splits host:port, with IPv6 in brackets, and refuses anything else", () => {
  assertEquals(parseEndpoint("127.0.0.1:8888"), { hostname: "127.0.0.1", port: 8888 });
  assertEquals(parseEndpoint("[fd6b:61::2]:51670"), { hostname: "fd6b:61::2", port: 51670 });
  for (const text of ["::1:80", "localhost", "[::1]", ""]) {
    assertThrows(() => parseEndpoint(text), TypeError, "not an address and port");
  }
});

Deno.test("parseNetstat pairs each header line with its values, per group", () => {
  const counters = parseNetstat(
    "TcpExt: SyncookiesSent TCPKeepAlive TCPTimeouts\nTcpExt: 0 17 3\n" +
      "IpExt: InNoRoutes InOctets\nIpExt: 1 2048\n",
  );
  assertEquals(counters, {
    TcpExt: { SyncookiesSent: 0, TCPKeepAlive: 17, TCPTimeouts: 3 },
    IpExt: { InNoRoutes: 1, InOctets: 2048 },
  });
});

/**
 * Tests for the lab's parts that need no namespace: the pcap reader, the
 * story told from segments, the join of a router's two captures, the
 * conntrack table parser, and lab.ts's flags.
 */
import { assert, assertEquals, assertStringIncludes, assertThrows } from "@std/assert";
import { parseLabArgs, UsageError } from "../lab.ts";
import { joinAtRouter, splitConnections, tellConnection } from "../lab/packets.ts";
import { createPcapParser, type Segment, TCP_FLAGS } from "../lab/pcap.ts";
import { parseConntrack } from "../lab/router.ts";
import { run } from "./_helpers.ts";

const { SYN, ACK, PSH, FIN } = TCP_FLAGS;

// --- pcap ---------------------------------------------------------------------

// A pcap file header (little-endian, microseconds) and one record per frame.
function pcapFile(linkType: number, frames: { time: number; bytes: number[] }[]): Uint8Array {
  const out: number[] = [];
  const u32 = (v: number) => out.push(v & 255, (v >>> 8) & 255, (v >>> 16) & 255, (v >>> 24) & 255);
  const u16 = (v: number) => out.push(v & 255, (v >>> 8) & 255);
  u32(0xa1b2c3d4), u16(2), u16(4), u32(0), u32(0), u32(262144), u32(linkType);
  for (const frame of frames) {
    u32(Math.floor(frame.time)), u32(Math.round((frame.time % 1) * 1e6));
    u32(frame.bytes.length), u32(frame.bytes.length);
    out.push(...frame.bytes);
  }
  return new Uint8Array(out);
}

const be16 = (v: number) => [(v >> 8) & 255, v & 255];
const be32 = (v: number) => [(v >>> 24) & 255, (v >>> 16) & 255, (v >>> 8) & 255, v & 255];

function tcpHeader(sport: number, dport: number, seq: number, ack: number, flags: number) {
  return [
    ...be16(sport),
    ...be16(dport),
    ...be32(seq),
    ...be32(ack),
    5 << 4,
    flags,
    0,
    64,
    0,
    0,
    0,
    0,
  ];
}

function ipv4Frame(src: number[], dst: number[], tcp: number[], payload: number) {
  const total = 20 + tcp.length + payload;
  const ip = [0x45, 0, ...be16(total), 0, 0, 0, 0, 64, 6, 0, 0, ...src, ...dst];
  // Captured with a snap length: the payload itself is not in the frame.
  return [...new Array(12).fill(0), 0x08, 0x00, ...ip, ...tcp];
}

function ipv6Frame(src: number[], dst: number[], tcp: number[], payload: number) {
  const ip = [0x60, 0, 0, 0, ...be16(tcp.length + payload), 6, 64, ...src, ...dst];
  return [...new Array(12).fill(0), 0x86, 0xdd, ...ip, ...tcp];
}

Deno.test("pcap: IPv4 and IPv6 TCP segments come out whole, however the stream is chunked", () => {
  const v6a = [0xfd, 0x6c, 0, 0xab, ...new Array(11).fill(0), 1];
  const v6b = [0xfd, 0x6c, 0, 0xab, ...new Array(11).fill(0), 2];
  const file = pcapFile(1, [
    {
      time: 100.25,
      bytes: ipv4Frame([10, 0, 0, 1], [10, 0, 0, 2], tcpHeader(40000, 8888, 7, 0, SYN), 0),
    },
    {
      time: 101.5,
      bytes: ipv6Frame(v6b, v6a, tcpHeader(8888, 40001, 4294967295, 12, PSH | ACK), 6),
    },
    { time: 102, bytes: [...new Array(12).fill(0), 0x08, 0x06, 1, 2, 3] }, // ARP: skipped
  ]);
  for (const size of [1, 7, 16, file.length]) {
    const parser = createPcapParser();
    const segments: Segment[] = [];
    for (let i = 0; i < file.length; i += size) {
      segments.push(...parser.push(file.slice(i, i + size)));
    }
    assertEquals(segments, [
      {
        time: 100.25,
        source: "10.0.0.1",
        destination: "10.0.0.2",
        sourcePort: 40000,
        destinationPort: 8888,
        seq: 7,
        ack: 0,
        flags: SYN,
        length: 0,
      },
      {
        time: 101.5,
        source: "fd6c:ab::2",
        destination: "fd6c:ab::1",
        sourcePort: 8888,
        destinationPort: 40001,
        seq: 4294967295,
        ack: 12,
        flags: PSH | ACK,
        length: 6,
      },
    ], `chunks of ${size}`);
  }
});

Deno.test("pcap: a stream that is not pcap, or of an unknown link type, is refused", () => {
  assertThrows(() => createPcapParser().push(new Uint8Array(24)), Error, "not a pcap stream");
  assertThrows(() => createPcapParser().push(pcapFile(105, [])), Error, "link type 105");
});

// --- the story of a connection ------------------------------------------------

function segment(
  time: number,
  fromClient: boolean,
  seq: number,
  ack: number,
  flags: number,
  length = 0,
): Segment {
  return fromClient
    ? {
      time,
      source: "10.0.0.2",
      sourcePort: 40000,
      destination: "10.0.0.1",
      destinationPort: 8888,
      seq,
      ack,
      flags,
      length,
    }
    : {
      time,
      source: "10.0.0.1",
      sourcePort: 8888,
      destination: "10.0.0.2",
      destinationPort: 40000,
      seq,
      ack,
      flags,
      length,
    };
}

// The client's first sequence number is 1000, the server's 5000.
const story = [
  segment(10, true, 1000, 0, SYN),
  segment(10.001, false, 5000, 1001, SYN | ACK),
  segment(10.002, true, 1001, 5001, ACK),
  segment(12, false, 5000, 1001, ACK), // the server's probe: one below its next
  segment(12.001, true, 1001, 5001, ACK), // the client's answer
  segment(15, true, 1001, 5001, PSH | ACK, 6),
  segment(15.2, true, 1001, 5001, PSH | ACK, 6),
  segment(15.3, false, 5001, 1007, ACK),
  segment(16, true, 1007, 5001, FIN | ACK),
];

Deno.test("a connection's segments are told as the timeline tells them, relative to the handshake", () => {
  const packets = tellConnection(story);
  assertEquals(
    packets.map((p) => [p.seconds, p.from, p.flags, p.seq, p.ack, p.length, p.kind]),
    [
      [0, "client", "S", 0, 0, 0, "handshake"],
      [0.001, "server", "S.", 0, 1, 0, "handshake"],
      [0.002, "client", ".", 1, 1, 0, "handshake"],
      [2, "server", ".", 0, 1, 0, "keepalive probe"],
      [2.001, "client", ".", 1, 1, 0, "probe answered"],
      [5, "client", "P.", 1, 1, 6, "data"],
      [5.2, "client", "P.", 1, 1, 6, "retransmission"],
      [5.3, "server", ".", 1, 7, 0, "ack"],
      [6, "client", "F.", 7, 1, 0, "close"],
    ],
  );
  assert(packets.every((p) => p.fate === "delivered"));
});

Deno.test("connections are split by endpoints, and segments before a SYN is seen are left out", () => {
  // Another connection between the same hosts, from the next port, a second later.
  const other = story.map((s) =>
    s.sourcePort === 40000
      ? { ...s, sourcePort: 40001, time: s.time + 1 }
      : { ...s, destinationPort: 40001, time: s.time + 1 }
  );
  const flows = splitConnections([segment(9, false, 1, 1, ACK), ...other.slice(0, 3), ...story]);
  assertEquals(flows.map((f) => [f[0].sourcePort, f.length]), [[40000, 9], [40001, 3]]);
});

Deno.test("a router's two captures join into one connection: a packet that never left it is dropped there", () => {
  // On the server's side the NAT has replaced the client's address and port.
  const nat = (s: Segment): Segment =>
    s.source === "10.0.0.2"
      ? { ...s, source: "10.0.2.1", sourcePort: 50000, time: s.time + 0.0001 }
      : { ...s, destination: "10.0.2.1", destinationPort: 50000, time: s.time - 0.0001 };
  const clientSide = story.slice(0, 7);
  // The router forwarded the handshake and the probe, its answer, but not the data.
  const serverSide = story.slice(0, 5).map(nat);
  const [joined] = joinAtRouter(clientSide, serverSide);
  const packets = tellConnection(joined.flow, (s) => joined.fates.get(s) ?? "delivered");
  assertEquals(packets.map((p) => [p.from, p.kind, p.fate]), [
    ["client", "handshake", "delivered"],
    ["server", "handshake", "delivered"],
    ["client", "handshake", "delivered"],
    ["server", "keepalive probe", "delivered"],
    ["client", "probe answered", "delivered"],
    ["client", "data", "dropped-at-router"],
    ["client", "retransmission", "dropped-at-router"],
  ]);
});

// --- the router's table -------------------------------------------------------

Deno.test("conntrack entries are read from /proc's format and from conntrack -L's", () => {
  const proc = "ipv4     2 tcp      6 4 ESTABLISHED src=10.231.1.2 dst=10.231.2.2 sport=40000 " +
    "dport=8888 src=10.231.2.2 dst=10.231.2.1 sport=8888 dport=40000 [ASSURED] mark=0 zone=0 use=2\n" +
    "ipv4     2 udp      17 20 src=10.231.1.2 dst=10.231.2.2 sport=1 dport=2 src=10.231.2.2 dst=10.231.2.1 sport=2 dport=1 mark=0 use=1\n";
  const tool = "tcp      6 431999 TIME_WAIT src=10.231.1.2 dst=10.231.2.2 sport=40001 dport=8888 " +
    "src=10.231.2.2 dst=10.231.2.1 sport=8888 dport=40001 [ASSURED] mark=0 use=1\n";
  assertEquals(parseConntrack(proc + tool), [
    {
      source: "10.231.1.2",
      sourcePort: 40000,
      destination: "10.231.2.2",
      destinationPort: 8888,
      state: "ESTABLISHED",
      remainingSeconds: 4,
    },
    {
      source: "10.231.1.2",
      sourcePort: 40001,
      destination: "10.231.2.2",
      destinationPort: 8888,
      state: "TIME_WAIT",
      remainingSeconds: 431999,
    },
  ]);
});

// --- lab.ts's flags -----------------------------------------------------------

Deno.test("lab flags: all scenarios by default, each alone, and the defaults of the issue", () => {
  assertEquals(parseLabArgs([]), {
    scenarios: ["blog", "dead-peer", "nat"],
    named: false,
    blog: { time: 2, intvl: 2 },
    deadPeer: { time: 2, intvl: 1, probes: 3 },
    nat: { timeout: 5, userTimeout: 4 },
    json: false,
    svg: null,
  });
  const options = parseLabArgs(["nat", "blog", "--time", "3", "--middlebox-timeout=8", "--json"]);
  if (options === "help") throw new Error("not help");
  assertEquals(options.scenarios, ["blog", "nat"]); // always in the lab's order
  assertEquals([options.blog.time, options.deadPeer.time, options.nat.timeout], [3, 3, 8]);
  assertEquals(parseLabArgs(["--help"]), "help");
});

Deno.test("lab flags: anything it cannot use is a UsageError naming it", () => {
  for (
    const [args, words] of [
      [["dns"], 'no scenario "dns"'],
      [["blog", "blog"], "named twice"],
      [["--time", "0"], "--time"],
      [["--time", "11"], "--time"],
      [["--intvl", "1.5"], "--intvl"],
      [["--probes", "x"], "--probes"],
      [["--middlebox-timeout", "2"], "--middlebox-timeout"],
      [["--user-timeout", "21"], "--user-timeout"],
      [["--json=1"], "--json"],
      [["--time", "2", "--time", "3"], "--time"],
      [["--svg", "a\u001b[2Jb"], "--svg"],
      [["--svg", ""], "--svg"],
      [["--svg", "-"], "--svg"],
      [["--svg", "a\u202eb.svg"], "--svg"],
      [["blog", "--probes", "4"], "--probes is for dead-peer"],
      [["dead-peer", "--middlebox-timeout", "8"], "--middlebox-timeout is for nat"],
      [["nat", "--time", "3"], "--time is for blog and dead-peer"],
    ] as const
  ) {
    assertThrows(() => parseLabArgs([...args]), UsageError, words);
  }
});

Deno.test("lab.ts exits 2 with one line for bad flags, and 1 naming the permissions it lacks", async () => {
  const bad = await run([Deno.execPath(), "run", "-A", "lab.ts", "--time", "99"]);
  assertEquals(bad.code, 2);
  assertEquals(
    bad.stderr,
    'lab.ts: --time must be an integer from 1 to 10, not "99" (see --help)\n',
  );
  const denied = await run([
    Deno.execPath(),
    "run",
    "--allow-read",
    "lab.ts",
    "blog",
    "--svg",
    "x.svg",
  ]);
  assertEquals(denied.code, 1);
  assertStringIncludes(denied.stderr, "the lab needs --allow-run --allow-read --allow-write");
  assertStringIncludes(denied.stderr, "lab.ts blog --svg x.svg");
  assertEquals(denied.stderr.trim().split("\n").length, 1, denied.stderr);
  const help = await run([Deno.execPath(), "run", "lab.ts", "--help"]);
  assertEquals(help.code, 0);
  assertStringIncludes(
    help.stdout,
    "Usage: deno run --allow-run --allow-read --allow-write lab.ts",
  );
});

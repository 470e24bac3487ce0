/**
 * Tests for the lab's parts that need no namespace: the pcap reader, the
 * story told from segments, the join of a router's two captures, the
 * conntrack table parser, lab.ts's flags and where the diagram may go,
 * where the lab finds its tools, and how it waits for a slow stdout.
 */
import { assert, assertEquals, assertStringIncludes, assertThrows } from "@std/assert";
import { createLineWriter } from "../tools/cli.ts";
import {
  keepingFailure,
  parseLabArgs,
  svgMisuse,
  UsageError,
  waitUntilWritten,
} from "../lab/lab.ts";
import { joinAtRouter, splitConnections, tellConnection } from "../lab/packets.ts";
import { createPcapParser, type Segment, TCP_FLAGS } from "../lab/pcap.ts";
import { parseConntrack } from "../lab/router.ts";
import { findTool } from "../lab/tools.ts";
import { delay, requiringTest, ROOT_DIR, run } from "./_helpers.ts";

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
  const bad = await run([Deno.execPath(), "run", "-A", "lab/lab.ts", "--time", "99"]);
  assertEquals(bad.code, 2);
  assertEquals(
    bad.stderr,
    'lab.ts: --time must be an integer from 1 to 10, not "99" (see --help)\n',
  );
  const denied = await run([
    Deno.execPath(),
    "run",
    "--allow-read",
    "lab/lab.ts",
    "blog",
    "--svg",
    "x.svg",
  ]);
  assertEquals(denied.code, 1);
  assertStringIncludes(denied.stderr, "the lab needs --allow-run --allow-read --allow-write");
  assertStringIncludes(denied.stderr, "lab/lab.ts blog --svg x.svg");
  assertEquals(denied.stderr.trim().split("\n").length, 1, denied.stderr);
  const help = await run([Deno.execPath(), "run", "lab/lab.ts", "--help"]);
  assertEquals(help.code, 0);
  assertStringIncludes(
    help.stdout,
    "Usage: deno run --allow-run --allow-read --allow-write lab/lab.ts",
  );
});

// --- where the diagram may go -------------------------------------------------

// Runs a command, killing it if it is still there after `ms`: a test of
// something that used to hang must not hang itself.
async function runAtMost(cmd: string[], ms: number) {
  const child = new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    cwd: ROOT_DIR,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let killed = false;
  const timer = setTimeout(() => {
    killed = true;
    child.kill("SIGKILL");
  }, ms);
  const output = await child.output();
  clearTimeout(timer);
  const text = new TextDecoder();
  return {
    killed,
    code: output.code,
    stdout: text.decode(output.stdout),
    stderr: text.decode(output.stderr),
  };
}

Deno.test("lab.ts --svg to a named pipe, a directory or a device is refused at once: one line, exit 2", async () => {
  const dir = await Deno.makeTempDir({ prefix: "lab-svg-" });
  try {
    // A named pipe nobody reads: the check before the run used to wait in
    // open() for a reader, silently, for ever.
    assertEquals((await run(["mkfifo", `${dir}/fifo`])).code, 0);
    await Deno.symlink(`${dir}/fifo`, `${dir}/to-fifo`);
    const cases = [
      [`${dir}/fifo`, "is a named pipe (FIFO), not a regular file"],
      [`${dir}/to-fifo`, "is a named pipe (FIFO), not a regular file"],
      [dir, "is a directory, not a regular file"],
      ["/dev/null", "is a character device, not a regular file"],
    ];
    for (const [path, words] of cases) {
      const lab = ["run", "--allow-run", "--allow-read", "--allow-write", "lab/lab.ts", "blog"];
      const output = await runAtMost([Deno.execPath(), ...lab, "--svg", path], 30_000);
      assert(!output.killed, `--svg ${path}: still running after 30 s`);
      assertEquals(output.code, 2, `--svg ${path}: ${output.stderr}`);
      assertEquals(
        output.stderr,
        `lab.ts: --svg ${JSON.stringify(path)} ${words} (see --help)\n`,
      );
      assertEquals(output.stdout, "", "nothing ran");
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("lab --svg: a regular file, a link to one and a new name are fine; a link to nothing is not", async () => {
  const dir = await Deno.makeTempDir({ prefix: "lab-svg-" });
  try {
    await Deno.writeTextFile(`${dir}/old.svg`, "");
    await Deno.symlink(`${dir}/old.svg`, `${dir}/link.svg`);
    await Deno.symlink(`${dir}/gone.svg`, `${dir}/dangling.svg`);
    assertEquals(await svgMisuse(`${dir}/old.svg`), null);
    assertEquals(await svgMisuse(`${dir}/link.svg`), null);
    assertEquals(await svgMisuse(`${dir}/new.svg`), null);
    assertEquals(
      await svgMisuse(`${dir}/dangling.svg`),
      "is a symbolic link to nothing, not a regular file",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// --- where the lab finds its tools --------------------------------------------

Deno.test("lab tools: found on the PATH, by full path, in absolute directories only", async () => {
  const dir = await Deno.makeTempDir({ prefix: "lab-tools-" });
  try {
    await Deno.writeTextFile(`${dir}/lab-tool-x`, "#!/bin/sh\n", { mode: 0o755 });
    await Deno.writeTextFile(`${dir}/lab-tool-plain`, "not a program", { mode: 0o644 });
    assertEquals(await findTool("lab-tool-x", `/nonexistent:${dir}`), `${dir}/lab-tool-x`);
    assertEquals(await findTool("lab-tool-plain", dir), null, "not executable");
    assertEquals(await findTool("lab-tool-none", dir), null);
    // A relative directory would name another file from another directory.
    const relative = dir.split("/").map(() => "..").join("/") + dir;
    assertEquals(await findTool("lab-tool-x", relative), null);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// Debian's PATH for an ordinary user, without /usr/sbin and /sbin, where
// Debian puts nft and conntrack (ip is in /bin, with a link in /sbin).
const USER_PATH = "/usr/local/bin:/usr/bin:/bin";
const isFile = (path: string) => Deno.stat(path).then((info) => info.isFile, () => false);
const nftReason = (await isFile("/usr/sbin/nft")) || (await isFile("/sbin/nft"))
  ? null
  : "nft (nftables) is not installed in /usr/sbin or /sbin";

requiringTest(
  "lab tools: nft is found in /usr/sbin or /sbin, off an ordinary user's PATH",
  nftReason,
  async () => {
    const nft = await findTool("nft", USER_PATH);
    if (nft !== "/usr/sbin/nft" && nft !== "/sbin/nft") throw new Error(`nft found at ${nft}`);
    assertEquals((await run([nft, "--version"])).code, 0);
  },
);

// --- waiting for a slow stdout ------------------------------------------------

// A real pipe into `sh -c script`, as a ByteSink, and what came out of it
// (read all along, so that the script's own output never holds it up).
function pipeInto(script: string) {
  const child = new Deno.Command("sh", {
    args: ["-c", script],
    stdin: "piped",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const writer = child.stdin.getWriter();
  const output = new Response(child.stdout).text();
  return {
    child,
    sink: {
      write: async (bytes: Uint8Array) => {
        await writer.write(bytes);
        return bytes.length;
      },
    },
    async finish() {
      await writer.close().catch(() => {});
      await child.status;
      return await output;
    },
  };
}

const LINES = Array.from({ length: 3_000 }, (_, i) => `line ${i} ${"x".repeat(90)}`);

Deno.test("lab output: a reader that pauses longer than any round still gets every line", async () => {
  // The pipe holds 64 KiB; these lines are 300 KB. The reader sleeps 3 s,
  // 30 rounds of 100 ms: a wait with a limit would have given up.
  const reader = pipeInto("sleep 3; cat");
  const stdout = keepingFailure(reader.sink);
  const out = createLineWriter({ output: stdout, droppedNotice: (n) => `(${n} dropped)` });
  for (const line of LINES) out.write(line);
  const quit = Promise.withResolvers<void>();
  assertEquals(await waitUntilWritten(out, stdout.failure, quit.promise, 100), "written");
  assertEquals(await reader.finish(), LINES.join("\n") + "\n");
});

Deno.test("lab output: the wait ends on a quit request, and on a reader that went away", async () => {
  const stalled = pipeInto("exec sleep 30");
  const stdout = keepingFailure(stalled.sink);
  const out = createLineWriter({ output: stdout, droppedNotice: (n) => `(${n} dropped)` });
  for (const line of LINES) out.write(line);
  const quit = Promise.withResolvers<void>();
  const waiting = waitUntilWritten(out, stdout.failure, quit.promise, 100);
  await delay(500);
  quit.resolve();
  assertEquals(await waiting, "stopped");

  const gone = pipeInto("exit 0");
  const failing = keepingFailure(gone.sink);
  const lost = createLineWriter({ output: failing, droppedNotice: (n) => `(${n} dropped)` });
  for (const line of LINES) lost.write(line);
  const failed = await waitUntilWritten(lost, failing.failure, new Promise(() => {}), 100);
  if (!(failed instanceof Error)) throw new Error(`not a failure: ${failed}`);
  assertStringIncludes(failed.message, "Broken pipe");
  await gone.finish();
  stalled.child.kill("SIGKILL");
  await stalled.finish();
});

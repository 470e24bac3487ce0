/**
 * Fast tests for `lab own` (lab/own*.ts), without namespaces: its flags and
 * their misuse, the flow tracker over made-up samples, the per-port drop
 * counters' parser, the bounded line reader, and the report's escaping
 * (nothing a program prints reaches the terminal raw). The runs through
 * the router are in lab_own_test.ts.
 */
import { assert, assertEquals, assertFalse, assertStringIncludes, assertThrows } from "@std/assert";
import { ownMain, parseOwnArgs } from "../lab/own.ts";
import { MAX_LINE_CHARACTERS, readLines } from "../lab/own_command.ts";
import { createFlowTracker, type DropSample } from "../lab/own_flows.ts";
import { escapeText, formatJson, formatReport, type OwnResult } from "../lab/own_report.ts";
import { parseCounters } from "../lab/own_router.ts";
import type { ConntrackEntry } from "../lab/router.ts";
import { UsageError } from "../tools/cli.ts";

// --- flags ----------------------------------------------------------------------

const MINIMAL = ["--server", "redis-server", "--port", "6379", "--client", "true"];

Deno.test("lab own: the flags, with their defaults", () => {
  assertEquals(parseOwnArgs(MINIMAL), {
    server: "redis-server",
    port: 6379,
    client: "true",
    timeoutSeconds: 5,
    clientTimeoutSeconds: 300,
    json: false,
  });
  assertEquals(
    parseOwnArgs([...MINIMAL, "--middlebox-timeout", "600", "--client-timeout", "1", "--json"]),
    {
      server: "redis-server",
      port: 6379,
      client: "true",
      timeoutSeconds: 600,
      clientTimeoutSeconds: 1,
      json: true,
    },
  );
  assertEquals(parseOwnArgs(["--help"]), "help");
});

Deno.test("lab own: each misuse is one UsageError naming the flag", () => {
  const cases: [string[], string][] = [
    [["--port", "6379", "--client", "true"], "--server is needed"],
    [["--server", "x", "--client", "true"], "--port is needed"],
    [["--server", "x", "--port", "1"], "--client is needed"],
    [[...MINIMAL.slice(0, 2), "--port", "0", ...MINIMAL.slice(4)], "--port must be an integer"],
    [[...MINIMAL.slice(0, 2), "--port", "65536", ...MINIMAL.slice(4)], "from 1 to 65535"],
    [[...MINIMAL, "--middlebox-timeout", "2"], "--middlebox-timeout must be an integer from 3"],
    [[...MINIMAL, "--middlebox-timeout", "601"], "from 3 to 600"],
    [[...MINIMAL, "--client-timeout", "0"], "--client-timeout must be an integer from 1"],
    [[...MINIMAL, "--server", "again"], "--server is given twice"],
    [[...MINIMAL, "--svg", "x.svg"], 'unknown flag "--svg"'],
    [[...MINIMAL, "--json=1"], "--json takes no value"],
    [[...MINIMAL, "blog"], 'unexpected argument "blog"'],
    [["--server", "", "--port", "1", "--client", "true"], "--server needs a value"],
  ];
  for (const [args, message] of cases) {
    const error = assertThrows(() => parseOwnArgs(args), UsageError);
    assertStringIncludes(error.message, message, JSON.stringify(args));
    assertFalse(error.message.includes("\n"));
  }
});

Deno.test("lab own: misuse through lab.ts's main is one line on stderr and exit code 2", async () => {
  const lines: string[] = [];
  const code = await ownMain(["--port", "99999"], { stderr: (line) => lines.push(line) });
  assertEquals(code, 2);
  assertEquals(lines.length, 1);
  assertStringIncludes(lines[0], "lab.ts own:");
  assertStringIncludes(lines[0], "(see --help)");
});

// --- the flow tracker ---------------------------------------------------------

const NO_DROPS: DropSample = { fromClient: new Map(), fromServer: new Map() };

function entry(port: number, state: string, remainingSeconds: number): ConntrackEntry {
  return {
    source: "10.231.1.2",
    sourcePort: port,
    destination: "10.231.2.2",
    destinationPort: 8080,
    state,
    remainingSeconds,
  };
}

Deno.test("lab own: a flow gone while established is forgotten, after the idle its countdown shows", () => {
  const tracker = createFlowTracker(5);
  assertEquals(tracker.observe(1, [entry(40000, "ESTABLISHED", 5)], NO_DROPS)[0].kind, "new");
  // Shown 0 s left at 5.5: between 0 and 1 s left, so no news of a later packet.
  tracker.observe(5.5, [entry(40000, "ESTABLISHED", 0)], NO_DROPS);
  const [gone] = tracker.observe(6.5, [], NO_DROPS);
  assertEquals(gone.kind, "forgotten");
  assertEquals(gone.flow.lastActiveSeconds, 1);
  assertEquals(gone.flow.idleSeconds, 5.5);
  assertEquals(gone.flow.goneSeconds, 6.5);
  assertEquals(gone.flow.lowestRemainingSeconds, 0);
  // Packets of the forgotten flow, dropped: counted for it, the first one said.
  const drops: DropSample = { fromClient: new Map([[40000, 3]]), fromServer: new Map() };
  assertEquals(tracker.observe(9, [], drops).map((e) => e.kind), ["dropped"]);
  drops.fromClient.set(40000, 7);
  drops.fromServer.set(40000, 1);
  assertEquals(tracker.observe(10, [], drops), []);
  const [flow] = tracker.flows();
  assertEquals([flow.droppedFromClient, flow.droppedFromServer], [7, 1]);
  assertEquals(flow.end, "forgotten");
});

Deno.test("lab own: a kept flow is refreshed, a closed one is not called forgotten", () => {
  const tracker = createFlowTracker(5);
  tracker.observe(0.5, [entry(40001, "ESTABLISHED", 5), entry(40002, "ESTABLISHED", 5)], NO_DROPS);
  for (let t = 1; t <= 20; t++) {
    // 40001: keepalive every second keeps the countdown up; 40002 closes at 10.
    const other = t < 10 ? entry(40002, "ESTABLISHED", 5) : entry(40002, "TIME_WAIT", 120);
    tracker.observe(
      t,
      [entry(40001, "ESTABLISHED", t % 2 ? 4 : 5), ...(t < 15 ? [other] : [])],
      NO_DROPS,
    );
  }
  const [kept, closed] = tracker.flows();
  assertEquals(kept.end, "tracked");
  assertEquals(kept.lowestRemainingSeconds, 4);
  assertEquals(kept.lastActiveSeconds, 20);
  assertEquals(closed.end, "closed");
  assertEquals(closed.lastState, "TIME_WAIT");
  assertEquals(closed.goneSeconds, 15);
  assertEquals(closed.idleSeconds, null);
});

Deno.test("lab own: flows past the limit are counted, not followed; unknown ports' drops are counted", () => {
  const tracker = createFlowTracker(5, 2);
  const entries = [1, 2, 3, 4].map((i) => entry(40000 + i, "ESTABLISHED", 5));
  tracker.observe(1, entries, { fromClient: new Map([[50000, 2]]), fromServer: new Map() });
  tracker.observe(2, entries, NO_DROPS);
  assertEquals(tracker.flows().length, 2);
  assertEquals(tracker.flowsLeftOut(), 2);
  assertEquals(tracker.unattributedDrops(), 2);
});

Deno.test("lab own: the per-port drop counters are read from nft's JSON, and nonsense is no counter", () => {
  const json = JSON.stringify({
    nftables: [
      { metainfo: { version: "1.0.6" } },
      {
        set: {
          name: "from_client",
          elem: [{ elem: { val: 40000, counter: { packets: 7, bytes: 420 } } }],
        },
      },
      { set: { name: "from_server", elem: [{ elem: { val: 40000, counter: { packets: 1 } } }] } },
      { set: { name: "from_server", elem: [{ elem: { val: "x", counter: { packets: 1 } } }] } },
    ],
  });
  const drops = parseCounters(json);
  assertEquals([...drops.fromClient], [[40000, 7]]);
  assertEquals([...drops.fromServer], [[40000, 1]]);
  assertEquals(parseCounters("not json").fromClient.size, 0);
});

// --- output, bounded and escaped ---------------------------------------------

function streamOf(...chunks: string[]): ReadableStream<Uint8Array> {
  const bytes = chunks.map((chunk) => new TextEncoder().encode(chunk));
  return new ReadableStream({
    start(controller) {
      for (const chunk of bytes) controller.enqueue(chunk);
      controller.close();
    },
  });
}

Deno.test("lab own: a command's lines are cut to a bound, however long, and \\r\\n counts as \\n", async () => {
  const lines: [string, number][] = [];
  const long = "x".repeat(1_000_000);
  await readLines(
    streamOf("one\r\ntw", "o\n", long.slice(0, 500), long.slice(500), "\nlast"),
    (text, cut) => lines.push([text, cut]),
  );
  assertEquals(lines.map(([text]) => text.length), [3, 3, MAX_LINE_CHARACTERS, 4]);
  assertEquals(lines[0], ["one", 0]);
  assertEquals(lines[2][1], 1_000_000 - MAX_LINE_CHARACTERS);
  assertEquals(lines[3], ["last", 0]);
});

Deno.test("lab own: a line is cut in characters, never in the middle of one", async () => {
  const lines: [string, number][] = [];
  await readLines(streamOf("a" + "\u{1F600}".repeat(400) + "\n"), (text, cut) => {
    lines.push([text, cut]);
  });
  const [[text, cut]] = lines;
  assertEquals([...text].length, MAX_LINE_CHARACTERS);
  assertEquals(cut, 401 - MAX_LINE_CHARACTERS);
  assert(text.isWellFormed(), "a surrogate pair was cut in two");
});

// Anything a terminal acts on: C0 (but the newlines between report lines),
// DEL, C1, bidirectional overrides and isolates, zero-width marks, separators.
// deno-lint-ignore no-control-regex -- control characters are what it looks for
const UNSAFE = /[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]/;

Deno.test("lab own: escapeText leaves nothing a terminal would act on, and cannot be forged", () => {
  const nasty = "a\x1b[2Jb\x9b31mc\u202ed\re\tf\u2028g\x07h\\u001b";
  const shown = escapeText(nasty);
  assertFalse(UNSAFE.test(shown), shown);
  assertEquals(
    shown,
    "a\\u001b[2Jb\\u009b31mc\\u202ed\\u000de\\u0009f\\u2028g\\u0007h\\\\u001b",
  );
});

function resultWith(text: string): OwnResult {
  const command = {
    command: `printf '${text}'`,
    namespace: "own-client",
    startedSeconds: 0.3,
    endedSeconds: 15.3,
    exitCode: 1,
    signal: null,
    stoppedBecause: null,
    output: [{ seconds: 1, stream: "stdout" as const, text, cutCharacters: 5 }],
    linesLeftOut: 3,
  };
  return {
    timeoutSeconds: 5,
    serverAddress: "10.231.2.2",
    clientAddress: "10.231.1.2",
    port: 8080,
    failure: null,
    listeningAfterSeconds: 0.3,
    server: { ...command, namespace: "own-server", signal: "SIGTERM", exitCode: null },
    client: command,
    flows: [{
      client: "10.231.1.2:40000",
      server: "10.231.2.2:8080",
      firstSeenSeconds: 0.4,
      lastActiveSeconds: 0.5,
      lastState: "ESTABLISHED",
      lowestRemainingSeconds: 0,
      end: "forgotten",
      goneSeconds: 6,
      idleSeconds: 5.5,
      droppedFromClient: 6,
      droppedFromServer: 0,
    }],
    flowsLeftOut: 0,
    drops: { invalid: 6, other: 0, unattributed: 0 },
    conntrackReadable: true,
    notes: [],
    passed: false,
  };
}

Deno.test("lab own: the report escapes what the programs printed, and says what the router did", () => {
  const nasty = "\x1b]0;owned\x07\x1b[2J\u202eevil\x9b1m\r";
  const text = formatReport(resultWith(nasty)).join("\n");
  assertFalse(UNSAFE.test(text), text);
  assertStringIncludes(text, "\\u001b]0;owned\\u0007");
  assertStringIncludes(text, "(3 earlier lines left out)");
  assertStringIncludes(text, "... (5 more characters)");
  assertStringIncludes(text, "forgot it at 6.0 s, idle 5.5 s");
  assertStringIncludes(text, "6 (6 from the client, 0 from the server)");
  assertStringIncludes(
    text,
    "the client failed (exit code 1 at 15.3 s); the router forgot 1 of 1 flows and dropped 6",
  );
  // The JSON holds the same strings, and no raw character a terminal acts on.
  const json = formatJson(resultWith(nasty));
  assertFalse(UNSAFE.test(json.replaceAll("\n", "")), json);
  assertEquals(JSON.parse(json).client.output[0].text, nasty);
});

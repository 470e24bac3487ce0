/**
 * Tests for cli.ts: strict flags, values shown back safely, the line writer
 * that never blocks, and script paths in hints. All in-process.
 */
import { assert, assertEquals, assertMatch, assertThrows } from "@std/assert";
import {
  type ByteSink,
  createLineWriter,
  parseCommandLine,
  parseFlags,
  parseHostname,
  parseInteger,
  scriptPath,
  shellQuote,
  showTyped,
  UsageError,
  writeText,
} from "../tools/cli.ts";
import { delay, requiringTest, run } from "./_helpers.ts";

const SPEC = {
  string: ["port", "hostname"],
  boolean: ["json", "keepalive"],
  negatable: ["keepalive"],
  default: { port: "8888" },
} as const;

// ## Flags

Deno.test("parseFlags reads values in both spellings, defaults, booleans and --no-", () => {
  assertEquals(parseFlags(["--port=1", "--hostname", "::1", "--json"], SPEC), {
    port: "1",
    hostname: "::1",
    json: true,
    keepalive: true,
    help: false,
    _: [],
  });
  assertEquals(parseFlags(["--no-keepalive"], SPEC).keepalive, false);
  assertEquals(parseFlags([], SPEC).port, "8888");
  assertEquals(parseFlags(["-h"], SPEC).help, true);
  // A string flag takes the next argument whatever it is, so the value is checked where it belongs.
  assertEquals(parseFlags(["--port", "-1"], SPEC).port, "-1");
  assertEquals(parseFlags(["--hostname=a=b"], SPEC).hostname, "a=b");
});

Deno.test("parseFlags refuses a value on a boolean flag, whatever the value", () => {
  for (const arg of ["--keepalive=no", "--keepalive=false", "--json=0", "--json=true"]) {
    assertThrows(() => parseFlags([arg], SPEC), UsageError, "takes no value");
  }
  assertThrows(
    () => parseFlags(["--no-keepalive=yes"], SPEC),
    UsageError,
    "write --keepalive or --no-keepalive",
  );
});

Deno.test("parseFlags refuses a flag given twice, even when the first value was bad", () => {
  assertThrows(
    () => parseFlags(["--port", "abc", "--port", "0"], SPEC),
    UsageError,
    "--port is given twice",
  );
  assertThrows(() => parseFlags(["--json", "--json"], SPEC), UsageError, "--json is given twice");
  assertThrows(
    () => parseFlags(["--keepalive", "--no-keepalive"], SPEC),
    UsageError,
    "--keepalive (or --no-keepalive) is given twice",
  );
  assertThrows(() => parseFlags(["-h", "--help"], SPEC), UsageError, "given twice");
});

Deno.test("parseFlags refuses unknown flags, stray arguments, empty values and anything after --", () => {
  assertThrows(() => parseFlags(["--bogus"], SPEC), UsageError, 'unknown flag "--bogus"');
  assertThrows(() => parseFlags(["-x"], SPEC), UsageError, 'unknown flag "-x"');
  assertThrows(() => parseFlags(["--no-json"], SPEC), UsageError, 'unknown flag "--no-json"');
  assertThrows(() => parseFlags(["8888"], SPEC), UsageError, 'unexpected argument "8888"');
  assertThrows(() => parseFlags(["-1"], SPEC), UsageError, "no flag takes a negative number");
  assertThrows(() => parseFlags([""], SPEC), UsageError, "an empty argument");
  assertThrows(() => parseFlags(["--port"], SPEC), UsageError, "--port needs a value");
  assertThrows(() => parseFlags(["--port", ""], SPEC), UsageError, "--port needs a value");
  assertThrows(() => parseFlags(["--port="], SPEC), UsageError, "--port needs a value");
  assertThrows(
    () => parseFlags(["--", "--port", "0"], SPEC),
    UsageError,
    'unexpected argument "--port"',
  );
});

Deno.test("every message shows what was typed escaped and capped, never raw", () => {
  const nasty = `--\x1b]0;owned\x07${"x".repeat(100_000)}`;
  const error = assertThrows(() => parseFlags([nasty], SPEC), UsageError);
  // deno-lint-ignore no-control-regex -- control bytes are what this looks for
  assert(!/[\x00-\x1f\x7f]/.test(error.message), JSON.stringify(error.message));
  assert(error.message.length < 120, `${error.message.length} characters`);
  assertMatch(error.message, new RegExp(`\\(${nasty.length} characters\\)$`));
});

Deno.test("showTyped escapes C0, DEL, C1 and bidi controls, and cuts long values", () => {
  assertEquals(showTyped("a\x1b[2Jb"), '"a\\u001b[2Jb"');
  assertEquals(showTyped("\x7f\x9b\u202e"), '"\\u007f\\u009b\\u202e"');
  assertEquals(showTyped("ok"), '"ok"');
  // Line separators, invisible format characters, even astral ones.
  assertEquals(
    showTyped("a\u2028b\u061cc\u{e0001}d\u00ade"),
    '"a\\u2028b\\u061cc\\u{e0001}d\\u00ade"',
  );
  assertEquals(showTyped("abcdef", 3), '"abc..." (6 characters)');
});

Deno.test("parseHostname takes IPv4, IPv6 with or without brackets, and host names", () => {
  for (
    const [typed, expected] of [
      ["127.0.0.1", "127.0.0.1"],
      ["::", "::"],
      ["[::1]", "::1"],
      [
        "fd6b:61::2",
        "fd6b:61::2",
      ],
      ["::ffff:127.0.0.1", "::ffff:127.0.0.1"],
      ["localhost", "localhost"],
      [
        "db-1.example.com.",
        "db-1.example.com.",
      ],
    ]
  ) {
    assertEquals(parseHostname("--hostname", typed), expected);
  }
});

Deno.test("parseHostname refuses broken IPv6, unmatched brackets and junk, showing what was typed", () => {
  for (
    const [typed, message] of [
      ["::gg", '--hostname "::gg" is not an IPv6 address'],
      [":::", '--hostname ":::" is not an IPv6 address'],
      ["fe80::1%lo", '--hostname "fe80::1%lo": zone ids (%eth0) are not supported'],
      ["[::1", '--hostname "[::1" is not an address: unmatched bracket'],
      ["::1]", '--hostname "::1]" is not an address: unmatched bracket'],
      ["[localhost]", "brackets are for IPv6 addresses only"],
      ["a b", '--hostname "a b" is not an address or host name'],
      ["a\x1bb", '--hostname "a\\u001bb" is not an address or host name'],
      ["-x.com", "is not an address or host name"],
      ["x".repeat(254), "(254 characters) is not an address or host name"],
      // The URL parser would drop these before checking: the address would pass with them.
      ["::1\n", '--hostname "::1\\n" is not an IPv6 address'],
      ["::1\t", '--hostname "::1\\t" is not an IPv6 address'],
      // The C library reads these as 127.0.0.1 or worse; only the plain dotted form is taken.
      ["0177.0.0.1", '"0177.0.0.1" is not an IPv4 address'],
      ["2130706433", '"2130706433" is not an IPv4 address'],
      ["0x7f.1", '"0x7f.1" is not an IPv4 address'],
      ["999.999.999.999", '"999.999.999.999" is not an IPv4 address'],
      ["1.2.3", '"1.2.3" is not an IPv4 address'],
    ]
  ) {
    assertThrows(() => parseHostname("--hostname", typed), UsageError, message);
  }
});

Deno.test("parseFlags takes arguments that are not flags only when asked, kept as typed", () => {
  const spec = { string: [], boolean: ["json"], positionals: true } as const;
  assertEquals(parseFlags(["time=007", "--json", "probes"], spec), {
    json: true,
    help: false,
    _: ["time=007", "probes"],
  });
  assertThrows(() => parseFlags(["--json=0", "time"], spec), UsageError, "takes no value");
  assertThrows(() => parseFlags(["time"], SPEC), UsageError, 'unexpected argument "time"');
});

Deno.test("parseInteger takes decimal digits in range only, and names the flag", () => {
  assertEquals(parseInteger("--port", "0080", 0, 65535), 80);
  for (const typed of ["65536", "-1", "1.5", "abc", " 80", "0x50", "+80", "1e3"]) {
    assertThrows(
      () => parseInteger("--port", typed, 0, 65535),
      UsageError,
      "--port must be an integer from 0 to 65535",
    );
  }
});

Deno.test("shellQuote leaves plain words alone and quotes the rest for a POSIX shell", () => {
  assertEquals(shellQuote("--idle"), "--idle");
  assertEquals(shellQuote("[::1]"), "'[::1]'");
  assertEquals(shellQuote("it's"), `'it'\\''s'`);
});

Deno.test("scriptPath names a script from the current directory, quoted", () => {
  assertEquals(scriptPath(new URL(`file://${Deno.cwd()}/server.ts`).href), "server.ts");
  assertEquals(
    scriptPath(new URL(`file://${Deno.cwd()}/my kit/server.ts`).href),
    "'my kit/server.ts'",
  );
  assertEquals(scriptPath("file:///elsewhere/server.ts"), "/elsewhere/server.ts");
});

// ## The line writer

/** A sink that takes nothing until released, like a pipe nobody reads. */
function stalledSink() {
  const written: string[] = [];
  const release = Promise.withResolvers<void>();
  let calls = 0;
  const sink: ByteSink = {
    async write(bytes) {
      calls++;
      await release.promise;
      written.push(new TextDecoder().decode(bytes));
      return bytes.length;
    },
  };
  return {
    sink,
    release: () => release.resolve(),
    lines: () => written.join("").split("\n").slice(0, -1),
    calls: () => calls,
  };
}

Deno.test("a stalled output never blocks the writer: write returns at once and flush gives up in time", async () => {
  const output = stalledSink();
  const out = createLineWriter({ output: output.sink, droppedNotice: (n) => `dropped ${n}` });
  const start = performance.now();
  for (let i = 0; i < 50_000; i++) out.write(`line ${i}`);
  assert(performance.now() - start < 1_000, "write waited for the output");
  const flushStart = performance.now();
  assertEquals(await out.flush(200), false);
  const flushMs = performance.now() - flushStart;
  assert(flushMs >= 150 && flushMs < 1_000, `flush gave up after ${flushMs} ms`);
  output.release();
});

Deno.test("past its bound the writer drops lines, and says how many where they went missing", async () => {
  const output = stalledSink();
  const out = createLineWriter({
    output: output.sink,
    maxQueuedLines: 100,
    droppedNotice: (n) => `dropped ${n}`,
  });
  // The first line goes out at once and waits in the sink; 100 more fill the queue.
  for (let i = 0; i < 131; i++) out.write(`line ${i}`);
  output.release();
  await delay(50);
  out.write("after the gap");
  assertEquals(await out.flush(1_000), true);
  const lines = output.lines();
  assertEquals(lines.length, 1 + 100 + 1 + 1);
  assertEquals(lines.slice(0, 101), Array.from({ length: 101 }, (_, i) => `line ${i}`));
  assertEquals(lines.slice(101), ["dropped 30", "after the gap"]);
});

Deno.test("flush reports drops that no later line came to report, and batches lines into few writes", async () => {
  const output = stalledSink();
  const out = createLineWriter({
    output: output.sink,
    maxQueuedLines: 10,
    droppedNotice: (n) => `dropped ${n}`,
  });
  for (let i = 0; i < 15; i++) out.write(`line ${i}`);
  output.release();
  assertEquals(await out.flush(1_000), true);
  assertEquals(output.lines().slice(-1), ["dropped 4"]);
  assert(output.calls() <= 3, `${output.calls()} writes for 12 lines`);
});

Deno.test("an output that fails (a closed pipe) is given up quietly: writes never throw", async () => {
  let calls = 0;
  const out = createLineWriter({
    output: {
      write() {
        calls++;
        return Promise.reject(new Deno.errors.BrokenPipe("Broken pipe (os error 32)"));
      },
    },
    droppedNotice: (n) => `dropped ${n}`,
  });
  out.write("one");
  assertEquals(await out.flush(1_000), false);
  for (let i = 0; i < 100; i++) out.write("more");
  assertEquals(await out.flush(1_000), false);
  assertEquals(calls, 1);
});

Deno.test("after dropping lines, the notice comes out when the output catches up, with no later line", async () => {
  const output = stalledSink();
  const out = createLineWriter({
    output: output.sink,
    maxQueuedLines: 10,
    droppedNotice: (n) => `dropped ${n}`,
  });
  for (let i = 0; i < 15; i++) out.write(`line ${i}`);
  output.release();
  await delay(100); // no flush, no further line
  assertEquals(output.lines().slice(-2), ["line 10", "dropped 4"]);
});

// ## Writing what a command prints

Deno.test("parseInteger: digits whose value is in range, at both edges, leading zeros or not", () => {
  for (const [min, max] of [[0, 65535], [1, 86400], [3, 31_536_000]]) {
    const range = `--n must be an integer from ${min} to ${max}, not`;
    for (const zeros of ["", "0", "0".repeat(15), "0".repeat(16), "0".repeat(100)]) {
      assertEquals(parseInteger("--n", `${zeros}${min}`, min, max), min);
      assertEquals(parseInteger("--n", `${zeros}${max}`, min, max), max);
      assertThrows(() => parseInteger("--n", `${zeros}${max + 1}`, min, max), UsageError, range);
      if (min > 0) {
        assertThrows(() => parseInteger("--n", `${zeros}${min - 1}`, min, max), UsageError, range);
      }
    }
  }
  // Too many digits is out of range, never rounded into it.
  assertThrows(
    () => parseInteger("--n", "9".repeat(400), 0, 65535),
    UsageError,
    "(400 characters)",
  );
  assertThrows(
    () => parseInteger("--n", "9007199254740993", 0, Number.MAX_SAFE_INTEGER),
    UsageError,
    "from 0 to 9007199254740991",
  );
});

Deno.test("writeText writes all of the text, and returns why when the output refuses it, never throws", () => {
  const taken: Uint8Array[] = [];
  // An output that takes 3 bytes a call, like a pipe that is nearly full.
  const slow = { writeSync: (bytes: Uint8Array) => (taken.push(bytes.slice(0, 3)), 3) };
  assertEquals(writeText("hello, world", slow), null);
  assertEquals(
    new TextDecoder().decode(new Uint8Array(taken.flatMap((b) => [...b]))),
    "hello, world\n",
  );
  const full = {
    writeSync(): number {
      throw new Error("No space left on device (os error 28)\nmore");
    },
  };
  assertEquals(writeText("x", full), "No space left on device (os error 28)");
  assertEquals(writeText("x", { writeSync: () => 0 }), "the output took no bytes");
});

Deno.test("parseCommandLine: misuse is exit 2 even when stderr throws, and it is told one line", () => {
  const parse = (args: string[]) => {
    if (args.length > 0) throw new UsageError(`unknown flag ${showTyped(args[0])}`);
    return { ok: true };
  };
  const lines: string[] = [];
  assertEquals(parseCommandLine("x.ts", ["--bogus"], parse, "help", (l) => lines.push(l)), 2);
  assertEquals(lines, ['x.ts: unknown flag "--bogus" (see --help)']);
  const broken = () => {
    throw new Error("No space left on device (os error 28)");
  };
  assertEquals(parseCommandLine("x.ts", ["--bogus"], parse, "help", broken), 2);
  assertEquals(parseCommandLine("x.ts", [], parse, "help", broken), { ok: true });
});

const noDevFull = (() => {
  try {
    return Deno.statSync("/dev/full").isCharDevice ? null : "/dev/full is not a device";
  } catch {
    return "there is no /dev/full to write to";
  }
})();

// The tools, with stdout or stderr on a full device: one line and exit 1 for
// what they cannot write, 2 for misuse even when stderr cannot say so.
requiringTest(
  "tools/demo.ts and tools/sock_diag.ts with stdout or stderr full",
  noDevFull,
  async () => {
    const tool = (redirect: string, script: string, ...args: string[]) =>
      run([
        "sh",
        "-c",
        `exec "$@" ${redirect}`,
        "sh",
        Deno.execPath(),
        "run",
        "-A",
        script,
        ...args,
      ]);
    for (const script of ["tools/demo.ts", "tools/sock_diag.ts"]) {
      const help = await tool(">/dev/full", script, "--help");
      assertEquals(help.code, 1, help.stderr);
      assertEquals(help.stderr.trimEnd().split("\n").length, 1, help.stderr);
      assertEquals((await tool("2>/dev/full", script, "--bogus")).code, 2, script);
    }
    // A socket to list, even in an empty network namespace (the tests' sandbox).
    using _listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const lines = await tool(">/dev/full", "tools/sock_diag.ts");
    assertEquals(lines.code, 1, lines.stderr);
    assertEquals(
      lines.stderr,
      "sock_diag.ts: cannot write: No space left on device (os error 28)\n",
    );
  },
);

// The scripts (server.ts here; client.ts and lab.ts alike) with stdout or
// stderr on a full device.
requiringTest(
  "server.ts: --help it cannot write is one line and exit 1; misuse is 2 even with stderr full",
  noDevFull,
  async () => {
    const server = (redirect: string, ...args: string[]) =>
      run([
        "sh",
        "-c",
        `exec "$@" ${redirect}`,
        "sh",
        Deno.execPath(),
        "run",
        "server.ts",
        ...args,
      ]);
    const help = await server(">/dev/full", "--help");
    assertEquals(help.code, 1, help.stderr);
    assertEquals(help.stderr.trimEnd().split("\n"), [
      "server.ts: cannot write the help: No space left on device (os error 28)",
    ]);
    assertEquals((await server(">/dev/full 2>/dev/full", "--help")).code, 1);
    for (const args of [["--bogus"], ["--port", "65536"]]) {
      const misuse = await server("2>/dev/full", ...args);
      assertEquals([misuse.code, misuse.stdout], [2, ""], args.join(" "));
    }
  },
);

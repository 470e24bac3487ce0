/**
 * Tests for sysctl.ts. Parsing and validation run in-process; reading runs
 * against the host's real /proc/sys; every write runs in a throwaway network
 * namespace (the sysctls are per namespace), and each of those tests checks
 * that the host's values did not move.
 */
import { assert, assertEquals, assertMatch, assertStringIncludes, assertThrows } from "@std/assert";
import {
  assertSysctlsUnchanged,
  type CommandResult,
  keepaliveSysctls,
  type Netns,
  netnsTest,
  netnsUnavailableReason,
  otherUserUnavailableReason,
  requiringTest,
  ROOT_DIR,
  run,
  runOk,
  withNetns,
  withOwnMounts,
} from "./_helpers.ts";
import {
  formatSysctls,
  KEEPALIVE_SYSCTLS,
  main,
  parseAssignment,
  readKeepaliveSysctls,
  resolveKey,
  SysctlError,
  validateValue,
} from "../sysctl.ts";

const [TIME, INTVL, PROBES] = KEEPALIVE_SYSCTLS;

// ## Helpers

/** Runs `deno run -A sysctl.ts ARGS` inside the namespace. */
function sysctlIn(ns: Netns, ...args: string[]): Promise<CommandResult> {
  return run([...ns.exec, Deno.execPath(), "run", "-A", "sysctl.ts", ...args]);
}

/** Runs `deno run PERMISSIONS sysctl.ts ARGS` on the host. */
function sysctlOnHost(permissions: string[], ...args: string[]): Promise<CommandResult> {
  return run([Deno.execPath(), "run", ...permissions, "sysctl.ts", ...args]);
}

/**
 * Calls main() in this process and collects what it writes to stdout and
 * stderr (it writes with writeSync, never through console), without the
 * last newline of each.
 */
async function mainOutput(args: string[]): Promise<CommandResult> {
  const written = { stdout: "", stderr: "" };
  const decoder = new TextDecoder();
  const restore = (["stdout", "stderr"] as const).map((name) => {
    const stream = Deno[name];
    const { writeSync } = stream;
    stream.writeSync = (bytes: Uint8Array) => {
      written[name] += decoder.decode(bytes);
      return bytes.length;
    };
    return () => stream.writeSync = writeSync;
  });
  try {
    const code = await main(args);
    const trim = (text: string) => text.replace(/\n$/, "");
    return { code, stdout: trim(written.stdout), stderr: trim(written.stderr) };
  } finally {
    for (const undo of restore) undo();
  }
}

/** Asserts the error output is `count` lines from sysctl.ts, and no stack trace. */
function assertErrorLines(stderr: string, count = 1): string[] {
  const lines = stderr.trimEnd().split("\n");
  assertEquals(lines.length, count, `expected ${count} line(s) on stderr, got:\n${stderr}`);
  for (const line of lines) assertMatch(line, /^sysctl\.ts: /);
  assert(!/^\s+at /m.test(stderr), `stack trace on stderr:\n${stderr}`);
  return lines;
}

function procpsLines(values: Record<string, number>, keys: readonly string[]): string {
  return keys.map((key) => `${key} = ${values[key]}`).join("\n") + "\n";
}

/** Asserts that `fn` throws a usage error (exit code 2) whose message contains every `parts`. */
function assertUsageError(fn: () => unknown, ...parts: string[]): void {
  const error = assertThrows(fn, SysctlError);
  assertEquals(error.exitCode, 2);
  for (const part of parts) assertStringIncludes(error.message, part);
}

// ## Naming, parsing and validating (in-process)

Deno.test("resolveKey accepts the full name, the file name and the short name of each sysctl", () => {
  for (const key of KEEPALIVE_SYSCTLS) {
    const fileName = key.replace("net.ipv4.", "");
    const shortName = fileName.replace("tcp_keepalive_", "");
    assertEquals(resolveKey(key), key);
    assertEquals(resolveKey(fileName), key);
    assertEquals(resolveKey(shortName), key);
  }
});

Deno.test("resolveKey refuses unknown keys with a usage error", () => {
  for (const name of ["tcp_keepalive", "net.ipv4.tcp_fin_timeout", "TIME", "", "net/ipv4/x"]) {
    assertUsageError(() => resolveKey(name), "unknown key", JSON.stringify(name));
  }
});

Deno.test("validateValue accepts decimal integers in range, and leading zeros mean decimal", () => {
  assertEquals(validateValue("time", "120"), 120);
  assertEquals(validateValue("time", "1"), 1);
  assertEquals(validateValue("intvl", "007"), 7);
  assertEquals(validateValue("time", "2147483647"), 2147483647);
  // Too big for this kernel, but that is the kernel's call: it answers EINVAL.
  assertEquals(validateValue("time", "99999999"), 99999999);
  assertEquals(validateValue("probes", "255"), 255);
  assertEquals(validateValue("tcp_keepalive_probes", "1"), 1);
});

Deno.test("validateValue refuses zero, negatives, fractions, words, empty and padded values, naming the key and the range", () => {
  for (const text of ["0", "-5", "1.5", "abc", "", " 7 ", "+7", "7s", "0x10", "1e3"]) {
    assertUsageError(() => validateValue("time", text), TIME, "1..2147483647");
    assertUsageError(() => validateValue("intvl", text), INTVL, "1..2147483647");
    assertUsageError(() => validateValue("probes", text), PROBES, "1..255");
  }
  // Zero and negatives say why, since the kernel itself would take them.
  assertUsageError(() => validateValue("time", "0"), "breaks keepalive");
  assertUsageError(() => validateValue("intvl", "-5"), "breaks keepalive");
  assertUsageError(() => validateValue("probes", "0"), "drop every idle connection");
  assertUsageError(() => validateValue("time", "abc"), "not a decimal integer");
});

Deno.test("validateValue refuses probes above 255 and any value above 2147483647", () => {
  assertUsageError(() => validateValue("probes", "256"), PROBES, "u8", "1..255");
  assertUsageError(() => validateValue("time", "2147483648"), TIME, "out of range");
  assertUsageError(() => validateValue("intvl", "99999999999999999999999"), INTVL, "out of range");
});

Deno.test("parseAssignment splits KEY=VALUE in any key spelling and validates the value", () => {
  assertEquals(parseAssignment("time=120"), { key: TIME, value: 120 });
  assertEquals(parseAssignment("tcp_keepalive_intvl=007"), { key: INTVL, value: 7 });
  assertEquals(parseAssignment(`${PROBES}=255`), { key: PROBES, value: 255 });
  assertUsageError(() => parseAssignment("probes=256"), PROBES);
  assertUsageError(() => parseAssignment("probes=0"), PROBES);
  assertUsageError(() => parseAssignment("nope=1"), "unknown key");
});

Deno.test("parseAssignment refuses malformed assignments with a usage error", () => {
  assertUsageError(() => parseAssignment("time="), "malformed", "no value");
  assertUsageError(() => parseAssignment("=5"), "malformed", "no key");
  assertUsageError(() => parseAssignment("time"), "malformed", "no '='");
  assertUsageError(() => parseAssignment("a=b=c"), "malformed", "more than one");
});

Deno.test("formatSysctls prints procps lines or one line of JSON", () => {
  const values = { [TIME]: 120, [INTVL]: 75 };
  assertEquals(formatSysctls(values, false), `${TIME} = 120\n${INTVL} = 75`);
  assertEquals(formatSysctls(values, true), `{"${TIME}":120,"${INTVL}":75}`);
});

// ## The command line, in-process (nothing here can write: see the comments)

Deno.test("main refuses to mix reads and writes in one call, with exit code 2 and one line", async () => {
  const before = await keepaliveSysctls();
  // The value written, were the script to write, is the one already there.
  const result = await mainOutput(["time", `intvl=${before[INTVL]}`]);
  assertEquals(result.code, 2);
  assertStringIncludes(assertErrorLines(result.stderr)[0], "in one call");
  assertEquals(result.stdout, "");
  assertEquals(await keepaliveSysctls(), before);
});

Deno.test("main refuses unknown flags, unknown keys and a key given twice with exit code 2", async () => {
  for (
    const [args, expected] of [
      [["--frobnicate"], 'unknown flag "--frobnicate"'],
      [["-x"], 'unknown flag "-x"'],
      [["--json=0"], '--json takes no value, not "0"'],
      [["--json", "--json"], "--json is given twice"],
      [["--help=1"], "--help takes no value"],
      [["timeout"], 'unknown key "timeout"'],
      [["time", "tcp_keepalive_time"], `${TIME} is given twice`],
    ]
  ) {
    const result = await mainOutput(args as string[]);
    assertEquals(result.code, 2, `args ${args}`);
    const [line] = assertErrorLines(result.stderr);
    assertStringIncludes(line, expected as string);
    assertStringIncludes(line, "--help");
  }
});

Deno.test("--help and -h print usage covering every flag, the key names, -A and root, and exit 0", async () => {
  for (const flag of ["--help", "-h"]) {
    const result = await mainOutput([flag]);
    assertEquals(result.code, 0);
    assertEquals(result.stderr, "");
    for (
      const text of [
        "--json",
        "--help",
        "-h",
        "-A",
        "--allow-all",
        "sudo",
        "root",
        ...KEEPALIVE_SYSCTLS,
        "tcp_keepalive_time",
        " time ",
        " intvl ",
        " probes ",
      ]
    ) {
      assertStringIncludes(result.stdout, text);
    }
  }
});

// ## Reading on the host (no root needed, nothing written)

Deno.test("sysctl.ts with no arguments prints the three sysctls in procps format, equal to /proc/sys", async () => {
  const expected = procpsLines(await keepaliveSysctls(), KEEPALIVE_SYSCTLS);
  const spawned = await sysctlOnHost(["-A"]);
  assertEquals(spawned, { code: 0, stdout: expected, stderr: "" });
  const inProcess = await mainOutput([]);
  assertEquals(inProcess.code, 0);
  assertEquals(inProcess.stdout + "\n", expected);
});

Deno.test("sysctl.ts --json prints one line of JSON that matches /proc/sys", async () => {
  const result = await sysctlOnHost(["-A"], "--json");
  assertEquals(result.code, 0);
  assertEquals(result.stdout.split("\n"), [result.stdout.trim(), ""]);
  const parsed = JSON.parse(result.stdout);
  assertEquals(parsed, await keepaliveSysctls());
  assertEquals(Object.keys(parsed), [...KEEPALIVE_SYSCTLS]);
});

Deno.test("naming keys prints only those, in the order given, whatever the spelling", async () => {
  const host = await keepaliveSysctls();
  const result = await sysctlOnHost(["-A"], "probes", TIME);
  assertEquals(result.code, 0);
  assertEquals(result.stdout, procpsLines(host, [PROBES, TIME]));
  assertEquals(await readKeepaliveSysctls(["tcp_keepalive_intvl", "probes"]), {
    [INTVL]: host[INTVL],
    [PROBES]: host[PROBES],
  });
});

Deno.test("without --allow-all the script exits 1 with one line that names -A and the command to run", async () => {
  for (const permission of ["--allow-read", "--allow-read=/proc/sys/net/ipv4"]) {
    const read = await sysctlOnHost([permission], "time");
    assertEquals(read.code, 1, permission);
    assertEquals(read.stdout, "");
    const [line] = assertErrorLines(read.stderr);
    assertStringIncludes(line, "--allow-all");
    assertStringIncludes(line, "27564");
    assertStringIncludes(line, "run: deno run -A sysctl.ts time");
  }
  // A write would need root as well, so the command shown has sudo, and the
  // full path of Deno: sudo does not search the user's PATH.
  const before = await keepaliveSysctls();
  const write = await sysctlOnHost(["--allow-read=/proc/sys/net/ipv4"], `time=${before[TIME]}`);
  assertEquals(write.code, 1);
  assertStringIncludes(
    assertErrorLines(write.stderr)[0],
    `run: sudo ${Deno.execPath()} run -A sysctl.ts time=${before[TIME]}`,
  );
});

Deno.test("what was typed comes back escaped and short, never raw", async () => {
  for (
    const args of [
      [`--\x1b[2J`],
      ["time", "x\x1b[2J=1"],
      [`${"k".repeat(3000)}=1`],
      ["\u202etime"],
    ]
  ) {
    const result = await sysctlOnHost(["-A"], ...args);
    assertEquals(result.code, 2, result.stderr);
    const [line] = assertErrorLines(result.stderr);
    // deno-lint-ignore no-control-regex -- control bytes are what this looks for
    assert(!/[\x00-\x1f\x7f\u202e]/.test(line), JSON.stringify(line));
    assert(line.length < 300, `${line.length} characters`);
  }
});

Deno.test("an unknown flag exits 2 with one line pointing to --help, also as its own process", async () => {
  const result = await sysctlOnHost(["-A"], "--frobnicate");
  assertEquals(result.code, 2);
  assertEquals(result.stdout, "");
  assertEquals(
    assertErrorLines(result.stderr)[0],
    'sysctl.ts: unknown flag "--frobnicate" (see --help)',
  );
});

// ## Writing, in network namespaces of our own (root)

netnsTest(
  "a write in a fresh network namespace reaches the kernel, and the values read back are printed",
  async () => {
    await assertSysctlsUnchanged(() =>
      withNetns(async (ns) => {
        const before = await keepaliveSysctls(ns);

        const result = await sysctlIn(ns, "time=120", "intvl=120");
        assertEquals(result, { code: 0, stdout: `${TIME} = 120\n${INTVL} = 120\n`, stderr: "" });
        assertEquals(await keepaliveSysctls(ns), { ...before, [TIME]: 120, [INTVL]: 120 });

        const json = await sysctlIn(ns, "--json", "probes=5", "tcp_keepalive_time=007");
        assertEquals(json.code, 0, json.stderr);
        assertEquals(json.stdout, `{"${PROBES}":5,"${TIME}":7}\n`);
        assertEquals(await keepaliveSysctls(ns), { [TIME]: 7, [INTVL]: 120, [PROBES]: 5 });

        // Reading inside the namespace shows the namespace's values, not the host's.
        const read = await sysctlIn(ns);
        assertEquals(read.stdout, procpsLines(await keepaliveSysctls(ns), KEEPALIVE_SYSCTLS));
      })
    );
  },
);

netnsTest(
  "values the script refuses exit 2 with one line and leave every sysctl unchanged",
  async () => {
    await assertSysctlsUnchanged(() =>
      withNetns(async (ns) => {
        const before = await keepaliveSysctls(ns);
        for (
          const [args, expected] of [
            [["time=0"], "breaks keepalive"],
            [["intvl=-5"], "breaks keepalive"],
            [["probes=256"], "u8"],
            [["probes=0"], "drop every idle connection"],
            [["time=120", "intvl=abc"], "not a decimal integer"],
            [["time=120", "probes= 7 "], "not a decimal integer"],
            [["time=120", "nope=3"], "unknown key"],
            [["time=120", "intvl="], "malformed"],
            [["time=120", "time=130"], "given twice"],
            [["intvl=30", "time"], "in one call"],
          ]
        ) {
          const result = await sysctlIn(ns, ...args as string[]);
          assertEquals(result.code, 2, `${args}: ${result.stderr}`);
          assertEquals(result.stdout, "");
          assertStringIncludes(assertErrorLines(result.stderr)[0], expected as string);
          assertEquals(await keepaliveSysctls(ns), before, `${args} changed a value`);
        }
      })
    );
  },
);

netnsTest(
  "when the kernel refuses the second value the first is restored, and the script exits 2",
  async () => {
    await assertSysctlsUnchanged(() =>
      withNetns(async (ns) => {
        const before = await keepaliveSysctls(ns);
        const result = await sysctlIn(ns, "time=100", "intvl=99999999");
        assertEquals(result.code, 2);
        assertEquals(result.stdout, "");
        const [failure, restored] = assertErrorLines(result.stderr, 2);
        assertEquals(
          failure,
          `sysctl.ts: ${INTVL}=99999999 is out of range for this kernel (it answered EINVAL)`,
        );
        assertEquals(restored, `sysctl.ts: restored ${TIME} to ${before[TIME]}`);
        assertEquals(await keepaliveSysctls(ns), before);
      })
    );
  },
);

netnsTest(
  "writeKeepaliveSysctls returns the values it replaced, and writing them back undoes the change",
  async () => {
    await assertSysctlsUnchanged(() =>
      withNetns(async (ns) => {
        const before = await keepaliveSysctls(ns);
        const code = `
      import { writeKeepaliveSysctls } from "./sysctl.ts";
      const first = await writeKeepaliveSysctls({ time: 1, intvl: 2 });
      const inBetween = await Deno.readTextFile("/proc/sys/net/ipv4/tcp_keepalive_intvl");
      const undone = await writeKeepaliveSysctls(first.previous);
      console.log(JSON.stringify({ first, inBetween: Number(inBetween), undone }));
    `;
        const output = JSON.parse(await runOk([...ns.exec, Deno.execPath(), "eval", code]));
        assertEquals(output.first, {
          values: { [TIME]: 1, [INTVL]: 2 },
          previous: { [TIME]: before[TIME], [INTVL]: before[INTVL] },
        });
        assertEquals(output.inBetween, 2);
        assertEquals(output.undone.values, output.first.previous);
        assertEquals(await keepaliveSysctls(ns), before);
      })
    );
  },
);

// Becoming uid 65534 (setpriv) takes real root: in the sandbox of deno task
// test only uid 0 exists.
requiringTest(
  "writing as an unprivileged user exits 1, writes nothing, and shows the command with sudo",
  netnsUnavailableReason() ?? otherUserUnavailableReason(65534),
  () =>
    assertSysctlsUnchanged(async () => {
      // The user `nobody` may not be able to read root's Deno cache or this
      // checkout (a clone in a private temporary directory), so it gets a copy
      // of the script alone, a deno.json that maps only @std/cli (as someone
      // who copied it would write), and the npm packages of root's cache.
      const denoDir = JSON.parse(await runOk([Deno.execPath(), "info", "--json"]))
        .denoDir as string;
      const npmPackages = `${denoDir}/npm/registry.npmjs.org`;
      const nobodyDenoDir = await Deno.makeTempDir();
      const kit = `${nobodyDenoDir}/kit`;
      try {
        await Deno.mkdir(`${nobodyDenoDir}/npm`, { recursive: true });
        await runOk(["cp", "-r", npmPackages, `${nobodyDenoDir}/npm/`]);
        await Deno.mkdir(kit);
        await Deno.copyFile(`${ROOT_DIR}sysctl.ts`, `${kit}/sysctl.ts`);
        const { imports } = JSON.parse(await Deno.readTextFile(`${ROOT_DIR}deno.json`));
        await Deno.writeTextFile(
          `${kit}/deno.json`,
          JSON.stringify({ imports: { "@std/cli/parse-args": imports["@std/cli/parse-args"] } }),
        );
        await runOk(["chown", "-R", "65534:65534", nobodyDenoDir]);
        await withNetns(async (ns) => {
          const before = await keepaliveSysctls(ns);
          const asNobody = [
            ...ns.exec,
            "env",
            `--chdir=${kit}`,
            `DENO_DIR=${nobodyDenoDir}`,
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            Deno.execPath(),
            "run",
            "-A",
            "sysctl.ts",
          ];
          // Reading needs no root...
          const read = await run([...asNobody, "--json"]);
          assertEquals(read.code, 0, read.stderr);
          assertEquals(JSON.parse(read.stdout), before);
          // ...writing does.
          const write = await run([...asNobody, "time=5", "intvl=6"]);
          assertEquals(write.code, 1, write.stderr);
          assertEquals(write.stdout, "");
          // Run inside a namespace, the command keeps to it: a plain sudo
          // would write the host's values instead.
          const hint =
            `sudo ip netns exec ${ns.name} ${Deno.execPath()} run -A sysctl.ts time=5 intvl=6`;
          assertEquals(
            assertErrorLines(write.stderr)[0],
            `sysctl.ts: writing ${TIME} needs root; run: ${hint}`,
          );
          assertEquals(await keepaliveSysctls(ns), before);
          // The command it shows works for root, word for word (this machine
          // has no sudo: we are root already), from the same directory, and
          // from the host: it writes the namespace's values.
          const asRoot = await run(hint.split(" ").slice(1), { cwd: kit });
          assertEquals(asRoot.code, 0, asRoot.stderr);
          assertEquals(await keepaliveSysctls(ns), { ...before, [TIME]: 5, [INTVL]: 6 });
        });
      } finally {
        await Deno.remove(nobodyDenoDir, { recursive: true });
      }
    }),
);

netnsTest("a read-only /proc/sys, as in a container, exits 1 with one line saying so", async () => {
  await withNetns((ns) =>
    assertSysctlsUnchanged(async () => {
      // /proc/sys bind-mounted read-only, as Docker does.
      const result = await run(
        withOwnMounts(
          ns,
          "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys",
          [Deno.execPath(), "run", "-A", "sysctl.ts", "time=5"],
        ),
      );
      assertEquals(result.code, 1);
      assertEquals(result.stdout, "");
      const [line] = assertErrorLines(result.stderr);
      assertStringIncludes(line, "read-only");
      assertStringIncludes(line, "container");
    }, ns)
  );
});

netnsTest(
  "without the sysctl files the script exits 1 and says they exist only on Linux",
  async () => {
    await withNetns(async (ns) => {
      // An empty tmpfs over /proc/sys/net/ipv4.
      const result = await run(
        withOwnMounts(ns, "mount -t tmpfs none /proc/sys/net/ipv4", [
          Deno.execPath(),
          "run",
          "-A",
          "sysctl.ts",
        ]),
      );
      assertEquals(result.code, 1);
      assertEquals(result.stdout, "");
      assertStringIncludes(
        assertErrorLines(result.stderr)[0],
        "not found: these sysctls exist only on Linux",
      );
    });
  },
);

Deno.test("sysctl.ts with stdout or stderr full: one line and exit 1 for output it cannot print, exit 2 for misuse", async () => {
  const script = (redirect: string, args: string) =>
    run([
      "sh",
      "-c",
      `exec "$0" run -A sysctl.ts ${args} ${redirect}`,
      Deno.execPath(),
    ]);
  const misuse = await script("2>/dev/full", "--bogus");
  assertEquals(misuse.code, 2);
  for (const args of ["", "--help", "--json time"]) {
    const full = await script(">/dev/full", args);
    assertEquals(full.code, 1, `${args}: ${full.stderr}`);
    assertMatch(
      full.stderr,
      /^sysctl\.ts: cannot print the (values|help): No space left on device[^\n]*\n$/,
    );
  }
});

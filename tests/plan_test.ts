/**
 * Tests for plan.ts: every rule of its formula, the requests it refuses, and
 * its command line. (That a plan really keeps a flow alive through a router
 * that forgets, and notices a dead peer in time, is in reach_test.ts.)
 */
import { assert, assertEquals, assertStringIncludes, assertThrows } from "@std/assert";
import { KEEPALIVE_LIMITS } from "@kakit/keepalive";
import {
  applyPlan,
  formatPlan,
  HELP,
  MIDDLEBOXES,
  parsePlanArgs,
  planKeepAlive,
  type PlanRequest,
  probeCeiling,
  UsageError,
} from "../tools/plan.ts";
import { requiringTest, run } from "./_helpers.ts";

Deno.test("plan: the worked examples of the README", () => {
  const pick = (p: ReturnType<typeof planKeepAlive>) => [
    p.idleSeconds,
    p.intervalSeconds,
    p.count,
    p.userTimeoutSeconds,
    p.worstCaseDetectionSeconds,
  ];
  assertEquals(pick(planKeepAlive({ middleboxTimeoutSeconds: 350, detectWithinSeconds: 60 })), [
    30,
    10,
    3,
    60,
    60,
  ]);
  assertEquals(pick(planKeepAlive({ middleboxTimeoutSeconds: 5, detectWithinSeconds: 10 })), [
    1,
    1,
    3,
    4,
    4,
  ]);
  assertEquals(pick(planKeepAlive({ middleboxTimeoutSeconds: 240 })), [170, 21, 3, 233, 233]);
  assertEquals(pick(planKeepAlive({ middleboxTimeoutSeconds: 350, detectWithinSeconds: 600 })), [
    110,
    100,
    3,
    410,
    410,
  ]);
  assertEquals(pick(planKeepAlive({ detectWithinSeconds: 3 })), [1, 1, 2, 3, 3]);
  assertEquals(pick(planKeepAlive({ detectWithinSeconds: 2 })), [1, 1, 1, 2, 2]);
  assertEquals(probeCeiling(350), 310);
  assertEquals(planKeepAlive({ middleboxTimeoutSeconds: 350 }).lostProbesSurvived, 2);
  assertEquals(planKeepAlive({ middleboxTimeoutSeconds: 3 }).lostProbesSurvived, 0);
});

Deno.test("plan: the rules hold for every timeout and deadline (a sweep)", () => {
  for (const timeout of [undefined, 3, 4, 5, 8, 30, 240, 350, 600, 900, 432_000, 31_536_000]) {
    for (const deadline of [undefined, 2, 3, 4, 7, 10, 60, 61, 600, 3_600, 1_000_000]) {
      if (timeout === undefined && deadline === undefined) continue;
      const where = `timeout ${timeout}, deadline ${deadline}`;
      const p = planKeepAlive({ middleboxTimeoutSeconds: timeout, detectWithinSeconds: deadline });
      // Within the kernel's limits, whole seconds.
      for (
        const [value, option] of [[p.idleSeconds * 1000, "time"], [
          p.intervalSeconds * 1000,
          "interval",
        ], [p.count, "retries"]] as const
      ) {
        const { min, max } = KEEPALIVE_LIMITS[option];
        assert(
          Number.isInteger(value) && value >= min && value <= max,
          `${where}: ${option} ${value}`,
        );
      }
      // Rules 1 and 2: every probe, the retries of lost ones included, is due
      // by the ceiling, and leaves (an eighth late at most) before the timeout.
      if (timeout !== undefined) {
        const ceiling = Math.min(32767, probeCeiling(timeout));
        assertEquals(p.lostProbesSurvived, Math.min(p.count - 1, ceiling - 1), where);
        const lastRetry = p.idleSeconds + p.intervalSeconds * p.lostProbesSurvived!;
        assert(lastRetry <= ceiling, where);
        assert(Math.max(p.idleSeconds, p.intervalSeconds) <= ceiling, where);
        if (ceiling < 32767) assert(lastRetry * 9 / 8 + 1 <= timeout, where);
      }
      // Rule 3: the worst case, and within the deadline.
      assertEquals(p.worstCaseDetectionSeconds, p.idleSeconds + p.intervalSeconds * p.count, where);
      if (deadline !== undefined) assert(p.worstCaseDetectionSeconds <= deadline, where);
      // Rule 4: the user timeout is the worst case.
      assertEquals(p.userTimeoutSeconds, p.worstCaseDetectionSeconds, where);
      assert(p.userTimeoutSeconds * 1000 <= KEEPALIVE_LIMITS.userTimeout.max, where);
      // Rule 5: one probe and one answer per max(idle, interval), 66 bytes each.
      assertEquals(
        p.probesPerHour,
        Math.round(3600 / Math.max(p.idleSeconds, p.intervalSeconds) * 100) / 100,
      );
      assertEquals(p.bytesPerHourIPv4, Math.round(p.probesPerHour * 2 * 66));
    }
  }
});

Deno.test("plan: impossible requests are refused with what is possible", () => {
  for (const timeout of [1, 2]) {
    assertThrows(
      () => planKeepAlive({ middleboxTimeoutSeconds: timeout }),
      UsageError,
      "at least 3 s",
    );
  }
  assertThrows(
    () => planKeepAlive({ detectWithinSeconds: 1 }),
    UsageError,
    "the least keepalive can do is 2 s",
  );
  assertThrows(() => planKeepAlive({}), UsageError, "--detect-within");
  // A long deadline must not stretch the interval past the timeout (an answered
  // probe is followed by the next after max(idle, interval)).
  const long = planKeepAlive({ middleboxTimeoutSeconds: 350, detectWithinSeconds: 3600 });
  assert(Math.max(long.idleSeconds, long.intervalSeconds) <= 315, JSON.stringify(long));
});

Deno.test("plan: how to apply it, with each tool's numbers in its own units", () => {
  const apply = applyPlan(planKeepAlive({ middleboxTimeoutSeconds: 350, detectWithinSeconds: 60 }));
  assertEquals(
    apply["server.ts / client.ts"],
    "--idle 30 --interval 10 --count 3 --user-timeout 60",
  );
  assertEquals(
    apply["@kakit/keepalive"],
    "setKeepAlive(conn, { time: 30_000, interval: 10_000, retries: 3, userTimeout: 60_000 })",
  );
  assertStringIncludes(apply["Node >= 26.4"], "initialDelay: 30000, interval: 10000, count: 3");
  assertStringIncludes(apply["Go >= 1.23"], "Idle: 30 * time.Second, Interval: 10 * time.Second");
  assertStringIncludes(apply["a whole namespace"], "sysctl.ts time=30 intvl=10 probes=3");
});

Deno.test("plan flags: a known middlebox or a timeout, a deadline, and nothing else", () => {
  assertEquals(parsePlanArgs(["--middlebox", "aws-nlb", "--detect-within", "60"]), {
    request: {
      middleboxTimeoutSeconds: 350,
      middleboxName: "AWS Network Load Balancer",
      detectWithinSeconds: 60,
    },
    json: false,
  });
  assertEquals(MIDDLEBOXES["azure-lb"].timeoutSeconds, 240);
  for (
    const [args, words] of [
      [["--middlebox", "cisco"], 'no middlebox "cisco"'],
      [["--middlebox", "constructor", "--detect-within", "60"], 'no middlebox "constructor"'],
      [["--middlebox", "toString"], 'no middlebox "toString"'],
      [["--middlebox", "aws-nlb", "--middlebox-timeout", "5"], "not both"],
      [["--middlebox-timeout", "0"], "--middlebox-timeout"],
      [["--detect-within", "1.5"], "--detect-within"],
      [["--detect-within", "60", "--detect-within", "61"], "--detect-within"],
      [["--json"], "give --middlebox-timeout"],
      [["--json=1", "--detect-within", "5"], "--json"],
    ] as const
  ) {
    assertThrows(() => parsePlanArgs([...args]), UsageError, words);
  }
});

Deno.test("plan.ts exits 0 with a plan, 2 with one line for what cannot be, and needs no permission", async () => {
  const ok = await run([
    Deno.execPath(),
    "run",
    "tools/plan.ts",
    "--middlebox-timeout",
    "5",
    "--detect-within",
    "10",
    "--json",
  ]);
  assertEquals(ok.code, 0, ok.stderr);
  const plan = JSON.parse(ok.stdout);
  assertEquals([plan.idleSeconds, plan.intervalSeconds, plan.count, plan.userTimeoutSeconds], [
    1,
    1,
    3,
    4,
  ]);
  const text = await run([
    Deno.execPath(),
    "run",
    "tools/plan.ts",
    "--middlebox",
    "aws-nat-gateway",
  ]);
  assertStringIncludes(
    text.stdout,
    "Plan for a path that forgets idle flows after 350 s (AWS NAT gateway)",
  );
  const impossible = await run([Deno.execPath(), "run", "tools/plan.ts", "--detect-within", "1"]);
  assertEquals([impossible.code, impossible.stdout], [2, ""]);
  assertEquals(impossible.stderr.trim().split("\n").length, 1, impossible.stderr);
  const bad = await run([Deno.execPath(), "run", "tools/plan.ts", "--detect-within", "x"]);
  assertEquals(bad.code, 2);
  assertStringIncludes(bad.stderr, "(see --help)");
});

Deno.test("plan flags: each range is the one --help gives, at both edges, whatever the leading zeros", () => {
  for (
    const { flag, min, max } of [
      { flag: "--middlebox-timeout", min: 3, max: 31_536_000 },
      { flag: "--detect-within", min: 2, max: 1_000_000 },
    ]
  ) {
    // --help: the flag's own lines (up to the next flag) give the range.
    const start = HELP.indexOf(`  ${flag} `);
    const helpLines = HELP.slice(start, HELP.indexOf("\n  --", start + 1));
    assertStringIncludes(helpLines, `${min}..${max}`, flag);
    const refused = `${flag} must be an integer from ${min} to ${max}, not`;
    for (const typed of [min - 1, max + 1]) {
      for (const zeros of ["", "0", "0".repeat(30)]) {
        assertThrows(() => parsePlanArgs([flag, `${zeros}${typed}`]), UsageError, refused);
      }
    }
    for (const typed of [min, max]) {
      // Leading zeros, however many: the value decides, not the count of digits.
      for (const zeros of ["", "0", "0".repeat(13), "0".repeat(14), "0".repeat(30)]) {
        const options = parsePlanArgs([flag, `${zeros}${typed}`]);
        if (options === "help") throw new Error("not --help");
        const request = options.request;
        assertEquals(request.middleboxTimeoutSeconds ?? request.detectWithinSeconds, typed);
        // What the flags take, the planner can plan.
        planKeepAlive(request);
      }
    }
  }
  assertEquals(
    parsePlanArgs(["--middlebox-timeout", "00000000000000350"]),
    parsePlanArgs(["--middlebox-timeout", "0000000000000350"]),
  );
});

Deno.test("plan text: when no probe may be lost, it says so and why, never '0 lost probes'", () => {
  const lines = (request: PlanRequest) => formatPlan(planKeepAlive(request)).join("\n");
  // A 3 s timeout: a probe is due 1 s after the last packet, its retry could come too late.
  const short = lines({ middleboxTimeoutSeconds: 3 });
  assertStringIncludes(
    short,
    "no probe may be lost: with a 3 s timeout, the retry of a lost probe could come after " +
      "the middlebox has forgotten the flow",
  );
  assert(!short.includes("0 lost probes"), short);
  // A 2 s deadline: one probe only, so a lost one ends the connection, middlebox or not.
  const quick = lines({ middleboxTimeoutSeconds: 350, detectWithinSeconds: 2 });
  assertStringIncludes(quick, "no probe may be lost: the deadline leaves room for one probe only");
  assert(!quick.includes("0 lost probes"), quick);
  assertStringIncludes(
    lines({ middleboxTimeoutSeconds: 4 }),
    "a flow survives 1 lost probe in a row",
  );
  assertStringIncludes(
    lines({ middleboxTimeoutSeconds: 350 }),
    "a flow survives 2 lost probes in a row",
  );
});

/** Why stdout or stderr cannot be pointed at a full device here, or null. */
function devFullMissing(): string | null {
  try {
    return Deno.statSync("/dev/full").isCharDevice ? null : "/dev/full is not a device";
  } catch {
    return "there is no /dev/full to write to";
  }
}

/** Runs plan.ts with its output redirected by the shell (`>/dev/full`, `2>/dev/full`). */
function planRedirected(redirect: string, ...args: string[]) {
  return run([
    "sh",
    "-c",
    `exec "$@" ${redirect}`,
    "sh",
    Deno.execPath(),
    "run",
    "tools/plan.ts",
    ...args,
  ]);
}

requiringTest(
  "plan.ts: output it cannot write is one line and exit 1; misuse is 2 even with stderr full",
  devFullMissing(),
  async () => {
    for (const args of [["--middlebox-timeout", "350"], ["--detect-within", "60", "--json"]]) {
      const full = await planRedirected(">/dev/full", ...args);
      assertEquals(full.code, 1, full.stderr);
      assertEquals(full.stderr.trimEnd().split("\n"), [
        "plan.ts: cannot write the plan: No space left on device (os error 28)",
      ]);
      const both = await planRedirected(">/dev/full 2>/dev/full", ...args);
      assertEquals(both.code, 1);
    }
    const help = await planRedirected(">/dev/full", "--help");
    assertEquals(help.code, 1, help.stderr);
    assertEquals(help.stderr.trimEnd().split("\n"), [
      "plan.ts: cannot write the help: No space left on device (os error 28)",
    ]);
    assertEquals((await planRedirected(">/dev/full 2>/dev/full", "--help")).code, 1);
    for (const args of [["--bogus"], ["--detect-within", "1"], ["--middlebox-timeout", "2"]]) {
      const misuse = await planRedirected("2>/dev/full", ...args);
      assertEquals([misuse.code, misuse.stdout], [2, ""], args.join(" "));
    }
  },
);

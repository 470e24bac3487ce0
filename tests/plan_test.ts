/**
 * Tests for plan.ts and plan_rules.ts: every rule of the formula, that a
 * deadline never makes a plan worse, the requests refused, and the command
 * line. (What it says beside the numbers, the presets and the pool's idle
 * timeout: plan_advice_test.ts. That a plan really keeps a flow alive
 * through a router that forgets, and notices a dead peer in time, is in
 * reach_test.ts; that fetch's pool closes idle connections itself is in
 * pool_idle_test.ts.)
 */
import { assert, assertEquals, assertStringIncludes, assertThrows } from "@std/assert";
import { KEEPALIVE_LIMITS } from "@kakit/keepalive";
import {
  applyPlan,
  formatPlan,
  HELP,
  MIDDLEBOXES,
  parsePlanArgs,
  type Plan,
  planKeepAlive,
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
  // A deadline the plan without one meets changes nothing (it was 110/100/3 before).
  assertEquals(pick(planKeepAlive({ middleboxTimeoutSeconds: 350, detectWithinSeconds: 600 })), [
    248,
    31,
    3,
    341,
    341,
  ]);
  // The user's report: --middlebox-timeout 350 alone, and with --detect-within 341.
  assertEquals(pick(planKeepAlive({ middleboxTimeoutSeconds: 350 })), [248, 31, 3, 341, 341]);
  assertEquals(pick(planKeepAlive({ middleboxTimeoutSeconds: 350, detectWithinSeconds: 341 })), [
    248,
    31,
    3,
    341,
    341,
  ]);
  // ... and --detect-within 100000 without a middlebox: no ceiling but the kernel's.
  assertEquals(pick(planKeepAlive({ detectWithinSeconds: 100_000 })), [
    32_767,
    16_666,
    3,
    82_765,
    82_765,
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
        const ceiling = probeCeiling(timeout);
        assertEquals(p.idleCeilingSeconds, ceiling, where);
        assertEquals(p.lostProbesSurvived, Math.min(p.count - 1, ceiling - 1), where);
        const lastRetry = p.idleSeconds + p.intervalSeconds * p.lostProbesSurvived!;
        assert(lastRetry <= ceiling, where);
        assert(Math.max(p.idleSeconds, p.intervalSeconds) <= ceiling, where);
        assert(lastRetry * 9 / 8 + 1 <= timeout, where);
      } else {
        assertEquals([p.idleCeilingSeconds, p.lostProbesSurvived], [null, null], where);
      }
      // Rule 3: the worst case, and within the deadline.
      assertEquals(p.worstCaseDetectionSeconds, p.idleSeconds + p.intervalSeconds * p.count, where);
      if (deadline !== undefined) assert(p.worstCaseDetectionSeconds <= deadline, where);
      // Rule 4: the user timeout is the worst case.
      assertEquals(p.userTimeoutSeconds, p.worstCaseDetectionSeconds, where);
      assert(p.userTimeoutSeconds * 1000 <= KEEPALIVE_LIMITS.userTimeout.max, where);
      // Rule 5: one probe and one answer per max(idle, interval), 66 bytes each; exact in JSON.
      const period = Math.max(p.idleSeconds, p.intervalSeconds);
      assertEquals(p.probeEverySeconds, period, where);
      assertEquals(p.probesPerHour, 3600 / period, where);
      assertEquals(p.bytesPerHourIPv4, Math.round(3600 / period * 2 * 66), where);
    }
  }
});

// The plan for a timeout (or none) and a deadline (or none), with its cost.
const planFor = (timeout?: number, deadline?: number) =>
  planKeepAlive({ middleboxTimeoutSeconds: timeout, detectWithinSeconds: deadline });
const settingsOf = (p: Plan) => [p.idleSeconds, p.intervalSeconds, p.count];

Deno.test("plan: a deadline never makes a plan worse: one the plan without it meets changes nothing, a looser one never costs more", () => {
  const timeouts = [3, 4, 5, 6, 8, 10, 17, 30, 61, 100, 240, 350, 600, 900, 1200, 7_200];
  for (const timeout of [...timeouts, 36_866, 432_000]) {
    const loose = planFor(timeout);
    const last = timeout > 7_200 ? loose.worstCaseDetectionSeconds + 20 : 3 * timeout;
    let previous: Plan | null = null;
    for (let deadline = 2; deadline <= last; deadline++) {
      const where = `timeout ${timeout}, deadline ${deadline}`;
      const p = planFor(timeout, deadline);
      assert(p.worstCaseDetectionSeconds <= deadline, where);
      if (deadline >= loose.worstCaseDetectionSeconds) {
        // Already met: the same settings, so no more probes and no later worst case.
        assertEquals(settingsOf(p), settingsOf(loose), where);
        assert(p.probesPerHour <= loose.probesPerHour, where);
        assert(p.worstCaseDetectionSeconds <= loose.worstCaseDetectionSeconds, where);
      }
      // A looser deadline never asks for more probes (count 3 from a 4 s deadline on).
      if (previous !== null && deadline > 4) {
        assert(p.probesPerHour <= previous.probesPerHour, `${where}: ${JSON.stringify(p)}`);
      }
      previous = p;
    }
  }
});

Deno.test("plan: without a middlebox, no ceiling but the kernel's, and no interval above the deadline's share", () => {
  for (
    const deadline of [
      2,
      3,
      4,
      5,
      6,
      7,
      10,
      60,
      61,
      600,
      3_600,
      65_534,
      100_000,
      196_602,
      1_000_000,
    ]
  ) {
    const p = planFor(undefined, deadline);
    const where = `deadline ${deadline}: ${JSON.stringify(settingsOf(p))}`;
    const share = Math.max(1, Math.floor(deadline / (2 * p.count)));
    assert(p.intervalSeconds <= share, where);
    // Idle takes half the deadline (what the probes leave, when less), up to
    // the kernel's limit: never a 32,767 s ceiling to aim under (which gave
    // idle 1 s for 100,000 s).
    const rest = deadline - p.intervalSeconds * p.count;
    assertEquals(p.idleSeconds, Math.min(32_767, rest, Math.ceil(deadline / 2)), where);
    if (deadline >= 2 * p.count) assert(p.idleSeconds >= Math.min(32_767, deadline / 2), where);
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
      [["--detect-within", "60", "--pool-idle-timeout", "0"], "--pool-idle-timeout"],
      [["--detect-within", "60", "--pool-idle-timeout", "1.5"], "--pool-idle-timeout"],
      [["--pool-idle-timeout", "90"], "the pool's timeout alone is not a plan"],
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
    const { flag, min, max, field, base } of [
      {
        flag: "--middlebox-timeout",
        min: 3,
        max: 31_536_000,
        field: "middleboxTimeoutSeconds",
        base: [],
      },
      { flag: "--detect-within", min: 2, max: 1_000_000, field: "detectWithinSeconds", base: [] },
      // The pool's timeout alone is not a plan: it comes with a deadline here.
      {
        flag: "--pool-idle-timeout",
        min: 1,
        max: 31_536_000,
        field: "poolIdleTimeoutSeconds",
        base: ["--detect-within", "60"],
      },
    ] as const
  ) {
    // --help: the flag's own lines (up to the next flag) give the range.
    const start = HELP.indexOf(`  ${flag} `);
    assert(start >= 0, `${flag} is in --help`);
    const helpLines = HELP.slice(start, HELP.indexOf("\n  --", start + 1));
    assertStringIncludes(helpLines, `${min}..${max}`, flag);
    const refused = `${flag} must be an integer from ${min} to ${max}, not`;
    for (const typed of [min - 1, max + 1]) {
      for (const zeros of ["", "0", "0".repeat(30)]) {
        assertThrows(
          () => parsePlanArgs([...base, flag, `${zeros}${typed}`]),
          UsageError,
          refused,
        );
      }
    }
    for (const typed of [min, max]) {
      // Leading zeros, however many: the value decides, not the count of digits.
      for (const zeros of ["", "0", "0".repeat(13), "0".repeat(14), "0".repeat(30)]) {
        const options = parsePlanArgs([...base, flag, `${zeros}${typed}`]);
        if (options === "help") throw new Error("not --help");
        assertEquals(options.request[field], typed);
        // What the flags take, the planner can plan, and put in words.
        formatPlan(planKeepAlive(options.request));
      }
    }
  }
  assertEquals(
    parsePlanArgs(["--middlebox-timeout", "00000000000000350"]),
    parsePlanArgs(["--middlebox-timeout", "0000000000000350"]),
  );
});

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

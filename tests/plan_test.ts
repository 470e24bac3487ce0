/**
 * Tests for plan.ts: every rule of its formula, the requests it refuses, and
 * its command line. (That a plan really keeps a flow alive through a router
 * that forgets, and notices a dead peer in time, is in reach_test.ts.)
 */
import { assert, assertEquals, assertStringIncludes, assertThrows } from "@std/assert";
import { KEEPALIVE_LIMITS } from "../keepalive.ts";
import {
  applyPlan,
  MIDDLEBOXES,
  parsePlanArgs,
  planKeepAlive,
  probeCeiling,
  UsageError,
} from "../plan.ts";
import { run } from "./_helpers.ts";

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
    apply["keepalive.ts"],
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
    "plan.ts",
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
  const text = await run([Deno.execPath(), "run", "plan.ts", "--middlebox", "aws-nat-gateway"]);
  assertStringIncludes(
    text.stdout,
    "Plan for a path that forgets idle flows after 350 s (AWS NAT gateway)",
  );
  const impossible = await run([Deno.execPath(), "run", "plan.ts", "--detect-within", "1"]);
  assertEquals([impossible.code, impossible.stdout], [2, ""]);
  assertEquals(impossible.stderr.trim().split("\n").length, 1, impossible.stderr);
  const bad = await run([Deno.execPath(), "run", "plan.ts", "--detect-within", "x"]);
  assertEquals(bad.code, 2);
  assertStringIncludes(bad.stderr, "(see --help)");
});

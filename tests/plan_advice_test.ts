/**
 * Tests for what plan.ts says beside the numbers: plain words and numbers,
 * the warning without a deadline, the presets and their sources, and the
 * advice for a pool's own idle timeout. (The rules and the command line:
 * plan_test.ts.)
 */
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import {
  formatPlan,
  HELP,
  MIDDLEBOXES,
  parsePlanArgs,
  planKeepAlive,
  type PlanRequest,
  planWarnings,
} from "../tools/plan.ts";
import { ROOT_DIR, run } from "./_helpers.ts";

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

const planText = (request: PlanRequest) => formatPlan(planKeepAlive(request)).join("\n");
const planCommand = (...args: string[]) => run([Deno.execPath(), "run", "tools/plan.ts", ...args]);

Deno.test("plan: without --detect-within, a worst case over a minute is a warning in plain words, with what a deadline costs", async () => {
  const gcp = planKeepAlive({ middleboxTimeoutSeconds: 600 });
  assertEquals(gcp.worstCaseDetectionSeconds, 585);
  const [warning, ...more] = planWarnings(gcp);
  assertEquals(more, []);
  assertStringIncludes(
    warning,
    "without --detect-within, a dead peer, or a request in flight on a dead path, can go " +
      "unnoticed for up to 585 s (about 10 min)",
  );
  assertStringIncludes(warning, "--detect-within 60 costs 120 probes an hour");
  // Given a deadline, however loose, or with a worst case of a minute or less: none.
  assertEquals(
    planWarnings(planKeepAlive({ middleboxTimeoutSeconds: 600, detectWithinSeconds: 3600 })),
    [],
  );
  assertEquals(planKeepAlive({ middleboxTimeoutSeconds: 60 }).worstCaseDetectionSeconds, 57);
  assertEquals(planWarnings(planKeepAlive({ middleboxTimeoutSeconds: 60 })), []);
  // Every preset alone leaves more than a minute: every one warns.
  for (const [key, box] of Object.entries(MIDDLEBOXES)) {
    const plan = planKeepAlive({ middleboxTimeoutSeconds: box.timeoutSeconds });
    assertEquals(planWarnings(plan).length, 1, key);
  }
  // The command prints it with the plan, and --json carries it.
  const text = await planCommand("--middlebox", "gcp-firewall");
  assertEquals(text.code, 0, text.stderr);
  assertStringIncludes(text.stdout, `\n  warning: ${warning}\n`);
  const json = await planCommand("--middlebox", "gcp-firewall", "--json");
  assertEquals(JSON.parse(json.stdout).warnings, [warning]);
  const quiet = await planCommand(
    "--middlebox",
    "gcp-firewall",
    "--detect-within",
    "600",
    "--json",
  );
  assertEquals(JSON.parse(quiet.stdout).warnings, []);
});

Deno.test("plan text: plain numbers, rounded and said 'about', exact ones exact; --json keeps them exact", () => {
  const gcp = planKeepAlive({ middleboxTimeoutSeconds: 600 });
  const text = formatPlan(gcp).join("\n");
  assertStringIncludes(
    text,
    "cost: about 8 probes an hour per idle connection, each answered: about 1.1 kB an hour on IPv4",
  );
  assertStringIncludes(text, "noticed at most 585 s (about 10 min) after its last packet");
  assertStringIncludes(text, "idle          426 s (about 7 min): the first probe");
  // No 8.45 probes: two decimals nowhere but in the versions of the tools (Go >= 1.23).
  const prose = text.slice(0, text.indexOf("Apply it:"));
  assert(!/[0-9][.][0-9][0-9]/.test(prose), prose);
  assertEquals(gcp.probesPerHour, 3600 / 426);
  assertEquals(gcp.probeEverySeconds, 426);
  // 120 an hour is exact, so not "about".
  assertStringIncludes(
    planText({ middleboxTimeoutSeconds: 350, detectWithinSeconds: 60 }),
    "cost: 120 probes an hour per idle connection, each answered: about 16 kB an hour on IPv4",
  );
  // Long times in hours and days, big numbers with separators (not in the flags).
  const long = planText({ detectWithinSeconds: 100_000 });
  assertStringIncludes(long, "idle          32,767 s (about 9 h): the first probe");
  assertStringIncludes(long, "within 100,000 s:");
  assertStringIncludes(long, "cost: about 3 probes a day per idle connection");
  assertStringIncludes(long, "--idle 32767 --interval 16666 --count 3 --user-timeout 82765");
});

Deno.test("plan presets: GCP Cloud NAT and Azure NAT gateway beside the others, each with its number and its source, in --help and docs/planner.md", async () => {
  assertEquals(
    Object.fromEntries(Object.entries(MIDDLEBOXES).map(([key, box]) => [key, box.timeoutSeconds])),
    {
      "aws-nat-gateway": 350,
      "aws-nlb": 350,
      "azure-lb": 240,
      "azure-nat-gateway": 240,
      "gcp-firewall": 600,
      "gcp-cloud-nat": 1200,
      "docker-swarm": 900,
      "linux-conntrack": 432_000,
    },
  );
  const docs = await Deno.readTextFile(`${ROOT_DIR}docs/planner.md`);
  const helpLines = HELP.split("\n");
  for (const [key, box] of Object.entries(MIDDLEBOXES)) {
    assert(box.source.startsWith("https://"), key);
    const help = helpLines.find((line) => line.trimStart().startsWith(`${key} `));
    assert(help, `--help lists ${key}`);
    assertStringIncludes(help, `${box.timeoutSeconds} s  ${box.name}`, key);
    const row = docs.split("\n").find((line) => line.startsWith(`| \`${key}\``));
    assert(row, `docs/planner.md has a row for ${key}`);
    assertStringIncludes(row, `| ${box.timeoutSeconds} s`, key);
    assertStringIncludes(row, box.source, key);
    const options = parsePlanArgs(["--middlebox", key]);
    if (options === "help") throw new Error("not --help");
    assertEquals(options.request, {
      middleboxTimeoutSeconds: box.timeoutSeconds,
      middleboxName: box.name,
    });
  }
});

Deno.test("plan --pool-idle-timeout: keepalive is not needed to keep parked connections when the pool closes them first, and is still needed for the rest", async () => {
  const advice = (timeout: number | undefined, pool: number, deadline?: number) =>
    planKeepAlive({
      middleboxTimeoutSeconds: timeout,
      detectWithinSeconds: deadline,
      poolIdleTimeoutSeconds: pool,
    }).pool;
  // fetch's 90 s (180 s when it closes late) before an AWS NAT gateway's 350 s.
  assertEquals(advice(350, 90), {
    idleTimeoutSeconds: 90,
    closedBySeconds: 180,
    keepaliveNeededToKeep: "no",
    probesParked: false,
  });
  // With a 60 s deadline the idle time is 30 s: a parked connection is probed.
  assertEquals(advice(350, 90, 60)?.probesParked, true);
  assertEquals(advice(350, 174)?.keepaliveNeededToKeep, "no");
  // Before 350 s only when closed on time (pg-pool), not when 2 x 175 s late (fetch).
  assertEquals(advice(350, 175)?.keepaliveNeededToKeep, "maybe");
  assertEquals(advice(350, 349)?.keepaliveNeededToKeep, "maybe");
  assertEquals(advice(350, 350)?.keepaliveNeededToKeep, "yes");
  assertEquals(advice(undefined, 10, 30)?.keepaliveNeededToKeep, null);
  assertEquals(planKeepAlive({ middleboxTimeoutSeconds: 350 }).pool, null);
  // The settings stay; the advice changes.
  const without = planText({ middleboxTimeoutSeconds: 350 });
  const pooled = planText({ middleboxTimeoutSeconds: 350, poolIdleTimeoutSeconds: 90 });
  assert(!without.includes("pool:"), without);
  for (const text of [without, pooled]) {
    assertStringIncludes(text, "--idle 248 --interval 31 --count 3 --user-timeout 341");
  }
  assertStringIncludes(
    pooled,
    "  pool: it closes an idle connection after 90 s; fetch's pool checks every 90 s, so by " +
      "180 s (3 min) at the latest, before the middlebox forgets it at 350 s: keepalive is not " +
      "needed to keep parked connections.",
  );
  assertStringIncludes(
    pooled,
    "  keepalive is still what notices a path that dies under a parked connection (NAT reboot, " +
      "failover, VPN drop), but only after 248 s (about 4 min) of silence",
  );
  assertStringIncludes(pooled, "connections that outlive the pool");
  assertStringIncludes(
    pooled,
    "the user timeout still ends a request in flight on a dead path, after 341 s (about 6 min).",
  );
  assertStringIncludes(
    planText({ middleboxTimeoutSeconds: 350, detectWithinSeconds: 60, poolIdleTimeoutSeconds: 90 }),
    "within 60 s of its last packet (the first probe after 30 s of silence)",
  );
  const late = planText({ middleboxTimeoutSeconds: 350, poolIdleTimeoutSeconds: 400 });
  assertStringIncludes(late, "keepalive is what keeps it");
  assertStringIncludes(late, "Deno.createHttpClient({ poolIdleTimeout: 174_000 })");
  assertStringIncludes(
    planText({ middleboxTimeoutSeconds: 350, poolIdleTimeoutSeconds: 200 }),
    "fetch's pool checks every 200 s and may keep one up to 400 s (about 7 min): keep keepalive on",
  );
  // The command: --json carries the advice; the pool alone is misuse, one line.
  const json = await planCommand(
    "--middlebox",
    "aws-nat-gateway",
    "--pool-idle-timeout",
    "90",
    "--json",
  );
  assertEquals(JSON.parse(json.stdout).pool.keepaliveNeededToKeep, "no");
  const alone = await planCommand("--pool-idle-timeout", "90");
  assertEquals([alone.code, alone.stdout], [2, ""]);
  assertEquals(alone.stderr.trim().split("\n").length, 1, alone.stderr);
  assertStringIncludes(alone.stderr, "the pool's timeout alone is not a plan");
});

/** Why stdout or stderr cannot be pointed at a full device here, or null. */

Deno.test("plan --pool-idle-timeout: an idle time equal to the pool's is not called longer", () => {
  // The first probe after 1 s of silence, the pool closing after 1 s: the
  // parked connection is gone by then, but 1 s is not longer than 1 s.
  const text = planText({
    middleboxTimeoutSeconds: 10,
    detectWithinSeconds: 3,
    poolIdleTimeoutSeconds: 1,
  });
  assertStringIncludes(text, "by when the pool has closed it (after 1 s)");
  assert(!text.includes("longer than the pool"), text);
});

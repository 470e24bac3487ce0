/**
 * # The lab, inside its sandbox
 *
 * `lab.ts` starts this module inside `sandbox.ts`'s namespaces with one
 * argument, the run's plan as JSON ({@linkcode InsidePlan}). It runs the
 * scenarios one after the other and writes JSON lines to stdout:
 * `{"progress": "..."}` while it works, then `{"result": LabResult}`, or
 * `{"error": "..."}` and exit code 1.
 *
 * @module
 */
import { type BlogSettings, runBlog } from "./blog.ts";
import { check, type LabContext } from "./common.ts";
import { type DeadPeerSettings, runDeadPeer } from "./dead_peer.ts";
import { type NatSettings, runNat } from "./nat.ts";
import type { LabResult, ScenarioResult } from "./result.ts";
import { privateNetnsDir } from "./sandbox.ts";
import { type ToolPaths, useTools } from "./tools.ts";

/** The scenarios, in the order they run. */
export const SCENARIOS = ["blog", "dead-peer", "nat"] as const;

/** One of {@linkcode SCENARIOS}. */
export type ScenarioName = typeof SCENARIOS[number];

/** What to run, and with what. */
export interface InsidePlan {
  /** The directory holding the kit's scripts. */
  dir: string;
  /** The scenarios to run, in their order. */
  scenarios: ScenarioName[];
  /** The blog scenario's sysctls. */
  blog: BlogSettings;
  /** The dead-peer scenario's per-socket settings. */
  deadPeer: DeadPeerSettings;
  /** The nat scenario's router and user timeout. */
  nat: NatSettings;
  /** Whether tcpdump is there. */
  capture: boolean;
  /** Where `lab.ts` found each tool (a full path): this side runs them by it. */
  tools: ToolPaths;
  /** What the reader should know already (missing tools). */
  notes: string[];
}

/** Runs the plan's scenarios; `emit` gets every line to write. */
export async function runInside(
  plan: InsidePlan,
  emit: (line: object) => void,
): Promise<LabResult> {
  useTools(plan.tools);
  await privateNetnsDir();
  const ctx: LabContext = {
    place: { dir: plan.dir, deno: Deno.execPath() },
    progress: (text) => emit({ progress: text }),
    capture: plan.capture,
  };
  const scenarios: ScenarioResult[] = [];
  for (const name of plan.scenarios) {
    try {
      if (name === "blog") scenarios.push(await runBlog(ctx, plan.blog));
      if (name === "dead-peer") scenarios.push(await runDeadPeer(ctx, plan.deadPeer));
      if (name === "nat") scenarios.push(...await runNat(ctx, plan.nat));
    } catch (error) {
      // One scenario that could not run does not cost the others' results.
      const why = (error instanceof Error ? error.message : String(error)).split("\n")[0];
      ctx.progress(`${name}: could not run: ${why}`);
      scenarios.push(couldNotRun(name, why));
    }
  }
  return { scenarios, notes: plan.notes, passed: scenarios.every((s) => s.passed) };
}

// lab.ts holds the other end of stdin and never writes: end of file means it
// is gone, and then so is the lab (this is the PID namespace's first process:
// when it exits, the kernel ends everything else in the sandbox).
async function quitWhenLabTsIsGone() {
  const buffer = new Uint8Array(64);
  try {
    while (await Deno.stdin.read(buffer) !== null) { /* nothing is ever sent */ }
  } catch { /* a closed stdin: the same */ }
  Deno.exit(1);
}

function couldNotRun(name: ScenarioName, why: string): ScenarioResult {
  return {
    name,
    title: "could not run",
    hosts: name === "nat" ? ["client", "router", "server"] : ["client", "server"],
    settings: {},
    expected: {},
    observed: { error: why },
    checks: [check("the scenario ran", "to the end", why, false)],
    passed: false,
    packets: [],
    moments: [],
    conntrack: null,
    durationSeconds: 0,
  };
}

if (import.meta.main) {
  quitWhenLabTsIsGone();
  const emit = (line: object) => console.log(JSON.stringify(line));
  try {
    const result = await runInside(JSON.parse(Deno.args[0]) as InsidePlan, emit);
    emit({ result }); // console.log writes before it returns
    Deno.exit(0); // the watch on stdin would keep the process alive
  } catch (error) {
    emit({ error: (error instanceof Error ? error.message : String(error)).split("\n")[0] });
    Deno.exit(1);
  }
}

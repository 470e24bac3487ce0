/**
 * # The lab: the blog's capture, a vanished peer and a NAT that forgets
 *
 * @run deno run --allow-run --allow-read --allow-write lab.ts [blog] [dead-peer] [nat] [--json] [--svg lab.svg]
 *
 * The blog post's experiment needed root, a changed host sysctl, tcpdump and two
 * hours. This command reproduces it, and what it never showed (why anyone
 * needs keepalive), in under a minute, without root, the host untouched:
 *
 * - `blog`: the blog's server and client; `sysctl.ts` lowers the keepalive
 *   sysctls in the server's namespace; a timeline like the blog's tcpdump.
 * - `dead-peer`: the client's cable is cut; the server's probes go
 *   unanswered and its read fails with ETIMEDOUT, when the settings say.
 * - `nat`: a router that forgets idle flows, as NAT gateways and load
 *   balancers do; four connections show what happens without keepalive,
 *   with a user timeout, with an idle time below the router's and above it.
 *
 * How: `lab.ts` checks the tools, then starts `lab/inside.ts` in a sandbox
 * of namespaces (`lab/sandbox.ts`: user, network, mount and PID namespaces;
 * they all vanish when the lab ends, even when it is killed). Inside, each
 * scenario makes its own namespaces and cables, runs `server.ts`,
 * `client.ts` and `sysctl.ts` as a user would (with `--json`), captures the
 * packets with tcpdump and reads the kernel's counters. Back here the
 * results are printed: a timeline per scenario, and a verdict table in which
 * every expected value comes from the settings and every observed one was
 * measured in this run. `--json` prints all of it as one JSON document,
 * `--svg FILE` draws it.
 *
 * Permissions: `--allow-run` (unshare, ip, tcpdump, nft and deno: a program
 * started this way can do whatever your user can, so this is not much less
 * than `-A`), `--allow-read` (to find the scripts), `--allow-write` for
 * `--svg`.
 *
 * @module
 */
import {
  type CommandIO,
  createLineWriter,
  parseCommandLine,
  parseFlags,
  parseInteger,
  runAgainWith,
  showTyped,
  UsageError,
  waitForQuit,
} from "./cli.ts";
import { expectedDetection } from "./lab/dead_peer.ts";
import { type InsidePlan, type ScenarioName, SCENARIOS } from "./lab/inside.ts";
import { natWatchSeconds } from "./lab/nat.ts";
import { formatTimeline, formatVerdict } from "./lab/report.ts";
import type { LabResult } from "./lab/result.ts";
import { missingTools, sandboxCommand, trySandbox } from "./lab/sandbox.ts";
import { renderSvg } from "./lab/svg.ts";
export { type CommandIO, UsageError } from "./cli.ts";

/** What the lab does, from its command-line flags. */
export interface LabOptions {
  /** The scenarios to run, in their order. */
  scenarios: ScenarioName[];
  /** Whether the user named them (then each must run), or took the default (all). */
  named: boolean;
  /** The blog scenario's sysctls. */
  blog: InsidePlan["blog"];
  /** The dead-peer scenario's per-socket settings. */
  deadPeer: InsidePlan["deadPeer"];
  /** The nat scenario's router and user timeout. */
  nat: InsidePlan["nat"];
  /** Print one JSON document instead of text. */
  json: boolean;
  /** Where to write the diagram; null for none. */
  svg: string | null;
}

/** The `--help` text. */
export const HELP =
  `Usage: deno run --allow-run --allow-read --allow-write lab.ts [SCENARIO ...] [options]

Reproduces TCP keepalive in network namespaces of its own, without root where
the system allows user namespaces, and checks what it saw against what the
settings predict. Scenarios (all by default, in this order):
  blog        the blog's experiment: sysctls lowered in the server's namespace,
              setKeepAlive(true), an idle client; a timeline like its capture
  dead-peer   the client's cable is cut; the server's tuned keepalive notices
  nat         a router that forgets idle flows: no keepalive, a user timeout,
              keepalive idle below and above the router's timeout

Options:
  --time SECONDS               keepalive idle time, 1..10 (blog: the sysctl, default 2;
                               dead-peer: server.ts --idle, default 2)
  --intvl SECONDS              interval between probes, 1..10 (blog default 2, dead-peer 1)
  --probes N                   dead-peer: unanswered probes before giving up, 1..10 (default 3)
  --middlebox-timeout SECONDS  nat: the router forgets idle flows after this, 3..15 (default 5)
  --user-timeout SECONDS       nat: the second connection's TCP_USER_TIMEOUT, 1..20 (default 4)
  --json                       print one JSON document instead of text
  --svg FILE                   also draw the run as a sequence diagram (SVG)
  -h, --help                   show this help

Quit early with Enter, Ctrl-C or SIGTERM: everything the lab made is gone
within 2 s. Exit codes: 0 when every check passed, 1 when one failed or the
lab could not run, 2 for bad flags.

Needs ip (iproute2), unshare and setpriv (util-linux), tcpdump and nft
(nftables), and as an ordinary user conntrack (conntrack). With deno task, a
relative --svg path is taken from the project's directory. Permissions: --allow-run (it starts unshare, ip, tcpdump, nft and
deno; that is nearly -A), --allow-read, and --allow-write for --svg.`;

/**
 * Parses the command-line flags. Throws a `UsageError` for anything it
 * cannot use; returns `"help"` for `--help`.
 *
 * @example
 * ```ts
 * import { parseLabArgs } from "./lab.ts";
 * parseLabArgs(["blog", "--time", "3"]);
 * // { scenarios: ["blog"], blog: { time: 3, intvl: 2 }, deadPeer: { time: 3, intvl: 1, probes: 3 }, ... }
 * ```
 */
export function parseLabArgs(args: string[]): LabOptions | "help" {
  const flags = parseFlags(args, {
    string: ["time", "intvl", "probes", "middlebox-timeout", "user-timeout", "svg"],
    boolean: ["json"],
    positionals: true,
  });
  if (flags.help) return "help";
  for (const name of flags._) {
    if (!(SCENARIOS as readonly string[]).includes(name)) {
      throw new UsageError(`no scenario ${showTyped(name)}: choose from ${SCENARIOS.join(", ")}`);
    }
  }
  if (new Set(flags._).size !== flags._.length) throw new UsageError("a scenario is named twice");
  type Flag = "time" | "intvl" | "probes" | "middlebox-timeout" | "user-timeout";
  const number = (flag: Flag, max: number, fallback: number, min = 1) => {
    const text = flags[flag];
    return text === undefined ? fallback : parseInteger(`--${flag}`, text, min, max);
  };
  const svg = flags.svg ?? null;
  if (svg !== null && (/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/u.test(svg) || svg === "-")) {
    throw new UsageError(
      `--svg takes a file name (no control or format characters; not - for stdout), ` +
        `not ${showTyped(svg)}`,
    );
  }
  const scenarios = SCENARIOS.filter((name) => flags._.length === 0 || flags._.includes(name));
  // A flag for a scenario that will not run would be silently ignored: say so.
  const flagFor: Record<Flag, ScenarioName[]> = {
    time: ["blog", "dead-peer"],
    intvl: ["blog", "dead-peer"],
    probes: ["dead-peer"],
    "middlebox-timeout": ["nat"],
    "user-timeout": ["nat"],
  };
  for (const [flag, users] of Object.entries(flagFor) as [Flag, ScenarioName[]][]) {
    if (flags[flag] !== undefined && !users.some((name) => scenarios.includes(name))) {
      throw new UsageError(`--${flag} is for ${users.join(" and ")}, which this run leaves out`);
    }
  }
  return {
    scenarios,
    named: flags._.length > 0,
    blog: { time: number("time", 10, 2), intvl: number("intvl", 10, 2) },
    deadPeer: {
      time: number("time", 10, 2),
      intvl: number("intvl", 10, 1),
      probes: number("probes", 10, 3),
    },
    nat: {
      timeout: number("middlebox-timeout", 15, 5, 3),
      userTimeout: number("user-timeout", 20, 4),
    },
    json: flags.json,
    svg,
  };
}

/**
 * The command: check, run the scenarios in the sandbox, print. Returns the
 * exit code: 0 when every check passed, 1 when one failed or the lab could
 * not run, 2 for bad flags.
 */
export async function main(args: string[], io: CommandIO = {}): Promise<number> {
  const stderr = io.stderr ?? ((line: string) => console.error(line));
  const options = parseCommandLine("lab.ts", args, parseLabArgs, HELP, stderr);
  if (typeof options === "number") return options;
  const problem = await checkBeforeRunning(options, args);
  if (typeof problem === "string") {
    stderr(`lab.ts: ${problem}`);
    return 1;
  }
  const out = createLineWriter({
    output: io.stdout,
    droppedNotice: (n) => `(${n} lines of output dropped: stdout was not being read)`,
  });
  const quit = (io.quit ?? waitForQuit)();
  const outcome = await runSandboxed(problem, quit, (text) => {
    if (!options.json) out.write(text);
  });
  if ("error" in outcome) {
    await out.flush(500);
    stderr(`lab.ts: ${outcome.error}`);
    return 1;
  }
  const result = outcome.result;
  if (options.json) out.write(JSON.stringify(result, null, 2));
  else {
    for (const scenario of result.scenarios) {
      out.write(["", ...formatTimeline(scenario)].join("\n"));
    }
    out.write(
      ["", ...result.notes.map((note) => `note: ${note}`), ...formatVerdict(result)].join("\n"),
    );
  }
  if (options.svg !== null) {
    try {
      await Deno.writeTextFile(options.svg, renderSvg(result));
      if (!options.json) out.write(`diagram written to ${showTyped(options.svg, 200)}`);
    } catch (error) {
      await out.flush(2_000);
      stderr(`lab.ts: cannot write ${showTyped(options.svg, 200)}: ${(error as Error).message}`);
      return 1;
    }
  }
  // The results are the point of the run: wait for them to be written, for
  // as long as the reader takes, and say so if they could not be.
  if (!await out.flush(600_000)) {
    stderr("lab.ts: the results could not be written to stdout (closed, full or not read)");
    return 1;
  }
  return result.passed ? 0 : 1;
}

// Everything that can be known before anything runs: the permissions, the
// tools, whether the sandbox can be made, and where the diagram goes.
async function checkBeforeRunning(
  options: LabOptions,
  args: string[],
): Promise<string | InsidePlan> {
  const needed = ["--allow-run", "--allow-read", ...(options.svg ? ["--allow-write"] : [])];
  const granted = [
    Deno.permissions.querySync({ name: "run" }).state,
    Deno.permissions.querySync({ name: "read" }).state,
    options.svg
      ? Deno.permissions.querySync({ name: "write", path: options.svg }).state
      : "granted",
  ];
  if (granted.some((state) => state !== "granted")) {
    return `the lab needs ${needed.join(" ")}: ${runAgainWith(needed, import.meta.url, args)}`;
  }
  if (Deno.build.os !== "linux") return `the lab needs Linux namespaces; this is ${Deno.build.os}`;
  const missing = await missingTools();
  const required = missing.filter((tool) => ["ip", "unshare", "setpriv"].includes(tool.command));
  if (required.length > 0) {
    return `${required.map((t) => t.command).join(", ")} not found: install the Debian ` +
      `package ${[...new Set(required.map((t) => t.package))].join(" and ")}`;
  }
  const capture = !missing.some((tool) => tool.command === "tcpdump");
  const nft = !missing.some((tool) => tool.command === "nft");
  if (!nft && options.named && options.scenarios.includes("nat")) {
    return "the nat scenario needs nft: install the Debian package nftables";
  }
  if (options.svg !== null) {
    const cannot = await cannotWrite(options.svg);
    if (cannot) return `cannot write ${showTyped(options.svg, 200)}: ${cannot.split("\n")[0]}`;
  }
  const sandbox = await trySandbox();
  if (sandbox) return sandbox;
  return {
    dir: decodeURIComponent(new URL(".", import.meta.url).pathname),
    scenarios: options.scenarios.filter((name) => nft || name !== "nat"),
    blog: options.blog,
    deadPeer: options.deadPeer,
    nat: options.nat,
    capture,
    notes: missing.map((tool) =>
      `${tool.command} not found (Debian package ${tool.package}): ${tool.without}`
    ),
  };
}

// Whether the diagram can be written, found out before the run rather than
// after it: opened for writing (made, and removed again, if it was not there).
async function cannotWrite(path: string): Promise<string | null> {
  const existed = await Deno.lstat(path).then((info) => info, () => null);
  if (existed?.isDirectory) return "it is a directory";
  try {
    (await Deno.open(path, { write: true, create: true })).close();
  } catch (error) {
    return (error as Error).message.split("\n")[0];
  }
  if (!existed) await Deno.remove(path).catch(() => {});
  return null;
}

/** About how long the plan takes, in seconds: for the first progress line. */
export function plannedSeconds(
  plan: Pick<InsidePlan, "scenarios" | "blog" | "deadPeer" | "nat">,
): number {
  const blog = plan.blog.time + Math.max(plan.blog.time, plan.blog.intvl) * 3 + 2;
  const dead = plan.deadPeer.time + Math.max(plan.deadPeer.time, plan.deadPeer.intvl) +
    expectedDetection(plan.deadPeer) + 2;
  const nat = natWatchSeconds(plan.nat) + 3;
  return Math.round(
    (plan.scenarios.includes("blog") ? blog : 0) +
      (plan.scenarios.includes("dead-peer") ? dead : 0) +
      (plan.scenarios.includes("nat") ? nat : 0),
  );
}

// Starts lab/inside.ts in the sandbox and relays its progress; a quit
// request (Enter, Ctrl-C, SIGTERM) kills the sandbox, and with it everything.
async function runSandboxed(
  plan: InsidePlan,
  quit: Promise<unknown>,
  progress: (text: string) => void,
): Promise<{ result: LabResult } | { error: string }> {
  const inside = decodeURIComponent(new URL("./lab/inside.ts", import.meta.url).pathname);
  const cmd = await sandboxCommand([Deno.execPath(), "run", "-A", inside, JSON.stringify(plan)]);
  const child = new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    // A pipe nobody writes to: when lab.ts ends, however it ends (kill -9
    // included, even before setpriv has set its parent-death signal), the
    // pipe closes and inside.ts, the first process of the sandbox, quits.
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  progress(`lab: ${plan.scenarios.join(", ")}; about ${plannedSeconds(plan)} s`);
  let outcome: { result: LabResult } | { error: string } | null = null;
  let lastProgress = "starting";
  const reading = (async () => {
    let rest = "";
    for await (const text of child.stdout.pipeThrough(new TextDecoderStream())) {
      const lines = (rest + text).split("\n");
      rest = lines.pop()!;
      for (const line of lines) {
        let message;
        try {
          message = JSON.parse(line);
        } catch {
          continue; // not one of inside.ts's lines
        }
        if (typeof message.progress === "string") {
          lastProgress = message.progress;
          progress(message.progress);
        } else if (message.result || message.error) outcome = message;
      }
    }
  })();
  const errors = new Response(child.stderr).text();
  const stopped = quit.then(() => {
    try {
      child.kill("SIGKILL"); // unshare; --kill-child and the PID namespace take the rest
    } catch { /* already ended */ }
    return "stopped" as const;
  });
  const ended = await Promise.race([child.status, stopped]);
  await child.status;
  await reading.catch(() => {});
  if (ended === "stopped") return { error: "stopped; every namespace and process it made is gone" };
  if (outcome) return outcome;
  const why = (await errors).trim().split("\n").at(-1);
  return {
    error: `the sandbox ended without a result (last step: ${lastProgress})${
      why ? `; its last words: ${why}` : ""
    }`,
  };
}

if (import.meta.main) Deno.exit(await main(Deno.args));

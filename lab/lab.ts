/**
 * # The lab: the blog's capture, a vanished peer and a NAT that forgets
 *
 * @run deno run --allow-run --allow-read --allow-write lab/lab.ts [blog] [dead-peer] [nat] [--json] [--svg lab.svg]
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
 * - `own` (a mode of its own, `lab/own.ts`): your own server and client
 *   commands behind that router, and what it did to each of their flows.
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
  type LineWriter,
  parseCommandLine,
  parseFlags,
  parseInteger,
  runAgainWith,
  showTyped,
  UsageError,
  waitForQuit,
} from "../tools/cli.ts";
import { expectedDetection } from "./dead_peer.ts";
import { type InsidePlan, type ScenarioName, SCENARIOS } from "./inside.ts";
import { natWatchSeconds } from "./nat.ts";
import { ownMain } from "./own.ts";
import { formatTimeline, formatVerdict } from "./report.ts";
import type { LabResult } from "./result.ts";
import { keepingFailure, runInSandbox, waitUntilWritten } from "./relay.ts";
import { trySandbox } from "./sandbox.ts";
import { renderSvg } from "./svg.ts";
import { locateTools, SEARCHED, useTools } from "./tools.ts";
export { type ByteSink, type CommandIO, type LineWriter, UsageError } from "../tools/cli.ts";
export { keepingFailure, waitUntilWritten } from "./relay.ts";

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
  `Usage: deno run --allow-run --allow-read --allow-write lab/lab.ts [SCENARIO ...] [options]

Reproduces TCP keepalive in network namespaces of its own, without root where
the system allows user namespaces, and checks what it saw against what the
settings predict. Scenarios (all by default, in this order):
  blog        the blog's experiment: sysctls lowered in the server's namespace,
              setKeepAlive(true), an idle client; a timeline like its capture
  dead-peer   the client's cable is cut; the server's tuned keepalive notices
  nat         a router that forgets idle flows: no keepalive, a user timeout,
              keepalive idle below and above the router's timeout

Your own program behind that router (see lab.ts own --help):
  own --server CMD --port N --client CMD [--middlebox-timeout S] [--json]

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
(nftables), and as an ordinary user conntrack (conntrack); each is looked for on
the PATH, then in /usr/sbin and /sbin. --svg takes a regular file (or a link to
one) or a new name. With deno task, a relative --svg path is taken from the
project's directory. Permissions: --allow-run (it starts unshare, ip, tcpdump, nft and
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
  // `own` is a mode of its own, with its own flags (lab/own.ts).
  if (args[0] === "own") return await ownMain(args.slice(1), io);
  const stderr = io.stderr ?? ((line: string) => console.error(line));
  const options = parseCommandLine("lab.ts", args, parseLabArgs, HELP, stderr);
  if (typeof options === "number") return options;
  let plan: string | InsidePlan;
  try {
    plan = await checkBeforeRunning(options, args);
  } catch (error) {
    if (!(error instanceof UsageError)) throw error;
    stderr(`lab.ts: ${error.message} (see --help)`);
    return 2;
  }
  if (typeof plan === "string") {
    stderr(`lab.ts: ${plan}`);
    return 1;
  }
  const stdout = keepingFailure(io.stdout ?? Deno.stdout);
  const out = createLineWriter({
    output: stdout,
    droppedNotice: (n) => `(${n} lines of output dropped: stdout was not being read)`,
  });
  // From here on a quit request (Enter, Ctrl-C, SIGTERM) is awaited by every
  // step that can wait: its signal listeners stay, so a step that ignored it
  // would leave the lab deaf to SIGINT and SIGTERM.
  const quit = (io.quit ?? waitForQuit)();
  const outcome = await runSandboxed(plan, quit, (text) => {
    if (!options.json) out.write(text);
  });
  if ("error" in outcome) {
    await out.flush(500);
    stderr(`lab.ts: ${outcome.error}`);
    return 1;
  }
  printResults(outcome.result, options.json, out);
  if (options.svg !== null) {
    const problem = await writeDiagram(options.svg, outcome.result, quit);
    if (problem) {
      await Promise.race([out.flush(2_000), quit]);
      stderr(`lab.ts: ${problem}`);
      return 1;
    }
    if (!options.json) out.write(`diagram written to ${showTyped(options.svg, 200)}`);
  }
  // The results are the point of the run: wait for them to be written, for
  // as long as the reader takes; only a failed stdout or a quit request ends
  // the wait.
  const written = await waitUntilWritten(out, stdout.failure, quit);
  if (written === "written") return outcome.result.passed ? 0 : 1;
  stderr(
    written === "stopped"
      ? "lab.ts: stopped before stdout took all the results"
      : `lab.ts: the results could not be written to stdout: ${written.message.split("\n")[0]}`,
  );
  return 1;
}

function printResults(result: LabResult, json: boolean, out: LineWriter) {
  if (json) {
    out.write(JSON.stringify(result, null, 2));
    return;
  }
  for (const scenario of result.scenarios) {
    out.write(["", ...formatTimeline(scenario)].join("\n"));
  }
  out.write(
    ["", ...result.notes.map((note) => `note: ${note}`), ...formatVerdict(result)].join("\n"),
  );
}

// Everything that can be known before anything runs: the permissions, where
// the diagram goes (misuse: a UsageError), the tools, and whether the sandbox
// can be made.
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
  const misuse = options.svg === null ? null : await svgMisuse(options.svg);
  if (misuse) throw new UsageError(`--svg ${showTyped(options.svg!, 200)} ${misuse}`);
  if (Deno.build.os !== "linux") return `the lab needs Linux namespaces; this is ${Deno.build.os}`;
  const { found, missing } = await locateTools();
  useTools(found);
  const required = missing.filter((tool) => ["ip", "unshare", "setpriv"].includes(tool.command));
  if (required.length > 0) {
    return `${required.map((t) => t.command).join(", ")} not found (${SEARCHED}): install the ` +
      `Debian package ${[...new Set(required.map((t) => t.package))].join(" and ")}`;
  }
  const nft = "nft" in found;
  if (!nft && options.named && options.scenarios.includes("nat")) {
    return `the nat scenario needs nft, not found (${SEARCHED}): install the Debian package nftables`;
  }
  if (options.svg !== null) {
    const cannot = await cannotWrite(options.svg);
    if (cannot) return `cannot write ${showTyped(options.svg, 200)}: ${cannot.split("\n")[0]}`;
  }
  const sandbox = await trySandbox();
  if (sandbox) return sandbox;
  return {
    // The scripts it runs are at the project root, one folder up.
    dir: decodeURIComponent(new URL("..", import.meta.url).pathname),
    scenarios: options.scenarios.filter((name) => nft || name !== "nat"),
    blog: options.blog,
    deadPeer: options.deadPeer,
    nat: options.nat,
    capture: "tcpdump" in found,
    tools: found,
    notes: missing.map((tool) =>
      `${tool.command} not found (${SEARCHED}; Debian package ${tool.package}): ${tool.without}`
    ),
  };
}

/**
 * What is wrong with `path` as the place for the diagram, or null when
 * nothing is: it must be a regular file, a symbolic link to one, or a name
 * not taken yet. Anything else is misuse, refused before the run: a
 * directory cannot be written; a named pipe would be opened twice, by the
 * check before the run and by the write after it (its reader takes the
 * first close for the end, and the write then waits for a reader that never
 * comes); a device or a socket is no place for a file either.
 *
 * @example
 * ```ts
 * import { svgMisuse } from "./lab.ts";
 * await svgMisuse("/dev/null"); // "is a character device, not a regular file"
 * ```
 */
export async function svgMisuse(path: string): Promise<string | null> {
  const info = await Deno.stat(path).catch((error: Error) => error);
  if (info instanceof Deno.errors.NotFound) {
    const link = await Deno.lstat(path).catch(() => null);
    return link?.isSymlink ? "is a symbolic link to nothing, not a regular file" : null;
  }
  if (info instanceof Error || info.isFile) return null; // an error: cannotWrite says it
  const kind = info.isDirectory
    ? "a directory"
    : info.isFifo
    ? "a named pipe (FIFO)"
    : info.isCharDevice
    ? "a character device"
    : info.isBlockDevice
    ? "a block device"
    : info.isSocket
    ? "a socket"
    : "something other than a file";
  return `is ${kind}, not a regular file`;
}

// Whether the diagram can be written, found out before the run rather than
// after it: opened for writing (made, and removed again, if it was not
// there). Only for what svgMisuse let through: opening a regular file or
// making one never waits.
async function cannotWrite(path: string): Promise<string | null> {
  const existed = await Deno.lstat(path).then(() => true, () => false);
  try {
    (await Deno.open(path, { write: true, create: true })).close();
  } catch (error) {
    return (error as Error).message.split("\n")[0];
  }
  if (!existed) await Deno.remove(path).catch(() => {});
  return null;
}

// Writes the diagram; one line when it cannot. The path is checked again
// (a named pipe put there during the run would hold the write until a
// reader came), and a quit request ends the wait for a slow disk.
async function writeDiagram(
  path: string,
  result: LabResult,
  quit: Promise<unknown>,
): Promise<string | null> {
  const shown = showTyped(path, 200);
  const misuse = await svgMisuse(path);
  if (misuse) return `cannot write ${shown}: it ${misuse} any more`;
  const writing = Deno.writeTextFile(path, renderSvg(result)).then(
    () => null,
    (error) => `cannot write ${shown}: ${(error as Error).message.split("\n")[0]}`,
  );
  return await Promise.race([writing, quit.then(() => `stopped while writing ${shown}`)]);
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
function runSandboxed(
  plan: InsidePlan,
  quit: Promise<unknown>,
  progress: (text: string) => void,
): Promise<{ result: LabResult } | { error: string }> {
  const inside = decodeURIComponent(new URL("./inside.ts", import.meta.url).pathname);
  progress(`lab: ${plan.scenarios.join(", ")}; about ${plannedSeconds(plan)} s`);
  return runInSandbox<LabResult>(
    [Deno.execPath(), "run", "-A", inside, JSON.stringify(plan)],
    quit,
    progress,
  );
}

if (import.meta.main) Deno.exit(await main(Deno.args));

/**
 * # `lab own`, inside its sandbox
 *
 * `lab/own.ts` starts this module inside `sandbox.ts`'s namespaces with one
 * argument, the run's plan as JSON ({@linkcode OwnPlan}). It builds client -
 * router - server (`router.ts`: the router forgets idle flows), runs the
 * user's server command in the server's namespace until something listens
 * on the port, then the client command in the client's namespace, and
 * samples the router while the client runs. It writes JSON lines to stdout:
 * `{"progress": "..."}` while it works, then `{"result": OwnResult}`, or
 * `{"error": "..."}` and exit code 1.
 *
 * Both commands see a `/dev/shm` of their own (empty, in the sandbox's mount
 * namespace), and `TMPDIR` names a directory in it: a throwaway database
 * cluster made there (`mktemp -d`) vanishes with the lab, however it ends.
 *
 * @module
 */
import { parseProcNetTcp } from "@kakit/keepalive/proc-net";
import { createFlowTracker, type FlowEvent, type FlowTracker, joinHostPort } from "./own_flows.ts";
import {
  type CommandReport,
  type OutputLine,
  type RunningCommand,
  startCommand,
} from "./own_command.ts";
import { describeEvent, escapeText, type OwnResult } from "./own_report.ts";
import { addFlowCounters, readSample } from "./own_router.ts";
import { addNamespace, inNamespace, run, runOk } from "./netns.ts";
import { buildRouter, type Router } from "./router.ts";
import { privateNetnsDir } from "./sandbox.ts";
import { type ToolPaths, useTools } from "./tools.ts";

/** What `lab own` runs, and with what. */
export interface OwnPlan {
  /** The server's shell command. */
  server: string;
  /** The client's shell command. */
  client: string;
  /** The port the server listens on. */
  port: number;
  /** Seconds after which the router forgets an idle flow. */
  timeoutSeconds: number;
  /** Seconds after which the client is stopped. */
  clientTimeoutSeconds: number;
  /** Seconds the server may take to listen. */
  serverWaitSeconds: number;
  /** Where the commands run. */
  cwd: string;
  /** Where `lab.ts` found each tool. */
  tools: ToolPaths;
}

const NS = { client: "own-client", router: "own-router", server: "own-server" };
/** How often the router is sampled while the client runs. */
const SAMPLE_MS = 500;
/** Lines of each command's output kept for the report. */
const KEEP_LINES = 20;
/** Lines of the client's output shown as progress while it runs. */
const LIVE_LINES = 100;
/** How long a stopped command has to end on SIGTERM before SIGKILL. */
const GRACE_MS = 3_000;
/** What Deno (and most programs) say when they cannot reach a host: no DNS, no route. */
const OFFLINE = /error sending request for url|dns error|Temporary failure in name resolution/i;
const OFFLINE_NOTE = "a command tried to reach the internet (Deno downloading a dependency?): " +
  "the lab's namespaces have no way out; cache your program's dependencies first " +
  "(deno install, or deno cache FILE)";

/** Runs the plan; `emit` gets every line to write. */
export async function runOwn(plan: OwnPlan, emit: (line: object) => void): Promise<OwnResult> {
  const progress = (text: string) => emit({ progress: text });
  const { router, env } = await setUp(plan);
  const started = performance.now();
  const clock = () => Math.round(performance.now() - started) / 1000;
  const substitute = (command: string) =>
    command.replaceAll("{server}", router.serverAddress).replaceAll("{port}", String(plan.port));
  const result = emptyResult(plan, router);
  const noteDownloads = (line: OutputLine) => {
    if (!OFFLINE.test(line.text) || result.notes.includes(OFFLINE_NOTE)) return;
    result.notes.push(OFFLINE_NOTE);
  };
  progress(
    `router: forgets idle flows after ${plan.timeoutSeconds} s; the server is ` +
      `${joinHostPort(router.serverAddress, plan.port)} (LAB_SERVER, {server})`,
  );
  const server = startCommand({
    namespace: NS.server,
    command: substitute(plan.server),
    env,
    cwd: plan.cwd,
    clock,
    keepLines: KEEP_LINES,
    onLine: noteDownloads,
  });
  try {
    result.failure = await waitForListener(
      server,
      plan.port,
      router.serverAddress,
      plan.serverWaitSeconds,
      result.notes,
    );
    if (result.failure !== null) return result;
    result.listeningAfterSeconds = clock();
    progress(`server: listening on port ${plan.port} after ${result.listeningAfterSeconds} s`);
    const tracker = createFlowTracker(plan.timeoutSeconds, 100, clock());
    const client = await runClient(plan, substitute(plan.client), env, clock, {
      tracker,
      progress,
      result,
      onLine: noteDownloads,
    });
    result.client = client;
    result.passed = client.exitCode === 0;
    if (
      server.hasEnded() && server.report().exitCode === 0 && !result.notes.includes(DAEMON_NOTE)
    ) {
      result.notes.push(DAEMON_NOTE); // it returned after it was seen listening
    }
    result.flows = tracker.flows();
    result.flowsLeftOut = tracker.flowsLeftOut();
    result.drops.unattributed = tracker.unattributedDrops();
    const drops = await router.readDrops().catch(() => null);
    if (drops) Object.assign(result.drops, drops);
    return result;
  } finally {
    await server.stop(result.failure ? "it did not listen" : "the client ended", GRACE_MS);
    result.server = server.report();
  }
}

// The sandbox's own mounts, the three namespaces and the router, and the
// commands' environment.
async function setUp(plan: OwnPlan): Promise<{ router: Router; env: Record<string, string> }> {
  useTools(plan.tools);
  await privateNetnsDir();
  const tmp = await privateTmp();
  for (const ns of Object.values(NS)) await addNamespace(ns);
  const router = await buildRouter({ ...NS, timeoutSeconds: plan.timeoutSeconds });
  await addFlowCounters(NS.router, router.links);
  const env: Record<string, string> = {
    LAB_SERVER: router.serverAddress,
    LAB_PORT: String(plan.port),
    // `deno` in a command is the deno that runs the lab (one from npx
    // included), ahead of any other on the PATH.
    PATH: [Deno.execPath().replace(/\/[^/]*$/, ""), Deno.env.get("PATH") ?? "/usr/bin:/bin"]
      .join(":"),
  };
  if (tmp) env.TMPDIR = tmp;
  return { router, env };
}

function emptyResult(plan: OwnPlan, router: Router): OwnResult {
  return {
    timeoutSeconds: plan.timeoutSeconds,
    serverAddress: router.serverAddress,
    clientAddress: router.clientAddress,
    port: plan.port,
    failure: null,
    listeningAfterSeconds: null,
    server: null as unknown as CommandReport, // set when the server is stopped
    client: null,
    flows: [],
    flowsLeftOut: 0,
    drops: { invalid: 0, other: 0, unattributed: 0 },
    conntrackReadable: true,
    notes: [],
    passed: false,
  };
}

interface Watch {
  tracker: FlowTracker;
  progress: (text: string) => void;
  result: OwnResult;
  onLine: (line: OutputLine) => void;
}

// Runs the client, sampling the router until it ends (or is stopped at its
// time limit), then once more.
async function runClient(
  plan: OwnPlan,
  command: string,
  env: Record<string, string>,
  clock: () => number,
  watch: Watch,
): Promise<CommandReport> {
  let shown = 0;
  watch.progress(`client: started at ${clock()} s`);
  const client = startCommand({
    namespace: NS.client,
    command,
    env,
    cwd: plan.cwd,
    clock,
    keepLines: KEEP_LINES,
    onLine: (line) => {
      watch.onLine(line);
      if (++shown <= LIVE_LINES) watch.progress(`client| ${escapeText(line.text)}`);
      else if (shown === LIVE_LINES + 1) {
        watch.progress(`client| (more output: its last ${KEEP_LINES} lines are in the report)`);
      }
    },
  });
  // The client's time limit has a timer of its own: a sample of the router
  // can wait long behind a client that floods its output, and the limit
  // must not wait with it.
  const limit = setTimeout(() => {
    watch.progress(`client: still running after ${plan.clientTimeoutSeconds} s: stopping it`);
    client.stop(`it ran past --client-timeout ${plan.clientTimeoutSeconds}`, GRACE_MS);
  }, plan.clientTimeoutSeconds * 1000);
  const sample = async () => {
    const seen = await readSample(NS.router).catch(() => null);
    if (!seen) return;
    if (seen.entries === null) watch.result.conntrackReadable = false;
    const events = watch.tracker.observe(clock(), seen.entries ?? [], seen.drops);
    for (const event of events) watch.progress(`router: ${describeEvent(event as FlowEvent)}`);
  };
  while (!client.hasEnded()) {
    await sample();
    await Promise.race([client.ended, new Promise((resolve) => setTimeout(resolve, SAMPLE_MS))]);
  }
  clearTimeout(limit);
  await sample();
  // What the client left behind in its group (a background job) goes now.
  await client.stop("the client ended", GRACE_MS);
  const report = client.report();
  watch.progress(
    `client: ended at ${report.endedSeconds} s, ` +
      (report.exitCode !== null ? `exit code ${report.exitCode}` : `signal ${report.signal}`),
  );
  return report;
}

// Null once something listens on `port` in the server's namespace at an
// address the client can reach (the server's, or every address); else why
// not: the server failed, listens only where the client cannot reach it
// (loopback, another address) for 5 s, or took too long. A server command
// that returns with exit code 0 may have gone to the background: the wait
// goes on, and `notes` says so.
async function waitForListener(
  server: RunningCommand,
  port: number,
  address: string,
  waitSeconds: number,
  notes: string[],
): Promise<string | null> {
  const until = performance.now() + waitSeconds * 1000;
  let elsewhereSince: number | null = null;
  let returned = false;
  for (;;) {
    const found = await listeners(NS.server, port);
    const reachable = found.filter((at) =>
      [address, `::ffff:${address}`, "0.0.0.0", "::"].includes(at)
    );
    if (reachable.length > 0) return null;
    if (found.length > 0) {
      elsewhereSince ??= performance.now();
      if (performance.now() - elsewhereSince > 5_000) {
        return `the server listens on port ${port} only at ${found.join(", ")}, which the ` +
          `client cannot reach through the router: listen on ${address} ({server}, LAB_SERVER) ` +
          `or on every address`;
      }
    }
    if (server.hasEnded() && !returned) {
      const { exitCode, signal } = server.report();
      if (exitCode !== 0) {
        return `the server command ended before anything listened on port ${port} ` +
          `(${exitCode !== null ? `exit code ${exitCode}` : `signal ${signal}`})`;
      }
      returned = true;
      notes.push(DAEMON_NOTE);
    }
    if (performance.now() > until) {
      return `nothing listened on port ${port} in the server's namespace within ${waitSeconds} s`;
    }
    await Promise.race([
      returned ? undefined : server.ended,
      new Promise((resolve) => setTimeout(resolve, 250)),
    ]);
  }
}

const DAEMON_NOTE = "the server command returned (exit code 0) without staying in the " +
  "foreground: it went to the background (a daemon); the lab ends what it left when it ends";

// The addresses something listens on at `port` in a namespace.
async function listeners(ns: string, port: number): Promise<string[]> {
  const text = await runOk([
    ...inNamespace(ns),
    "sh",
    "-c",
    "cat /proc/net/tcp; echo; cat /proc/net/tcp6 2>/dev/null",
  ]);
  return text.split("\n\n").flatMap((table) =>
    parseProcNetTcp(table.trim())
      .filter((s) => s.state === "LISTEN" && s.localPort === port)
      .map((s) => s.localAddress)
  );
}

// A /dev/shm of the sandbox's own (an empty tmpfs, in its mount namespace),
// and in it a directory for TMPDIR: what the commands make there vanishes
// with the sandbox. (Not a tmpfs over /tmp: that would hide a project, a
// deno or a cache kept under /tmp.) Null where there is no /dev/shm.
async function privateTmp(): Promise<string | null> {
  const shm = "/dev/shm";
  const exists = await Deno.stat(shm).then((info) => info.isDirectory, () => false);
  if (!exists) return null;
  const mounted = await run(["mount", "-t", "tmpfs", "-o", "mode=1777", "lab-own", shm]);
  if (mounted.code !== 0) {
    throw new Error(`mount tmpfs on ${shm}: ${mounted.stderr.trim().split("\n")[0]}`);
  }
  const dir = `${shm}/tmp`;
  await Deno.mkdir(dir);
  await Deno.chmod(dir, 0o1777); // as /tmp: everyone may make files, each removes only theirs
  return dir;
}

// lab.ts holds the other end of stdin and never writes: end of file means it
// is gone, and then so is the lab (the PID namespace's first process).
async function quitWhenLabTsIsGone() {
  const buffer = new Uint8Array(64);
  try {
    while (await Deno.stdin.read(buffer) !== null) { /* nothing is ever sent */ }
  } catch { /* a closed stdin: the same */ }
  Deno.exit(1);
}

if (import.meta.main) {
  quitWhenLabTsIsGone();
  const emit = (line: object) => console.log(JSON.stringify(line));
  try {
    const result = await runOwn(JSON.parse(Deno.args[0]) as OwnPlan, emit);
    emit({ result });
    Deno.exit(0);
  } catch (error) {
    emit({ error: (error instanceof Error ? error.message : String(error)).split("\n")[0] });
    Deno.exit(1);
  }
}

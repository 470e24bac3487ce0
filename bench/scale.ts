/**
 * # What many idle keepalive connections cost a server, against node:net and C
 *
 * @run deno run -A bench/scale.ts [--runs 3] [--connections 10000] [--backlog 4096] [--json]
 * @run deno run -A bench/scale.ts --only node,c,server --runs 1
 *
 * (`deno task bench [flags]` runs exactly that line.)
 *
 * `server.ts` holds connections that sit idle for hours, waiting for the
 * kernel's keepalive verdict. This measures what that costs as connections
 * add up, for `server.ts` as `deno task server` runs it, for the same server
 * written with `node:net` (`bench/baselines/node_server.mjs`), and for a C
 * server with one epoll and one shared buffer (`bench/baselines/epoll_server.c`,
 * compiled at the start with `cc`): the floor, where an idle connection costs
 * the kernel's socket and almost nothing else.
 *
 * Each run starts one server, and a Node client (`bench/hold_client.mjs`)
 * that opens connections in batches of 500 and holds them idle. Then:
 *
 * 1. memory per connection (VmRSS) after 1,000 connections and after N,
 *    and how much it grew per connection from one to the other;
 * 2. how long accepting took, with the kernel's ListenOverflows and
 *    ListenDrops (the same `--backlog` for every server: a SYN dropped on a
 *    full backlog comes back a second later, which is not the server's speed);
 * 3. CPU while idle, per 1,000 connections per minute;
 * 4. how soon the server noticed N simultaneous FINs, and whether it noticed
 *    all of them; its memory 30 s later; then the same for N resets.
 *
 * Then the watcher rows: servers that report every keepalive probe (idle
 * 2 s, so each connection is probed every 2 s), their CPU over 20 s of
 * idleness and the probes they reported against the kernel's own count.
 *
 * The bench first runs itself again inside a new network namespace
 * (`unshare --net`): the kernel counters it reads are then its own, and no
 * packet can leave the machine. It never changes a sysctl. Every figure is
 * the median of the runs, with their spread (min-max); the variants take
 * turns within each run, so a machine that slows down slows them all. A run
 * that fails says so in its cells. `--json` prints every raw run and the
 * medians as one JSON document; progress goes to stderr either way.
 *
 * @module
 */
import { parseFlags, UsageError } from "../tools/cli.ts";
import { parseNetstat } from "@kakit/keepalive/proc-net";

const ROOT = decodeURIComponent(new URL("../", import.meta.url).pathname).replace(/\/$/, "");
const SCRIPT = "bench/scale.ts";
const HOLD_CLIENT = "bench/hold_client.mjs";
const NODE_SERVER = "bench/baselines/node_server.mjs";
const EPOLL_SOURCE = "bench/baselines/epoll_server.c";
const POLL_WATCH_SERVER = "bench/variants/poll_watch_server.ts";
const BATCH_WATCH_ONLY = "bench/variants/batch_watch_only.ts";
/** Set in the copy of the bench that runs inside the network namespace. */
const NAMESPACE_ENV = "KEEPALIVE_BENCH_NS";

// ## The command line

/** What the bench was asked to do. */
interface BenchOptions {
  /** Runs of every variant; each figure is their median. */
  runs: number;
  /** Connections held at once (N). */
  connections: number;
  /** The listen backlog every server gets. */
  backlog: number;
  /** Variant ids to run, or null for all. */
  only: Set<string> | null;
  /** Print one JSON document instead of the tables. */
  json: boolean;
}

/** Something the bench needs is missing (cc, node, ip): one line on stderr, exit code 1. */
class SetupError extends Error {}

const VARIANT_IDS: Record<string, string> = {
  node: "node:net",
  "node-v8": "node:net with the --v8-flags of the server task (if it has any)",
  c: "C epoll",
  server: "server.ts as deno task server runs it",
  "server-many": "server.ts --engine epoll, as deno task server:many runs it",
  cost: "what tuning costs with 1,000 and 4,000 connections open, against node:net " +
    "(bench/tuning_cost.ts)",
  "many-watch": "server.ts --engine epoll --watch",
  "server-watch": "server.ts --watch",
  "batch-watch": "bench/variants/batch_watch_only.ts (the batch watcher, nothing printed)",
  "poll-watch": "bench/variants/poll_watch_server.ts (watchKeepAlive per connection)",
  "server-idle": "server.ts --engine epoll --idle 2 without --watch (the watcher rows' reference)",
};

function variantIdsHelp(): string {
  return Object.keys(VARIANT_IDS).join(", ");
}

const USAGE = `Usage: deno task bench [--runs 3] [--connections 10000] [--backlog 4096]
                        [--only ID,ID] [--json]

Measures what idle connections cost server.ts, node:net and a C epoll server
(memory, accepting, noticing closes and resets, idle CPU), then what watching
every keepalive probe costs, in a network namespace of its own. Takes about
15 minutes with the defaults.

  --runs N          runs of every variant; figures are medians (default 3)
  --connections N   connections held at once (default 10000)
  --backlog N       listen backlog of every server (default 4096)
  --only ID,ID      only these variants:
${
  Object.entries(VARIANT_IDS).map(([id, what]) => `                      ${id.padEnd(13)} ${what}`)
    .join("\n")
}
  --json            one JSON document with every run, instead of the tables`;

function parseBenchArgs(args: string[]): BenchOptions | "help" {
  // The kit's strict flags: no value for a boolean (--json=false is misuse,
  // not "no"), nothing given twice, no stray arguments.
  const flags = parseFlags(args, {
    string: ["runs", "connections", "backlog", "only"],
    boolean: ["json"],
    default: { runs: "3", connections: "10000", backlog: "4096" },
  });
  if (flags.help) return "help";
  // Every connection is a descriptor in the server and one in the client.
  const maxConnections = openFilesLimit() - 500;
  const only = flags.only === undefined
    ? null
    : new Set(String(flags.only).split(",").filter(Boolean));
  if (only?.size === 0) {
    throw new UsageError(`--only needs at least one variant id: ${variantIdsHelp()}`);
  }
  for (const id of only ?? []) {
    if (!(id in VARIANT_IDS)) {
      throw new UsageError(`--only: no variant ${JSON.stringify(id)}; ids: ${variantIdsHelp()}`);
    }
  }
  return {
    runs: parseInteger("--runs", flags.runs!, 1, 100),
    connections: parseInteger("--connections", flags.connections!, 100, maxConnections),
    backlog: parseInteger("--backlog", flags.backlog!, 1, 65535),
    only,
    json: flags.json,
  };
}

function parseInteger(flag: string, text: string, min: number, max: number): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < min || value > max) {
    throw new UsageError(
      `${flag} must be an integer from ${min} to ${max}, not ${JSON.stringify(text)}` +
        (flag === "--connections" ? " (the top is ulimit -n minus 500)" : ""),
    );
  }
  return value;
}

// The soft limit on open files (ulimit -n), which children inherit.
function openFilesLimit(): number {
  try {
    const limits = Deno.readTextFileSync("/proc/self/limits");
    const soft = /^Max open files\s+(\d+)/m.exec(limits)?.[1];
    if (soft) return Number(soft);
  } catch {
    // not Linux, or no /proc: the limit of the machine this was written on
  }
  return 20_000;
}

// ## A network namespace of its own
//
// The counters in /proc/net/netstat belong to a network namespace. In a new
// one, the only traffic is the bench's, and none can leave: it has nothing
// but a loopback interface, which starts down.

async function runInNewNetworkNamespace(): Promise<number> {
  const unshare = Deno.uid() === 0 ? ["--net"] : ["--user", "--map-root-user", "--net"];
  const command = new Deno.Command("unshare", {
    args: [...unshare, Deno.execPath(), "run", "-A", SCRIPT, ...Deno.args],
    cwd: ROOT,
    env: { [NAMESPACE_ENV]: "1" },
    stdin: "inherit",
    stdout: "inherit",
    stderr: "inherit",
  });
  let child: Deno.ChildProcess;
  try {
    child = command.spawn();
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
    throw new SetupError("unshare not found: the bench needs it (Debian package util-linux)");
  }
  // Ctrl-C reaches the bench inside too (same process group): it cleans up
  // and exits, and its exit code is ours. A SIGTERM is passed on.
  // A signal sent to this process alone is passed on.
  Deno.addSignalListener("SIGINT", () => child.kill("SIGINT"));
  Deno.addSignalListener("SIGTERM", () => child.kill("SIGTERM"));
  const status = await child.status;
  if (status.signal === null) return status.code;
  return 128 + (status.signal === "SIGINT" ? 2 : status.signal === "SIGKILL" ? 9 : 15);
}

async function bringLoopbackUp(): Promise<void> {
  const result = await runCommand(["ip", "link", "set", "lo", "up"]);
  if (!result.ok) throw new SetupError(`cannot bring up lo in the namespace: ${result.error}`);
}

// ## The variants: one command line each

/** One row of a table: a server to start, listening on 127.0.0.1 at a port of its choosing. */
interface Variant {
  id: string;
  name: string;
  command: string[];
  table: "main" | "watch";
  /** A watch-table row that reports no probes: it shows what the kernel's probes cost alone. */
  reference?: boolean;
}

/** How one of deno.json's tasks ("server", "server:many") runs server.ts. */
interface ServerTask {
  text: string;
  /** The flags between `deno run` and the script, `--v8-flags=...` included. */
  denoFlags: string[];
  script: string;
  scriptArgs: string[];
  /** The V8 flags among them, one per element (`--optimize-for-size`). */
  v8Flags: string[];
}

function readServerTask(name: string): ServerTask {
  let text: unknown;
  try {
    text = JSON.parse(Deno.readTextFileSync(`${ROOT}/deno.json`)).tasks?.[name];
  } catch (error) {
    throw new SetupError(`cannot read deno.json: ${messageOf(error)}`);
  }
  if (typeof text === "object" && text !== null) text = (text as { command?: unknown }).command;
  if (typeof text !== "string") throw new SetupError(`deno.json has no "${name}" task`);
  const words = text.trim().split(/\s+/);
  const scriptAt = words.findIndex((word) => /\.(ts|js|mjs)$/.test(word));
  if (words[0] !== "deno" || words[1] !== "run" || scriptAt < 2) {
    throw new SetupError(`deno.json's "${name}" task is not "deno run ... server.ts": ${text}`);
  }
  const denoFlags = words.slice(2, scriptAt);
  const v8Flags = denoFlags
    .filter((flag) => flag.startsWith("--v8-flags="))
    .flatMap((flag) => flag.slice("--v8-flags=".length).split(","))
    .filter(Boolean);
  return {
    text,
    denoFlags,
    script: words[scriptAt],
    scriptArgs: words.slice(scriptAt + 1),
    v8Flags,
  };
}

function buildVariants(
  options: BenchOptions,
  task: ServerTask,
  many: ServerTask,
  epollBinary: string,
): Variant[] {
  const deno = Deno.execPath();
  const listen = ["--hostname", "127.0.0.1", "--port", "0", "--backlog", String(options.backlog)];
  const serverTs = [...task.scriptArgs, "--json", ...listen, "--max-connections", "20000"];
  const manyTs = [...many.scriptArgs, "--json", ...listen, "--max-connections", "20000"];
  const probing = ["--idle", "2", "--interval", "2", "--count", "3"];
  const ffi = task.denoFlags.some((flag) => /^(-A|--allow-all|--allow-ffi)(=|$)/.test(flag))
    ? task.denoFlags
    : [...task.denoFlags, "--allow-ffi"];
  const variants: Variant[] = [
    { id: "node", name: "node:net", command: ["node", NODE_SERVER, ...listen], table: "main" },
  ];
  // server.ts runs with these V8 flags: node:net gets them too, flag for
  // flag, so that no difference is taken for the runtime's.
  if (task.v8Flags.length > 0) {
    variants.push({
      id: "node-v8",
      name: `node:net ${task.v8Flags.join(" ")}`,
      command: ["node", ...task.v8Flags, NODE_SERVER, ...listen],
      table: "main",
    });
  }
  variants.push(
    { id: "c", name: "C epoll", command: [epollBinary, ...listen], table: "main" },
    {
      id: "server",
      name: "server.ts (deno task server)",
      command: [deno, "run", ...task.denoFlags, task.script, ...serverTs],
      table: "main",
    },
    {
      id: "server-many",
      name: "server.ts --engine epoll (deno task server:many)",
      command: [deno, "run", ...many.denoFlags, many.script, ...manyTs],
      table: "main",
    },
    {
      id: "many-watch",
      name: "server.ts --engine epoll --watch",
      command: [deno, "run", ...many.denoFlags, many.script, ...manyTs, ...probing, "--watch"],
      table: "watch",
    },
    {
      id: "server-watch",
      name: "server.ts --watch",
      command: [deno, "run", ...ffi, task.script, ...serverTs, ...probing, "--watch"],
      table: "watch",
    },
    {
      id: "batch-watch",
      name: "watchKeepAliveAll alone, probes counted, not printed",
      command: [deno, "run", "--allow-net", "--allow-ffi", BATCH_WATCH_ONLY, ...listen, ...probing],
      table: "watch",
    },
    {
      id: "poll-watch",
      name: "watchKeepAlive per connection (before)",
      command: [deno, "run", ...ffi, POLL_WATCH_SERVER, ...listen, ...probing],
      table: "watch",
    },
    {
      id: "server-idle",
      name: "server.ts --engine epoll --idle 2, no watcher",
      command: [deno, "run", ...many.denoFlags, many.script, ...manyTs, ...probing],
      table: "watch",
      reference: true,
    },
  );
  return variants.filter((variant) => options.only?.has(variant.id) ?? true);
}

async function compileEpollServer(directory: string): Promise<string> {
  const binary = `${directory}/epoll_server`;
  // Started like the servers, so that an interrupt kills it too.
  let cc: Deno.ChildProcess;
  try {
    cc = spawn(["cc", "-O2", "-o", binary, EPOLL_SOURCE], "null");
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
    throw new SetupError("cc not found: the C epoll row needs a C compiler (apt-get install gcc)");
  }
  const { success, stderr } = await cc.output();
  if (!success) {
    const said = new TextDecoder().decode(stderr).trim().split("\n")[0];
    throw new SetupError(`cc could not compile ${EPOLL_SOURCE}: ${said}`);
  }
  return binary;
}

// ## A server under test
//
// Its stdout is read without pause for as long as it runs: a pipe nobody
// reads fills up, and a server that waits for its output is not idle. Every
// event's arrival is kept, by name, as the bench's wall-clock time when the
// line was read.

/** Every process the bench started and that still runs: killed on the way out, whatever happens. */
const running = new Set<Deno.ChildProcess>();

function spawn(command: string[], stdin: "piped" | "null"): Deno.ChildProcess {
  const child = new Deno.Command(command[0], {
    args: command.slice(1),
    cwd: ROOT,
    env: { DENO_NO_UPDATE_CHECK: "1" },
    stdin,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  running.add(child);
  child.status.finally(() => running.delete(child));
  return child;
}

function killEverything(): void {
  for (const child of running) {
    try {
      child.kill("SIGKILL");
    } catch {
      // gone already
    }
  }
}

/** Milliseconds since the epoch, with a fraction: the clock the hold client's `at` uses. */
function wallClockMs(): number {
  return performance.timeOrigin + performance.now();
}

/** A run's measurement that cannot go on: its message goes in the table cell. */
class RunFailure extends Error {}

/** What `waitFor` saw: the target's arrival time, or how far it got. */
interface Arrival {
  complete: boolean;
  count: number;
  /** Arrival of the target event, or of the last one counted when incomplete. */
  at: number | null;
  why?: string;
}

class ServerUnderTest {
  readonly pid: number;
  /** Arrival times of every event, by event name. */
  readonly arrivals = new Map<string, number[]>();
  /** Lines the server said it had to drop ("output-dropped" events). */
  droppedLines = 0;
  /** Probes a watcher counted without printing them ("watched" events). */
  watchedProbes = 0;
  /**
   * This side's probes among the "probe" events: answered, or unanswered
   * (a probe reported unanswered and then answered late is one probe, and a
   * probe of the peer's is not this kernel's).
   */
  ownProbes = 0;
  address: string | null = null;
  private exit: Deno.CommandStatus | null = null;
  private stderrTail = "";
  private readonly finished: Promise<unknown>;

  constructor(private readonly child: Deno.ChildProcess) {
    this.pid = child.pid;
    const status = child.status.then((status) => this.exit = status);
    this.finished = Promise.all([status, this.readEvents(), this.readStderr()]);
  }

  count(event: string): number {
    return this.arrivals.get(event)?.length ?? 0;
  }

  private async readEvents(): Promise<void> {
    const decoder = new TextDecoder();
    let pending = "";
    for await (const chunk of this.child.stdout) {
      const at = wallClockMs();
      pending += decoder.decode(chunk, { stream: true });
      let start = 0;
      for (let end; (end = pending.indexOf("\n", start)) !== -1; start = end + 1) {
        this.takeLine(pending.slice(start, end), at);
      }
      pending = pending.slice(start);
    }
  }

  private takeLine(line: string, at: number): void {
    // The name alone, found without parsing: 10,000 lines arrive at once.
    const event = /"event":"([^"]+)"/.exec(line)?.[1] ?? "(not an event)";
    if (event === "listening") this.address = JSON.parse(line).address;
    if (event === "output-dropped") this.droppedLines += JSON.parse(line).lines ?? 0;
    if (event === "watched") this.watchedProbes += JSON.parse(line).probes ?? 0;
    if (event === "probe" && /"kind":"(answered|unanswered)"/.test(line)) this.ownProbes++;
    const times = this.arrivals.get(event) ?? [];
    times.push(at);
    this.arrivals.set(event, times);
  }

  private async readStderr(): Promise<void> {
    const decoder = new TextDecoder();
    for await (const chunk of this.child.stderr) {
      this.stderrTail = (this.stderrTail + decoder.decode(chunk, { stream: true })).slice(-2000);
    }
  }

  /** Why it is gone, in one line; null while it runs. */
  exitReason(): string | null {
    if (!this.exit) return null;
    const how = this.exit.signal
      ? `killed by ${this.exit.signal}`
      : `exited (code ${this.exit.code})`;
    const said = this.stderrTail.trim().split("\n").at(-1);
    return `server ${how}${said ? `: ${said.slice(0, 200)}` : ""}`;
  }

  async waitForListening(): Promise<number> {
    const deadline = performance.now() + 30_000;
    while (this.address === null) {
      const gone = this.exitReason();
      if (gone) throw new RunFailure(gone);
      if (performance.now() > deadline) throw new RunFailure("no listening event in 30 s");
      await delay(20);
    }
    return Number(this.address.slice(this.address.lastIndexOf(":") + 1));
  }

  /**
   * Waits until `event` has been seen `target` times in all (counting from
   * the server's start), or until none has come for `quietMs`, or the server
   * is gone.
   */
  async waitFor(event: string, target: number, quietMs: number): Promise<Arrival> {
    let seen = -1;
    let progressAt = performance.now();
    for (;;) {
      const times = this.arrivals.get(event) ?? [];
      if (times.length >= target) {
        return { complete: true, count: times.length, at: times[target - 1] };
      }
      if (times.length !== seen) [seen, progressAt] = [times.length, performance.now()];
      const gone = this.exitReason();
      const quiet = performance.now() - progressAt > quietMs;
      if (gone || quiet) {
        const why = gone ?? `no "${event}" event for ${quietMs / 1000} s`;
        return { complete: false, count: times.length, at: times.at(-1) ?? null, why };
      }
      await delay(10);
    }
  }

  /** Resident memory, in KB. */
  rssKb(): number {
    const rss = /^VmRSS:\s+(\d+) kB/m.exec(this.readProc("status"))?.[1];
    // A process that has exited but is not yet reaped has no VmRSS line.
    if (rss === undefined) throw new RunFailure(this.exitReason() ?? "server has no VmRSS");
    return Number(rss);
  }

  /** CPU used so far, user plus system, in clock ticks (10 ms each). */
  cpuTicks(): number {
    const stat = this.readProc("stat");
    // The fields after the command name, which may contain spaces: state is
    // field 3, utime field 14 and stime field 15.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return Number(fields[11]) + Number(fields[12]);
  }

  private readProc(file: string): string {
    try {
      return Deno.readTextFileSync(`/proc/${this.pid}/${file}`);
    } catch {
      throw new RunFailure(this.exitReason() ?? `cannot read /proc/${this.pid}/${file}`);
    }
  }

  /** SIGTERM, up to 5 s to go, then SIGKILL. */
  async stop(): Promise<void> {
    if (!this.exit) signal(this.child, "SIGTERM");
    const gone = await Promise.race([
      this.finished.then(() => true),
      delay(5000).then(() => false),
    ]);
    if (!gone) {
      signal(this.child, "SIGKILL");
      await this.child.status;
    }
  }
}

function signal(child: Deno.ChildProcess, name: Deno.Signal): void {
  try {
    child.kill(name);
  } catch {
    // it exited meanwhile
  }
}

// ## The client that holds the connections
//
// bench/hold_client.mjs, driven one command a line; each command's answer
// is one JSON line.

interface EndReply {
  closing: number;
  /** Wall-clock time (epoch ms) just before the first connection ended. */
  at: number;
}

class HoldClient {
  private readonly child: Deno.ChildProcess;
  private readonly writer: WritableStreamDefaultWriter<Uint8Array>;
  private readonly replies: string[] = [];
  private exited = false;
  private stderrTail = "";

  constructor(port: number) {
    this.child = spawn(
      ["node", HOLD_CLIENT, "--host", "127.0.0.1", "--port", String(port)],
      "piped",
    );
    this.writer = this.child.stdin.getWriter();
    this.child.status.then(() => this.exited = true);
    this.readReplies();
    this.readStderr();
  }

  private async readReplies(): Promise<void> {
    const decoder = new TextDecoder();
    let pending = "";
    for await (const chunk of this.child.stdout) {
      pending += decoder.decode(chunk, { stream: true });
      const lines = pending.split("\n");
      pending = lines.pop()!;
      this.replies.push(...lines.filter((line) => line.trim() !== ""));
    }
  }

  private async readStderr(): Promise<void> {
    const decoder = new TextDecoder();
    for await (const chunk of this.child.stderr) {
      this.stderrTail = (this.stderrTail + decoder.decode(chunk, { stream: true })).slice(-500);
    }
  }

  /** Sends one command and returns its reply; a failure is a RunFailure. */
  async send(command: string, timeoutMs: number): Promise<Record<string, unknown>> {
    await this.writer.write(new TextEncoder().encode(`${command}\n`));
    const deadline = performance.now() + timeoutMs;
    while (this.replies.length === 0) {
      if (this.exited) {
        const said = this.stderrTail.trim().split("\n").at(-1) ?? "";
        throw new RunFailure(`hold client exited during "${command}" ${said}`.trim());
      }
      if (performance.now() > deadline) {
        throw new RunFailure(`hold client: no answer to "${command}" in ${timeoutMs / 1000} s`);
      }
      await delay(5);
    }
    const reply = JSON.parse(this.replies.shift()!);
    if (reply.error) throw new RunFailure(`hold client: ${reply.error}`);
    return reply;
  }

  /** `open N`; a connection that failed makes the run fail: the counts would not add up. */
  async open(count: number): Promise<void> {
    const reply = await this.send(`open ${count}`, 300_000);
    if (reply.failed) {
      throw new RunFailure(
        `${reply.failed} of ${count} connections failed: ${JSON.stringify(reply.errors)}`,
      );
    }
  }

  async end(how: "close" | "reset"): Promise<EndReply> {
    return await this.send(how, 60_000) as unknown as EndReply;
  }

  async quit(): Promise<void> {
    try {
      await this.writer.write(new TextEncoder().encode("quit\n"));
      await this.writer.close();
    } catch {
      // it is gone already
    }
    const gone = await Promise.race([this.child.status.then(() => true), delay(3000)]);
    if (!gone) signal(this.child, "SIGKILL");
  }
}

// ## Kernel counters of the namespace

function tcpExt(): Record<string, number> {
  return parseNetstat(Deno.readTextFileSync("/proc/net/netstat")).TcpExt ?? {};
}

// ## One run of one main variant

/** Everything one run measured; a field is missing when the run failed before it. */
interface MainRun {
  variant: string;
  run: number;
  connections: number;
  /** Connections of the first step (1,000, or 10% of fewer). */
  first: number;
  rss0Kb?: number;
  rssFirstKb?: number;
  rssNKb?: number;
  rssAfterCloseKb?: number;
  perConnFirstKb?: number;
  perConnNKb?: number;
  /** Null when the first step's growth was too small to measure (under a page). */
  growth?: number | null;
  acceptMs?: number;
  listenOverflows?: number;
  listenDrops?: number;
  idleCpuTicks?: number;
  idleCpuMsPer1kPerMin?: number;
  closeNoticeMs?: number;
  closeNoticed?: number;
  rssAfterCloseMb?: number;
  resetNoticeMs?: number;
  resetNoticed?: number;
  /** Things worth knowing that did not stop the run (rejected connections, lines dropped). */
  notes: string[];
  /** "<phase>: <why>" when the run could not finish. */
  failure?: string;
}

const SETTLE_MS = 5000;
const IDLE_CPU_MS = 10_000;
const AFTER_CLOSE_MS = 30_000;
/** A phase gives up when its events stop coming for this long (dropped SYNs return within 15 s). */
const ACCEPT_QUIET_MS = 30_000;
const END_QUIET_MS = 5000;

function firstStep(connections: number): number {
  return Math.min(1000, Math.round(connections / 10));
}

async function measureMainRun(variant: Variant, options: BenchOptions, run: number) {
  const n = options.connections;
  const first = firstStep(n);
  const result: MainRun = { variant: variant.id, run, connections: n, first, notes: [] };
  const say = (text: string) => progress(`run ${run}/${options.runs} ${variant.name}: ${text}`);
  let phase = "starting";
  let server: ServerUnderTest | null = null;
  let client: HoldClient | null = null;
  try {
    // a. Started and listening; its memory before any connection.
    server = new ServerUnderTest(spawn(variant.command, "null"));
    const port = await server.waitForListening();
    await delay(1000);
    result.rss0Kb = server.rssKb();
    client = new HoldClient(port);
    say(`listening on port ${port}, pid ${server.pid}, RSS ${mb(result.rss0Kb)} MB`);

    // b. The first 1,000, and memory once they have settled.
    phase = `accepting ${first}`;
    const before = tcpExt();
    const firstMs = await openAndAccept(server, client, first);
    await delay(SETTLE_MS);
    result.rssFirstKb = server.rssKb();
    result.perConnFirstKb = (result.rssFirstKb - result.rss0Kb) / first;

    // c. The rest, up to N: accept time is both steps, without the settling.
    phase = `accepting ${n}`;
    const restMs = await openAndAccept(server, client, n - first);
    result.acceptMs = firstMs + restMs;
    const after = tcpExt();
    result.listenOverflows = after.ListenOverflows - before.ListenOverflows;
    result.listenDrops = after.ListenDrops - before.ListenDrops;
    say(`${n} accepted in ${Math.round(result.acceptMs)} ms, ${result.listenOverflows} overflows`);

    // d. Memory with N held.
    phase = "measuring memory";
    await delay(SETTLE_MS);
    result.rssNKb = server.rssKb();
    result.perConnNKb = (result.rssNKb - result.rss0Kb) / n;
    result.growth = result.perConnFirstKb > 0 ? result.perConnNKb / result.perConnFirstKb : null;
    say(`${kb(result.perConnFirstKb)} KB/conn at ${first}, ${kb(result.perConnNKb)} at ${n}`);

    // e. CPU while the N connections sit idle.
    phase = "measuring idle CPU";
    const ticksBefore = server.cpuTicks();
    await delay(IDLE_CPU_MS);
    result.idleCpuTicks = server.cpuTicks() - ticksBefore;
    result.idleCpuMsPer1kPerMin = (result.idleCpuTicks * 10) * (60_000 / IDLE_CPU_MS) /
      (n / 1000);

    // f. Every peer closes at once (N FINs): how soon the server knows.
    phase = "closing";
    const closed = await endAndNotice(server, client, "close", "peer-closed", n);
    result.closeNoticeMs = closed.ms ?? undefined;
    result.closeNoticed = closed.count;
    say(`${closed.count}/${n} closes noticed in ${closed.ms?.toFixed(1)} ms`);
    await delay(AFTER_CLOSE_MS);
    result.rssAfterCloseKb = server.rssKb();
    result.rssAfterCloseMb = (result.rssAfterCloseKb - result.rss0Kb) / 1024;

    // g. N again, and every peer resets at once.
    phase = `accepting ${n} again`;
    await openAndAccept(server, client, n);
    phase = "resetting";
    const reset = await endAndNotice(server, client, "reset", "reset", n);
    result.resetNoticeMs = reset.ms ?? undefined;
    result.resetNoticed = reset.count;
    say(`${reset.count}/${n} resets noticed in ${reset.ms?.toFixed(1)} ms`);
  } catch (error) {
    result.failure = `${phase}: ${messageOf(error)}`;
    say(`failed: ${result.failure}`);
  } finally {
    // h. Everything stops, whatever happened.
    await client?.quit();
    await server?.stop();
  }
  if (server) result.notes.push(...unexpectedEvents(server));
  return result;
}

/** Opens `count` connections; resolves with the ms from the command to the last "accepted". */
async function openAndAccept(server: ServerUnderTest, client: HoldClient, count: number) {
  const target = server.count("accepted") + count;
  const start = wallClockMs();
  const [, accepted] = await Promise.all([
    client.open(count),
    server.waitFor("accepted", target, ACCEPT_QUIET_MS),
  ]);
  if (!accepted.complete) {
    throw new RunFailure(
      `${accepted.count - target + count} of ${count} accepted; ${accepted.why}`,
    );
  }
  return accepted.at! - start;
}

/**
 * Ends every connection (FIN or RST), and waits for the server to report
 * each one: the time is from the client's clock just before the first one
 * ended to the arrival of the last report. A server that misses some has
 * not failed: the table's "all?" says how many it noticed.
 */
async function endAndNotice(
  server: ServerUnderTest,
  client: HoldClient,
  how: "close" | "reset",
  event: string,
  count: number,
): Promise<{ ms: number | null; count: number }> {
  const base = server.count(event);
  const ended = await client.end(how);
  const noticed = await server.waitFor(event, base + count, END_QUIET_MS);
  if (noticed.why && server.exitReason()) throw new RunFailure(noticed.why);
  return {
    ms: noticed.at === null ? null : noticed.at - ended.at,
    count: noticed.count - base,
  };
}

/** Events that mean some connections were not simply held and ended. */
function unexpectedEvents(server: ServerUnderTest): string[] {
  const notes: string[] = [];
  for (const event of ["rejected", "error", "accept-error", "timed-out", "reset-before-accept"]) {
    if (server.count(event) > 0) notes.push(`${server.count(event)} "${event}" events`);
  }
  if (server.droppedLines > 0) notes.push(`${server.droppedLines} output lines dropped`);
  return notes;
}

// ## One run of one watcher variant

interface WatchRun {
  variant: string;
  run: number;
  connections: number;
  acceptMs?: number;
  cpuTicks?: number;
  /** CPU over the idle window, in % of one core. */
  cpuPercent?: number;
  probesReported?: number;
  /** Keepalive probes the kernel sent until the server was told to quit (TcpExt TCPKeepAlive). */
  kernelProbes?: number;
  /** Keepalive probes the kernel sent until the server had exited. */
  kernelProbesAtExit?: number;
  notes: string[];
  failure?: string;
}

const WATCH_WINDOW_MS = 20_000;

async function measureWatchRun(variant: Variant, options: BenchOptions, run: number) {
  const n = options.connections;
  const result: WatchRun = { variant: variant.id, run, connections: n, notes: [] };
  const say = (text: string) => progress(`run ${run}/${options.runs} ${variant.name}: ${text}`);
  let phase = "starting";
  let server: ServerUnderTest | null = null;
  let client: HoldClient | null = null;
  // Probes are counted from before the server starts. The watcher's last
  // look comes soon after it is told to quit, and its connections close
  // after that, with probes still going out meanwhile (5,000 a second
  // here): so every probe the kernel counted before the SIGTERM must have
  // been reported, and none that it had not counted once the server exited.
  // A run is right when the reported count lies between the two.
  const kernelBefore = tcpExt().TCPKeepAlive;
  try {
    server = new ServerUnderTest(spawn(variant.command, "null"));
    const port = await server.waitForListening();
    client = new HoldClient(port);
    phase = `accepting ${n}`;
    result.acceptMs = await openAndAccept(server, client, n);
    say(`${n} accepted in ${Math.round(result.acceptMs)} ms; watching for 20 s`);

    // Idle 2 s, so the kernel probes every connection every 2 s or so.
    phase = "watching";
    const startTicks = server.cpuTicks();
    const startMs = performance.now();
    await delay(WATCH_WINDOW_MS);
    const ticks = server.cpuTicks();
    const elapsedMs = performance.now() - startMs;
    result.cpuTicks = ticks - startTicks;
    result.cpuPercent = result.cpuTicks * 10 / elapsedMs * 100;
    phase = "stopping";
    result.kernelProbes = tcpExt().TCPKeepAlive - kernelBefore;
    await server.stop(); // SIGTERM: the watcher's last look, then the connections close
    result.kernelProbesAtExit = tcpExt().TCPKeepAlive - kernelBefore;
    result.probesReported = server.ownProbes + server.watchedProbes;
    say(
      `CPU ${result.cpuPercent.toFixed(1)}%, ${result.probesReported} probes reported, ` +
        `${result.kernelProbes} sent by the kernel`,
    );
  } catch (error) {
    result.failure = `${phase}: ${messageOf(error)}`;
    say(`failed: ${result.failure}`);
  } finally {
    await client?.quit();
    await server?.stop();
  }
  if (server) result.notes.push(...unexpectedEvents(server));
  return result;
}

// ## Medians, spreads and the tables

interface Spread {
  median: number;
  min: number;
  max: number;
  /** Runs that produced the figure. */
  runs: number;
}

function spreadOf(values: (number | undefined)[]): Spread | null {
  const known = values.filter((value): value is number => value !== undefined && isFinite(value));
  if (known.length === 0) return null;
  const sorted = known.sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  const median = sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
  return { median, min: sorted[0], max: sorted.at(-1)!, runs: sorted.length };
}

/**
 * A cell: the median, its spread over several runs, or why there is none
 * (a figure is undefined when its run failed before it, null when it could
 * not be computed).
 */
function spreadCell<R extends { failure?: string }>(
  runs: R[],
  pick: (run: R) => number | null | undefined,
  format: (value: number) => string,
): string {
  const picked = runs.map(pick);
  const spread = spreadOf(picked.map((value) => value ?? undefined));
  if (!spread) {
    const failure = runs.find((run) => run.failure)?.failure;
    if (picked.some((value) => value === null)) return "n/a";
    return failure ? `failed: ${failure}` : "-";
  }
  const range = spread.runs > 1 ? ` (${format(spread.min)}–${format(spread.max)})` : "";
  const partial = spread.runs < runs.length ? ` [${spread.runs}/${runs.length} runs]` : "";
  return `${format(spread.median)}${range}${partial}`;
}

const kb = (value: number) => value.toFixed(2);
const mb = (value: number) => (value / 1024).toFixed(1);
const ms = (value: number) => value < 10 ? value.toFixed(1) : Math.round(value).toString();
const oneDecimal = (value: number) => value.toFixed(1);

/**
 * The variant's name, with what the cells cannot say: events that should not
 * happen, and the failure of a run when other runs have figures.
 */
function variantLabel(
  variant: Variant,
  runs: { run: number; notes: string[]; failure?: string }[],
) {
  const notes = new Set(runs.flatMap((run) => run.notes));
  const failed = runs.filter((run) => run.failure);
  if (failed.length < runs.length) {
    for (const run of failed) notes.add(`run ${run.run} failed: ${run.failure}`);
  }
  return variant.name + (notes.size ? ` (${[...notes].join("; ")})` : "");
}

/** A run's failure is said in the cell where it happened; the cells after it just say "-". */
function withoutRepeatedFailures(row: string[]): string[] {
  const said = new Set<string>();
  return row.map((cell) => {
    if (!cell.startsWith("failed: ")) return cell;
    if (said.has(cell)) return "-";
    said.add(cell);
    return cell;
  });
}

function countLabel(count: number): string {
  return count % 1000 === 0 ? `${count / 1000}k` : String(count);
}

/** "all", or how many of N the worst run noticed. */
function allNoticed(runs: MainRun[], pick: (run: MainRun) => number | undefined): string {
  const counts = runs.map(pick).filter((count): count is number => count !== undefined);
  if (counts.length === 0) return "";
  const worst = Math.min(...counts);
  return worst === runs[0].connections ? ", all" : `, only ${worst}/${runs[0].connections}`;
}

// What each connection past the first step added: the cost once the
// server's code has warmed up, which the first step's figure includes.
function marginalKb(run: MainRun): number | undefined {
  if (run.rssFirstKb === undefined || run.rssNKb === undefined) return undefined;
  return (run.rssNKb - run.rssFirstKb) / (run.connections - run.first);
}

function ratioCell(value: Spread | null, reference: Spread | null): string {
  if (!value || !reference || reference.median === 0) return "-";
  return `${(value.median / reference.median).toFixed(2)}x`;
}

function mainTable(variants: Variant[], runs: MainRun[], options: BenchOptions): string[][] {
  const n = options.connections;
  const first = firstStep(n);
  const runsOf = (variant: Variant) => runs.filter((run) => run.variant === variant.id);
  const node = runs.filter((run) => run.variant === "node");
  const nodeMemory = spreadOf(node.map((run) => run.perConnNKb));
  const nodeAccept = spreadOf(node.map((run) => run.acceptMs));
  const header = [
    "variant",
    `KB/conn at ${countLabel(first)}`,
    `KB/conn at ${countLabel(n)}`,
    `KB/conn added from ${countLabel(first)} to ${countLabel(n)}`,
    "growth",
    "accept ms (listen overflows)",
    "close notice ms (all?)",
    "reset notice ms (all?)",
    "RSS +MB 30 s after close",
    "idle CPU ms/1k conns/min",
    "memory vs node:net",
    "accept vs node:net",
  ];
  const rows = variants.map((variant) => {
    const own = runsOf(variant);
    const overflows = spreadOf(own.map((run) => run.listenOverflows));
    return withoutRepeatedFailures([
      variantLabel(variant, own),
      spreadCell(own, (run) => run.perConnFirstKb, kb),
      spreadCell(own, (run) => run.perConnNKb, kb),
      spreadCell(own, (run) => marginalKb(run), kb),
      spreadCell(own, (run) => run.growth, (value) => value.toFixed(2)),
      spreadCell(own, (run) => run.acceptMs, ms) +
      (overflows ? `; ${overflows.max} overflows` : ""),
      spreadCell(own, (run) => run.closeNoticeMs, ms) +
      allNoticed(own, (run) => run.closeNoticed),
      spreadCell(own, (run) => run.resetNoticeMs, ms) +
      allNoticed(own, (run) => run.resetNoticed),
      spreadCell(own, (run) => run.rssAfterCloseMb, oneDecimal),
      spreadCell(own, (run) => run.idleCpuMsPer1kPerMin, oneDecimal),
      ratioCell(spreadOf(own.map((run) => run.perConnNKb)), nodeMemory),
      ratioCell(spreadOf(own.map((run) => run.acceptMs)), nodeAccept),
    ]);
  });
  return [header, ...rows];
}

function watchTable(variants: Variant[], runs: WatchRun[]): string[][] {
  const header = [
    "watcher variant",
    "accept ms",
    "CPU % of one core (20 s idle)",
    "probes reported (kernel count at quit - at exit)",
  ];
  const rows = variants.map((variant) => {
    const own = runs.filter((run) => run.variant === variant.id);
    let probes = `none (${spreadCell(own, (run) => run.kernelProbes, String)})`;
    if (!variant.reference) {
      // Every run's own verdict: all reported, some missed, or more than sent.
      const verdicts = own.filter((run) => run.probesReported !== undefined).map((run) => {
        const [reported, low, high] = [
          run.probesReported!,
          run.kernelProbes!,
          run.kernelProbesAtExit!,
        ];
        const verdict = reported < low
          ? `missed ${low - reported}`
          : reported > high
          ? `${reported - high} too many`
          : "all";
        return `${reported} (${low}-${high}) ${verdict}`;
      });
      probes = verdicts.length > 0 ? verdicts.join("; ") : probes;
    }
    return withoutRepeatedFailures([
      variantLabel(variant, own),
      spreadCell(own, (run) => run.acceptMs, ms),
      spreadCell(own, (run) => run.cpuPercent, oneDecimal),
      probes,
    ]);
  });
  return [header, ...rows];
}

/** A markdown table, its columns padded so that it also reads as plain text. */
function renderTable(rows: string[][]): string {
  const widths = rows[0].map((_, column) => Math.max(...rows.map((row) => row[column].length)));
  const line = (row: string[]) => `| ${row.map((cell, i) => cell.padEnd(widths[i])).join(" | ")} |`;
  const rule = `|${widths.map((width) => "-".repeat(width + 2)).join("|")}|`;
  return [line(rows[0]), rule, ...rows.slice(1).map(line)].join("\n");
}

/** Medians of every figure, by variant, for --json. */
function mediansOf<R extends { variant: string }>(runs: R[]) {
  const byVariant: Record<string, Record<string, Spread | null>> = {};
  for (const run of runs) {
    const fields = byVariant[run.variant] ??= {};
    for (const [key, value] of Object.entries(run)) {
      if (typeof value !== "number" || key === "run") continue;
      const own = runs.filter((other) => other.variant === run.variant);
      fields[key] = spreadOf(own.map((other) => (other as Record<string, unknown>)[key] as number));
    }
  }
  return byVariant;
}

// ## The machine, in one line

async function describeMachine() {
  const firstLine = async (command: string[]) => {
    const result = await runCommand(command);
    return result.ok ? result.stdout.split("\n")[0].trim() : "(unknown)";
  };
  return {
    nproc: await firstLine(["nproc"]),
    kernel: Deno.osRelease(),
    deno: await firstLine([Deno.execPath(), "--version"]),
    node: await firstLine(["node", "--version"]),
    cc: await firstLine(["cc", "--version"]),
    somaxconn: Deno.readTextFileSync("/proc/sys/net/core/somaxconn").trim(),
  };
}

// ## Small helpers

function progress(text: string): void {
  console.error(`bench: ${text}`);
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function messageOf(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).split("\n")[0];
}

async function runCommand(command: string[]) {
  try {
    const { success, stdout, stderr } = await new Deno.Command(command[0], {
      args: command.slice(1),
      cwd: ROOT,
      stdin: "null",
    }).output();
    const decode = (bytes: Uint8Array) => new TextDecoder().decode(bytes);
    const error = decode(stderr).trim().split("\n")[0];
    return { ok: success, notFound: false, stdout: decode(stdout), error };
  } catch (error) {
    const notFound = error instanceof Deno.errors.NotFound;
    return { ok: false, notFound, stdout: "", error: messageOf(error) };
  }
}

function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

function describeDuration(totalMs: number): string {
  const seconds = Math.round(totalMs / 1000);
  return seconds < 60 ? `${seconds} s` : `${Math.floor(seconds / 60)} min ${seconds % 60} s`;
}

// ## The bench, inside its namespace

async function bench(options: BenchOptions): Promise<void> {
  const startedMs = performance.now();
  await bringLoopbackUp();
  // Without Node on PATH, Deno puts its own "node" there for the programs it
  // starts (a Deno in disguise): that would measure Deno twice, as node:net.
  const node = await runCommand(["node", "-p", "process.versions.deno ?? process.version"]);
  if (!node.ok || !node.stdout.startsWith("v")) {
    throw new SetupError(
      "node not found (or only Deno's stand-in for it): the client and the node:net row need " +
        "Node 20 or later on PATH",
    );
  }
  const directory = await Deno.makeTempDir({ prefix: "keepalive-bench-" });
  // Ctrl-C or SIGTERM: finally blocks do not run on Deno.exit, so clean up here.
  const interrupted = (code: number) => () => {
    killEverything();
    Deno.removeSync(directory, { recursive: true });
    progress("interrupted; every process it started is killed");
    Deno.exit(code);
  };
  Deno.addSignalListener("SIGINT", interrupted(130));
  Deno.addSignalListener("SIGTERM", interrupted(143));
  try {
    const wantsC = options.only?.has("c") ?? true;
    const epollBinary = wantsC ? await compileEpollServer(directory) : "";
    const task = readServerTask("server");
    const variants = buildVariants(options, task, readServerTask("server:many"), epollBinary);
    const main = variants.filter((variant) => variant.table === "main");
    const watch = variants.filter((variant) => variant.table === "watch");
    progress(
      `${variants.length} variants, ${plural(options.runs, "run")}, ` +
        `${options.connections} connections, ` +
        `backlog ${options.backlog}; deno.json's server task: ${task.text}`,
    );

    const mainRuns: MainRun[] = [];
    const watchRuns: WatchRun[] = [];
    for (let run = 1; run <= options.runs; run++) {
      for (const variant of main) mainRuns.push(await measureMainRun(variant, options, run));
    }
    for (let run = 1; run <= options.runs; run++) {
      for (const variant of watch) watchRuns.push(await measureWatchRun(variant, options, run));
    }

    const machine = await describeMachine();
    const args = Deno.args.join(" ");
    const command = `deno task bench${args ? ` ${args}` : ""} (deno run -A ${SCRIPT}` +
      `${args ? ` ${args}` : ""})`;
    const elapsed = describeDuration(performance.now() - startedMs);
    if (options.json) {
      console.log(JSON.stringify(
        {
          command,
          machine,
          elapsed,
          options: { ...options, only: options.only && [...options.only] },
          variants,
          main: { runs: mainRuns, medians: mediansOf(mainRuns) },
          watch: { runs: watchRuns, medians: mediansOf(watchRuns) },
        },
        null,
        2,
      ));
      return;
    }
    if (main.length > 0) {
      console.log(renderTable(mainTable(main, mainRuns, options)));
      // CPU comes in clock ticks of 10 ms: say what one tick is worth here.
      const tick = 10 * (60_000 / IDLE_CPU_MS) / (options.connections / 1000);
      console.log(
        `(idle CPU is counted in 10 ms clock ticks: one tick in the ${IDLE_CPU_MS / 1000} s ` +
          `window is ${tick.toFixed(1)} ms/1k conns/min here)\n`,
      );
    }
    if (watch.length > 0) console.log(renderTable(watchTable(watch, watchRuns)) + "\n");
    if (options.only?.has("cost") ?? true) console.log(await tuningCostTable(options.runs) + "\n");
    console.log(
      `machine: nproc ${machine.nproc}, Linux ${machine.kernel}, ${machine.deno}, ` +
        `node ${machine.node}, ${machine.cc}, somaxconn ${machine.somaxconn}; ` +
        `${plural(options.runs, "run")}, backlog ${options.backlog}; command: ${command}; ` +
        `took ${elapsed}`,
    );
  } finally {
    killEverything();
    await Deno.remove(directory, { recursive: true }).catch(() => {});
  }
}

// The tuning-cost table: bench/tuning_cost.ts, in this namespace, with as many runs.
async function tuningCostTable(runs: number): Promise<string> {
  progress("tuning cost: setKeepAlive and setKeepAliveAll with 1,000 and 4,000 connections");
  const output = await runCommand([
    Deno.execPath(),
    "run",
    "-A",
    `${ROOT}/bench/tuning_cost.ts`,
    "--runs",
    String(Math.max(3, runs)),
  ]);
  return output.ok ? output.stdout.trimEnd() : `tuning cost: failed (${output.error})`;
}

async function main(): Promise<number> {
  let options: BenchOptions | "help";
  try {
    options = parseBenchArgs(Deno.args);
  } catch (error) {
    console.error(`bench: ${messageOf(error)} (see --help)`);
    return 2;
  }
  if (options === "help") {
    console.log(USAGE);
    return 0;
  }
  try {
    if (Deno.env.get(NAMESPACE_ENV) === undefined) return await runInNewNetworkNamespace();
    await bench(options);
    return 0;
  } catch (error) {
    // A SetupError says what is missing; anything else is a bug, said in one line too.
    const what = error instanceof SetupError ? "" : "unexpected error: ";
    console.error(`bench: ${what}${messageOf(error)}`);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main());

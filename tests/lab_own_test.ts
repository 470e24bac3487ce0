/**
 * Tests for `lab own` (lab/own*.ts): your own program behind the lab's
 * router that forgets idle flows.
 *
 * (Its flags, flow tracker, line reader and escaping: lab_own_parts_test.ts.)
 *
 * - The three worked runs of docs/lab.md, each untuned and tuned, all six
 *   at once (each lab is a sandbox of its own): `Deno.serve` + fetch,
 *   redis-server + ioredis, PostgreSQL + pg. Untuned: the lab exits 1, the
 *   router reports the flow forgotten and its packets dropped. Tuned: exit
 *   0, no flow forgotten. The commands are the docs' own, word for word.
 * - A server that never listens, and a quit request that ends everything
 *   within 2 s.
 *
 * The runs need namespaces, ip, unshare, setpriv, nft, conntrack (as an
 * ordinary user), redis-server and PostgreSQL: each skips with one line
 * without them, and fails when CI=true.
 */
import { assert, assertEquals, assertFalse, assertStringIncludes } from "@std/assert";
import type { OwnResult } from "../lab/own_report.ts";
import { trySandbox, unshareOptions } from "../lab/sandbox.ts";
import { locateTools } from "../lab/tools.ts";
import {
  asSandboxUser,
  delay,
  idMap,
  keepaliveSysctls,
  requiringTest,
  ROOT_DIR,
  run,
} from "./_helpers.ts";

// --- the worked runs ------------------------------------------------------------

// In the sandbox of `deno task test` (tests/run.ts: uid 0 of a user
// namespace that maps only the user who started it) the lab runs as that
// user, as they would run it (see tests/lab_run_test.ts): then the commands
// run with their uid, and PostgreSQL, which refuses uid 0, runs too.
const AS_USER = asSandboxUser();
const LAB = [
  ...AS_USER,
  Deno.execPath(),
  "run",
  "--allow-run",
  "--allow-read",
  "--allow-write",
  "lab/lab.ts",
  "own",
];

async function labUnavailableReason(): Promise<string | null> {
  if (Deno.build.os !== "linux") return "the lab needs Linux";
  const { missing } = await locateTools();
  const needed = missing.filter((tool) => tool.command !== "tcpdump");
  if (needed.length > 0) {
    return `${needed.map((t) => t.command).join(", ")} not installed ` +
      `(Debian: ${[...new Set(needed.map((t) => t.package))].join(" ")})`;
  }
  if (AS_USER.length === 0) return await trySandbox();
  const { code, stderr } = await run([...AS_USER, "unshare", ...unshareOptions(false), "true"]);
  return code === 0 ? null : `cannot make the lab's namespaces as this user: ${stderr.trim()}`;
}

async function commandMissing(command: string, pkg: string): Promise<string | null> {
  const found = await run(["sh", "-c", `command -v ${command}`]);
  return found.code === 0 ? null : `${command} is missing (Debian package ${pkg})`;
}

// PostgreSQL refuses uid 0. As an ordinary user (or the sandbox's user) the
// commands run with that uid; as root, examples/pg_server.sh becomes the
// postgres user, who must exist, and exist in this user namespace.
async function postgresMissing(): Promise<string | null> {
  const found = await run([
    "sh",
    "-c",
    "command -v initdb || ls /usr/lib/postgresql/*/bin/initdb",
  ]);
  if (found.code !== 0) return "PostgreSQL is missing (Debian package postgresql)";
  if (AS_USER.length > 0 || Deno.uid() !== 0) return null;
  const id = await run(["id", "-u", "postgres"]);
  if (id.code !== 0) {
    return "as root, the pg run needs the postgres user (Debian package postgresql)";
  }
  const uid = Number(id.stdout.trim());
  if (!idMap().some((r) => uid >= r.inside && uid - r.inside < r.count)) {
    return "PostgreSQL refuses uid 0, and no other uid exists in this user namespace";
  }
  return null;
}

const labReason = await labUnavailableReason();
const reasons = {
  fetch: labReason,
  redis: labReason ?? await commandMissing("redis-server", "redis-server"),
  pg: labReason ?? await postgresMissing(),
};

// The three worked runs of docs/lab.md: the server, the port, the client
// (untuned; the tuned one adds --tuned).
const RUNS = {
  fetch: {
    server: "deno run --allow-net examples/hello_server.ts --host {server}",
    port: "8080",
    client: "deno run --allow-net --allow-ffi examples/fetch_client.ts --host {server}",
  },
  redis: {
    server:
      "redis-server --bind {server} --port 6379 --protected-mode no --save '' --appendonly no",
    port: "6379",
    client: "deno run --allow-net --allow-env --allow-ffi examples/redis_client.ts --host {server}",
  },
  pg: {
    server: "sh examples/pg_server.sh",
    port: "5432",
    client: "deno run --allow-net --allow-env --allow-ffi examples/pg_client.ts --host {server}",
  },
};
type Example = keyof typeof RUNS;
const IDLE_SECONDS = 10; // the examples' default idle: two router timeouts

interface LabRun {
  code: number;
  result: OwnResult;
  stderr: string;
}

async function runLab(example: Example, tuned: boolean): Promise<LabRun> {
  const { server, port, client } = RUNS[example];
  const output = await run([
    ...LAB,
    "--server",
    server,
    "--port",
    port,
    "--client",
    tuned ? `${client} --tuned` : client,
    "--client-timeout",
    "120",
    "--json",
  ]);
  let result: OwnResult;
  try {
    result = JSON.parse(output.stdout);
  } catch {
    throw new Error(`lab own (${example}) printed no JSON; exit ${output.code}: ${output.stderr}`);
  }
  return { code: output.code, result, stderr: output.stderr };
}

// All six runs at once, started by the first test that wants one: each
// lab is a sandbox of its own (network, PID, IPC namespaces), so they cannot
// meet, and the suite waits about 20 s instead of six times that.
let hostBefore: Promise<string> | null = null;
let started: Map<string, Promise<LabRun>> | null = null;
async function startRuns(): Promise<Map<string, Promise<LabRun>>> {
  if (started) return started;
  hostBefore = hostState();
  await hostBefore;
  // The namespaces have no way out: the examples' dependencies are cached
  // first (in `deno task test`'s sandbox tests/run.ts cached them already).
  const files = ["hello_server", "fetch_client", "redis_client", "pg_client"]
    .map((name) => `examples/${name}.ts`);
  const cached = await run([Deno.execPath(), "cache", "--quiet", ...files]);
  assertEquals(cached.code, 0, `deno cache ${files.join(" ")}: ${cached.stderr}`);
  started = new Map();
  for (const example of Object.keys(RUNS) as Example[]) {
    if (reasons[example] !== null) continue;
    for (const tuned of [false, true]) {
      started.set(`${example} ${tuned}`, runLab(example, tuned));
    }
  }
  return started;
}

async function theRuns(example: Example): Promise<[LabRun, LabRun]> {
  const runs = await startRuns();
  return [await runs.get(`${example} false`)!, await runs.get(`${example} true`)!];
}

function summary(run: LabRun): string {
  const { client, flows, drops } = run.result;
  return JSON.stringify({ code: run.code, stderr: run.stderr, client, flows, drops });
}

function assertLost(run: LabRun) {
  const { result } = run;
  assertEquals(run.code, 1, summary(run));
  assertEquals(result.client?.exitCode, 1, summary(run));
  const forgotten = result.flows.filter((flow) => flow.end === "forgotten");
  assert(forgotten.length >= 1, `the router forgot no flow: ${summary(run)}`);
  for (const flow of forgotten) {
    // Forgotten after about the router's timeout of silence, not before.
    assert(flow.idleSeconds! >= result.timeoutSeconds - 1, summary(run));
  }
  const dropped = forgotten.reduce((n, f) => n + f.droppedFromClient + f.droppedFromServer, 0);
  assert(dropped > 0, `no packet of the forgotten flow was dropped: ${summary(run)}`);
  assert(result.drops.invalid >= dropped, summary(run));
}

function assertKept(run: LabRun) {
  const { result } = run;
  assertEquals(run.code, 0, summary(run));
  assertEquals(result.client?.exitCode, 0, summary(run));
  assert(result.flows.length >= 1, `the router saw no flow: ${summary(run)}`);
  assertEquals(result.flows.filter((flow) => flow.end === "forgotten"), [], summary(run));
  // It really stayed idle longer than the router's timeout, twice over.
  const client = result.client!;
  assert(client.endedSeconds! - client.startedSeconds >= IDLE_SECONDS, summary(run));
  for (const flow of result.flows) {
    if (flow.lowestRemainingSeconds !== null) {
      assert(flow.lowestRemainingSeconds >= 1, summary(run));
    }
  }
}

function exampleTest(example: Example, name: string) {
  requiringTest(name, reasons[example], async () => {
    const [untuned, tuned] = await theRuns(example);
    assertLost(untuned);
    assertKept(tuned);
  });
}

exampleTest(
  "fetch",
  "lab own, Deno.serve + fetch with a 60 s pool: lost to the router untuned, kept by setKeepAliveAll",
);
exampleTest(
  "redis",
  "lab own, redis-server + ioredis: the GET after the idle is lost untuned, answered when tuned",
);
exampleTest(
  "pg",
  "lab own, PostgreSQL + pg: the query after the idle is lost untuned, answered when tuned",
);

Deno.test("lab own: docs/lab.md shows the tests' commands word for word", async () => {
  const docs = await Deno.readTextFile(`${ROOT_DIR}/docs/lab.md`);
  for (const { server, port, client } of Object.values(RUNS)) {
    assertStringIncludes(docs, `--server "${server}"`);
    assertStringIncludes(docs, `--port ${port}`);
    assertStringIncludes(docs, `--client "${client}"`);
    assertStringIncludes(docs, `--client "${client} --tuned"`);
  }
});

// The host's state that the lab must never change.
async function hostState(): Promise<string> {
  const read = (path: string) => Deno.readTextFile(path).then((t) => t.trim(), () => "absent");
  return JSON.stringify({
    keepalive: await keepaliveSysctls(),
    ipForward: await read("/proc/sys/net/ipv4/ip_forward"),
    conntrack: await read("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established"),
    loose: await read("/proc/sys/net/netfilter/nf_conntrack_tcp_loose"),
    namespaces: (await run(["ip", "netns", "list"])).stdout.split("\n")
      .filter((line) => line.startsWith("own-")),
  });
}

// This checkout's lab/own_inside.ts, while a lab runs: the first process of
// its PID namespace. When it is gone, everything it started is gone.
const INSIDE = `${Deno.realPathSync(ROOT_DIR)}/lab/own_inside.ts`;
async function labProcesses(): Promise<string> {
  const found = await run(["pgrep", "-af", "--", INSIDE]);
  return found.stdout.split("\n").filter((line) => !line.includes("pgrep")).join("\n").trim();
}

requiringTest(
  "lab own: a server that never listens is one line with its exit code, and its last lines",
  labReason,
  async () => {
    const output = await run([
      ...LAB,
      "--server",
      "echo 'no config\x1b[31m' >&2; exit 3",
      "--port",
      "9",
      "--client",
      "true",
    ]);
    assertEquals(output.code, 1, output.stderr);
    const lines = output.stderr.trim().split("\n");
    assertEquals(lines.length, 1, output.stderr);
    assertStringIncludes(lines[0], "ended before anything listened on port 9 (exit code 3)");
    assertStringIncludes(output.stdout, "no config\\u001b[31m");
    assertFalse(output.stdout.includes("\x1b"), "a program's escape sequence printed raw");
  },
);

requiringTest(
  "lab own: SIGTERM ends the lab and everything it started within 2 s",
  labReason,
  async () => {
    await startRuns(); // the six runs go on meanwhile: this one is quick
    const child = new Deno.Command(LAB[0], {
      args: [
        ...LAB.slice(1),
        "--server",
        RUNS.fetch.server,
        "--port",
        "8080",
        "--client",
        "sleep 600",
      ],
      cwd: ROOT_DIR,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).spawn();
    const stdout = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    const errors = new Response(child.stderr).text();
    for (let seen = ""; !seen.includes("client: started");) {
      const { value, done } = await stdout.read();
      if (done) throw new Error(`lab own ended before its client started: ${seen}${await errors}`);
      seen += value;
    }
    // This lab's inner half: its plan names the client (the six runs may go on).
    const found = await run(["pgrep", "-f", "--", `${INSIDE} .*sleep 600`]);
    const pid = found.stdout.trim().split("\n");
    assert(pid.length >= 1 && pid[0] !== "", "no own_inside.ts running");
    const signalled = performance.now();
    child.kill("SIGTERM");
    const status = await child.status;
    stdout.cancel().catch(() => {});
    const seconds = (performance.now() - signalled) / 1000;
    assertEquals(status.code, 1);
    assertStringIncludes(await errors, "stopped; every namespace and process it made is gone");
    assert(seconds < 2, `the lab took ${seconds.toFixed(2)} s to stop`);
    // Its inner half, the first process of its PID namespace, is gone too.
    for (let waited = 0; waited < 2_000; waited += 100) {
      const alive = await Promise.all(pid.map((p) => run(["kill", "-0", p])));
      if (alive.every((r) => r.code !== 0)) return;
      await delay(100);
    }
    throw new Error(`own_inside.ts (pid ${pid.join(", ")}) outlived the lab by 2 s`);
  },
);

// One lab own run with these flags: its exit code and its JSON report.
async function labOwn(...args: string[]): Promise<{ code: number; result: OwnResult }> {
  const output = await run([...LAB, ...args, "--json"]);
  try {
    return { code: output.code, result: JSON.parse(output.stdout) };
  } catch {
    throw new Error(`lab own printed no JSON; exit ${output.code}: ${output.stderr}`);
  }
}

requiringTest(
  "lab own: a server the client cannot reach (loopback only) is said so, not taken for listening",
  labReason,
  async () => {
    await startRuns();
    const { code, result } = await labOwn(
      "--server",
      "deno run --allow-net examples/hello_server.ts --host 127.0.0.1",
      "--port",
      "8080",
      "--client",
      "true",
    );
    assertEquals(code, 1);
    assertStringIncludes(result.failure ?? "", "only at 127.0.0.1, which the client cannot reach");
    assertEquals(result.client, null, "the client ran against a server it cannot reach");
  },
);

requiringTest(
  "lab own: --client-timeout stops a client that floods its output, on time",
  labReason,
  async () => {
    await startRuns();
    const { code, result } = await labOwn(
      "--server",
      RUNS.fetch.server,
      "--port",
      "8080",
      "--client",
      "exec yes",
      "--client-timeout",
      "20",
    );
    assertEquals(code, 1);
    const client = result.client!;
    const ran = (client.endedSeconds ?? Infinity) - (result.listeningAfterSeconds ?? 0);
    // 20 s, then SIGTERM (yes ends on it at once; the stop's grace is 3 s).
    assert(ran < 20 + 4.5, `yes ran ${ran.toFixed(1)} s under a 20 s --client-timeout`);
    assert(ran >= 20, `stopped after ${ran.toFixed(1)} s, before the 20 s --client-timeout`);
  },
);

requiringTest(
  "lab own: a server command that goes to the background is noted, whichever comes first",
  reasons.redis,
  async () => {
    await startRuns();
    const { code, result } = await labOwn(
      "--server",
      "redis-server --bind {server} --port 6379 --protected-mode no --save '' --appendonly no " +
        "--dir $TMPDIR --daemonize yes",
      "--port",
      "6379",
      "--client",
      "true",
    );
    assertEquals(code, 0, JSON.stringify(result.failure));
    assert(
      result.notes.some((note) => note.includes("went to the background")),
      JSON.stringify(result.notes),
    );
  },
);

requiringTest(
  "lab own: after the runs no process of the lab is left, and the host is as it was",
  labReason,
  async () => {
    const runs = await startRuns();
    await Promise.allSettled(runs.values());
    assertEquals(await labProcesses(), "", "processes of the lab are left");
    assertEquals(await hostState(), await hostBefore, "the host's sysctls or namespaces changed");
  },
);

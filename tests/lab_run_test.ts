/**
 * Tests that run lab.ts for real: its --json checked against the settings
 * (with values other than the defaults, so nothing can be hard-coded), the
 * SVG against the JSON, a run as an ordinary user (uid 65534), and a run
 * stopped midway. After each: no process or namespace of the lab is left,
 * and the host's sysctls are as they were.
 *
 * These need what the lab needs (ip, unshare, setpriv, tcpdump, nft, and
 * namespaces): they skip with one line without it, and fail when CI=true.
 */
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { XMLValidator } from "fast-xml-parser";
import type { LabResult, Packet, ScenarioResult } from "../lab/result.ts";
import { trySandbox, unshareOptions } from "../lab/sandbox.ts";
import { locateTools } from "../lab/tools.ts";
import {
  asSandboxUser,
  delay,
  keepaliveSysctls,
  otherUserUnavailableReason,
  requiringTest,
  ROOT_DIR,
  run,
  USER_PATH,
} from "./_helpers.ts";

// In the sandbox of `deno task test` the lab runs as the user who started
// it (asSandboxUser in _helpers.ts).
const AS_USER = asSandboxUser();

// lab.ts as the tests start it. (With AS_USER, unshare becomes lab.ts: the
// same process, which gets the signals the tests send.)
const LAB = [
  ...AS_USER,
  Deno.execPath(),
  "run",
  "--allow-run",
  "--allow-read",
  "--allow-write",
  "lab/lab.ts",
];

async function labUnavailableReason(): Promise<string | null> {
  if (Deno.build.os !== "linux") return "the lab needs Linux";
  const { missing } = await locateTools();
  if (missing.length > 0) {
    return `${missing.map((t) => t.command).join(", ")} not installed ` +
      `(Debian: ${[...new Set(missing.map((t) => t.package))].join(" ")})`;
  }
  if (AS_USER.length === 0) return await trySandbox();
  // The sandbox the lab will make as the sandbox's user.
  const { code, stderr } = await run([...AS_USER, "unshare", ...unshareOptions(false), "true"]);
  return code === 0 ? null : `cannot make the lab's namespaces as this user: ${stderr.trim()}`;
}

const reason = await labUnavailableReason();

// The host's state that the lab must never change.
async function hostState() {
  const read = (path: string) => Deno.readTextFile(path).then((t) => t.trim(), () => "absent");
  return {
    keepalive: await keepaliveSysctls(),
    ipForward: await read("/proc/sys/net/ipv4/ip_forward"),
    conntrack: await read("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established"),
    loose: await read("/proc/sys/net/netfilter/nf_conntrack_tcp_loose"),
    // The names the lab gives its namespaces, should one reach the host's
    // list (other tests make namespaces of their own there meanwhile).
    namespaces: (await run(["ip", "netns", "list"])).stdout.split("\n")
      .filter((line) => /^(blog|dead|nat)-/.test(line)),
  };
}

// This checkout's lab/inside.ts, while a lab runs: the first process of the
// lab's PID namespace. When it is gone, the kernel has killed everything
// else in that namespace (tcpdump, the scripts), and the namespaces went with
// them. (A lab run from another checkout is not ours to count.)
const INSIDE = `${Deno.realPathSync(ROOT_DIR)}/lab/inside.ts`;
async function labProcesses(): Promise<string> {
  const found = await run(["pgrep", "-af", "--", INSIDE]);
  return found.stdout.split("\n").filter((line) => !line.includes("pgrep")).join("\n").trim();
}

function labTest(name: string, fn: () => Promise<void>, needs: string | null = reason) {
  requiringTest(name, needs, async () => {
    const before = await hostState();
    try {
      await fn();
    } finally {
      assertEquals(await labProcesses(), "", "processes of the lab are left");
      assertEquals(await hostState(), before, "the host's sysctls or namespaces changed");
    }
  });
}

async function runLab(args: string[]): Promise<LabResult> {
  const output = await run([...LAB, "--json", ...args]);
  if (output.code !== 0) {
    throw new Error(
      `lab.ts ${args.join(" ")}: exit ${output.code}: ${output.stderr}${
        output.stdout.slice(-3000)
      }`,
    );
  }
  return JSON.parse(output.stdout);
}

function scenario(result: LabResult, name: string): ScenarioResult {
  const found = result.scenarios.find((s) => s.name === name);
  if (!found) throw new Error(`no scenario ${name} in ${result.scenarios.map((s) => s.name)}`);
  return found;
}

const kind = (packets: Packet[], what: Packet["kind"], from: Packet["from"]) =>
  packets.filter((p) => p.kind === what && p.from === from);

function gaps(times: number[]): number[] {
  return times.slice(1).map((t, i) => t - times[i]);
}

labTest(
  "lab blog: the probe cadence is max(time, intvl) and tcpdump counts what TCPKeepAlive counts",
  async () => {
    const settings = [[2, 2], [1, 3], [3, 1]];
    const results = await Promise.all(
      settings.map(([time, intvl]) =>
        runLab(["blog", "--time", String(time), "--intvl", String(intvl)])
      ),
    );
    for (const [i, [time, intvl]] of settings.entries()) {
      const blog = scenario(results[i], "blog");
      const probes = kind(blog.packets, "keepalive probe", "server");
      const answers = kind(blog.packets, "probe answered", "client");
      const cadence = Math.max(time, intvl);
      assert(probes.length >= 4, `(${time}, ${intvl}): ${probes.length} probes`);
      assertEquals(answers.length, probes.length, `(${time}, ${intvl}): every probe answered`);
      for (const gap of gaps(probes.map((p) => p.seconds))) {
        assert(
          Math.abs(gap - cadence) <= cadence * 0.1,
          `(${time}, ${intvl}): a gap of ${gap} s, not ${cadence}`,
        );
      }
      const handshakeEnd = blog.packets.filter((p) => p.kind === "handshake").at(-1)!.seconds;
      const first = probes[0].seconds - handshakeEnd;
      assert(
        Math.abs(first - time) <= time * 0.1,
        `(${time}, ${intvl}): first probe after ${first} s`,
      );
      assertEquals(blog.observed.probesCounted, probes.length, "tcpdump and TCPKeepAlive disagree");
      assertEquals(blog.observed.probesCaptured, probes.length);
      assert(blog.passed, JSON.stringify(blog.checks));
    }
  },
);

labTest(
  "lab dead-peer: the server notices time + intvl x probes after the last answer",
  async () => {
    const results = await Promise.all(
      [3, 4].map((probes) => runLab(["dead-peer", "--probes", String(probes)])),
    );
    for (const [i, count] of [3, 4].entries()) {
      const dead = scenario(results[i], "dead-peer");
      const lost = kind(dead.packets, "keepalive probe", "server").filter((p) => p.fate === "lost");
      assertEquals(lost.length, count, `probes ${count}: unanswered probes`);
      assertEquals(kind(dead.packets, "probe answered", "client").length, 2);
      const lastAnswer = dead.packets.filter((p) => p.from === "client").at(-1)!.seconds;
      const timedOut = dead.moments.find((m) =>
        m.host === "server" && m.text.startsWith("timed out")
      );
      if (!timedOut) throw new Error("the server never timed out");
      assertEquals(timedOut.text, "timed out (ETIMEDOUT)");
      const detected = timedOut.seconds - lastAnswer;
      const expected = 2 + 1 * count;
      assert(
        detected >= expected - 0.05 && detected <= expected + 1.5,
        `probes ${count}: ${detected} s, not ${expected}`,
      );
      assertEquals(dead.expected.detectedAfterSeconds, expected);
      assert(dead.passed, JSON.stringify(dead.checks));
    }
  },
);

labTest(
  "lab nat: without keepalive the line is lost; keepalive below the router's timeout keeps the flow",
  async () => {
    const runs = [{ timeout: 5, userTimeout: 4 }, { timeout: 8, userTimeout: 6 }];
    const results = await Promise.all(
      runs.map((r) =>
        runLab([
          "nat",
          "--middlebox-timeout",
          String(r.timeout),
          "--user-timeout",
          String(r.userTimeout),
        ])
      ),
    );
    for (const [i, { timeout, userTimeout }] of runs.entries()) {
      const where = `timeout ${timeout}`;
      const none = scenario(results[i], "nat-no-keepalive");
      const line = kind(none.packets, "data", "client");
      assertEquals(line.length, 1, where);
      assertEquals(line[0].fate, "dropped-at-router", where);
      assert(
        kind(none.packets, "retransmission", "client").every((p) => p.fate === "dropped-at-router"),
      );
      assert(
        !none.packets.some((p) => p.from === "server" && p.length > 0),
        `${where}: the server answered`,
      );
      assertEquals(none.observed.lineReachedServer, false, where);
      assertEquals(
        none.observed.timedOutAtSeconds,
        null,
        `${where}: no user timeout, no failure yet`,
      );
      const forgotten = none.conntrack?.forgottenAtSeconds;
      assert(
        forgotten && forgotten >= timeout - 0.5 && forgotten <= timeout + 1.5,
        `${where}: forgotten at ${forgotten}`,
      );

      const bounded = scenario(results[i], "nat-user-timeout");
      const sent = bounded.observed.lineSentAtSeconds as number;
      const failed = bounded.observed.timedOutAtSeconds as number;
      assert(
        failed - sent >= userTimeout - 0.05 && failed - sent <= userTimeout + 1.5,
        `${where}: failed ${failed - sent} s after the line`,
      );
      assertEquals(bounded.observed.lineReachedServer, false, where);

      const below = scenario(results[i], "nat-idle-below");
      assert((below.observed.survivedSeconds as number) >= 3 * timeout, where);
      assertEquals(below.observed.echoReceived, true, where);
      assertEquals(
        below.conntrack?.forgottenAtSeconds,
        null,
        `${where}: the router forgot a kept-alive flow`,
      );
      const probes = kind(below.packets, "keepalive probe", "client");
      assert(probes.length >= 3 && probes.every((p) => p.fate === "delivered"), where);
      assert(
        gaps(probes.map((p) => p.seconds)).every((gap) => gap < timeout),
        `${where}: a gap above the timeout`,
      );
      assert(
        below.packets.some((p) =>
          p.from === "server" && p.kind === "data" && p.fate === "delivered"
        ),
        `${where}: no echo`,
      );

      const above = scenario(results[i], "nat-idle-above");
      const aboveProbes = kind(above.packets, "keepalive probe", "client");
      assert(
        aboveProbes.length >= 1 && aboveProbes.every((p) => p.fate === "dropped-at-router"),
        where,
      );
      assert(above.observed.timedOutAtSeconds !== null, `${where}: the dead flow was not detected`);
      assert(results[i].passed, JSON.stringify(results[i].scenarios.map((s) => s.checks)));
    }
  },
);

// Becoming uid 65534 takes real root (setpriv), and a uid 65534 to become;
// the lab itself does not.
labTest(
  "the whole lab runs as an ordinary user (uid 65534), and its SVG draws every packet of its JSON",
  async () => {
    // A place uid 65534 can read and write: the scripts, deno, and a Deno
    // cache with the npm packages already in it.
    const dir = await Deno.makeTempDir({ prefix: "lab-user-" });
    try {
      const repo = `${dir}/repo`;
      await Deno.mkdir(repo, { recursive: true });
      for (const entry of Deno.readDirSync(ROOT_DIR)) {
        if (entry.isFile && /\.(ts|json|lock)$/.test(entry.name)) {
          await Deno.copyFile(`${ROOT_DIR}/${entry.name}`, `${repo}/${entry.name}`);
        }
      }
      // The lab, its helpers, and the package the scripts load for --idle.
      for (const folder of ["lab", "tools", "keepalive"]) {
        await run(["cp", "-r", `${ROOT_DIR}/${folder}`, `${repo}/${folder}`]);
      }
      await Deno.copyFile(Deno.execPath(), `${dir}/deno`);
      const info = JSON.parse((await run([Deno.execPath(), "info", "--json"])).stdout);
      await Deno.mkdir(`${dir}/cache`);
      await run(["cp", "-r", `${info.denoDir}/npm`, `${dir}/cache/npm`]);
      await run(["chown", "-R", "65534:65534", dir]);
      await Deno.chmod(dir, 0o755);
      // An ordinary user's PATH, not root's: ip, nft and conntrack are in
      // /usr/sbin, off it, and the lab must find them all the same.
      const output = await run([
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "env",
        `PATH=${USER_PATH}`,
        `HOME=${dir}`,
        `DENO_DIR=${dir}/cache`,
        `${dir}/deno`,
        "run",
        "--allow-run",
        "--allow-read",
        "--allow-write",
        "lab/lab.ts",
        "--json",
        "--svg",
        `${dir}/lab.svg`,
      ], { cwd: repo });
      assertEquals(output.code, 0, output.stderr + output.stdout.slice(-3000));
      const result: LabResult = JSON.parse(output.stdout);
      assertEquals(result.scenarios.map((s) => s.name), [
        "blog",
        "dead-peer",
        "nat-no-keepalive",
        "nat-user-timeout",
        "nat-idle-below",
        "nat-idle-above",
      ]);
      assert(result.passed, JSON.stringify(result.scenarios.map((s) => s.checks)));
      // Every tool was found, and used: the router's countdown, which an
      // ordinary user can only read with conntrack, is in each nat scenario.
      assertEquals(result.notes, [], "a tool was reported missing");
      for (const nat of result.scenarios.filter((s) => s.name.startsWith("nat-"))) {
        assert(nat.conntrack !== null, `${nat.name}: the router's table was not read`);
        assert(nat.checks.length > 0 && nat.checks.every((c) => c.passed), nat.name);
      }
      assertEquals(
        (await Deno.stat(`${dir}/lab.svg`)).uid,
        65534,
        "the SVG was not written by uid 65534",
      );

      const svg = await Deno.readTextFile(`${dir}/lab.svg`);
      assertEquals(XMLValidator.validate(svg), true);
      const arrows = [
        ...svg.matchAll(/<g class="packet[^"]*"[^>]*data-kind="([^"]*)"[^>]*data-fate="([^"]*)"/g),
      ];
      const packets = result.scenarios.flatMap((s) => s.packets);
      assertEquals(arrows.length, packets.length, "one arrow per packet");
      assertEquals(arrows.map((a) => `${a[1]}/${a[2]}`), packets.map((p) => `${p.kind}/${p.fate}`));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
  reason ?? otherUserUnavailableReason(65534),
);

labTest(
  "a lab stopped with SIGTERM midway is gone within 2 s, with everything it made",
  async () => {
    const child = new Deno.Command(LAB[0], {
      args: [...LAB.slice(1), "blog", "dead-peer"],
      cwd: ROOT_DIR,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const stdout = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let seen = "";
    while (!seen.includes("watching")) {
      const { value, done } = await stdout.read();
      if (done) break;
      seen += value;
    }
    assertStringIncludes(seen, "watching", "the lab never got going");
    assert((await labProcesses()).includes("inside.ts"), "nothing to stop: the lab is not running");
    const stopped = performance.now();
    child.kill("SIGTERM");
    const status = await child.status;
    let left = await labProcesses();
    while (left !== "" && performance.now() - stopped < 2_000) {
      await delay(50);
      left = await labProcesses();
    }
    const seconds = (performance.now() - stopped) / 1000;
    assertEquals(left, "", `still there after ${seconds.toFixed(2)} s`);
    assert(seconds < 2, `${seconds} s`);
    assertEquals(status.code, 1);
    assertStringIncludes(
      await new Response(child.stderr).text(),
      "lab.ts: stopped; every namespace and process it made is gone",
    );
    await stdout.cancel();
  },
);

// --- a slow, full or stalled stdout, and a diagram path that changed -----------

const SHORT_BLOG = ["blog", "--time", "1", "--intvl", "1"];
const FILLER = 65_000; // a pipe holds 65,536 bytes

// Starts lab.ts behind a stdout pipe that nobody reads yet and that is
// nearly full already: the shell writes FILLER x's and a newline into it,
// then becomes the lab (same pid). The results then wait for a reader.
function labBehindFullPipe(args: string[]): Deno.ChildProcess {
  const fill = `head -c ${FILLER} /dev/zero | tr '\\0' x; echo; exec "$@"`;
  return new Deno.Command("sh", {
    args: ["-c", fill, "sh", ...LAB, ...args],
    cwd: ROOT_DIR,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

// Waits until the lab `pid` has started its sandbox and the sandbox has
// ended: the lab has its results, and only has them to write.
async function sandboxCameAndWent(pid: number) {
  const sandbox = async () =>
    (await run(["pgrep", "-P", String(pid), "-f", "inside.ts"])).stdout.trim();
  const started = performance.now();
  let seen = false;
  while (performance.now() - started < 120_000) {
    const there = await sandbox() !== "";
    if (seen && !there) return;
    seen ||= there;
    await delay(100);
  }
  throw new Error(seen ? "the lab's sandbox never ended" : "the lab never started its sandbox");
}

// The child's status, or the SIGKILL it got when it was still there after `ms`.
async function statusWithin(child: Deno.ChildProcess, ms: number) {
  const timer = setTimeout(() => child.kill("SIGKILL"), ms);
  try {
    return await child.status;
  } finally {
    clearTimeout(timer);
  }
}

labTest("a slow stdout reader gets every result: the lab waits for it, however long", async () => {
  const child = labBehindFullPipe([...SHORT_BLOG, "--json"]);
  let ended = false;
  child.status.then(() => ended = true);
  await sandboxCameAndWent(child.pid);
  await delay(3_000); // the reader takes its time
  assert(!ended, "the lab did not wait for its reader");
  const [stdout, stderr, status] = await Promise.all([
    new Response(child.stdout).text(),
    new Response(child.stderr).text(),
    child.status,
  ]);
  assertEquals([status.code, stderr], [0, ""]);
  assertEquals(stdout.slice(0, FILLER + 1), "x".repeat(FILLER) + "\n");
  const result: LabResult = JSON.parse(stdout.slice(FILLER + 1));
  assertEquals(result.scenarios.map((s) => s.name), ["blog"]);
  assert(result.passed, JSON.stringify(result.scenarios.map((s) => s.checks)));
});

labTest("SIGTERM or SIGINT while the lab waits for its stdout ends it at once", async () => {
  await Promise.all((["SIGTERM", "SIGINT"] as const).map(async (signal) => {
    const child = labBehindFullPipe(SHORT_BLOG);
    const stderr = new Response(child.stderr).text();
    await sandboxCameAndWent(child.pid);
    await delay(1_000);
    child.kill(signal);
    const status = await statusWithin(child, 10_000);
    await child.stdout.cancel();
    assertEquals(status.signal, null, `${signal}: ignored; it took SIGKILL to end the lab`);
    assertEquals(status.code, 1, signal);
    assertEquals(await stderr, "lab.ts: stopped before stdout took all the results\n", signal);
  }));
});

labTest("a stdout that refuses the results (> /dev/full) is one line and exit code 1", async () => {
  const output = await run(["sh", "-c", 'exec "$@" > /dev/full', "sh", ...LAB, ...SHORT_BLOG]);
  assertEquals(output.code, 1);
  assertEquals(
    output.stderr,
    "lab.ts: the results could not be written to stdout: No space left on device (os error 28)\n",
  );
});

labTest(
  "a named pipe put in place of the --svg file during the run is refused, not waited on",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "lab-svg-" });
    try {
      const svg = `${dir}/lab.svg`;
      await Deno.writeTextFile(svg, "");
      const child = new Deno.Command(LAB[0], {
        args: [...LAB.slice(1), ...SHORT_BLOG, "--json", "--svg", svg],
        cwd: ROOT_DIR,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const output = Promise.all([
        new Response(child.stdout).text(),
        new Response(child.stderr).text(),
      ]);
      const started = performance.now();
      while ((await run(["pgrep", "-P", String(child.pid), "-f", "inside.ts"])).stdout === "") {
        if (performance.now() - started > 60_000) throw new Error("the lab never started");
        await delay(100);
      }
      await Deno.remove(svg);
      assertEquals((await run(["mkfifo", svg])).code, 0);
      const status = await statusWithin(child, 60_000);
      const [stdout, stderr] = await output;
      assertEquals(status.signal, null, "the lab waited for a reader of the pipe");
      assertEquals(status.code, 1);
      assertEquals(
        stderr,
        `lab.ts: cannot write ${
          JSON.stringify(svg)
        }: it is a named pipe (FIFO), not a regular file any more\n`,
      );
      assertEquals(JSON.parse(stdout).scenarios[0].name, "blog", "the results are still printed");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

/**
 * Helpers for the kit's tests: spawn a script as its own process and read its
 * output line by line, and make throwaway network namespaces for tests that
 * change sysctls or need their own network.
 *
 * @module
 */
import { assertEquals } from "@std/assert";
import { parseNetstat } from "@kakit/keepalive/proc-net";

/** Resolves after `ms` milliseconds. */
export const delay = (ms: number): Promise<void> =>
  new Promise((resolve) => setTimeout(resolve, ms));

/** True when the tests run in CI, where tests that need root must run, not skip. */
export const CI = Deno.env.get("CI") === "true";

/** server.ts's engine for the servers tests start: "epoll" when KAKIT_SERVER_ENGINE says so. */
export const SERVER_ENGINE = Deno.env.get("KAKIT_SERVER_ENGINE") === "epoll" ? "epoll" : "deno";

/** The repository's root directory, where the scripts and deno.json live. */
export const ROOT_DIR = `${import.meta.dirname}/../`;

/**
 * One line of /proc/self/uid_map or gid_map: `count` ids from `inside` in
 * this process's user namespace are the ids from `outside` in its parent's.
 */
export interface IdRange {
  inside: number;
  outside: number;
  count: number;
}

/**
 * This process's user namespace's map of user (or group) ids. The machine's
 * own namespace maps every id to itself (one range of 4294967295); a user
 * namespace an ordinary user made (`unshare -r`, as `deno task test` does,
 * see tests/run.ts) maps only that user, to uid 0.
 */
export function idMap(kind: "uid" | "gid" = "uid"): IdRange[] {
  return Deno.readTextFileSync(`/proc/self/${kind}_map`).trim().split("\n").map((line) => {
    const [inside, outside, count] = line.trim().split(/\s+/).map(Number);
    return { inside, outside, count };
  });
}

/** An ordinary user's PATH: no /usr/sbin, where Debian keeps nft and conntrack. */
export const USER_PATH = "/usr/local/bin:/usr/bin:/bin";

/**
 * What to put before the lab's command so that it runs as the user who
 * started `deno task test`, as they would run it themselves. In the tests'
 * sandbox (tests/run.ts: uid 0 of a user namespace that maps only that
 * user), a user namespace of its own maps uid 0 back to their uid, with an
 * ordinary user's PATH (the lab must find nft and conntrack itself). Run as
 * uid 0 there, lab/sandbox.ts would take it for real root: tcpdump would
 * try to become the `tcpdump` user, who does not exist there, and
 * PostgreSQL would refuse to run. As real root (CI) and outside a sandbox:
 * nothing.
 */
export function asSandboxUser(): string[] {
  if (Deno.build.os !== "linux" || Deno.uid() !== 0) return [];
  const [uids, gids] = [idMap("uid"), idMap("gid")];
  if (uids.length !== 1 || uids[0].count !== 1 || gids.length !== 1 || gids[0].count !== 1) {
    return [];
  }
  return [
    "env",
    `PATH=${USER_PATH}`,
    "unshare",
    "--user",
    `--map-user=${uids[0].outside}`,
    `--map-group=${gids[0].outside}`,
    "--keep-caps",
  ];
}

/**
 * Why this process cannot become user `uid` (`setpriv --reuid`), or null
 * when it can: it takes root, and `uid` must exist in this user namespace.
 * In `deno task test`'s sandbox only uid 0 does.
 */
export function otherUserUnavailableReason(uid: number): string | null {
  if (Deno.build.os !== "linux") return "setpriv is Linux only";
  if (Deno.uid() !== 0) return `becoming uid ${uid} (setpriv) needs root`;
  if (!idMap().some((r) => uid >= r.inside && uid - r.inside < r.count)) {
    return `uid ${uid} does not exist in this user namespace (only uid 0 does in the sandbox of ` +
      "deno task test, unshare -r): becoming it needs real root";
  }
  return null;
}

/** Why tests that need network namespaces cannot run here, or null when they can. */
export function netnsUnavailableReason(): string | null {
  if (Deno.build.os !== "linux") return "network namespaces are Linux only";
  // uid 0 of a user namespace counts: there, it may make network namespaces.
  if (Deno.uid() !== 0) {
    return "creating network namespaces needs root or a user namespace " +
      "(deno task test makes one where the system allows it)";
  }
  try {
    const { success } = new Deno.Command("ip", { args: ["-V"], stdout: "null", stderr: "null" })
      .outputSync();
    if (!success) return "`ip -V` failed";
  } catch {
    return "the `ip` command (Debian package iproute2) is missing";
  }
  // Root in a container may still lack CAP_SYS_ADMIN: try making one.
  try {
    const { success } = new Deno.Command("unshare", {
      args: ["--net", "true"],
      stdout: "null",
      stderr: "null",
    })
      .outputSync();
    if (!success) return "this root cannot create network namespaces (no CAP_SYS_ADMIN?)";
  } catch {
    return "the `unshare` command (Debian package util-linux) is missing";
  }
  return netnsDirUnavailableReason();
}

// `ip netns add` writes in /run/netns (making it in /run first). In a user
// namespace the host's /run is not uid 0's (its owner shows as 65534), so
// the sandbox of `deno task test` mounts a /run/netns of its own.
function netnsDirUnavailableReason(): string | null {
  for (const dir of ["/run/netns", "/run"]) {
    let owner: number | null;
    try {
      owner = Deno.statSync(dir).uid;
    } catch {
      continue; // no /run/netns yet: `ip netns add` makes it in /run
    }
    if (owner === 0) return null;
    return `${dir} is not uid 0's here, so \`ip netns add\` cannot work (a user namespace ` +
      "without a /run/netns of its own? deno task test gives it one)";
  }
  return "there is no /run for `ip netns add` to keep its namespaces in";
}

/**
 * Deletes namespaces left by an earlier test run that was killed before it
 * could clean up (its `finally` blocks never ran), with the processes in them.
 */
export async function removeStaleNamespaces(): Promise<void> {
  const { stdout } = await run(["ip", "netns", "list"]);
  for (const [, name, pid] of stdout.matchAll(/^(kakit-(\d+)-\d+)/gm)) {
    if (Number(pid) === Deno.pid || (await run(["kill", "-0", pid])).code === 0) continue;
    const pids = (await run(["ip", "netns", "pids", name])).stdout.split(/\s+/).filter(Boolean);
    if (pids.length > 0) await run(["kill", "-KILL", ...pids]);
    await run(["ip", "netns", "delete", name]);
  }
}

let staleRemoved: Promise<void> | null = null;

/**
 * Registers a test that needs root and `ip`. On a laptop without them it is
 * skipped with a one-line reason; with CI=true it runs and fails loudly.
 */
export function netnsTest(name: string, fn: (t: Deno.TestContext) => Promise<void>): void {
  requiringTest(name, netnsUnavailableReason(), fn);
}

/**
 * Registers a test that needs something the machine may lack; `reason` says
 * what is missing, or is null when nothing is. Without it the test is
 * skipped with that one line, except with CI=true: then it runs and fails
 * loudly, naming what is missing.
 */
export function requiringTest(
  name: string,
  reason: string | null,
  fn: (t: Deno.TestContext) => Promise<void>,
): void {
  if (reason !== null && !CI) {
    console.warn(`skipping "${name}": ${reason}`);
    Deno.test({ name, ignore: true, fn });
    return;
  }
  Deno.test(name, async (t) => {
    if (reason !== null) throw new Error(`CI=true, so this test must run, but ${reason}`);
    await fn(t);
  });
}

/** Output of a finished command. */
export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion and returns its exit code and output. */
export async function run(cmd: string[], options: { cwd?: string } = {}): Promise<CommandResult> {
  const output = await new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    cwd: options.cwd ?? ROOT_DIR,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

/** Runs a command and throws, with its stderr, unless it exits 0. */
export async function runOk(cmd: string[]): Promise<string> {
  const result = await run(cmd);
  if (result.code !== 0) {
    throw new Error(`${cmd.join(" ")} exited ${result.code}: ${result.stderr.trim()}`);
  }
  return result.stdout;
}

/** A network namespace made by {@linkcode withNetns}. */
export interface Netns {
  /** The namespace's name, for `ip netns exec NAME`. */
  name: string;
  /** The prefix that runs a command inside the namespace. */
  exec: string[];
  /** Reads a file as seen from inside the namespace (`/proc/net/*`, `/proc/sys/net/*`). */
  readFile(path: string): Promise<string>;
}

/**
 * The command line that runs `cmd` inside `ns` with mounts of its own,
 * prepared first by the shell command `setup` (a read-only /proc/sys, a
 * resolv.conf of the test's): the host's mounts are never touched.
 */
export function withOwnMounts(ns: Netns, setup: string, cmd: string[]): string[] {
  return [
    ...ns.exec,
    "unshare",
    "--mount",
    "--propagation",
    "private",
    "sh",
    "-c",
    `${setup} && exec "$0" "$@"`,
    ...cmd,
  ];
}

let netnsCounter = 0;

/**
 * Creates a fresh network namespace with its loopback up, hands it to `fn`,
 * and deletes it afterwards, also when `fn` throws.
 */
export async function withNetns<T>(fn: (ns: Netns) => Promise<T>): Promise<T> {
  staleRemoved ??= removeStaleNamespaces();
  await staleRemoved;
  const name = `kakit-${Deno.pid}-${++netnsCounter}`;
  await runOk(["ip", "netns", "add", name]);
  try {
    await runOk(["ip", "-n", name, "link", "set", "lo", "up"]);
    const exec = ["ip", "netns", "exec", name];
    return await fn({ name, exec, readFile: (path) => runOk([...exec, "cat", path]) });
  } finally {
    await run(["ip", "netns", "delete", name]);
  }
}

/** The three keepalive sysctls, as the host (no `ns`) or a namespace sees them. */
export async function keepaliveSysctls(ns?: Netns): Promise<Record<string, number>> {
  const values: Record<string, number> = {};
  for (const name of ["time", "intvl", "probes"]) {
    const path = `/proc/sys/net/ipv4/tcp_keepalive_${name}`;
    values[`net.ipv4.tcp_keepalive_${name}`] = Number(
      (ns ? await ns.readFile(path) : await Deno.readTextFile(path)).trim(),
    );
  }
  return values;
}

/**
 * Runs `fn`, then checks that the host's keepalive sysctls (and those of
 * each namespace in `unchanged`) read as they did before. A failure of `fn`
 * is reported first; the host is checked even then.
 */
export async function assertSysctlsUnchanged<T>(
  fn: () => Promise<T>,
  ...unchanged: Netns[]
): Promise<T> {
  const hostBefore = await keepaliveSysctls();
  const before = await Promise.all(unchanged.map((ns) => keepaliveSysctls(ns)));
  let result: T | undefined;
  let failure: unknown = null;
  try {
    result = await fn();
  } catch (error) {
    failure = error;
  }
  const hostAfter = await keepaliveSysctls();
  if (JSON.stringify(hostAfter) !== JSON.stringify(hostBefore)) {
    throw new Error(
      `the HOST's keepalive sysctls changed: ${JSON.stringify(hostBefore)} -> ${
        JSON.stringify(hostAfter)
      }${failure ? ` (and the test failed: ${failure})` : ""}`,
      { cause: failure },
    );
  }
  if (failure) throw failure;
  for (const [i, ns] of unchanged.entries()) {
    const after = await keepaliveSysctls(ns);
    if (JSON.stringify(after) !== JSON.stringify(before[i])) {
      throw new Error(
        `${ns.name}'s keepalive sysctls changed: ${JSON.stringify(before[i])} -> ${
          JSON.stringify(after)
        }`,
      );
    }
  }
  return result!;
}

/** Keepalive probes the namespace has sent so far (TcpExt TCPKeepAlive in /proc/net/netstat). */
export async function probesSent(ns: Netns): Promise<number> {
  return parseNetstat(await ns.readFile("/proc/net/netstat")).TcpExt.TCPKeepAlive;
}

/** A script of the kit running as its own process, its output read line by line. */
export interface ScriptProcess extends AsyncDisposable {
  child: Deno.ChildProcess;
  /** Every stdout line seen so far. */
  lines: string[];
  /** Resolves with the first stdout line (seen or to come) that `match` accepts. */
  waitForLine(match: (line: string) => boolean, timeoutMs?: number): Promise<string>;
  /** Resolves with the first `--json` event (seen or to come) named `event`. */
  waitForEvent(event: string, timeoutMs?: number): Promise<Record<string, unknown>>;
  /** Starts reading stdout, for a script spawned with `readStdout: false`. */
  readStdout(): void;
  /** Writes text to the script's stdin. */
  write(text: string): Promise<void>;
  /** Closes the script's stdin, as a background job or a service would have it. */
  closeStdin(): Promise<void>;
  /** Waits for the script to exit (killing it after `timeoutMs`) and returns its output. */
  finish(timeoutMs?: number): Promise<CommandResult>;
}

/**
 * Spawns `deno run PERMISSIONS SCRIPT ARGS` from the repository root, inside
 * a namespace when `netns` is given, behind `prefix` (e.g. `prlimit ...`).
 * With `readStdout: false` nobody reads its stdout until `readStdout()`:
 * the pipe fills, as with a paused terminal. `await using` kills it at
 * scope exit.
 */
export function spawnScript(
  script: string,
  args: string[],
  options: {
    permissions?: string[];
    netns?: Netns;
    prefix?: string[];
    readStdout?: boolean;
    /** Where to run it (default: the repository's root). */
    cwd?: string;
  } = {},
): ScriptProcess {
  let permissions = options.permissions ?? ["--allow-net"];
  // tests/epoll_engine_test.ts runs server_test.ts again with server.ts's
  // other engine: every server the tests start then uses it.
  if (script === "server.ts" && SERVER_ENGINE === "epoll") {
    args = [...args, "--engine", "epoll"];
    if (permissions.includes("--allow-net")) {
      permissions = [...new Set([...permissions, "--allow-ffi"])];
    }
  }
  const cmd = [
    ...(options.netns?.exec ?? []),
    ...(options.prefix ?? []),
    Deno.execPath(),
    "run",
    ...permissions,
    script,
    ...args,
  ];
  const child = new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    cwd: options.cwd ?? ROOT_DIR,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();

  const lines: string[] = [];
  const waiters = new Set<() => void>();
  let stdoutDone = false;
  const stdoutWanted = Promise.withResolvers<void>();
  if (options.readStdout !== false) stdoutWanted.resolve();
  const pumpStdout = (async () => {
    await stdoutWanted.promise;
    let partial = "";
    for await (const chunk of child.stdout.pipeThrough(new TextDecoderStream())) {
      const parts = (partial + chunk).split("\n");
      partial = parts.pop()!;
      lines.push(...parts);
      for (const wake of waiters) wake();
    }
    if (partial) lines.push(partial);
    stdoutDone = true;
    for (const wake of waiters) wake();
  })();
  const pumpStderr = new Response(child.stderr).text();
  const stdin = child.stdin.getWriter();
  let stdinOpen = true;

  const waitForLine = (match: (line: string) => boolean, timeoutMs = 15_000) =>
    new Promise<string>((resolve, reject) => {
      let checked = 0;
      const check = () => {
        for (; checked < lines.length; checked++) {
          if (match(lines[checked])) return done(() => resolve(lines[checked]));
        }
        if (stdoutDone) {
          done(() =>
            reject(new Error(`${script} ended without the line; output:\n${lines.join("\n")}`))
          );
        }
      };
      const timer = setTimeout(
        () =>
          done(() =>
            reject(
              new Error(`${script}: no such line in ${timeoutMs} ms; output:\n${lines.join("\n")}`),
            )
          ),
        timeoutMs,
      );
      const done = (settle: () => void) => {
        clearTimeout(timer);
        waiters.delete(check);
        settle();
      };
      waiters.add(check);
      check();
    });

  const parseEvent = (line: string): Record<string, unknown> | null => {
    try {
      const value = JSON.parse(line);
      return typeof value === "object" && value !== null ? value : null;
    } catch {
      return null;
    }
  };

  const closeStdin = async () => {
    if (!stdinOpen) return;
    stdinOpen = false;
    await stdin.close().catch(() => {});
  };

  const finish = async (timeoutMs = 15_000): Promise<CommandResult> => {
    stdoutWanted.resolve();
    const timer = setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
    }, timeoutMs);
    try {
      const status = await child.status;
      await closeStdin();
      await pumpStdout;
      return { code: status.code, stdout: lines.join("\n"), stderr: await pumpStderr };
    } finally {
      clearTimeout(timer);
    }
  };

  return {
    child,
    lines,
    waitForLine,
    waitForEvent: async (event, timeoutMs) =>
      parseEvent(await waitForLine((line) => parseEvent(line)?.event === event, timeoutMs))!,
    readStdout: () => stdoutWanted.resolve(),
    write: (text) => stdin.write(new TextEncoder().encode(text)),
    closeStdin,
    finish,
    async [Symbol.asyncDispose]() {
      try {
        child.kill("SIGKILL");
      } catch { /* already exited */ }
      await finish(5_000);
    },
  };
}

/** Two namespaces joined by a virtual cable, made by {@linkcode withCable}. */
export interface Cable {
  /** The namespace at one end, with address {@linkcode Cable.serverAddress}. */
  server: Netns;
  /** The namespace at the other end, with address {@linkcode Cable.clientAddress}. */
  client: Netns;
  serverAddress: string;
  clientAddress: string;
  /** Cuts the cable at the client's end: the client vanishes without a FIN or RST. */
  cutAtClient(): Promise<void>;
  /** Cuts the cable at the server's end: the server vanishes without a FIN or RST. */
  cutAtServer(): Promise<void>;
}

/**
 * Makes two fresh namespaces joined by a veth pair, with IPv6 unique local
 * addresses that exist only inside them, and deletes both afterwards.
 */
export function withCable<T>(fn: (cable: Cable) => Promise<T>): Promise<T> {
  return withNetns((server) =>
    withNetns(async (client) => {
      const [serverAddress, clientAddress] = ["fd6b:61::1", "fd6b:61::2"];
      const veth = ["type", "veth", "peer", "name", "ka-cli", "netns", client.name];
      await runOk(["ip", "-n", server.name, "link", "add", "ka-srv", ...veth]);
      // nodad: the addresses are usable at once, without duplicate detection.
      for (
        const [ns, link, address] of [[server, "ka-srv", serverAddress], [
          client,
          "ka-cli",
          clientAddress,
        ]] as const
      ) {
        await runOk(["ip", "-n", ns.name, "addr", "add", `${address}/64`, "dev", link, "nodad"]);
        await runOk(["ip", "-n", ns.name, "link", "set", link, "up"]);
      }
      return await fn({
        server,
        client,
        serverAddress,
        clientAddress,
        cutAtClient: () =>
          runOk(["ip", "-n", client.name, "link", "set", "ka-cli", "down"]).then(() => {}),
        cutAtServer: () =>
          runOk(["ip", "-n", server.name, "link", "set", "ka-srv", "down"]).then(() => {}),
      });
    })
  );
}

/**
 * Cuts one end of the cable and returns how many seconds after the cut (the
 * last traffic: the connection was idle) `survivor` reports `event`
 * (`timed-out` by default), waiting at most `timeoutMs`.
 */
export async function cutAndTimeDeath(
  cut: () => Promise<void>,
  survivor: ScriptProcess,
  options: { event?: string; timeoutMs?: number } = {},
): Promise<number> {
  const lastTraffic = performance.now();
  await cut();
  await survivor.waitForEvent(options.event ?? "timed-out", options.timeoutMs ?? 15_000);
  return (performance.now() - lastTraffic) / 1000;
}

/**
 * Starts server.ts inside `ns` on port 8888 with `--json` and the given
 * flags, and waits until it listens. `await using` stops it at scope exit.
 */
export async function startServerIn(
  ns: Netns,
  args: string[] = [],
  permissions?: string[],
): Promise<ScriptProcess> {
  const server = spawnScript("server.ts", ["--port", "8888", "--json", ...args], {
    netns: ns,
    permissions,
  });
  return await settled(server, "listening");
}

/**
 * Starts client.ts inside `ns`, connecting to `hostname` port 8888 with
 * `--json` and the given flags, and waits until it is connected.
 */
export async function startClientIn(
  ns: Netns,
  hostname: string,
  args: string[] = [],
  permissions?: string[],
): Promise<ScriptProcess> {
  const client = spawnScript("client.ts", [
    "--hostname",
    hostname,
    "--port",
    "8888",
    "--json",
    ...args,
  ], {
    netns: ns,
    permissions,
  });
  return await settled(client, "connected");
}

// Waits for the script's first event; stops it if that never comes.
async function settled(script: ScriptProcess, event: string): Promise<ScriptProcess> {
  try {
    await script.waitForEvent(event);
    return script;
  } catch (error) {
    await script[Symbol.asyncDispose]();
    throw error;
  }
}

/**
 * Checks that a summary adds up: every connection taken from the backlog was
 * accepted, rejected or reset before accept, and every accepted one ended
 * one way.
 */
export function assertSummaryAddsUp(summary: Record<string, unknown>): void {
  const n = (key: string) => Number(summary[key]);
  assertEquals(n("connections"), n("accepted") + n("rejected") + n("resetBeforeAccept"));
  assertEquals(
    n("accepted"),
    n("peerClosed") + n("reset") + n("timedOut") + n("errors") + n("closedOnQuit"),
    JSON.stringify(summary),
  );
}

/**
 * # `deno task test`: the whole suite, namespace tests included, also without root
 *
 * The tests that change sysctls or pull virtual cables make network
 * namespaces, which takes root. An ordinary user on most Linux machines can
 * have that too: root of a **user namespace** of their own (`unshare -r`),
 * where they may make network namespaces, cables and sysctls that exist only
 * in there. So `deno task test` runs this launcher, which runs
 * `deno test -A tests/ ARGS` (the task's arguments passed on):
 *
 * - **directly**, as the task always did (same output, same exit code), as
 *   root (CI's run), off Linux, or where user namespaces are refused (it
 *   says why in one line; the namespace tests then skip, each with its
 *   reason);
 * - otherwise **in a sandbox**: it first caches every dependency of the
 *   tests and of the scripts they start (the sandbox has no network), then
 *   runs the same command under `unshare --user --map-root-user --net
 *   --mount --pid`: uid 0 of a user namespace that maps only this user;
 *   a network namespace of its own, with its loopback up and the kernel's
 *   default sysctls, so the host's network and sysctls are out of reach; a
 *   mount namespace with an empty, private `/run/netns` for `ip netns add`;
 *   a PID namespace, so that when the sandbox ends every process in it ends
 *   too; and root's PATH (with /usr/sbin and /sbin). SIGINT or SIGTERM
 *   ends the sandbox; a `kill -9` of this launcher does too (`setpriv
 *   --pdeathsig`).
 *
 * Only uid 0 exists in there: tests that become another user (`setpriv
 * --reuid`) skip, saying so (`otherUserUnavailableReason` in _helpers.ts).
 *
 * Run it with `deno task test`, or `deno run -A tests/run.ts [deno test flags]`.
 *
 * @module
 */

const ROOT = `${import.meta.dirname}/../`;
const PREFIX = "tests/run.ts:";

/** The sandbox: a user, network, mount and PID namespace, ended with its first process. */
const SANDBOX = [
  "setpriv",
  "--pdeathsig",
  "KILL",
  "unshare",
  "--user",
  "--map-root-user",
  "--net",
  "--mount",
  "--pid",
  "--fork",
  "--kill-child",
  "--mount-proc",
];

/**
 * Run inside the sandbox before the command: a private tmpfs for `ip netns`
 * (over /run when there is no /run/netns to cover: /run is the host's, not
 * writable here), the loopback up, and root's PATH: the tests, written for
 * root, run `sysctl` and `nft` by name, and Debian keeps them in /usr/sbin.
 * The shell stays the sandbox's first process, so that it reaps every
 * orphan (the tests look for leftover processes).
 */
const SETUP = `set -e
if [ -d /run/netns ]; then mount -t tmpfs kakit-tests /run/netns
else mount -t tmpfs kakit-tests /run && mkdir /run/netns; fi
ip link set lo up
export PATH="$PATH:/usr/sbin:/sbin"
"$@"`;

/** The command that runs `cmd` inside the sandbox. */
function sandboxed(cmd: string[]): string[] {
  return [...SANDBOX, "sh", "-c", SETUP, "sh", ...cmd];
}

/** How the suite runs: in the sandbox, or directly (with what to tell the user, if anything). */
type Verdict = { sandbox: true } | { sandbox: false; why: string | null };

/**
 * Tries the sandbox for real, with `true` inside. Root needs none, and is
 * told nothing: the task runs as it always did.
 */
async function verdict(): Promise<Verdict> {
  if (Deno.build.os !== "linux" || Deno.uid() === 0) return { sandbox: false, why: null };
  const probe = sandboxed(["true"]);
  let output: Deno.CommandOutput;
  try {
    output = await new Deno.Command(probe[0], {
      args: probe.slice(1),
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).output();
  } catch {
    return { sandbox: false, why: "setpriv or unshare (Debian package util-linux) is missing" };
  }
  if (output.success) return { sandbox: true };
  const first = escape(new TextDecoder().decode(output.stderr).trim().split("\n")[0]);
  // unshare says "unshare failed: Operation not permitted" (or "No space
  // left on device": user.max_user_namespaces is 0) when the kernel refuses.
  const why = first.includes("unshare failed")
    ? `this system refuses user namespaces to an ordinary user (${first})`
    : `the tests' sandbox could not be made (${first || `exit code ${output.code}`})`;
  return { sandbox: false, why };
}

/** Text from elsewhere, on one line, without control characters, and short. */
function escape(text: string): string {
  // deno-lint-ignore no-control-regex -- control characters are what is replaced
  const clean = text.replace(/[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]/g, "?");
  return clean.length > 200 ? `${clean.slice(0, 200)}...` : clean;
}

/** Every TypeScript file of the kit (not docs/, nothing hidden): what the tests may start. */
function kitFiles(dir = ROOT, relative = ""): string[] {
  const files: string[] = [];
  for (const entry of Deno.readDirSync(dir)) {
    if (entry.name.startsWith(".") || entry.name === "node_modules") continue;
    if (relative === "" && entry.name === "docs") continue;
    const path = `${relative}${entry.name}`;
    if (entry.isDirectory) files.push(...kitFiles(`${dir}${entry.name}/`, `${path}/`));
    else if (entry.isFile && path.endsWith(".ts")) files.push(path);
  }
  return files.sort();
}

/**
 * Caches every dependency of the kit's files, while there is a network; and
 * the registry's description of the npm packages too, which a project
 * without this lockfile needs (tests/copy_test.ts copies each script alone
 * into one: it resolves `@std/cli` afresh).
 */
async function cacheDependencies(): Promise<boolean> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["install", "--quiet", "--entrypoint", ...kitFiles()],
    cwd: ROOT,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).output();
  const alone = output.success ? await cacheWithoutLock() : output;
  if (alone.success) return true;
  const why = new TextDecoder().decode(alone.stderr).trim().split("\n").at(-1) ?? "";
  console.error(
    `${PREFIX} cannot cache the dependencies before going offline into the sandbox: ${escape(why)}`,
  );
  return false;
}

// A script copied alone into a folder whose deno.json maps only the
// standard library, cached there (no lockfile), as copy_test.ts will run it.
async function cacheWithoutLock(): Promise<Deno.CommandOutput> {
  const dir = await Deno.makeTempDir({ prefix: "kakit-cache-" });
  try {
    const { imports } = JSON.parse(await Deno.readTextFile(`${ROOT}/deno.json`));
    const std = Object.fromEntries(
      Object.entries(imports).filter(([name]) => name.startsWith("@std/")),
    );
    await Deno.writeTextFile(`${dir}/deno.json`, JSON.stringify({ imports: std }));
    await Deno.copyFile(`${ROOT}/server.ts`, `${dir}/server.ts`);
    await Deno.writeTextFile(`${dir}/assert.ts`, 'import "@std/assert";\n');
    return await new Deno.Command(Deno.execPath(), {
      args: ["cache", "--quiet", "--no-lock", "server.ts", "assert.ts"],
      cwd: dir,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).output();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * Runs `cmd` with this process's stdin, stdout and stderr, and resolves with
 * its exit code (128 + the signal's number when a signal ended it).
 * SIGINT and SIGTERM: a sandbox is killed at once, with every process in
 * it, and this exits 130 or 143; a direct run gets the signal passed on and
 * ends as it chooses, as it did when the task ran it itself.
 */
async function runThrough(cmd: string[], sandbox: boolean): Promise<number> {
  const child = new Deno.Command(cmd[0], { args: cmd.slice(1), cwd: ROOT }).spawn();
  const handlers = (["SIGINT", "SIGTERM"] as const).map((signal) => {
    const handler = () => {
      try {
        child.kill(sandbox ? "SIGKILL" : signal);
      } catch { /* already gone */ }
      if (!sandbox) return;
      child.status.finally(() => {
        console.error(
          `${PREFIX} stopped by ${signal}; the sandbox and every process in it are gone`,
        );
        Deno.exit(signal === "SIGINT" ? 130 : 143);
      });
    };
    Deno.addSignalListener(signal, handler);
    return [signal, handler] as const;
  });
  const { code } = await child.status;
  for (const [signal, handler] of handlers) Deno.removeSignalListener(signal, handler);
  return code;
}

/** `deno test -A tests/ ARGS`, directly or in the sandbox; resolves with its exit code. */
export async function main(args: string[]): Promise<number> {
  const test = [Deno.execPath(), "test", "-A", "tests/", ...args];
  const how = await verdict();
  if (!how.sandbox) {
    if (how.why !== null) {
      console.error(`${PREFIX} ${how.why}: running the tests directly; namespace tests skip`);
    }
    return await runThrough(test, false);
  }
  console.error(
    `${PREFIX} running the tests in a user namespace of their own (unshare -r): ` +
      "namespace tests run without root",
  );
  if (!await cacheDependencies()) return 1;
  return await runThrough(sandboxed(test), true);
}

if (import.meta.main) Deno.exit(await main(Deno.args));

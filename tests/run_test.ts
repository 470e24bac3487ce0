/**
 * Tests for tests/run.ts, the launcher of `deno task test`: as an ordinary
 * user where user namespaces are allowed, the suite runs in a sandbox of its
 * own and the namespace tests run; where they are refused, it runs directly,
 * says why in one line, and the namespace tests skip; its exit code is the
 * suite's; SIGTERM ends the sandbox with everything in it.
 *
 * The ordinary user is made with a user namespace of the test's own
 * (`unshare --user --map-user=65534`: the test's uid becomes 65534 there, an
 * ordinary uid with no capability left once it runs a program). A system
 * that refuses user namespaces is made the same way, by the kernel's own
 * rule: in that namespace, `user.max_user_namespaces` is set to 0 (a limit
 * of that namespace and those below it; the host's is not touched), so the
 * launcher's `unshare` fails as it does where the administrator forbids it.
 */
import { assert, assertEquals, assertMatch, assertStringIncludes } from "@std/assert";
import {
  assertSysctlsUnchanged,
  delay,
  netnsTest,
  requiringTest,
  ROOT_DIR,
  run,
  runOk,
  withNetns,
} from "./_helpers.ts";

/** The test the launcher is run for: one namespace test, quick. */
const PROBE = "the sandbox probe: a network namespace of the test's own, with sysctls of its own";

netnsTest(PROBE, () =>
  withNetns((ns) =>
    assertSysctlsUnchanged(async () => {
      const path = "/proc/sys/net/ipv4/tcp_keepalive_time";
      await runOk([...ns.exec, "sh", "-c", `echo 4321 > ${path}`]);
      assertEquals((await ns.readFile(path)).trim(), "4321");
      // The loopback of the network namespace the tests run in is up.
      using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
      const accepted = listener.accept();
      using conn = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
      using server = await accepted;
      await server.write(new Uint8Array([42]));
      const byte = new Uint8Array(1);
      assertEquals([await conn.read(byte), byte[0]], [1, 42]);
    })
  ));

// Runs what follows as uid 65534 of a user namespace of its own, without
// capabilities; `refuse` first sets that namespace's user.max_user_namespaces
// to 0, so that no user namespace can be made below it.
function asOrdinaryUser(refuse: boolean): string[] {
  const limit = refuse ? "echo 0 > /proc/sys/user/max_user_namespaces && " : "";
  return [
    "unshare",
    "--user",
    "--map-user=65534",
    "--map-group=65534",
    "--keep-caps",
    "sh",
    "-c",
    `${limit}exec setpriv --inh-caps=-all --ambient-caps=-all -- "$@"`,
    "sh",
  ];
}

// The launcher, as `deno task test ARGS` runs it (CI unset: an ordinary user's run).
const LAUNCHER = ["env", "-u", "CI", Deno.execPath(), "run", "-A", "tests/run.ts"];

const noUserNamespace = await (async () => {
  if (Deno.build.os !== "linux") return "user namespaces are Linux only";
  try {
    const { code, stderr } = await run([...asOrdinaryUser(true), "true"]);
    return code === 0 ? null : `cannot make a user namespace here: ${stderr.trim()}`;
  } catch {
    return "unshare or setpriv (Debian package util-linux) is missing";
  }
})();

requiringTest(
  "tests/run.ts as an ordinary user runs the namespace tests in a user namespace of their own",
  noUserNamespace,
  async () => {
    const { code, stdout, stderr } = await run([
      ...asOrdinaryUser(false),
      ...LAUNCHER,
      "--filter",
      PROBE,
    ]);
    const output = `${stderr}\n${stdout}`;
    assertEquals(code, 0, output);
    assertEquals(
      stderr.split("\n")[0],
      "tests/run.ts: running the tests in a user namespace of their own (unshare -r): " +
        "namespace tests run without root",
    );
    assertMatch(stdout, /^ok \| 1 passed \| 0 failed \| \d+ filtered out/m, output);
    assert(!output.includes(`skipping "${PROBE}"`), output);
  },
);

requiringTest(
  "tests/run.ts where user namespaces are refused runs the tests directly, says why, and they skip",
  noUserNamespace,
  async () => {
    const { code, stdout, stderr } = await run([
      ...asOrdinaryUser(true),
      ...LAUNCHER,
      "--filter",
      PROBE,
    ]);
    const output = `${stderr}\n${stdout}`;
    assertEquals(code, 0, output);
    assertMatch(
      stderr.split("\n")[0],
      /^tests\/run\.ts: this system refuses user namespaces to an ordinary user \(unshare: .+\): running the tests directly; namespace tests skip$/,
    );
    // (deno test shows what a test file printed as it loaded on its stdout.)
    assertStringIncludes(
      output,
      `skipping "${PROBE}": creating network namespaces needs root or a user namespace`,
    );
    assertMatch(stdout, /^ok \| 0 passed \| 0 failed \| 1 ignored \| \d+ filtered out/m, output);
  },
);

requiringTest(
  "tests/run.ts passes the suite's exit code on, from the sandbox and from a direct run",
  noUserNamespace,
  async () => {
    for (const refuse of [false, true]) {
      const { code, stderr } = await run([...asOrdinaryUser(refuse), ...LAUNCHER, "--bogus"]);
      assertEquals(code, 1, stderr);
      assertStringIncludes(stderr, "error: unexpected argument '--bogus' found");
    }
  },
);

// The processes whose command line has `token` (pgrep itself aside): pid and command line.
async function processesWith(token: string): Promise<string[]> {
  const { stdout } = await run(["pgrep", "-af", "--", token]);
  return stdout.split("\n").filter((line) => line && !line.includes("pgrep"));
}

requiringTest(
  "SIGTERM to tests/run.ts ends its sandbox and every process in it, and it exits 143",
  noUserNamespace,
  async () => {
    // `deno test --watch` runs until it is stopped: it stays in the sandbox.
    const token = `kakit-sigterm-${Deno.pid}-${Date.now()}`;
    const inner = `test -A tests/ --watch --filter ${token}`;
    // unshare, sh, setpriv and env each become the next: one process, the launcher.
    const cmd = [...asOrdinaryUser(false), ...LAUNCHER, "--watch", "--filter", token];
    const launcher = new Deno.Command(cmd[0], {
      args: cmd.slice(1),
      cwd: ROOT_DIR,
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).spawn();
    const stderr = new Response(launcher.stderr).text();
    try {
      const started = performance.now();
      while (!(await processesWith(token)).some((line) => line.includes(inner))) {
        if (performance.now() - started > 60_000) throw new Error("the sandbox never started");
        await delay(100);
      }
      launcher.kill("SIGTERM");
      // Given 10 s, then killed (exit code 137).
      const timer = setTimeout(() => launcher.kill("SIGKILL"), 10_000);
      const { code } = await launcher.status.finally(() => clearTimeout(timer));
      assertEquals(code, 143, "tests/run.ts did not end by itself within 10 s of SIGTERM");
      let left = await processesWith(token);
      for (let i = 0; left.length > 0 && i < 50; i++) {
        await delay(100);
        left = await processesWith(token);
      }
      assertEquals(left, [], "processes of the sandbox are left");
      // (Read once they are gone: a process left would hold the pipe open.)
      assertStringIncludes(await stderr, "tests/run.ts: stopped by SIGTERM");
    } finally {
      try {
        launcher.kill("SIGKILL");
      } catch { /* gone */ }
      // Should the test fail, what it started does not outlive it.
      for (const line of await processesWith(token)) {
        await run(["kill", "-KILL", line.split(" ")[0]]);
      }
    }
  },
);

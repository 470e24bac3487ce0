/**
 * The promise of the three scripts: each runs when copied ALONE into an
 * empty project whose deno.json maps only `@std/cli` (here the npm form, as
 * this repository's deno.json has it; the JSR form is the standard one). The
 * copied server arms the kernel's keepalive timer on the connection the
 * copied client makes (seen in /proc/net/tcp), sysctl.ts reads the sysctls
 * (and writes them, inside a namespace of the test's own), and a flag that
 * needs the package says in one line what to add.
 */
import { assert, assertEquals, assertMatch } from "@std/assert";
import { findTcpSocket, parseEndpoint, readTcpSockets } from "@kakit/keepalive/proc-net";
import { netnsTest, ROOT_DIR, run, type ScriptProcess, spawnScript } from "./_helpers.ts";

const SCRIPTS = ["server.ts", "client.ts", "sysctl.ts"];

// The @std mapping as the repository has it, and nothing else.
async function copyAlone(script: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "kakit-copy-" });
  const { imports } = JSON.parse(await Deno.readTextFile(`${ROOT_DIR}/deno.json`));
  await Deno.writeTextFile(
    `${dir}/deno.json`,
    JSON.stringify({ imports: { "@std/cli/parse-args": imports["@std/cli/parse-args"] } }),
  );
  await Deno.copyFile(`${ROOT_DIR}/${script}`, `${dir}/${script}`);
  return dir;
}

for (const script of SCRIPTS) {
  Deno.test(`${script} imports no local file statically (deno info)`, async () => {
    const info = await run([Deno.execPath(), "info", "--json", script]);
    const graph = JSON.parse(info.stdout);
    const root = graph.modules.find((m: { specifier: string }) => m.specifier === graph.roots[0]);
    const local = (root.dependencies ?? []).filter((d: Record<string, { specifier?: string }>) =>
      !d.isDynamic && /^file:/.test((d.code ?? d.type)?.specifier ?? "")
    );
    assertEquals(local.map((d: { specifier: string }) => d.specifier), []);
  });
}

for (const script of SCRIPTS) {
  Deno.test(`${script} copied alone type-checks (deno check)`, async () => {
    const dir = await copyAlone(script);
    try {
      const { code, stderr } = await run([Deno.execPath(), "check", script], { cwd: dir });
      assertEquals(code, 0, stderr);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

async function listeningPort(server: ScriptProcess): Promise<number> {
  const listening = await server.waitForEvent("listening");
  return Number(String(listening.address).match(/:(\d+)$/)![1]);
}

Deno.test("server.ts and client.ts copied alone run the blog's experiment: the server's socket has a keepalive timer", async () => {
  const serverDir = await copyAlone("server.ts");
  const clientDir = await copyAlone("client.ts");
  try {
    await using server = spawnScript("server.ts", [
      "--hostname",
      "127.0.0.1",
      "--port",
      "0",
      "--json",
    ], {
      cwd: serverDir,
    });
    const port = await listeningPort(server);
    await using client = spawnScript("client.ts", ["--port", String(port), "--json"], {
      cwd: clientDir,
    });
    const connected = await client.waitForEvent("connected");
    await server.waitForEvent("accepted");
    const [local, remote] = [
      parseEndpoint(String(connected.local)),
      parseEndpoint(String(connected.remote)),
    ];
    const rows = await readTcpSockets();
    const serverSide = findTcpSocket(rows, remote, local);
    const clientSide = findTcpSocket(rows, local, remote);
    assertEquals(serverSide?.timer, "keepalive", JSON.stringify(serverSide));
    assertEquals(clientSide?.timer, "none", "the client, like the C client, leaves keepalive off");
    client.child.kill("SIGTERM");
    assertEquals((await client.finish()).code, 0);
    await server.waitForEvent("peer-closed");
    server.child.kill("SIGTERM");
    const summary = await server.waitForEvent("summary");
    assertEquals([summary.accepted, summary.peerClosed], [1, 1]);
    assertEquals((await server.finish()).code, 0);
  } finally {
    await Deno.remove(serverDir, { recursive: true });
    await Deno.remove(clientDir, { recursive: true });
  }
});

for (
  const [script, args] of [
    ["server.ts", ["--port", "0", "--idle", "2"]],
    ["server.ts", ["--port", "0", "--engine", "epoll"]],
    ["client.ts", ["--idle", "2"]],
    ["client.ts", ["--watch"]],
  ] as const
) {
  Deno.test(`${script} copied alone: ${args.join(" ")} says in one line what to add, exit 1`, async () => {
    const dir = await copyAlone(script);
    try {
      const { code, stdout, stderr } = await spawnScript(script, [...args], {
        cwd: dir,
        permissions: ["--allow-net", "--allow-ffi"],
      }).finish();
      assertEquals(code, 1, stderr);
      assertEquals(stdout, "");
      assertEquals(stderr.trim().split("\n").length, 1, stderr);
      assertMatch(
        stderr,
        /^\S+\.ts: .*needs the kit's package @kakit\/keepalive: copy the kit's keepalive\/ folder beside this script and add "@kakit\/keepalive": "\.\/keepalive\/mod\.ts" to "imports"/,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("sysctl.ts copied alone reads the three sysctls as the kernel has them", async () => {
  const dir = await copyAlone("sysctl.ts");
  try {
    const { code, stdout, stderr } = await run([Deno.execPath(), "run", "-A", "sysctl.ts"], {
      cwd: dir,
    });
    assertEquals(code, 0, stderr);
    for (const name of ["time", "intvl", "probes"]) {
      const value = (await Deno.readTextFile(`/proc/sys/net/ipv4/tcp_keepalive_${name}`)).trim();
      assert(stdout.includes(`net.ipv4.tcp_keepalive_${name} = ${value}\n`), stdout);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

netnsTest(
  "sysctl.ts copied alone writes the sysctls of a network namespace (never the host's)",
  async () => {
    const dir = await copyAlone("sysctl.ts");
    try {
      const before = (await Deno.readTextFile("/proc/sys/net/ipv4/tcp_keepalive_time")).trim();
      // unshare -n: a namespace of its own for this one command.
      const script = `"$0" run -A sysctl.ts time=5 && cat /proc/sys/net/ipv4/tcp_keepalive_time`;
      const { code, stdout, stderr } = await run([
        "unshare",
        "-n",
        "sh",
        "-c",
        script,
        Deno.execPath(),
      ], {
        cwd: dir,
      });
      assertEquals(code, 0, stderr);
      assertMatch(stdout, /net\.ipv4\.tcp_keepalive_time = 5\n5\n$/);
      assertEquals(
        (await Deno.readTextFile("/proc/sys/net/ipv4/tcp_keepalive_time")).trim(),
        before,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

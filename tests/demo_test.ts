/**
 * Tests for demo.ts, the README's main job: it runs for real, on loopback
 * (and once in a namespace of its own, beside another program's probes).
 */
import { assert, assertEquals, assertMatch, assertStringIncludes } from "@std/assert";
import { explainProbeCount } from "../tools/demo.ts";
import {
  netnsTest,
  run,
  spawnScript,
  startClientIn,
  startServerIn,
  withNetns,
} from "./_helpers.ts";

Deno.test("the demo shows real probes every 2 s, checks them against the prediction, and exits 0 by itself", async () => {
  const keepaliveTime = Number(await Deno.readTextFile("/proc/sys/net/ipv4/tcp_keepalive_time"));
  const demo = spawnScript("tools/demo.ts", [], { permissions: ["-A"] });
  await demo.closeStdin();
  const { code, stdout } = await demo.finish(25_000);
  assertEquals(code, 0, stdout);
  assertMatch(stdout, new RegExp(`net\\.ipv4\\.tcp_keepalive_time = ${keepaliveTime}\\n`));
  // The kernel's table: the server's socket runs on the 2 s set on its listener.
  const due = stdout.match(
    /server's socket \S+: keepalive timer armed, first probe due in ([\d.]+) s/,
  );
  if (!due) throw new Error(`no timer line in:\n${stdout}`);
  assert(Number(due[1]) > 0 && Number(due[1]) <= 2, due[0]);
  assertMatch(stdout, /client's socket \S+: no timer pending/);
  // Probes seen live, one every 2 s for 11 s, each answered by the client.
  const seen = stdout.match(/probe answered, after ([\d.]+) s idle/g) ?? [];
  assert(seen.length >= 4 && seen.length <= 6, `${seen.length} probes:\n${stdout}`);
  // The summary is made after both scripts exited, from every line they
  // printed: no probe line can come after it (on a busy machine one did).
  const report = stdout.indexOf("What was seen");
  assert(
    report > stdout.indexOf("client.ts exited"),
    `the summary came before the exit:\n${stdout}`,
  );
  assert(report > stdout.lastIndexOf("probe answered"), stdout);
  const counted = Number(stdout.match(/sent and the client answered: (\d+)/)?.[1]);
  assertEquals(counted, seen.length);
  assertEquals(
    (stdout.match(/client \| \S+ probed by the peer; our kernel answered/g) ?? []).length,
    seen.length,
  );
  // The counter line says what it counts, and a number is never left unexplained.
  assertMatch(
    stdout,
    /for every socket in this network namespace\n\s+\(TcpExt TCPKeepAlive\): \d+; \S/,
  );
  assertMatch(stdout, /after 2 \+ 3 x 2 = 8 s/);
  assertMatch(stdout, /server\.ts exited 0, client\.ts exited 0\./);
});

Deno.test("the demo without --allow-all exits 1 and says to run it with -A", async () => {
  const demo = spawnScript("tools/demo.ts", [], { permissions: ["--allow-net", "--allow-run"] });
  const { code, stderr } = await demo.finish();
  assertEquals(code, 1);
  assertMatch(stderr.trim(), /^demo\.ts: .*--allow-all.*run: deno run -A tools\/demo\.ts$/);
});

Deno.test("demo --help prints help and exits 0 without running the demo; other arguments are misuse", async () => {
  const start = performance.now();
  for (const flag of ["--help", "-h"]) {
    const help = await run([Deno.execPath(), "run", "-A", "tools/demo.ts", flag]);
    assertEquals([help.code, help.stderr], [0, ""]);
    assertMatch(help.stdout, /^Usage: deno run -A tools\/demo\.ts/);
    assert(!help.stdout.includes("Starting server.ts"), help.stdout);
  }
  assert(performance.now() - start < 5_000, "--help ran the demo");
  const bad = await run([Deno.execPath(), "run", "-A", "tools/demo.ts", "--help=1"]);
  assertEquals([bad.code, bad.stdout], [2, ""]);
  assertEquals(bad.stderr, 'demo.ts: --help takes no value, not "1" (see --help)\n');
});

Deno.test("the counter's explanation fits each way it can differ from what the server saw", () => {
  assertStringIncludes(explainProbeCount(5, 5), "the same as the server's");
  assertStringIncludes(explainProbeCount(5, 16), "11 more than the server's");
  assertStringIncludes(explainProbeCount(5, 16), "other sockets in it");
  assertStringIncludes(explainProbeCount(5, 4), "1 fewer");
});

netnsTest(
  "beside another program's probes, the demo explains why the namespace's counter is higher",
  async () => {
    await withNetns(async (ns) => {
      // Another pair of sockets in the same namespace, probing every second.
      const tuning = ["--idle", "1", "--interval", "1"];
      const ffi = ["--allow-net", "--allow-ffi"];
      await using _other = await startServerIn(ns, ["--hostname", "::1", ...tuning], ffi);
      await using _client = await startClientIn(ns, "::1");
      const demo = await run([...ns.exec, Deno.execPath(), "run", "-A", "tools/demo.ts"]);
      assertEquals(demo.code, 0, demo.stdout + demo.stderr);
      const seen = Number(demo.stdout.match(/sent and the client answered: (\d+)/)?.[1]);
      const counted = demo.stdout.match(/\(TcpExt TCPKeepAlive\): (\d+); (.*)/);
      if (!counted) throw new Error(`no counter line:\n${demo.stdout}`);
      const extra = Number(counted[1]) - seen;
      assert(extra >= 8, `only ${extra} probes from the other pair in 11 s`);
      assertEquals(counted[2].startsWith(`${extra} more than the server's`), true, counted[2]);
    });
  },
);

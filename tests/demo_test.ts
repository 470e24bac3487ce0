import { assert, assertEquals, assertMatch } from "@std/assert";
import { spawnScript } from "./_helpers.ts";

Deno.test("the demo shows real probes every 2 s, checks them against the prediction, and exits 0 by itself", async () => {
  const keepaliveTime = Number(await Deno.readTextFile("/proc/sys/net/ipv4/tcp_keepalive_time"));
  const demo = spawnScript("demo.ts", [], { permissions: ["-A"] });
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
  const counted = Number(stdout.match(/sent and the client answered: (\d+)/)?.[1]);
  assertEquals(counted, seen.length);
  assertEquals(
    (stdout.match(/the server probed us; our kernel answered/g) ?? []).length,
    seen.length,
  );
  assertMatch(stdout, /after 2 \+ 3 x 2 = 8 s/);
  assertMatch(stdout, /server\.ts exited 0, client\.ts exited 0\./);
});

Deno.test("the demo without --allow-all exits 1 and says to run it with -A", async () => {
  const demo = spawnScript("demo.ts", [], { permissions: ["--allow-net", "--allow-run"] });
  const { code, stderr } = await demo.finish();
  assertEquals(code, 1);
  assertMatch(stderr.trim(), /^demo\.ts: .*--allow-all.*run: deno run -A demo\.ts$/);
});

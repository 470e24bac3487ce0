import { assert, assertEquals, assertMatch } from "@std/assert";
import { spawnScript } from "./_helpers.ts";

Deno.test("the demo shows the server's keepalive timer armed, the client's off, and exits 0 by itself", async () => {
  const keepaliveTime = Number(await Deno.readTextFile("/proc/sys/net/ipv4/tcp_keepalive_time"));
  const demo = spawnScript("demo.ts", [], { permissions: ["-A"] });
  await demo.closeStdin();
  const { code, stdout } = await demo.finish(20_000);
  assertEquals(code, 0, stdout);
  assertMatch(stdout, new RegExp(`net\\.ipv4\\.tcp_keepalive_time = ${keepaliveTime}\\n`));
  const due = stdout.match(
    /server's socket \S+: keepalive timer armed, first probe due in ([\d.]+) s/,
  );
  if (!due) throw new Error(`no timer line in:\n${stdout}`);
  assert(Number(due[1]) > keepaliveTime - 10 && Number(due[1]) <= keepaliveTime, due[0]);
  assertMatch(stdout, /client's socket \S+: no timer pending/);
  assertMatch(stdout, /server\.ts exited 0, client\.ts exited 0\./);
});

Deno.test("the demo without --allow-all exits 1 and says to run it with -A", async () => {
  const demo = spawnScript("demo.ts", [], { permissions: ["--allow-net", "--allow-run"] });
  const { code, stderr } = await demo.finish();
  assertEquals(code, 1);
  assertMatch(stderr.trim(), /^demo\.ts: .*--allow-all.*run: deno run -A demo\.ts$/);
});

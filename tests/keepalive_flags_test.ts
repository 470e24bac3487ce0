/**
 * Tests for keepalive_flags.ts, the scripts' side of the tuning flags: the
 * help, the --allow-ffi message (through the real scripts), and a bad value
 * as the scripts' UsageError. (The flags themselves and the words are
 * tested with the package: tests/flags_test.ts.)
 */
import { assertEquals, assertStringIncludes, assertThrows } from "@std/assert";
import { UsageError } from "../cli.ts";
import { parseTuningFlags, TUNING_HELP } from "../keepalive_flags.ts";
import { run } from "./_helpers.ts";

Deno.test("a bad tuning flag is the scripts' UsageError, with the package's message", () => {
  assertEquals(parseTuningFlags({ idle: "2", count: "3" }), { time: 2_000, retries: 3 });
  assertThrows(
    () => parseTuningFlags({ idle: "x" }),
    UsageError,
    '--idle must be an integer from 1 to 32767, not "x"',
  );
});

Deno.test("the help names each flag with its range and the sysctl it overrides", () => {
  for (
    const text of [
      "--idle SECONDS",
      "1..32767 (tcp_keepalive_time)",
      "(tcp_keepalive_intvl)",
      "1..127 (tcp_keepalive_probes)",
      "0..2147483",
      "--watch",
    ]
  ) {
    assertStringIncludes(TUNING_HELP, text);
  }
});

for (const script of ["server.ts", "client.ts"]) {
  Deno.test(`${script} without --allow-ffi prints a command with the user's own flags that then works`, async () => {
    // A port where each script fails soon after the permission check: the
    // server finds it taken, the client finds nothing listening.
    using taken = Deno.listen({ hostname: "::1", port: 0 });
    const port = script === "server.ts" ? taken.addr.port : freePort();
    const args = ["--hostname", "::1", "--port", String(port), "--idle", "2", "--watch", "--json"];
    const refused = await run([Deno.execPath(), "run", "--allow-net", script, ...args]);
    assertEquals(refused.code, 1);
    const expected = `deno run --allow-net --allow-ffi ${script} --hostname ::1 --port ${port} ` +
      "--idle 2 --watch --json";
    assertEquals(
      refused.stderr,
      `${script}: --idle and --watch need the --allow-ffi permission: ${expected}\n`,
    );
    // The command it printed gets past the permission check, to the port.
    const again = await run([Deno.execPath(), ...expected.split(" ").slice(1)]);
    assertEquals(again.code, 1);
    assertStringIncludes(again.stderr, script === "server.ts" ? "already in use" : "refused");
  });
}

function freePort(): number {
  using listener = Deno.listen({ hostname: "::1", port: 0 });
  return listener.addr.port;
}

Deno.test("the --allow-ffi message names only the flags that were given", async () => {
  for (
    const [args, named] of [
      [["--watch"], "--watch needs"],
      [["--count", "3", "--user-timeout", "5"], "--count and --user-timeout need"],
      [["--interval", "2", "--idle", "1", "--watch"], "--idle, --interval and --watch need"],
    ] as const
  ) {
    const { code, stderr } = await run([
      Deno.execPath(),
      "run",
      "--allow-net",
      "server.ts",
      "--port",
      "0",
      ...args,
    ]);
    assertEquals(code, 1);
    assertStringIncludes(stderr, `server.ts: ${named} the --allow-ffi permission: `);
  }
});

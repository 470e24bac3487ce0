/**
 * The scripts' side of the tuning flags: server.ts and client.ts parse them
 * themselves (each runs copied alone), with the package's ranges and the
 * sysctls' names in their help, and name --allow-ffi when it is missing.
 * (The package's own flag words are tested in tests/flags_test.ts.)
 */
import { assertEquals, assertStringIncludes, assertThrows } from "@std/assert";
import { KEEPALIVE_LIMITS } from "@kakit/keepalive";
import * as server from "../server.ts";
import * as client from "../client.ts";
import { run } from "./_helpers.ts";

// Each script parses its tuning flags itself (so that it runs copied alone);
// its ranges must be the package's, which are the kernel's.
const FLAGS = [
  ["--idle", "time", 1000],
  ["--interval", "interval", 1000],
  ["--count", "retries", 1],
  ["--user-timeout", "userTimeout", 1000],
] as const;

for (
  const [script, parse] of [["server.ts", server.parseServerArgs], [
    "client.ts",
    client.parseClientArgs,
  ]] as const
) {
  Deno.test(`${script}'s tuning flags take exactly the package's ranges, in seconds`, () => {
    for (const [flag, option, perUnit] of FLAGS) {
      const { min, max } = KEEPALIVE_LIMITS[option];
      const [low, high] = [Math.ceil(min / perUnit), Math.floor(max / perUnit)];
      for (const ok of [low, high]) {
        const options = parse([flag, String(ok)]);
        assertEquals(
          options === "help" ? null : options.tuning?.[option],
          ok * perUnit,
          `${flag} ${ok}`,
        );
      }
      for (const bad of [String(high + 1), ...(low > 0 ? [String(low - 1)] : []), "x"]) {
        assertThrows(
          () => parse([flag, bad]),
          script === "server.ts" ? server.UsageError : client.UsageError,
          `${flag} must be an integer from ${low} to ${high}, not "${bad}"`,
        );
      }
    }
  });

  Deno.test(`${script}'s help names each tuning flag with its range and the sysctl it overrides`, () => {
    const help = script === "server.ts" ? server.HELP : client.HELP;
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
      assertStringIncludes(help, text);
    }
  });
}

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

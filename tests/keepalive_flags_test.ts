/**
 * Tests for keepalive_flags.ts: the tuning flags become exactly the options
 * keepalive.ts takes, within exactly its limits, and the words the scripts
 * print about keepalive. In-process, except the permission check.
 */
import { assert, assertEquals, assertStringIncludes, assertThrows } from "@std/assert";
import { UsageError } from "../cli.ts";
import { isValidKeepAliveValue, KEEPALIVE_LIMITS } from "../keepalive.ts";
import {
  describeKeepAlive,
  describeProbe,
  parseTuningFlags,
  TUNING_HELP,
} from "../keepalive_flags.ts";
import { run } from "./_helpers.ts";

Deno.test("tuning flags in seconds become setKeepAlive options in milliseconds", () => {
  assertEquals(parseTuningFlags({}), null);
  assertEquals(
    parseTuningFlags({ idle: "2", interval: "1", count: "3", "user-timeout": "10" }),
    { time: 2_000, interval: 1_000, retries: 3, userTimeout: 10_000 },
  );
  assertEquals(parseTuningFlags({ "user-timeout": "0" }), { userTimeout: 0 });
  assertEquals(parseTuningFlags({ idle: "007" }), { time: 7_000 });
});

Deno.test("each tuning flag accepts exactly what keepalive.ts accepts, at both ends of its range", () => {
  const flags = [["idle", "time", 1000], ["interval", "interval", 1000], ["count", "retries", 1], [
    "user-timeout",
    "userTimeout",
    1000,
  ]] as const;
  for (const [flag, option, perUnit] of flags) {
    const { min, max } = KEEPALIVE_LIMITS[option];
    const [low, high] = [min / perUnit, Math.floor(max / perUnit)];
    assertEquals(parseTuningFlags({ [flag]: String(low) }), { [option]: low * perUnit });
    assertEquals(parseTuningFlags({ [flag]: String(high) }), { [option]: high * perUnit });
    assert(isValidKeepAliveValue(option, high * perUnit));
    for (const bad of [String(high + 1), ...(low > 0 ? [String(low - 1)] : [])]) {
      assertThrows(
        () => parseTuningFlags({ [flag]: bad }),
        UsageError,
        `--${flag} must be an integer from ${low} to ${high}, not "${bad}"`,
      );
    }
    for (const bad of ["-1", "1.5", "2s", "", " 2", "0x10", "1e3", "9".repeat(20)]) {
      assertThrows(() => parseTuningFlags({ [flag]: bad }), UsageError, `--${flag} must be`);
    }
  }
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

Deno.test('a user timeout of 0 reads "off", never "0 s"; JSON keeps the number', () => {
  const settings = { enabled: true, time: 2_000, interval: 1_000, retries: 3, userTimeout: 0 };
  assertEquals(describeKeepAlive(settings), "idle 2 s, interval 1 s, 3 probes, user timeout off");
  assertEquals(
    describeKeepAlive({ ...settings, userTimeout: 4_500 }),
    "idle 2 s, interval 1 s, 3 probes, user timeout 4.5 s",
  );
  assertEquals(JSON.parse(JSON.stringify(settings)).userTimeout, 0);
});

Deno.test("each kind of probe has its words, and says when it happened", () => {
  const kernel = { agoMs: 820, agoFrom: "kernel", windowMs: 1_000 } as const;
  const estimate = { agoMs: 400, agoFrom: "estimate", windowMs: 1_000 } as const;
  const seen = { agoMs: 0, agoFrom: "seen", windowMs: 1_000 } as const;
  assertEquals(
    describeProbe({ kind: "answered", idleMs: 2_013, ...kernel }),
    "probe answered, after 2.01 s idle (seen 0.82 s later)",
  );
  assertEquals(
    describeProbe({ kind: "unanswered", probe: 2, of: 3, userTimeoutMs: 0, ...estimate }),
    "probe 2/3 unanswered (seen at most 0.40 s later)",
  );
  assertEquals(
    describeProbe({ kind: "unanswered", probe: 2, of: 3, userTimeoutMs: 0, ...kernel }),
    "probe 2/3 unanswered (seen 0.82 s later)",
  );
  assertEquals(
    describeProbe({ kind: "unanswered", probe: 1, of: null, userTimeoutMs: 4_000, ...seen }),
    "probe 1 unanswered (dead after 4 s of silence: user timeout) (in the 1.00 s before it was seen)",
  );
  assertEquals(
    describeProbe({ kind: "late-answer", unanswered: 2, ...kernel }),
    "answered at last, after 2 unanswered probes (seen 0.82 s later)",
  );
  assertEquals(
    describeProbe({ kind: "peer-probe", ...seen }),
    "probed by the peer; our kernel answered (in the 1.00 s before it was seen)",
  );
  // An event read back from a log written before the timing fields: no "when".
  assertEquals(
    describeProbe({ kind: "answered", idleMs: 2_013 } as never),
    "probe answered, after 2.01 s idle",
  );
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

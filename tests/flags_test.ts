/**
 * Tests for @kakit/keepalive/flags (keepalive/flags.ts): the tuning flags
 * become exactly the options the package takes, within exactly its limits,
 * a bad value is one line naming the flag (a TuningFlagError, which the
 * scripts turn into misuse), and the words the scripts print about
 * keepalive. In-process.
 */
import { assert, assertEquals, assertThrows } from "@std/assert";
import { isValidKeepAliveValue, KEEPALIVE_LIMITS } from "@kakit/keepalive";
import {
  describeKeepAlive,
  describeProbe,
  parseTuningFlags,
  TUNING_FLAGS,
  TuningFlagError,
} from "@kakit/keepalive/flags";

Deno.test("tuning flags in seconds become setKeepAlive options in milliseconds", () => {
  assertEquals(parseTuningFlags({}), null);
  assertEquals(
    parseTuningFlags({ idle: "2", interval: "1", count: "3", "user-timeout": "10" }),
    { time: 2_000, interval: 1_000, retries: 3, userTimeout: 10_000 },
  );
  assertEquals(parseTuningFlags({ "user-timeout": "0" }), { userTimeout: 0 });
  assertEquals(parseTuningFlags({ idle: "007" }), { time: 7_000 });
});

Deno.test("each tuning flag accepts exactly what the package accepts, at both ends of its range", () => {
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
        TuningFlagError,
        `--${flag} must be an integer from ${low} to ${high}, not "${bad}"`,
      );
    }
    for (const bad of ["-1", "1.5", "2s", "", " 2", "0x10", "1e3", "9".repeat(20)]) {
      assertThrows(() => parseTuningFlags({ [flag]: bad }), TuningFlagError, `--${flag} must be`);
    }
  }
});

Deno.test("a bad flag's message is exactly one line, what was typed quoted and escaped", () => {
  const error = assertThrows(() => parseTuningFlags({ idle: "x" }), TuningFlagError);
  assertEquals(error.message, '--idle must be an integer from 1 to 32767, not "x"');
  assertEquals(error.name, "TuningFlagError");
  assert(error instanceof Error);
  const typed = "\u202e1\x9b2\u2028" + "9".repeat(100);
  const long = assertThrows(() => parseTuningFlags({ count: typed }), TuningFlagError);
  assert(!/[\u202e\x80-\x9f\u2028\n]/.test(long.message), JSON.stringify(long.message));
  assertEquals(
    long.message,
    `--count must be an integer from 1 to 127, not "\\u202e1\\u009b2\\u2028${
      "9".repeat(35)
    }..." (${typed.length} characters)`,
  );
  assertEquals([...TUNING_FLAGS], ["idle", "interval", "count", "user-timeout"]);
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

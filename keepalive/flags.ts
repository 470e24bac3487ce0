/**
 * # Keepalive on the command line
 *
 * The flags with which a script (the kit's `server.ts` and `client.ts`)
 * tunes keepalive per connection, in seconds like the sysctls they stand in
 * for, and the words it prints about it:
 *
 * | flag               | option              | sysctl it overrides       |
 * | ------------------ | ------------------- | ------------------------- |
 * | `--idle S`         | `time` (ms)         | `tcp_keepalive_time`      |
 * | `--interval S`     | `interval` (ms)     | `tcp_keepalive_intvl`     |
 * | `--count N`        | `retries`           | `tcp_keepalive_probes`    |
 * | `--user-timeout S` | `userTimeout` (ms)  | (none: retransmissions)   |
 *
 * A flag's value is converted once, here (seconds to the option's
 * milliseconds), and checked once, by the package's own range check
 * (`isValidKeepAliveValue`), so a bad value is refused before the script
 * listens or connects, with the same limits `setKeepAlive` would apply.
 *
 * @example
 * ```ts
 * import { parseTuningFlags, TUNING_FLAGS, TuningFlagError } from "@kakit/keepalive/flags";
 *
 * const flags = { idle: "60", interval: "10", count: "3" }; // as parseArgs gives them
 * try {
 *   const options = parseTuningFlags(flags); // { time: 60000, interval: 10000, retries: 3 }
 *   console.log(options, TUNING_FLAGS);
 * } catch (error) {
 *   if (!(error instanceof TuningFlagError)) throw error;
 *   console.error(error.message); // one line; exit 2 (misuse)
 * }
 * ```
 *
 * @module
 */

import { isValidKeepAliveValue, KEEPALIVE_LIMITS, type KeepAliveOption } from "./options.ts";
import type { KeepAliveOptions, KeepAliveSettings } from "./options.ts";
import type { ProbeEvent } from "./_tcp_info.ts";

export type { KeepAliveOptions, KeepAliveSettings } from "./options.ts";
export type { ProbeEvent, ProbeTiming } from "./_tcp_info.ts";

/**
 * The tuning flags that take a value, for `parseArgs`'s `string` list.
 *
 * @example
 * ```ts
 * import { TUNING_FLAGS } from "@kakit/keepalive/flags";
 * const string = [...TUNING_FLAGS, "hostname", "port"]; // parseArgs(Deno.args, { string })
 * ```
 */
export const TUNING_FLAGS = ["idle", "interval", "count", "user-timeout"] as const;

/**
 * One of {@linkcode TUNING_FLAGS}.
 *
 * @example
 * ```ts
 * import type { TuningFlag } from "@kakit/keepalive/flags";
 * const flag: TuningFlag = "user-timeout";
 * ```
 */
export type TuningFlag = typeof TUNING_FLAGS[number];

// Each flag, the option it sets, and how many of the option's units one of
// the flag's units is (seconds to milliseconds; a count is a count).
const OPTION_OF: Record<TuningFlag, { option: KeepAliveOption; perUnit: number }> = {
  idle: { option: "time", perUnit: 1000 },
  interval: { option: "interval", perUnit: 1000 },
  count: { option: "retries", perUnit: 1 },
  "user-timeout": { option: "userTimeout", perUnit: 1000 },
};

// A flag's range in its own units, from the package's limits.
function flagRange(flag: TuningFlag): { low: number; high: number } {
  const { option, perUnit } = OPTION_OF[flag];
  const { min, max } = KEEPALIVE_LIMITS[option];
  return { low: min / perUnit, high: Math.floor(max / perUnit) };
}

/**
 * A tuning flag's value is not one the kernel takes. The message is one
 * line that names the flag, its range in the flag's units and what was typed
 * (quoted, control characters escaped), e.g. `--idle must be an integer from
 * 1 to 32767, not "x"`: a script prints it and exits 2 (misuse).
 *
 * @example
 * ```ts
 * import { parseTuningFlags, TuningFlagError } from "@kakit/keepalive/flags";
 * try {
 *   parseTuningFlags({ count: "200" });
 * } catch (error) {
 *   if (error instanceof TuningFlagError) console.error(error.message);
 *   // --count must be an integer from 1 to 127, not "200"
 * }
 * ```
 */
export class TuningFlagError extends Error {
  /** Makes the error with its one-line message. */
  constructor(message: string) {
    super(message);
    this.name = "TuningFlagError";
  }
}

/**
 * The tuning flags as `setKeepAlive` options (milliseconds), or null when
 * none was given. Throws a {@linkcode TuningFlagError} naming the flag, its
 * range in seconds and what was typed.
 *
 * @example
 * ```ts
 * import { parseTuningFlags } from "@kakit/keepalive/flags";
 * parseTuningFlags({ idle: "2", count: "3" }); // { time: 2000, retries: 3 }
 * ```
 */
export function parseTuningFlags(
  flags: Partial<Record<TuningFlag, string>>,
): KeepAliveOptions | null {
  const options: KeepAliveOptions = {};
  for (const flag of TUNING_FLAGS) {
    const text = flags[flag];
    if (text === undefined) continue;
    const { option, perUnit } = OPTION_OF[flag];
    const value = /^[0-9]{1,12}$/.test(text) ? Number(text) * perUnit : NaN;
    if (!isValidKeepAliveValue(option, value)) {
      const { low, high } = flagRange(flag);
      throw new TuningFlagError(
        `--${flag} must be an integer from ${low} to ${high}, not ${showTyped(text)}`,
      );
    }
    options[option] = value;
  }
  return Object.keys(options).length > 0 ? options : null;
}

/**
 * Settings the way the sysctls would put them: seconds and a probe count;
 * a user timeout of 0 is "off" (the kernel then leaves it to retransmissions).
 *
 * @example
 * ```ts
 * import { describeKeepAlive } from "@kakit/keepalive/flags";
 * describeKeepAlive({ enabled: true, time: 2_000, interval: 1_000, retries: 3, userTimeout: 0 });
 * // "idle 2 s, interval 1 s, 3 probes, user timeout off"
 * ```
 */
export function describeKeepAlive(settings: KeepAliveSettings): string {
  const userTimeout = settings.userTimeout === 0 ? "off" : `${settings.userTimeout / 1000} s`;
  return `idle ${settings.time / 1000} s, interval ${settings.interval / 1000} s, ` +
    `${settings.retries} probes, user timeout ${userTimeout}`;
}

/**
 * One probe seen by `watchKeepAlive` or `watchKeepAliveAll`, in words, with
 * when it happened relative to the look that saw it (the event's
 * `ProbeTiming`): "seen 0.82 s later" when the kernel's clock says (an
 * answer's arrival, an unanswered probe's re-armed timer), "seen at most
 * 0.40 s later" for an estimate (an unanswered probe, from the silence and
 * the socket's idle time and interval), "in the 1.00 s before it was seen"
 * when nothing says (the peer's probe). So a line stamped with the time of
 * the look (or, better, with `Date.now() - agoMs`) says when the probe was.
 *
 * @example
 * ```ts
 * import { describeProbe } from "@kakit/keepalive/flags";
 * describeProbe({ kind: "unanswered", probe: 1, of: 3, userTimeoutMs: 0, agoMs: 400, agoFrom: "estimate", windowMs: 1000 });
 * // "probe 1/3 unanswered (seen at most 0.40 s later)"
 * ```
 */
export function describeProbe(probe: ProbeEvent): string {
  return `${describeKind(probe)}${describeWhen(probe)}`;
}

function describeKind(probe: ProbeEvent): string {
  switch (probe.kind) {
    case "answered":
      return `probe answered, after ${seconds(probe.idleMs)} s idle`;
    case "unanswered":
      return probe.of === null
        ? `probe ${probe.probe} unanswered (dead after ${
          probe.userTimeoutMs / 1000
        } s of silence: user timeout)`
        : `probe ${probe.probe}/${probe.of} unanswered`;
    case "late-answer":
      return `answered at last, after ${probe.unanswered} unanswered probes`;
    case "peer-probe":
      return "probed by the peer; our kernel answered";
  }
}

// When, relative to the look. Nothing for an event without the timing
// fields (one read back from a log written before they existed).
function describeWhen(probe: ProbeEvent): string {
  if (typeof probe.agoMs !== "number") return "";
  switch (probe.agoFrom) {
    case "kernel":
      return ` (seen ${seconds(probe.agoMs)} s later)`;
    case "estimate":
      return ` (seen at most ${seconds(probe.agoMs)} s later)`;
    default:
      return ` (in the ${seconds(probe.windowMs)} s before it was seen)`;
  }
}

// Milliseconds as seconds with two decimals, as every probe line shows them.
function seconds(ms: number): string {
  return (ms / 1000).toFixed(2);
}

/**
 * What someone typed, quoted for a message: control characters (C0, DEL,
 * C1), format characters (bidi overrides such as U+202E, zero-width marks)
 * and line separators escaped as `\uXXXX`, and a long value cut to `max`
 * characters with its length said. The same as the kit's `cli.ts`
 * `showTyped`, repeated so that the package needs nothing outside it.
 */
function showTyped(text: string, max = 40): string {
  const cut = text.length > max ? text.slice(0, max) : text;
  const quoted = escapeControls(JSON.stringify(cut));
  return text.length > max ? `${quoted.slice(0, -1)}..." (${text.length} characters)` : quoted;
}

// Each character a terminal would act on or that reorders or hides text
// (JSON already escapes C0, but not DEL, C1, U+202E, U+2028), as \uXXXX.
function escapeControls(text: string): string {
  return text.replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu, (c) => {
    const code = c.codePointAt(0)!;
    return code > 0xffff ? `\\u{${code.toString(16)}}` : `\\u${code.toString(16).padStart(4, "0")}`;
  });
}

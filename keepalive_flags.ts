/**
 * # Keepalive on the command line
 *
 * The flags with which `server.ts` and `client.ts` tune keepalive per
 * connection, in seconds like the sysctls they stand in for, and the words
 * they print about it:
 *
 * | flag               | `keepalive.ts` option | sysctl it overrides       |
 * | ------------------ | --------------------- | ------------------------- |
 * | `--idle S`         | `time` (ms)           | `tcp_keepalive_time`      |
 * | `--interval S`     | `interval` (ms)       | `tcp_keepalive_intvl`     |
 * | `--count N`        | `retries`             | `tcp_keepalive_probes`    |
 * | `--user-timeout S` | `userTimeout` (ms)    | (none: retransmissions)   |
 * | `--watch`          | `watchKeepAlive`, or  | (none)                    |
 * |                    | `watchKeepAliveAll`   |                           |
 *
 * A flag's value is converted once, here (seconds to the option's
 * milliseconds), and checked once, by `keepalive.ts`'s own range check, so a
 * bad value is refused before the script listens or connects, with the same
 * limits `setKeepAlive` would apply.
 *
 * Copying it? It needs `keepalive.ts` and `cli.ts` beside it.
 *
 * @module
 */
import { runAgainWith, showTyped, UsageError } from "./cli.ts";
import {
  isValidKeepAliveValue,
  KEEPALIVE_LIMITS,
  type KeepAliveOption,
  type KeepAliveOptions,
  type KeepAliveSettings,
  type ProbeEvent,
} from "./keepalive.ts";

/** The tuning flags that take a value, for `parseFlags`'s `string` list. */
export const TUNING_FLAGS = ["idle", "interval", "count", "user-timeout"] as const;

/** One of {@linkcode TUNING_FLAGS}. */
export type TuningFlag = typeof TUNING_FLAGS[number];

// Each flag, the option it sets, and how many of the option's units one of
// the flag's units is (seconds to milliseconds; a count is a count).
const OPTION_OF: Record<TuningFlag, { option: KeepAliveOption; perUnit: number }> = {
  idle: { option: "time", perUnit: 1000 },
  interval: { option: "interval", perUnit: 1000 },
  count: { option: "retries", perUnit: 1 },
  "user-timeout": { option: "userTimeout", perUnit: 1000 },
};

// A flag's range in its own units, from keepalive.ts's limits.
function flagRange(flag: TuningFlag): string {
  const { option, perUnit } = OPTION_OF[flag];
  const { min, max } = KEEPALIVE_LIMITS[option];
  return `${min / perUnit}..${Math.floor(max / perUnit)}`;
}

/** The help lines of the tuning flags, for a script's `--help`. */
export const TUNING_HELP =
  `Per-connection keepalive (needs --allow-ffi, Linux only; each overrides a sysctl for this script's sockets):
  --idle SECONDS          silence before the first probe, ${flagRange("idle")} (tcp_keepalive_time)
  --interval SECONDS      time between unanswered probes, ${
    flagRange("interval")
  } (tcp_keepalive_intvl)
  --count N               unanswered probes before the connection fails, ${
    flagRange("count")
  } (tcp_keepalive_probes)
  --user-timeout SECONDS  how long sent data may stay unacknowledged, ${
    flagRange("user-timeout")
  }; 0 (default)
                          leaves it to retransmissions, about 15 min. Once a probe is out, it is
                          also how long the peer may stay silent, instead of --count
  --watch                 print each keepalive probe as the kernel sends or answers it`;

/**
 * The tuning flags as `setKeepAlive` options (milliseconds), or null when
 * none was given. Throws a {@linkcode UsageError} naming the flag, its range
 * in seconds and what was typed.
 *
 * @example
 * ```ts
 * import { parseTuningFlags } from "./keepalive_flags.ts";
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
      throw new UsageError(
        `--${flag} must be an integer from ${flagRange(flag).replace("..", " to ")}, ` +
          `not ${showTyped(text)}`,
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
 * import { describeKeepAlive } from "./keepalive_flags.ts";
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
 * when it happened relative to the look that saw it (`keepalive.ts`'s
 * `ProbeTiming`): "seen 0.82 s later" when the kernel's clock says (an
 * answer's arrival, an unanswered probe's re-armed timer), "seen at most
 * 0.40 s later" for an estimate (an unanswered probe, from the silence and
 * the socket's idle time and interval), "in the 1.00 s before it was seen"
 * when nothing says (the peer's probe). So a line stamped with the time of
 * the look (or, better, with `Date.now() - agoMs`) says when the probe was.
 *
 * @example
 * ```ts
 * import { describeProbe } from "./keepalive_flags.ts";
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
 * When tuning or watching was asked for without `--allow-ffi`, the one line
 * to print: it names the flags that need it and repeats the whole command
 * line with it (the script named from its `moduleUrl`), so it can be copied
 * and run. Null when FFI is granted or not needed.
 *
 * @example
 * ```ts ignore
 * import { missingFfiPermission } from "./keepalive_flags.ts";
 * missingFfiPermission({ tuning: null, watch: true }, import.meta.url, ["--watch"]);
 * // "--watch needs the --allow-ffi permission: deno run --allow-net --allow-ffi server.ts --watch"
 * ```
 */
export function missingFfiPermission(
  options: { tuning: KeepAliveOptions | null; watch: boolean; epoll?: boolean },
  moduleUrl: string,
  args: readonly string[],
): string | null {
  const flags = TUNING_FLAGS.filter((flag) =>
    options.tuning?.[OPTION_OF[flag].option] !== undefined
  )
    .map((flag) => `--${flag}`);
  if (options.watch) flags.push("--watch");
  if (options.epoll) flags.push("--engine epoll");
  if (flags.length === 0 || Deno.permissions.querySync({ name: "ffi" }).state === "granted") {
    return null;
  }
  const named = flags.length === 1
    ? `${flags[0]} needs`
    : `${flags.slice(0, -1).join(", ")} and ${flags.at(-1)} need`;
  return `${named} the --allow-ffi permission: ` +
    runAgainWith(["--allow-net", "--allow-ffi"], moduleUrl, args);
}

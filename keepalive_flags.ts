/**
 * # Keepalive on the command line
 *
 * The flags with which `server.ts` and `client.ts` tune keepalive per
 * connection, in seconds like the sysctls they stand in for, and the words
 * they print about it:
 *
 * | flag               | `@kakit/keepalive` option | sysctl it overrides       |
 * | ------------------ | ------------------------- | ------------------------- |
 * | `--idle S`         | `time` (ms)               | `tcp_keepalive_time`      |
 * | `--interval S`     | `interval` (ms)           | `tcp_keepalive_intvl`     |
 * | `--count N`        | `retries`                 | `tcp_keepalive_probes`    |
 * | `--user-timeout S` | `userTimeout` (ms)        | (none: retransmissions)   |
 * | `--watch`          | `watchKeepAlive`, or      | (none)                    |
 * |                    | `watchKeepAliveAll`       |                           |
 *
 * The parsing and the words now live in the package
 * (`@kakit/keepalive/flags`); this file keeps what is the scripts' own (the
 * help lines, the `--allow-ffi` message, the `UsageError`) until the scripts
 * take them over. It will be deleted.
 *
 * Copying it? It needs the `keepalive/` package and `cli.ts` beside it.
 *
 * @module
 */
import { runAgainWith, UsageError } from "./cli.ts";
import { KEEPALIVE_LIMITS, type KeepAliveOption, type KeepAliveOptions } from "@kakit/keepalive";
import {
  parseTuningFlags as parseFlags,
  TUNING_FLAGS,
  type TuningFlag,
  TuningFlagError,
} from "@kakit/keepalive/flags";

export { describeKeepAlive, describeProbe, TUNING_FLAGS } from "@kakit/keepalive/flags";
export type { TuningFlag } from "@kakit/keepalive/flags";

// Each flag, the option it sets, and how many of the option's units one of
// the flag's units is (seconds to milliseconds; a count is a count).
const OPTION_OF: Record<TuningFlag, { option: KeepAliveOption; perUnit: number }> = {
  idle: { option: "time", perUnit: 1000 },
  interval: { option: "interval", perUnit: 1000 },
  count: { option: "retries", perUnit: 1 },
  "user-timeout": { option: "userTimeout", perUnit: 1000 },
};

// A flag's range in its own units, from the package's limits (for the help).
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
 * in seconds and what was typed (`@kakit/keepalive/flags`'s
 * `parseTuningFlags`, with its `TuningFlagError` as the scripts' misuse).
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
  try {
    return parseFlags(flags);
  } catch (error) {
    if (error instanceof TuningFlagError) throw new UsageError(error.message);
    throw error;
  }
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

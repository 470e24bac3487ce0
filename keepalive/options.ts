/**
 * # Keepalive options: their names, their limits, and the errors
 *
 * The options are shaped like the upstream Deno proposal (`time`,
 * `interval`, `retries`, times in milliseconds; denoland/deno pull request
 * 35636), plus `userTimeout` (`TCP_USER_TIMEOUT`). Every value is checked
 * here, once, against the kernel's per-socket limits, before anything is
 * set: a bad value is a `TypeError` that names the field and its range,
 * never a socket left half tuned.
 *
 * Errors follow Go's: a setter reports the system call and its errno
 * ({@linkcode SyscallError}), and each public call wraps that once, with
 * what it was doing and the socket's addresses ({@linkcode KeepAliveError}).
 *
 * @module
 */

import { readFields, shown, typeName } from "./_checks.ts";
import { errorText } from "./_libc.ts";
import { errnoName } from "./_linux.ts";

/**
 * Keepalive settings for one socket. Times are in milliseconds, like the
 * upstream Deno proposal, but the kernel counts keepalive times in whole
 * seconds: `time` and `interval` must be whole seconds (a multiple of 1000);
 * anything else is refused with a `TypeError`, never rounded. A field left
 * out keeps the socket's current value (the system's sysctl by default).
 *
 * @example
 * ```ts
 * import { type KeepAliveOptions, setKeepAlive } from "@kakit/keepalive";
 *
 * // First probe after 60 s of silence, then every 10 s; dead after 3 unanswered.
 * const options: KeepAliveOptions = { time: 60_000, interval: 10_000, retries: 3 };
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 8888 });
 * setKeepAlive(conn, options);
 * ```
 */
export interface KeepAliveOptions {
  /** Idle time before the first probe (`TCP_KEEPIDLE`): 1000..32767000 ms, whole seconds. */
  time?: number;
  /** Time between unanswered probes (`TCP_KEEPINTVL`): 1000..32767000 ms, whole seconds. */
  interval?: number;
  /** Unanswered probes before the connection fails with ETIMEDOUT (`TCP_KEEPCNT`): 1..127. */
  retries?: number;
  /**
   * How long sent data may stay unacknowledged before the connection fails
   * with ETIMEDOUT (`TCP_USER_TIMEOUT`): 0..2147483647 ms, 0 meaning the
   * system's retransmission limit (about 15 minutes). With keepalive on, it
   * also replaces `retries` (tcp(7)): once a probe is unanswered, the
   * connection fails when the peer has been silent this long.
   */
  userTimeout?: number;
}

/**
 * What the kernel holds for a socket, read back with `getsockopt`. Times in milliseconds.
 *
 * @example
 * ```ts
 * import { getKeepAlive, type KeepAliveSettings } from "@kakit/keepalive";
 *
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 8888 });
 * const settings: KeepAliveSettings = getKeepAlive(conn);
 * console.log(settings.enabled, settings.time / 1000, "s");
 * ```
 */
export interface KeepAliveSettings {
  /** Whether `SO_KEEPALIVE` is on. */
  enabled: boolean;
  /** `TCP_KEEPIDLE`, in ms. */
  time: number;
  /** `TCP_KEEPINTVL`, in ms. */
  interval: number;
  /** `TCP_KEEPCNT`. */
  retries: number;
  /** `TCP_USER_TIMEOUT`, in ms (0: the system's default). */
  userTimeout: number;
}

/**
 * The values each option may take, in the options' own units: the per-socket
 * limits of Linux (include/net/tcp.h: `MAX_TCP_KEEPIDLE`, `MAX_TCP_KEEPINTVL`,
 * `MAX_TCP_KEEPCNT`; `TCP_USER_TIMEOUT` is an int of milliseconds). Outside
 * them `setsockopt` fails with EINVAL. The kernel counts keepalive times in
 * whole seconds, so `time` and `interval` must be multiples of 1000 ms.
 *
 * @example
 * ```ts
 * import { KEEPALIVE_LIMITS } from "@kakit/keepalive";
 * KEEPALIVE_LIMITS.retries; // { min: 1, max: 127, multipleOf: 1 }
 * ```
 */
export const KEEPALIVE_LIMITS = {
  time: { min: 1_000, max: 32_767_000, multipleOf: 1_000 },
  interval: { min: 1_000, max: 32_767_000, multipleOf: 1_000 },
  retries: { min: 1, max: 127, multipleOf: 1 },
  userTimeout: { min: 0, max: 2_147_483_647, multipleOf: 1 },
} as const;

/**
 * The name of one keepalive option: `time`, `interval`, `retries` or `userTimeout`.
 *
 * @example
 * ```ts
 * import { KEEPALIVE_LIMITS, type KeepAliveOption } from "@kakit/keepalive";
 * const option: KeepAliveOption = "retries";
 * KEEPALIVE_LIMITS[option].max; // 127
 * ```
 */
export type KeepAliveOption = keyof typeof KEEPALIVE_LIMITS;

/**
 * Whether `value` is one the kernel takes for `option`: an integer within
 * {@linkcode KEEPALIVE_LIMITS}, whole seconds for the times. This is the one
 * range check of the kit: {@linkcode setKeepAlive} uses it, and so do the
 * command-line flags (`@kakit/keepalive/flags`).
 *
 * @example
 * ```ts
 * import { isValidKeepAliveValue } from "@kakit/keepalive";
 * isValidKeepAliveValue("time", 1_500); // false: the kernel counts whole seconds
 * ```
 */
export function isValidKeepAliveValue(option: KeepAliveOption, value: unknown): boolean {
  const { min, max, multipleOf } = KEEPALIVE_LIMITS[option];
  return typeof value === "number" && Number.isInteger(value) && value % multipleOf === 0 &&
    value >= min && value <= max;
}

/**
 * A system call on a socket failed: `syscall` (with the option it set or
 * read) and the errno it answered, as `code` (`"EINVAL"`) and `errno` (22).
 *
 * @example
 * ```ts
 * import { KeepAliveError, setKeepAlive, SyscallError } from "@kakit/keepalive";
 *
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 8888 });
 * try {
 *   setKeepAlive(conn, { time: 60_000 });
 * } catch (error) {
 *   if (error instanceof KeepAliveError && error.cause instanceof SyscallError) {
 *     console.log(error.cause.syscall, error.cause.code); // e.g. "setsockopt TCP_KEEPIDLE=60" "EINVAL"
 *   }
 * }
 * ```
 */
export class SyscallError extends Error {
  /** Makes the error for `syscall` from the errno the C library left. */
  constructor(
    /** The call and its option, e.g. `setsockopt TCP_KEEPIDLE=5`. */
    readonly syscall: string,
    /** The errno number. */
    readonly errno: number,
    /** The errno's name, e.g. `EINVAL`. */
    readonly code: string = errnoName(errno),
  ) {
    super(`${syscall}: ${code}${errno > 0 ? ` (${errorText(errno)})` : ""}`);
    this.name = "SyscallError";
  }
}

/**
 * A keepalive call failed on one socket: like Go's `net.OpError`, the
 * message says what was done (`op`), on which socket (its local and remote
 * addresses), and why; `cause` holds the error underneath (a
 * {@linkcode SyscallError} for a failed system call) and `code` its errno
 * name, so `error.code === "EINVAL"` works without parsing the message.
 *
 * @example
 * ```ts
 * import { getKeepAlive, KeepAliveError } from "@kakit/keepalive";
 *
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 8888 });
 * conn.close();
 * try {
 *   getKeepAlive(conn);
 * } catch (error) {
 *   // "get keepalive 127.0.0.1:40000->127.0.0.1:8888: no descriptor of this process holds ..."
 *   if (error instanceof KeepAliveError) console.log(error.op, error.code); // "get keepalive" "EBADF"
 * }
 * ```
 */
export class KeepAliveError extends Error {
  /** The errno name of the cause (`EINVAL`, `EBADF`...), or `""` when it has none. */
  readonly code: string;
  /** Wraps `cause`, which happened while doing `op` on `socket`. */
  constructor(
    /** What was being done: `set keepalive`, `get keepalive`, `read TCP_INFO`, `watch keepalive`. */
    readonly op: string,
    /** The socket's local address, `host:port`. */
    readonly local: string,
    /** The socket's peer, `host:port`, or null for a listener. */
    readonly remote: string | null,
    cause: Error,
  ) {
    super(
      `${op} ${remote === null ? `listener ${local}` : `${local}->${remote}`}: ${cause.message}`,
      { cause },
    );
    this.name = "KeepAliveError";
    this.code = String((cause as { code?: unknown }).code ?? "");
  }
}

// --- Checking the options ----------------------------------------------------

/** Options as checked: each field a valid number, and whether keepalive goes on or off. */
export type CheckedOptions = KeepAliveOptions & { enabled: boolean };

const OPTION_NAMES = Object.keys(KEEPALIVE_LIMITS) as KeepAliveOption[];

/**
 * The options, each field read once (a getter is called once) and checked:
 * what is set is exactly what was checked. A `TypeError` names the first
 * field that is wrong, and its range.
 */
export function validateOptions(options: boolean | KeepAliveOptions): CheckedOptions {
  if (typeof options === "boolean") return { enabled: options };
  const fields = readFields(
    options,
    OPTION_NAMES,
    `keepalive options must be a boolean or an object, not ${typeName(options)}`,
    (key) => `unknown keepalive option ${JSON.stringify(key)}`,
  );
  const checked: CheckedOptions = { enabled: true };
  for (const option of OPTION_NAMES) {
    const value = fields[option];
    if (value === undefined) continue;
    if (isValidKeepAliveValue(option, value)) {
      checked[option] = value as number;
      continue;
    }
    const { min, max, multipleOf } = KEEPALIVE_LIMITS[option];
    throw new TypeError(
      multipleOf === 1000
        ? `${option} must be whole seconds in milliseconds, ${min}..${max} (a multiple of 1000), not ${
          shown(value)
        }`
        : `${option} must be an integer from ${min} to ${max}, not ${shown(value)}`,
    );
  }
  return checked;
}

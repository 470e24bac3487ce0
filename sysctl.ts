/**
 * # Read and set the kernel's TCP keepalive timers
 *
 * @run deno run -A sysctl.ts
 * @run sudo "$(command -v deno)" run -A sysctl.ts net.ipv4.tcp_keepalive_time=120 net.ipv4.tcp_keepalive_intvl=75
 *
 * `SO_KEEPALIVE` only turns keepalive on; when the probes go out is decided
 * by three sysctls. `net.ipv4.tcp_keepalive_time` (default 7200) is how many
 * seconds a connection must be silent before the first probe,
 * `net.ipv4.tcp_keepalive_intvl` (75) the seconds between probes, and
 * `net.ipv4.tcp_keepalive_probes` (9) how many unanswered probes declare the
 * peer dead (after time + probes x intvl seconds: 7875 s by default). A peer
 * that answers is probed every max(time, intvl) seconds, which is why the
 * blog post, with time=120 and intvl left at 75, saw a probe every 2 minutes.
 *
 * This script is a small `sysctl` from procps for just these three: it prints
 * them the same way (`net.ipv4.tcp_keepalive_time = 7200`), and it writes
 * them all or nothing. Reading needs no root; writing does. The values
 * belong to a network namespace, so `sudo ip netns exec NS deno run -A
 * sysctl.ts time=1` changes them for that namespace only.
 *
 * Why `-A`: the sysctls are files under `/proc/sys`, and Deno refuses every
 * path under `/proc` unless the script runs with `--allow-all`; even
 * `--allow-read=/proc/sys/net/ipv4` is answered "Requires all access"
 * (https://github.com/denoland/deno/issues/27564).
 *
 * - https://docs.kernel.org/networking/ip-sysctl.html (tcp_keepalive_time, _intvl, _probes)
 * - https://man7.org/linux/man-pages/man7/tcp.7.html
 * - https://man7.org/linux/man-pages/man8/sysctl.8.html
 * - https://docs.deno.com/api/deno/~/Deno.readTextFile
 * - https://docs.deno.com/api/deno/~/Deno.writeTextFile
 * - https://docs.deno.com/api/deno/~/Deno.errors
 *
 * This file runs on its own (copy it; map `@std/cli` in your deno.json),
 * with `-A` and nothing else. The small helpers at the end (strict flags,
 * what you typed shown back safely, one line on stderr) repeat server.ts's
 * on purpose, so that each file stands alone.
 *
 * @module
 */
import { parseArgs } from "@std/cli/parse-args";

/** The three keepalive sysctls, in the order procps would list them for this script. */
export const KEEPALIVE_SYSCTLS = [
  "net.ipv4.tcp_keepalive_time",
  "net.ipv4.tcp_keepalive_intvl",
  "net.ipv4.tcp_keepalive_probes",
] as const;

/** The full name of one keepalive sysctl, e.g. `net.ipv4.tcp_keepalive_time`. */
export type KeepaliveSysctl = typeof KEEPALIVE_SYSCTLS[number];

/**
 * Anything this script reports instead of doing its job. The message is one
 * line. `exitCode` is 2 for misuse (a bad key or value, one the kernel
 * refuses included) and 1 for a failure (a missing permission, no root, no
 * `/proc/sys`). `hint` names the command line that would work, and `details`
 * holds extra lines, such as the values put back after a failed write.
 */
export class SysctlError extends Error {
  /** Makes an error from a one-line message, the exit code, and the optional hint and details. */
  constructor(
    message: string,
    readonly exitCode: 1 | 2,
    readonly hint: "help" | "allow-all" | "sudo" | null = null,
    readonly details: string[] = [],
  ) {
    super(message);
    this.name = "SysctlError";
  }
}

/** The `--help` text. */
export const HELP = `Usage: deno run -A sysctl.ts [--json] [KEY ...]
       sudo "$(command -v deno)" run -A sysctl.ts [--json] KEY=VALUE ...

Prints or sets the kernel's TCP keepalive sysctls, like procps sysctl.
With no KEY it prints all three; with KEYs it prints those; with KEY=VALUE
it writes every value (all or nothing), reads them back and prints them.

Keys (full name, file name or short name):
  net.ipv4.tcp_keepalive_time    tcp_keepalive_time    time    idle seconds before the first probe (1..2147483647)
  net.ipv4.tcp_keepalive_intvl   tcp_keepalive_intvl   intvl   seconds between probes (1..2147483647)
  net.ipv4.tcp_keepalive_probes  tcp_keepalive_probes  probes  unanswered probes before the peer is dead (1..255)

The kernel's own limit for time and intvl is lower than 2147483647 and depends on
its build (it counts them in clock ticks): above it, it answers EINVAL, and this
script puts back whatever it already wrote.

Options:
  --json       print one JSON object, {"net.ipv4.tcp_keepalive_time":7200,...}
  -h, --help   show this help

Permissions: -A (--allow-all). Deno refuses every path under /proc without it,
even with --allow-read=/proc/sys (denoland/deno issue 27564).
Writing needs root. sudo does not search your PATH for deno: give its full path,
as above. The values are per network namespace.`;

// ## Naming a sysctl
//
// procps takes the dotted name; the file under /proc/sys is the same name
// with slashes. People also type the file name alone, or just the part
// that differs, so all three spellings lead to the same key.

/**
 * The full name of a keepalive sysctl from any accepted spelling: the full
 * name, the file name (`tcp_keepalive_time`) or the short name (`time`).
 * Throws a {@linkcode SysctlError} (exit code 2) for anything else.
 *
 * @example
 * ```ts
 * import { resolveKey } from "./sysctl.ts";
 * resolveKey("intvl"); // "net.ipv4.tcp_keepalive_intvl"
 * ```
 */
export function resolveKey(name: string): KeepaliveSysctl {
  for (const key of KEEPALIVE_SYSCTLS) {
    const fileName = key.slice("net.ipv4.".length);
    const shortName = fileName.slice("tcp_keepalive_".length);
    if (name === key || name === fileName || name === shortName) return key;
  }
  throw new SysctlError(
    `unknown key ${showTyped(name)}: use net.ipv4.tcp_keepalive_time, ` +
      `_intvl or _probes (or time, intvl, probes)`,
    2,
    "help",
  );
}

/** The file that holds a sysctl: dots become slashes under `/proc/sys`. */
export function sysctlPath(key: KeepaliveSysctl): string {
  return `/proc/sys/${key.replaceAll(".", "/")}`;
}

// ## Which values make sense
//
// The kernel checks almost nothing here: it took 0 and -5 for
// tcp_keepalive_time without complaint. So the limits below are ours, and
// each message says why the value is refused. The kernel keeps time and
// intvl in an int, and probes in a u8.

const INT_MAX = 2147483647;

/** The values each sysctl may take, and what they count. */
const LIMITS: Record<KeepaliveSysctl, { max: number; unit: string }> = {
  "net.ipv4.tcp_keepalive_time": { max: INT_MAX, unit: " seconds" },
  "net.ipv4.tcp_keepalive_intvl": { max: INT_MAX, unit: " seconds" },
  "net.ipv4.tcp_keepalive_probes": { max: 255, unit: "" },
};

/**
 * Checks a value typed for a sysctl and returns it as a number. Only decimal
 * digits are accepted (`007` is 7); `time` and `intvl` must be 1..2147483647,
 * `probes` 1..255. Throws a {@linkcode SysctlError} (exit code 2) that names
 * the key, the allowed range and the reason.
 *
 * A value that passes can still be too large for the kernel (99999999 for
 * `time` is): the write then fails with EINVAL.
 *
 * @example
 * ```ts
 * import { validateValue } from "./sysctl.ts";
 * validateValue("time", "120"); // 120
 * ```
 */
export function validateValue(key: string, text: string): number {
  const fullKey = resolveKey(key);
  const { max, unit } = LIMITS[fullKey];
  const refuse = (why: string) =>
    new SysctlError(
      `invalid value for ${fullKey}: ${why} (allowed: 1..${max}${unit})`,
      2,
      "help",
    );

  // A minus sign is not a decimal digit, but "-5" deserves the same answer as 0.
  const negative = /^-[0-9]+$/.test(text);
  if (!negative && !/^[0-9]+$/.test(text)) {
    throw refuse(
      text === "" ? "the value is empty" : `${showTyped(text)} is not a decimal integer`,
    );
  }
  // Digits only, so Number() is exact up to 2^53, and anything past INT_MAX stays past it.
  const value = negative ? -Number(text.slice(1)) : Number(text);
  if (value < 1) {
    throw refuse(
      fullKey === "net.ipv4.tcp_keepalive_probes"
        ? `${text} would drop every idle connection at its first keepalive timer`
        : `${text} is less than 1 second; the kernel takes it, but it breaks keepalive's timers`,
    );
  }
  if (value > max) {
    throw refuse(
      fullKey === "net.ipv4.tcp_keepalive_probes"
        ? `${text} does not fit: the kernel keeps probes in a u8`
        : `${text} is out of range: the kernel keeps the value in an int`,
    );
  }
  return value;
}

/**
 * Splits `KEY=VALUE` and checks both halves with {@linkcode resolveKey} and
 * {@linkcode validateValue}. Throws a {@linkcode SysctlError} (exit code 2).
 *
 * @example
 * ```ts
 * import { parseAssignment } from "./sysctl.ts";
 * parseAssignment("time=120"); // { key: "net.ipv4.tcp_keepalive_time", value: 120 }
 * ```
 */
export function parseAssignment(text: string): { key: KeepaliveSysctl; value: number } {
  const parts = text.split("=");
  const malformed = (why: string) =>
    new SysctlError(
      `malformed assignment ${showTyped(text)}: ${why}; write KEY=VALUE, e.g. time=120`,
      2,
      "help",
    );
  if (parts.length === 1) throw malformed("no '='");
  if (parts.length > 2) throw malformed("more than one '='");
  const [name, value] = parts;
  if (name === "") throw malformed("no key before '='");
  if (value === "") throw malformed("no value after '='");
  const key = resolveKey(name);
  return { key, value: validateValue(key, value) };
}

// ## Reading
//
// Each sysctl is a file holding a decimal number and a newline. Reading is
// also the first thing a write does, so this is where a missing permission
// or a machine without /proc/sys shows up, before anything has changed.

/**
 * Reads keepalive sysctls of the current network namespace, in the order
 * given (all three by default). Keys may use any spelling
 * {@linkcode resolveKey} accepts; the result uses full names. Throws a
 * {@linkcode SysctlError}.
 *
 * @example
 * ```ts
 * import { readKeepaliveSysctls } from "./sysctl.ts";
 * await readKeepaliveSysctls(["time"]); // { "net.ipv4.tcp_keepalive_time": 7200 }
 * ```
 */
export async function readKeepaliveSysctls(
  keys: readonly string[] = KEEPALIVE_SYSCTLS,
): Promise<Record<string, number>> {
  const values: Record<string, number> = {};
  for (const key of keys.map(resolveKey)) {
    let text: string;
    try {
      text = await Deno.readTextFile(sysctlPath(key));
    } catch (error) {
      throw describeFileError(error, key, "read");
    }
    if (!/^-?[0-9]+$/.test(text.trim())) {
      throw new SysctlError(`${sysctlPath(key)} holds ${showTyped(text)}, not a number`, 1);
    }
    values[key] = Number(text.trim());
  }
  return values;
}

// ## Writing, all or nothing
//
// Several values are usually meant together (time=1 intvl=1 for a test), and
// half of them is a setting nobody asked for. So every value is checked
// first, the current values are read (which also proves we may read them),
// and if the kernel refuses one write, the ones already made are put back.

/**
 * Writes keepalive sysctls, all or nothing, and returns the values read back
 * afterwards (`values`) and the ones they replaced (`previous`, to undo the
 * change later). Keys may use any spelling {@linkcode resolveKey} accepts.
 *
 * Throws a {@linkcode SysctlError}: before anything is written for a bad key
 * or value or a missing permission; after a write fails, once the values
 * already written are restored (in reverse order). Its `details` then say
 * what was restored, or what could not be, and its exit code is 1 if a
 * restore failed.
 *
 * @example
 * ```ts
 * import { writeKeepaliveSysctls } from "./sysctl.ts";
 * // Called as root, inside a network namespace of its own (`ip netns exec`,
 * // `unshare -n`): the values belong to the namespace, the host keeps its own.
 * async function withFastProbes(experiment: () => Promise<void>) {
 *   const { previous } = await writeKeepaliveSysctls({ time: 1, intvl: 1 });
 *   try {
 *     await experiment(); // ... watch the probes ...
 *   } finally {
 *     await writeKeepaliveSysctls(previous);
 *   }
 * }
 * ```
 */
export async function writeKeepaliveSysctls(
  values: Record<string, number>,
): Promise<{ values: Record<string, number>; previous: Record<string, number> }> {
  const wanted = new Map<KeepaliveSysctl, number>();
  for (const [name, value] of Object.entries(values)) {
    const key = resolveKey(name);
    if (wanted.has(key)) throw new SysctlError(`${key} is given twice`, 2, "help");
    wanted.set(key, validateValue(key, String(value)));
  }
  const keys = [...wanted.keys()];
  const previous = await readKeepaliveSysctls(keys);

  const written: KeepaliveSysctl[] = [];
  for (const [key, value] of wanted) {
    try {
      await writeSysctl(key, value);
    } catch (error) {
      const failure = describeFileError(error, key, "write", value);
      const details: string[] = [];
      let restoreFailed = false;
      for (const done of written.reverse()) {
        try {
          await writeSysctl(done, previous[done]);
          details.push(`restored ${done} to ${previous[done]}`);
        } catch (restoreError) {
          restoreFailed = true;
          details.push(
            `could not restore ${done} to ${previous[done]}: ${errorMessage(restoreError)}`,
          );
        }
      }
      throw new SysctlError(
        failure.message,
        restoreFailed ? 1 : failure.exitCode,
        failure.hint,
        details,
      );
    }
    written.push(key);
  }
  return { values: await readKeepaliveSysctls(keys), previous };
}

async function writeSysctl(key: KeepaliveSysctl, value: number): Promise<void> {
  // Like `echo 120 > /proc/sys/...`: the kernel parses the number up to the newline.
  await Deno.writeTextFile(sysctlPath(key), `${value}\n`);
}

/**
 * Turns what Deno threw for a sysctl file into one line that says what to
 * do. Deno names most causes with an error class; a read-only file system
 * and EINVAL only show in `code`.
 */
function describeFileError(
  error: unknown,
  key: KeepaliveSysctl,
  operation: "read" | "write",
  value?: number,
): SysctlError {
  const path = sysctlPath(key);
  const code = (error as { code?: unknown })?.code;
  if (error instanceof Deno.errors.NotCapable) {
    return new SysctlError(
      `Deno refuses to ${operation} ${path} without --allow-all (-A): it refuses every ` +
        `path under /proc otherwise, even with --allow-read (denoland/deno issue 27564)`,
      1,
      "allow-all",
    );
  }
  if (error instanceof Deno.errors.NotFound) {
    return new SysctlError(`${path} not found: these sysctls exist only on Linux`, 1);
  }
  if (code === "EROFS" || /Read-only file system/.test(errorMessage(error))) {
    return new SysctlError(
      `cannot ${operation} ${key}: /proc/sys is read-only here, probably a container ` +
        `(set it on the host, or with docker run --sysctl ${key}=...)`,
      1,
    );
  }
  if (error instanceof Deno.errors.PermissionDenied) {
    if (operation === "write" && !isRoot()) {
      return new SysctlError(`writing ${key} needs root`, 1, "sudo");
    }
    return new SysctlError(
      `permission denied to ${operation} ${path}${isRoot() ? " even as root" : ""}: ` +
        errorMessage(error),
      1,
    );
  }
  if (operation === "write" && code === "EINVAL") {
    // Our limits match the kernel's types; the kernel's own limit on time and
    // intvl is lower (it converts seconds to clock ticks), and it differs by build.
    return new SysctlError(
      `${key}=${value} is out of range for this kernel (it answered EINVAL)`,
      2,
    );
  }
  return new SysctlError(`cannot ${operation} ${path}: ${errorMessage(error)}`, 1);
}

function isRoot(): boolean {
  try {
    return Deno.uid() === 0;
  } catch {
    return false;
  }
}

// ## Printing
//
// procps prints `name = value`, one per line, for reads and writes alike;
// the JSON form is one object on one line so a script can parse it.

/**
 * Formats values the way procps `sysctl` prints them, or as one line of JSON.
 *
 * @example
 * ```ts
 * import { formatSysctls } from "./sysctl.ts";
 * formatSysctls({ "net.ipv4.tcp_keepalive_time": 120 }, false);
 * // "net.ipv4.tcp_keepalive_time = 120"
 * ```
 */
export function formatSysctls(values: Record<string, number>, json: boolean): string {
  if (json) return JSON.stringify(values);
  return Object.entries(values).map(([key, value]) => `${key} = ${value}`).join("\n");
}

// ## The command

/**
 * Runs the command line and returns the exit code: 0 on success, 1 on
 * failure, 2 on misuse. Errors are printed as one line on stderr.
 *
 * @example
 * ```ts
 * import { main } from "./sysctl.ts";
 * await main(["--json", "time"]); // prints {"net.ipv4.tcp_keepalive_time":7200}, returns 0
 * ```
 */
export async function main(args: string[]): Promise<number> {
  try {
    return await runCommand(args);
  } catch (error) {
    // printError never throws: with stderr full too, the exit code still tells.
    if (!(error instanceof SysctlError)) {
      printError(`sysctl.ts: ${errorMessage(error)}`);
      return 1;
    }
    printError(`sysctl.ts: ${error.message}${hintFor(error, args)}`);
    for (const line of error.details) printError(`sysctl.ts: ${line}`);
    return error.exitCode;
  }
}

async function runCommand(args: string[]): Promise<number> {
  const flags = parseCommandFlags(args);
  if (flags.help) return print(HELP, "the help");

  // Every argument is checked before the first file is touched: a typo in
  // the last one must not leave the first one written.
  const reads = flags._.filter((arg) => !arg.includes("="));
  const writes = flags._.filter((arg) => arg.includes("="));
  if (reads.length > 0 && writes.length > 0) {
    throw new SysctlError(
      `cannot read (${showTyped(reads[0])}) and write (${showTyped(writes[0])}) in one call: ` +
        "run sysctl.ts twice",
      2,
      "help",
    );
  }
  const assignments = writes.map(parseAssignment);
  const keys = writes.length > 0 ? assignments.map((a) => a.key) : reads.map(resolveKey);
  const twice = keys.find((key, i) => keys.indexOf(key) !== i);
  if (twice) throw new SysctlError(`${twice} is given twice`, 2, "help");

  const values = writes.length > 0
    ? (await writeKeepaliveSysctls(
      Object.fromEntries(assignments.map(({ key, value }) => [key, value])),
    )).values
    : await readKeepaliveSysctls(keys.length > 0 ? keys : KEEPALIVE_SYSCTLS);
  // Written after the change was made: a full stdout must not hide that it was.
  return print(
    formatSysctls(values, flags.json),
    writes.length > 0 ? "the new values (they were written)" : "the values",
  );
}

// Prints `text`; when stdout refuses it (`> /dev/full`), one line on stderr
// and exit 1, never a stack trace.
function print(text: string, what: string): number {
  try {
    const bytes = new TextEncoder().encode(text + "\n");
    for (let sent = 0; sent < bytes.length;) {
      const n = Deno.stdout.writeSync(bytes.subarray(sent));
      if (n <= 0) throw new Error("the output took no bytes");
      sent += n;
    }
    return 0;
  } catch (error) {
    printError(`sysctl.ts: cannot print ${what}: ${errorMessage(error)}`);
    return 1;
  }
}

// The same strict flags as server.ts and client.ts: --json=0 is a mistake,
// not "no"; a flag given twice is a mistake. KEY and KEY=VALUE are the
// arguments that do not start with "-", kept as typed (time=007 stays a
// string); after "--" there may be nothing.
function parseCommandFlags(args: string[]): { json: boolean; help: boolean; _: string[] } {
  const operand = (arg: string) => /^[^-]/.test(arg);
  try {
    const flags = parseFlags(args.filter((arg) => !operand(arg)), {
      string: [],
      boolean: ["json"],
    });
    return { ...flags, _: args.filter(operand) };
  } catch (error) {
    if (error instanceof UsageError) throw new SysctlError(error.message, 2, "help");
    throw error;
  }
}

/** The command line that would work, after a failure that has one. */
function hintFor(error: SysctlError, args: string[]): string {
  const command = runAgainWith(["-A"], args);
  const writing = args.some((arg) => arg.includes("=") && !arg.startsWith("-"));
  // sudo does not search the user's PATH (a deno installed in the home
  // directory, or one from npx, is not found), so a command for sudo names
  // the Deno that runs now by its full path. Inside a namespace made by
  // `ip netns`, the values to write are that namespace's: a plain sudo would
  // write the host's.
  const namespace = namespaceName();
  const inNamespace = namespace === null ? [] : ["ip", "netns", "exec", shellQuote(namespace)];
  const sudo = () =>
    ["sudo", ...inNamespace, shellQuote(Deno.execPath()), command.slice("deno ".length)].join(" ");
  switch (error.hint) {
    case "help":
      return " (see --help)";
    case "allow-all":
      return `; run: ${writing ? sudo() : command}`;
    case "sudo":
      return `; run: ${sudo()}`;
    default:
      return "";
  }
}

// The name `ip netns` gave the network namespace this process runs in, or
// null (the host's, or one without a name): its /run/netns entry is the same
// namespace file as /proc/self/ns/net.
function namespaceName(): string | null {
  try {
    const own = Deno.statSync("/proc/self/ns/net");
    for (const entry of Deno.readDirSync("/run/netns")) {
      const named = Deno.statSync(`/run/netns/${entry.name}`);
      if (named.ino === own.ino && named.dev === own.dev) return entry.name;
    }
  } catch { /* no /run/netns: no named namespaces */ }
  return null;
}

// One word for a POSIX shell: as it is when it is safe, in single quotes otherwise.
function shellQuote(arg: string): string {
  return /^[\w.,:=\/+@%-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`;
}

// ## Small helpers, repeated in server.ts and client.ts on purpose: each script stands alone

/** Bad command-line input: one line, exit code 2. */
class UsageError extends Error {
  /** Named, so that a stack trace (there should be none) says what it is. */
  override name = "UsageError";
}

// What someone typed, quoted for a message: control and format characters
// (escape sequences, bidi overrides) escaped, long values cut.
function showTyped(text: string, max = 40): string {
  const quoted = JSON.stringify(text.slice(0, max)).replace(
    /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu,
    (c) => `\\u${c.codePointAt(0)!.toString(16).padStart(4, "0")}`,
  );
  return text.length > max ? `${quoted.slice(0, -1)}..." (${text.length} characters)` : quoted;
}

// Strict flags over parseArgs: an unknown flag, a boolean with a value
// (--json=0), a missing value, a flag given twice or a stray argument is a
// UsageError, where parseArgs would guess.
function parseFlags<S extends string, B extends string>(
  args: string[],
  spec: { string: S[]; boolean: B[]; negatable?: B[] },
): { [K in S]?: string } & { [K in B | "help"]: boolean } {
  const seen = new Set<string>();
  const normalized: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--") {
      if (i + 1 < args.length) {
        throw new UsageError(`unexpected argument ${showTyped(args[i + 1])}`);
      }
      break;
    }
    if (!/^--?[^-]/.test(arg) || /^-[0-9]/.test(arg)) {
      throw new UsageError(arg ? `unexpected argument ${showTyped(arg)}` : "an empty argument");
    }
    const [written, inline] = arg.includes("=")
      ? [arg.slice(0, arg.indexOf("=")), arg.slice(arg.indexOf("=") + 1)]
      : [arg, undefined];
    const bare = written === "-h" ? "help" : written.replace(/^--/, "");
    const name = bare.startsWith("no-") && spec.negatable?.includes(bare.slice(3) as B)
      ? bare.slice(3)
      : bare;
    const isBoolean = name === "help" || spec.boolean.includes(name as B);
    if (!isBoolean && !spec.string.includes(name as S)) {
      throw new UsageError(`unknown flag ${showTyped(written)}`);
    }
    if (seen.has(name)) throw new UsageError(`--${name} is given twice`);
    seen.add(name);
    if (isBoolean && inline !== undefined) {
      throw new UsageError(`${written} takes no value, not ${showTyped(inline)}`);
    }
    const value = isBoolean ? undefined : inline ?? args[++i];
    if (!isBoolean && !value) throw new UsageError(`--${name} needs a value`);
    normalized.push(isBoolean ? `--${bare}` : `--${name}=${value}`);
  }
  return parseArgs(normalized, {
    string: spec.string,
    boolean: [...spec.boolean, "help"],
    negatable: spec.negatable,
    default: Object.fromEntries((spec.negatable ?? []).map((name) => [name, true])),
  }) as never;
}

// This command again, with permissions added: copy it, and it runs.
function runAgainWith(permissions: string[], args: string[]): string {
  const quote = (arg: string) =>
    /^[\w.,:=\/+@%-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`;
  const path = decodeURIComponent(new URL(import.meta.url).pathname);
  const here = `${Deno.cwd()}/`;
  const script = path.startsWith(here) ? path.slice(here.length) : path;
  return ["deno", "run", ...permissions, script, ...args].map(quote).join(" ");
}

// One line on stderr, or nothing when stderr cannot be written: the exit
// code still tells.
function printError(line: string): void {
  try {
    Deno.stderr.writeSync(new TextEncoder().encode(line + "\n"));
  } catch { /* 2> /dev/full */ }
}

const errorMessage = (error: unknown) =>
  (error instanceof Error ? error.message : String(error)).split("\n")[0];

if (import.meta.main) Deno.exit(await main(Deno.args));

// Real runs (Deno 2.9.6, Linux 6.18). The writes ran in a network namespace
// (`sudo ip netns exec x deno run -A sysctl.ts ...`, which starts from the
// defaults), so the machine's own values stayed put; the output is the same.
//
//   $ deno run -A sysctl.ts
//   net.ipv4.tcp_keepalive_time = 7200
//   net.ipv4.tcp_keepalive_intvl = 75
//   net.ipv4.tcp_keepalive_probes = 9
//
//   $ deno run -A sysctl.ts --json probes
//   {"net.ipv4.tcp_keepalive_probes":9}
//
//   $ deno run --allow-read sysctl.ts
//   sysctl.ts: Deno refuses to read /proc/sys/net/ipv4/tcp_keepalive_time without --allow-all (-A): it refuses every path under /proc otherwise, even with --allow-read (denoland/deno issue 27564); run: deno run -A sysctl.ts
//   (exit code 1)
//
//   $ deno run -A sysctl.ts time=120 intvl=120        # not root
//   sysctl.ts: writing net.ipv4.tcp_keepalive_time needs root; run: sudo /home/me/.deno/bin/deno run -A sysctl.ts time=120 intvl=120
//   (exit code 1)
//
//   $ sudo "$(command -v deno)" run -A sysctl.ts time=120 intvl=120
//   net.ipv4.tcp_keepalive_time = 120
//   net.ipv4.tcp_keepalive_intvl = 120
//
//   $ sudo "$(command -v deno)" run -A sysctl.ts time=100 intvl=99999999
//   sysctl.ts: net.ipv4.tcp_keepalive_intvl=99999999 is out of range for this kernel (it answered EINVAL)
//   sysctl.ts: restored net.ipv4.tcp_keepalive_time to 120
//   (exit code 2)
//
//   $ sudo "$(command -v deno)" run -A sysctl.ts --json
//   {"net.ipv4.tcp_keepalive_time":120,"net.ipv4.tcp_keepalive_intvl":120,"net.ipv4.tcp_keepalive_probes":9}
//
//   $ deno run -A sysctl.ts time=0
//   sysctl.ts: invalid value for net.ipv4.tcp_keepalive_time: 0 is less than 1 second; the kernel takes it, but it breaks keepalive's timers (allowed: 1..2147483647 seconds) (see --help)
//   (exit code 2)
//
//   $ deno run -A sysctl.ts time intvl=30
//   sysctl.ts: cannot read (time) and write (intvl=30) in one call: run sysctl.ts twice (see --help)
//   (exit code 2)

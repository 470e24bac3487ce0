/**
 * # The careful command line of a script that runs until it is stopped
 *
 * What `server.ts` and `client.ts` need around their story, in one small
 * module worth copying into any Deno script that serves or waits:
 *
 * - **Strict flags**, on top of `@std/cli`'s `parseArgs`: a boolean flag
 *   takes no value (`--json=0` is an error, not JSON), a flag given twice is
 *   an error (not "the last one wins"), and so are unknown flags and stray
 *   arguments. Each is a {@linkcode UsageError}: one line, exit code 2.
 * - **What people typed, shown back safely**: {@linkcode showTyped} escapes
 *   control bytes and shortens long values, so a message can never move the
 *   cursor, set a window title or fill the screen.
 * - **Output that never blocks**: `console.log` waits while stdout is full (a
 *   paused terminal, `| less`, a stalled log shipper), and a server waiting
 *   there accepts nothing, reads nothing and ignores SIGTERM.
 *   {@linkcode createLineWriter} queues lines and writes them asynchronously;
 *   past a bound it drops lines and later says how many.
 * - **Quitting** on Enter, Ctrl-C or SIGTERM ({@linkcode waitForQuit}), where
 *   a closed stdin (a background job, a service) is not a request to quit.
 *
 * Copying it? It needs `@std/cli` in your import map (see the README) and no
 * permission of its own.
 *
 * @module
 */
import { parseArgs } from "@std/cli/parse-args";

/** Bad command-line input: the message is one line, and the exit code is 2. */
export class UsageError extends Error {
  /** Makes the error from its one-line message. */
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

// ## Showing back what someone typed

/**
 * A value someone typed, quoted for a message: control characters (C0, DEL,
 * C1), format characters (bidirectional overrides, zero-width marks) and
 * line separators are escaped (`"\u001b[2J"`), and past `max` characters it
 * is cut and its length given.
 *
 * @example
 * ```ts
 * import { showTyped } from "./cli.ts";
 * showTyped("a\x1b[2Jb"); // '"a\\u001b[2Jb"'
 * showTyped("x".repeat(100_000)); // '"xxxx...x..." (100000 characters)'
 * ```
 */
export function showTyped(text: string, max = 40): string {
  const shown = text.length > max ? text.slice(0, max) : text;
  // JSON escapes the C0 controls, quotes and backslashes. Terminals also act
  // on DEL and the C1 controls (0x9b is a CSI), and format characters (bidi
  // overrides, zero-width marks) and line separators reorder or hide text.
  const quoted = JSON.stringify(shown).replace(
    /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu,
    (c) => {
      const code = c.codePointAt(0)!;
      return code > 0xffff
        ? `\\u{${code.toString(16)}}`
        : `\\u${code.toString(16).padStart(4, "0")}`;
    },
  );
  return text.length > max ? `${quoted.slice(0, -1)}..." (${text.length} characters)` : quoted;
}

// ## Strict flags

/** The flags a command takes, by name without the dashes. `help` (`-h`) is always there. */
export interface FlagSpec<S extends string, B extends string> {
  /** Flags that take a value: `--port 8888` or `--port=8888`. */
  string: readonly S[];
  /** Flags that take none: `--json`. */
  boolean: readonly B[];
  /** Boolean flags that may also be written `--no-NAME`; they default to true. */
  negatable?: readonly B[];
  /** Values of the string flags that are not given. */
  default?: Partial<Record<S, string>>;
  /** Whether arguments that are not flags are taken (in `_`); otherwise each is misuse. */
  positionals?: boolean;
}

/** What {@linkcode parseFlags} returns: each string flag's value (or its default), each boolean. */
export type Flags<S extends string, B extends string> =
  & { [K in S]: string | undefined }
  & { [K in B | "help"]: boolean }
  & { _: string[] };

/**
 * Parses a command line strictly, or throws a {@linkcode UsageError} naming
 * the flag: an unknown flag, a boolean with a value (`--json=0`), a value
 * missing or empty (`--port ""`), a flag given twice (`--port 1 --port 2`,
 * also `--keepalive --no-keepalive`), or any argument that is not a flag.
 * A string flag takes the next argument as its value, whatever it is, so
 * `--port -1` is reported as a bad port.
 *
 * @example
 * ```ts
 * import { parseFlags } from "./cli.ts";
 * parseFlags(["--port", "0", "--json"], { string: ["port"], boolean: ["json"] });
 * // { port: "0", json: true, help: false }
 * ```
 */
export function parseFlags<S extends string, B extends string>(
  args: readonly string[],
  spec: FlagSpec<S, B>,
): Flags<S, B> {
  const strings = new Set<string>(spec.string);
  const booleans = new Set<string>([...spec.boolean, "help"]);
  const negatable = new Set<string>(spec.negatable ?? []);
  // parseArgs would take "--json=0" as false and the last of two values: so
  // each argument is checked here first, and parseArgs gets a command line in
  // which every flag is written once, as --name=value or --name.
  const seen = new Set<string>();
  const normalized: string[] = [];
  const positionals: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (spec.positionals && !arg.startsWith("-") && arg !== "") {
      positionals.push(arg);
      continue;
    }
    if (arg === "--") {
      if (i + 1 < args.length) {
        throw new UsageError(`unexpected argument ${showTyped(args[i + 1])}`);
      }
      break;
    }
    if (/^-[0-9]/.test(arg)) {
      throw new UsageError(
        `unexpected argument ${showTyped(arg)}: no flag takes a negative number`,
      );
    }
    if (!/^-[^-]|^--[^-]/.test(arg)) {
      throw new UsageError(
        arg === ""
          ? "an empty argument where a flag was expected"
          : `unexpected argument ${showTyped(arg)}`,
      );
    }
    const [written, inline] = splitFlag(arg);
    const bare = written === "-h" ? "help" : written.startsWith("--") ? written.slice(2) : "";
    const negated = bare.startsWith("no-") && negatable.has(bare.slice(3));
    const name = negated ? bare.slice(3) : bare;
    if (!strings.has(name) && !booleans.has(name)) {
      throw new UsageError(`unknown flag ${showTyped(written)}`);
    }
    if (seen.has(name)) {
      const spelled = negatable.has(name) ? `--${name} (or --no-${name})` : `--${name}`;
      throw new UsageError(`${spelled} is given twice`);
    }
    seen.add(name);
    if (booleans.has(name)) {
      if (inline !== undefined) {
        throw new UsageError(
          `${written} takes no value, not ${showTyped(inline)}` +
            (negatable.has(name) ? `: write --${name} or --no-${name}` : ""),
        );
      }
      normalized.push(negated ? `--no-${name}` : `--${name}`);
      continue;
    }
    const value = inline ?? args[++i];
    if (value === undefined || value === "") throw new UsageError(`--${name} needs a value`);
    normalized.push(`--${name}=${value}`);
  }
  const { _: _none, ...flags } = parseArgs(normalized, {
    string: [...spec.string],
    boolean: [...spec.boolean, "help"],
    negatable: [...(spec.negatable ?? [])],
    default: {
      ...spec.default,
      ...Object.fromEntries((spec.negatable ?? []).map((name) => [name, true])),
    },
  });
  return { ...flags, _: positionals } as Flags<S, B>;
}

function splitFlag(arg: string): [string, string | undefined] {
  const equals = arg.indexOf("=");
  return equals < 0 ? [arg, undefined] : [arg.slice(0, equals), arg.slice(equals + 1)];
}

/**
 * A whole number typed for `flag`, within `min..max`; otherwise a
 * {@linkcode UsageError} that names the flag, the range and what was typed.
 * An integer here is decimal digits and nothing else (no sign, no spaces, no
 * `0x`, no `1e3`) whose value is in range: leading zeros are taken, however
 * many (`0080` is 80, and so is `0000000000000000080`), so what decides is
 * the value, never how many digits were typed.
 *
 * @example
 * ```ts
 * import { parseInteger } from "./cli.ts";
 * parseInteger("--port", "8888", 0, 65535); // 8888
 * ```
 */
export function parseInteger(flag: string, text: string, min: number, max: number): number {
  // BigInt compares exactly however long the digits are; Number would round
  // past 2^53 and turn 400 nines into Infinity.
  if (!/^[0-9]+$/.test(text) || BigInt(text) < BigInt(min) || BigInt(text) > BigInt(max)) {
    throw new UsageError(
      `${flag} must be an integer from ${min} to ${max}, not ${showTyped(text)}`,
    );
  }
  return Number(text);
}

/**
 * An address or host name typed for `flag`, checked before anything uses it:
 * an IPv6 address with or without brackets (`[::1]` is `::1`, the way IPv6
 * is written next to a port), an IPv4 address, or a host name. Anything else
 * is a {@linkcode UsageError} that shows what was typed.
 *
 * @example
 * ```ts
 * import { parseHostname } from "./cli.ts";
 * parseHostname("--hostname", "[::1]"); // "::1"
 * ```
 */
export function parseHostname(flag: string, text: string): string {
  const bracketed = text.startsWith("[");
  if (bracketed !== text.endsWith("]")) {
    throw new UsageError(`${flag} ${showTyped(text)} is not an address: unmatched bracket`);
  }
  const unbracketed = bracketed ? text.slice(1, -1) : text;
  if (bracketed && !unbracketed.includes(":")) {
    throw new UsageError(`${flag} ${showTyped(text)}: brackets are for IPv6 addresses only`);
  }
  if (unbracketed.includes(":")) {
    if (unbracketed.includes("%")) {
      throw new UsageError(
        `${flag} ${showTyped(text)}: zone ids (%eth0) are not supported; use a global or ` +
          `unique-local IPv6 address, or :: for every address`,
      );
    }
    // The URL parser knows IPv6 exactly (it refuses "::gg" and ":::"), but
    // it drops tabs and newlines before it looks: only hex, ':' and '.'.
    if (!/^[0-9A-Fa-f:.]+$/.test(unbracketed) || !canParse(`http://[${unbracketed}]/`)) {
      throw new UsageError(`${flag} ${showTyped(text)} is not an IPv6 address`);
    }
    return unbracketed;
  }
  // A host name is dot-separated labels of letters, digits and hyphens, at
  // most 253 characters. One whose last label is a number is an IPv4
  // address, and only the plain dotted form is taken: the C library would
  // read 0177.0.0.1 as octal, 2130706433 and 0x7f.1 as 127.0.0.1.
  const label = "[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?";
  if (unbracketed.length > 253 || !new RegExp(`^${label}(?:\\.${label})*\\.?$`).test(unbracketed)) {
    throw new UsageError(`${flag} ${showTyped(text)} is not an address or host name`);
  }
  const lastLabel = unbracketed.replace(/\.$/, "").split(".").at(-1)!;
  const octet = "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
  if (
    /^(?:[0-9]+|0x[0-9a-f]*)$/i.test(lastLabel) &&
    !new RegExp(`^${octet}(?:\\.${octet}){3}$`).test(unbracketed)
  ) {
    throw new UsageError(
      `${flag} ${showTyped(text)} is not an IPv4 address: write four numbers 0..255 ` +
        `without leading zeros, e.g. 127.0.0.1`,
    );
  }
  return unbracketed;
}

function canParse(url: string): boolean {
  try {
    new URL(url);
    return true;
  } catch {
    return false;
  }
}

/**
 * Quotes an argument for a POSIX shell, so a command line printed in a hint
 * can be copied and run as it is.
 *
 * @example
 * ```ts
 * import { shellQuote } from "./cli.ts";
 * shellQuote("my server.ts"); // "'my server.ts'"
 * ```
 */
export function shellQuote(arg: string): string {
  return /^[A-Za-z0-9_.,:=\/+@%-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`;
}

/**
 * The command line to run a script again with these permissions, and the
 * arguments it was given, for a message that names a missing permission:
 * the user copies it and it works.
 *
 * @example
 * ```ts
 * import { runAgainWith } from "./cli.ts";
 * runAgainWith(["--allow-net"], import.meta.url, ["--port", "0"]);
 * // "deno run --allow-net server.ts --port 0"
 * ```
 */
export function runAgainWith(
  permissions: readonly string[],
  moduleUrl: string,
  args: readonly string[],
): string {
  return ["deno", "run", ...permissions, scriptPath(moduleUrl), ...args.map(shellQuote)].join(" ");
}

/**
 * How to name a script in a command line someone will copy: its path from
 * the current directory (or the full path, if it is elsewhere), quoted.
 *
 * @example
 * ```ts
 * import { scriptPath } from "./cli.ts";
 * scriptPath(import.meta.url); // "server.ts", or "kit/server.ts" when run from the parent
 * ```
 */
export function scriptPath(moduleUrl: string): string {
  const url = new URL(moduleUrl);
  if (url.protocol !== "file:") return shellQuote(url.href);
  const path = decodeURIComponent(url.pathname);
  const here = `${Deno.cwd()}/`;
  return shellQuote(path.startsWith(here) ? path.slice(here.length) : path);
}

// ## Output that never blocks

/** Where a {@linkcode LineWriter} writes: `Deno.stdout`, or anything with the same `write`. */
export interface ByteSink {
  /** Writes some of `bytes` and resolves with how many; may take as long as it likes. */
  write(bytes: Uint8Array): Promise<number>;
}

/** Lines out, never waiting: made by {@linkcode createLineWriter}. */
export interface LineWriter {
  /** Queues one line (without its newline). Returns at once and never throws. */
  write(line: string): void;
  /** Waits until every queued line is written, or `timeoutMs` passes; true when all were. */
  flush(timeoutMs: number): Promise<boolean>;
}

/**
 * Makes a writer of lines that never blocks its caller: lines are queued and
 * written in the background, many per system call. While the output does not
 * take them, the queue grows up to `maxQueuedLines` (10,000 by default);
 * lines past that are dropped and counted, and once there is room again the
 * line `droppedNotice(count)` says how many went missing, where they went
 * missing. If the output fails for good (a closed pipe), every later line is
 * dropped quietly: nobody is reading.
 *
 * @example
 * ```ts
 * import { createLineWriter } from "./cli.ts";
 * const out = createLineWriter({ droppedNotice: (n) => `(${n} lines dropped: stdout was full)` });
 * out.write("accepted 127.0.0.1:50000"); // returns at once, even with a paused terminal
 * await out.flush(500); // at exit: give the output half a second, no more
 * ```
 */
export function createLineWriter(options: {
  droppedNotice: (count: number) => string;
  output?: ByteSink;
  maxQueuedLines?: number;
}): LineWriter {
  const output = options.output ?? Deno.stdout;
  const maxQueuedLines = options.maxQueuedLines ?? 10_000;
  const encoder = new TextEncoder();
  const queue: string[] = [];
  const whenIdle = new Set<() => void>();
  let dropped = 0;
  let writing = false;
  let broken = false;

  const noteDrops = () => {
    if (dropped === 0) return;
    queue.push(options.droppedNotice(dropped));
    dropped = 0;
  };

  async function drain() {
    try {
      for (;;) {
        // Caught up after dropping lines: say so now, not with the next line.
        if (queue.length === 0) noteDrops();
        if (queue.length === 0) break;
        const bytes = encoder.encode(queue.splice(0, 512).join("\n") + "\n");
        for (let sent = 0; sent < bytes.length;) sent += await output.write(bytes.subarray(sent));
      }
    } catch {
      broken = true; // EPIPE and the like: nobody will read what follows
      queue.length = 0;
    }
    writing = false; // no await since the queue was last seen empty
    for (const wake of whenIdle) wake();
  }

  return {
    write(line) {
      if (broken) return;
      if (queue.length >= maxQueuedLines) {
        dropped++;
        return;
      }
      noteDrops();
      queue.push(line);
      if (!writing) {
        writing = true;
        drain();
      }
    },
    async flush(timeoutMs) {
      if (!broken) noteDrops();
      if (queue.length > 0 && !writing) {
        writing = true;
        drain();
      }
      if (!writing) return !broken;
      let timer: ReturnType<typeof setTimeout> | undefined;
      let wake = () => {};
      const idle = new Promise<boolean>((resolve) => wake = () => resolve(!broken));
      const late = new Promise<boolean>((resolve) => timer = setTimeout(resolve, timeoutMs, false));
      whenIdle.add(wake);
      try {
        return await Promise.race([idle, late]);
      } finally {
        whenIdle.delete(wake);
        clearTimeout(timer);
      }
    },
  };
}

// ## Writing what a command prints

/**
 * Where {@linkcode writeText} writes: `Deno.stdout`, `Deno.stderr`, or
 * anything with the same `writeSync`.
 */
export interface SyncSink {
  /** Writes some of `bytes` and returns how many, or throws. */
  writeSync(bytes: Uint8Array): number;
}

/**
 * Writes `text` and a newline to `output` (stdout unless told), all of it,
 * and returns null; when the output refuses it (`> /dev/full`, a full disk,
 * a pipe closed by `| head`), returns why, in one line, instead of throwing.
 * `console.log` throws there, and an error nobody catches is a stack trace
 * and exit code 1, whatever the command meant to say.
 *
 * @example
 * ```ts
 * import { printError, writeText } from "./cli.ts";
 * const failed = writeText("the result");
 * if (failed !== null) printError(`plan.ts: cannot write the plan: ${failed}`);
 * ```
 */
export function writeText(text: string, output: SyncSink = Deno.stdout): string | null {
  const bytes = new TextEncoder().encode(`${text}\n`);
  try {
    for (let sent = 0; sent < bytes.length;) {
      const n = output.writeSync(bytes.subarray(sent));
      if (n <= 0) return "the output took no bytes";
      sent += n;
    }
    return null;
  } catch (error) {
    return (error instanceof Error ? error.message : String(error)).split("\n")[0];
  }
}

/**
 * Writes one line to stderr, or nothing at all when stderr cannot be written
 * (`2> /dev/full`): it never throws, so the exit code still tells what
 * happened when the message cannot.
 */
export function printError(line: string): void {
  writeText(line, Deno.stderr);
}

// ## The start of a command

/** Where a command reads and writes; tests pass their own. */
export interface CommandIO {
  /** Resolves when the user asks to quit (default: {@linkcode waitForQuit}). */
  quit?: () => Promise<unknown>;
  /** Where event lines go (default: stdout). It may stall; the command does not. */
  stdout?: ByteSink;
  /** Where error lines go (default: stderr); only used before the command runs. */
  stderr?: (line: string) => void;
}

/**
 * Parses a command line with `parse`, the way every script of the kit
 * starts: returns the options, or the exit code to return at once: 0 after
 * printing `help` for `--help`, 2 after one line of misuse on stderr
 * (`server.ts: --port is given twice (see --help)`), 1 when the help cannot
 * be written (`> /dev/full`; one line on stderr says so). Misuse is 2 even
 * when stderr cannot be written either: a `stderr` that throws is ignored.
 *
 * @example
 * ```ts
 * import { parseCommandLine, parseFlags } from "./cli.ts";
 * const parse = (args: string[]) => {
 *   const flags = parseFlags(args, { string: ["port"], boolean: [] });
 *   return flags.help ? "help" as const : { port: flags.port ?? "8888" };
 * };
 * const options = parseCommandLine("server.ts", Deno.args, parse, "Usage: ...");
 * if (typeof options === "number") Deno.exit(options);
 * ```
 */
export function parseCommandLine<O extends object>(
  script: string,
  args: string[],
  parse: (args: string[]) => O | "help",
  help: string,
  stderr: (line: string) => void = printError,
): O | 0 | 1 | 2 {
  const complain = (line: string) => {
    try {
      stderr(line);
    } catch { /* stderr cannot be written either: the exit code still tells */ }
  };
  let options: O | "help";
  try {
    options = parse(args);
  } catch (error) {
    complain(`${script}: ${error instanceof Error ? error.message : String(error)} (see --help)`);
    return 2;
  }
  if (options !== "help") return options;
  const failed = writeText(help);
  if (failed === null) return 0;
  complain(`${script}: cannot write the help: ${failed}`);
  return 1;
}

// ## Quitting

/**
 * Resolves when the user asks to quit: Enter (the C programs' `getchar()`),
 * Ctrl-C or SIGTERM. A closed stdin (a background job, a service) is not a
 * request to quit: then only a signal is. Ctrl-D at a terminal ends one read,
 * not the terminal, so Enter still works after it. Call it once per process:
 * its signal listeners stay, so that a second signal does not kill the
 * command while it closes down; end the process with `Deno.exit`.
 *
 * @example
 * ```ts
 * import { waitForQuit } from "./cli.ts";
 * const why = await waitForQuit(); // "enter" or "signal"
 * ```
 */
export function waitForQuit(): Promise<"enter" | "signal"> {
  return new Promise((resolve) => {
    // The listeners stay for the life of the process: a second Ctrl-C or
    // SIGTERM while the command closes down is taken as the same request,
    // instead of killing it halfway through (without its summary).
    for (const signal of ["SIGINT", "SIGTERM"] as const) {
      Deno.addSignalListener(signal, () => resolve("signal"));
    }
    (async () => {
      const buffer = new Uint8Array(256);
      const terminal = Deno.stdin.isTerminal();
      for (;;) {
        let n: number | null;
        try {
          n = await Deno.stdin.read(buffer);
        } catch {
          return; // no usable stdin: only a signal quits
        }
        if (n === null && !terminal) return;
        if (n === null) await new Promise((resolve) => setTimeout(resolve, 100));
        else if (buffer.subarray(0, n).includes(0x0a)) return resolve("enter");
      }
    })();
  });
}

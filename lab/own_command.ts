/**
 * # A user's command, run in one of the lab's namespaces
 *
 * `lab own` runs the user's server and client commands through `sh -c`, so
 * they may be any shell: `cd`, pipes, variables. Each runs inside a
 * namespace (`ip netns exec`), in a process group of its own (`setsid`), so
 * that stopping it stops everything it started, not only the shell.
 *
 * What it prints is read as it comes and kept within bounds: the last
 * `keepLines` lines of stdout and stderr together, each cut to
 * {@linkcode MAX_LINE_CHARACTERS}; a program that prints a gigabyte without
 * a newline costs the lab no more than one cut line. Nothing is escaped
 * here: the report escapes what it prints.
 *
 * @module
 */
import { inNamespace } from "./netns.ts";

/** Characters kept of one line of a command's output; the rest is counted. */
export const MAX_LINE_CHARACTERS = 300;

/** One line a command printed. */
export interface OutputLine {
  /** When it came, in seconds on the run's clock. */
  seconds: number;
  /** Where it printed it. */
  stream: "stdout" | "stderr";
  /** The line, without its newline, cut to {@linkcode MAX_LINE_CHARACTERS} (raw: escape it to print it). */
  text: string;
  /** Characters cut off its end; 0 for a whole line. */
  cutCharacters: number;
}

/** How a command ended, and what it printed last. */
export interface CommandReport {
  /** The command as it ran (placeholders replaced). */
  command: string;
  /** The namespace it ran in. */
  namespace: string;
  /** When it started, in seconds on the run's clock. */
  startedSeconds: number;
  /** When it ended; null if it had not when the report was made. */
  endedSeconds: number | null;
  /** Its exit code; null when a signal ended it, or it had not ended. */
  exitCode: number | null;
  /** The signal that ended it, if one did (`SIGTERM`). */
  signal: string | null;
  /** Why the lab stopped it, if it did. */
  stoppedBecause: string | null;
  /** Its last lines of output, oldest first. */
  output: OutputLine[];
  /** Lines it printed before those, not kept. */
  linesLeftOut: number;
}

/** A command running in a namespace: made by {@linkcode startCommand}. */
export interface RunningCommand {
  /** Resolves when it ends by itself (or is stopped). */
  readonly ended: Promise<void>;
  /** Whether it has ended. */
  hasEnded(): boolean;
  /**
   * Stops it and everything it started: SIGTERM to its process group, then
   * after `graceMs` SIGKILL. `because` is said in the report.
   */
  stop(because: string, graceMs: number): Promise<void>;
  /** What it did so far. */
  report(): CommandReport;
}

/** What {@linkcode startCommand} runs, where and how. */
export interface CommandOptions {
  /** The namespace to run it in. */
  namespace: string;
  /** The shell command. */
  command: string;
  /** Variables added to the lab's environment for it. */
  env: Record<string, string>;
  /** Its working directory. */
  cwd: string;
  /** Seconds on the run's clock. */
  clock: () => number;
  /** How many of its last lines to keep. */
  keepLines: number;
  /** Called with every line as it comes (for progress). */
  onLine?: (line: OutputLine) => void;
}

/**
 * Starts `sh -c COMMAND` in a namespace, in a session of its own, and reads
 * what it prints. Throws only when it cannot be started at all.
 *
 * @example
 * ```ts ignore
 * import { startCommand } from "./own_command.ts";
 * const started = performance.now();
 * const server = startCommand({
 *   namespace: "server", command: "redis-server --port 6379", env: {}, cwd: Deno.cwd(),
 *   clock: () => (performance.now() - started) / 1000, keepLines: 20,
 * });
 * await server.stop("the client ended", 3_000);
 * server.report().signal; // "SIGTERM"
 * ```
 */
export function startCommand(options: CommandOptions): RunningCommand {
  const startedSeconds = options.clock();
  const cmd = [...inNamespace(options.namespace), "setsid", "sh", "-c", options.command];
  const child = new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    cwd: options.cwd,
    env: options.env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const output = collectOutput(child, options);
  let status: Deno.CommandStatus | null = null;
  let endedSeconds: number | null = null;
  let stoppedBecause: string | null = null;
  const ended = (async () => {
    status = await child.status;
    endedSeconds = options.clock();
    // What it printed last is read to its end: a child it left behind that
    // holds the pipes open is stopped with its group (stop()), or by the
    // sandbox's end.
    await Promise.race([output.reading, new Promise((resolve) => setTimeout(resolve, 1_000))]);
  })();
  // The process group is the shell's: setsid made it the leader of a new
  // session (the `ip netns exec` and `setsid` before it replaced themselves
  // with the next program, so the shell has the child's pid).
  const signalGroup = (signal: Deno.Signal) => {
    try {
      Deno.kill(-child.pid, signal);
    } catch {
      try {
        child.kill(signal);
      } catch { /* gone already */ }
    }
  };
  return {
    ended,
    hasEnded: () => status !== null,
    async stop(because, graceMs) {
      if (status === null) stoppedBecause = because;
      signalGroup("SIGTERM");
      const late = setTimeout(() => signalGroup("SIGKILL"), graceMs);
      await ended;
      clearTimeout(late);
      // Whatever of the group outlived the shell goes too.
      signalGroup("SIGKILL");
      await Promise.race([output.reading, new Promise((resolve) => setTimeout(resolve, 500))]);
    },
    report: () => {
      const done = status as Deno.CommandStatus | null;
      return {
        command: options.command,
        namespace: options.namespace,
        startedSeconds,
        endedSeconds,
        exitCode: done && done.signal === null ? done.code : null,
        signal: done?.signal ?? null,
        stoppedBecause,
        output: output.kept.map((line) => ({ ...line })),
        linesLeftOut: output.leftOut(),
      };
    },
  };
}

// Reads the child's stdout and stderr as lines, keeping the last ones.
function collectOutput(child: Deno.ChildProcess, options: CommandOptions) {
  const kept: OutputLine[] = [];
  let leftOut = 0;
  const keep = (stream: OutputLine["stream"]) => (text: string, cutCharacters: number) => {
    const line = { seconds: options.clock(), stream, text, cutCharacters };
    kept.push(line);
    if (kept.length > options.keepLines) {
      kept.shift();
      leftOut++;
    }
    options.onLine?.(line);
  };
  const reading = Promise.all([
    readLines(child.stdout, keep("stdout")),
    readLines(child.stderr, keep("stderr")),
  ]);
  return { kept, leftOut: () => leftOut, reading };
}

/**
 * Reads a stream as lines, with a bound: each line is handed on cut to
 * {@linkcode MAX_LINE_CHARACTERS}, with the number of characters cut; a
 * line never ended is handed on at the end of the stream. A `\r\n` ending
 * counts as `\n`.
 */
export async function readLines(
  stream: ReadableStream<Uint8Array>,
  onLine: (text: string, cutCharacters: number) => void,
): Promise<void> {
  // Counted in characters (code points): a pair of UTF-16 surrogates is
  // one character, and is never cut in two.
  let line = "";
  let kept = 0;
  let cut = 0;
  const add = (piece: string) => {
    let at = 0;
    for (; at < piece.length && kept < MAX_LINE_CHARACTERS; kept++) {
      at += isPairAt(piece, at) ? 2 : 1;
    }
    line += piece.slice(0, at);
    if (at < piece.length) cut += characters(piece, at);
  };
  const end = () => {
    onLine(line.endsWith("\r") && cut === 0 ? line.slice(0, -1) : line, cut);
    line = "";
    kept = 0;
    cut = 0;
  };
  try {
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      let from = 0;
      for (let at = text.indexOf("\n"); at >= 0; at = text.indexOf("\n", from)) {
        add(text.slice(from, at));
        end();
        from = at + 1;
      }
      add(text.slice(from));
    }
  } catch { /* the pipe broke: what came is what there is */ }
  if (line.length > 0 || cut > 0) end();
}

// Whether a surrogate pair (one character) starts at `at`.
function isPairAt(text: string, at: number): boolean {
  const high = text.charCodeAt(at);
  const low = text.charCodeAt(at + 1);
  return high >= 0xd800 && high <= 0xdbff && low >= 0xdc00 && low <= 0xdfff;
}

// How many characters `text` holds from `from` on.
function characters(text: string, from: number): number {
  let count = 0;
  for (let at = from; at < text.length; count++) at += isPairAt(text, at) ? 2 : 1;
  return count;
}

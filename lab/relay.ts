/**
 * # Running a part of the lab in its sandbox, and hearing back from it
 *
 * `lab.ts` and `lab own` each start one Deno program inside the sandbox
 * (`inside.ts`, `own_inside.ts`), which prints one JSON object per line:
 * `{ "progress": "..." }` as it goes, then `{ "result": ... }` or
 * `{ "error": "..." }`. This starts it, relays the progress, and returns
 * the last word; a quit request kills the sandbox, and with it everything
 * the part made. Then the results are written to stdout, however slowly it
 * is read ({@linkcode waitUntilWritten}).
 *
 * @module
 */
import type { ByteSink, LineWriter } from "../tools/cli.ts";
import { escapeText } from "./own_report.ts";
import { sandboxCommand } from "./sandbox.ts";

/**
 * Runs `args` in the sandbox and returns its result or its error (text
 * escaped: nothing a program printed reaches the terminal raw). `progress`
 * gets each progress line; `quit` resolving kills the sandbox.
 */
export async function runInSandbox<R>(
  args: string[],
  quit: Promise<unknown>,
  progress: (text: string) => void,
): Promise<{ result: R } | { error: string }> {
  const cmd = await sandboxCommand(args);
  const child = new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    // A pipe nobody writes to: when the lab ends, however it ends (kill -9
    // included, even before setpriv has set its parent-death signal), the
    // pipe closes and the part, the first process of the sandbox, quits.
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  let outcome: { result: R } | { error: string } | null = null;
  let lastProgress = "starting";
  const reading = (async () => {
    let rest = "";
    for await (const text of child.stdout.pipeThrough(new TextDecoderStream())) {
      const lines = (rest + text).split("\n");
      rest = lines.pop()!;
      for (const line of lines) {
        let message;
        try {
          message = JSON.parse(line);
        } catch {
          continue; // not one of the part's lines
        }
        if (typeof message.progress === "string") {
          lastProgress = message.progress;
          progress(message.progress);
        } else if (message.result || message.error) outcome = message;
      }
    }
  })();
  const errors = new Response(child.stderr).text();
  const stopped = quit.then(() => {
    try {
      child.kill("SIGKILL"); // unshare; --kill-child and the PID namespace take the rest
    } catch { /* already ended */ }
    return "stopped" as const;
  });
  const ended = await Promise.race([child.status, stopped]);
  await child.status;
  await reading.catch(() => {});
  if (ended === "stopped") return { error: "stopped; every namespace and process it made is gone" };
  if (outcome) return outcome;
  const why = (await errors).trim().split("\n").at(-1);
  return {
    error: `the sandbox ended without a result (last step: ${escapeText(lastProgress)})${
      why ? `; its last words: ${escapeText(why)}` : ""
    }`,
  };
}

/**
 * Waits until every line queued on `out` is written, however long the
 * reader takes: there is no time limit. `out.flush` takes one, so it is
 * asked again and again, in rounds of `roundMs`; a round that ends with
 * lines still queued is no failure. The wait ends only when they are all
 * written (`"written"`), when the output failed (`failure()` says how:
 * closed, full), or when `quit` resolves (`"stopped"`).
 *
 * @example
 * ```ts
 * import { createLineWriter } from "../tools/cli.ts";
 * import { waitUntilWritten } from "./relay.ts";
 * const out = createLineWriter({ droppedNotice: (n) => `${n} lines dropped` });
 * out.write("{}");
 * const quit = new Promise<void>(() => {}); // Enter, Ctrl-C or SIGTERM
 * const done = await waitUntilWritten(out, () => null, quit); // "written", "stopped" or an Error
 * ```
 */
export async function waitUntilWritten(
  out: Pick<LineWriter, "flush">,
  failure: () => Error | null,
  quit: Promise<unknown>,
  roundMs = 60_000,
): Promise<"written" | "stopped" | Error> {
  const stopped = quit.then(() => "stopped" as const);
  for (;;) {
    const done = await Promise.race([out.flush(roundMs), stopped]);
    if (done === "stopped") return done;
    if (done) return "written";
    const error = failure();
    if (error) return error;
  }
}

/**
 * `sink`, keeping the first error a write of it threw: a `LineWriter` only
 * says that its output failed, and the lab says why.
 */
export function keepingFailure(sink: ByteSink): ByteSink & { failure: () => Error | null } {
  let failure: Error | null = null;
  return {
    write: (bytes) =>
      sink.write(bytes).catch((error) => {
        failure ??= error instanceof Error ? error : new Error(String(error));
        throw error;
      }),
    failure: () => failure,
  };
}

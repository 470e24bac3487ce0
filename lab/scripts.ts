/**
 * # Running the kit's scripts inside a namespace
 *
 * The lab runs `server.ts`, `client.ts` and `sysctl.ts` exactly as a user
 * would, with `--json` and the least permissions each needs, inside a
 * namespace, and reads their events as they come.
 *
 * @module
 */
import { inNamespace } from "./netns.ts";

/** One event a script printed with `--json`. */
export type ScriptEvent = { event: string; time: string } & Record<string, unknown>;

/** A script running in a namespace. */
export interface ScriptRun {
  /** Every event so far, in order. */
  readonly events: ScriptEvent[];
  /** Resolves with the first event named `event` (one already printed counts), or rejects after `timeoutMs`. */
  waitFor(event: string, timeoutMs: number): Promise<ScriptEvent>;
  /** Asks it to quit (SIGTERM) and resolves with its exit code; kills it after 5 s. */
  stop(): Promise<number>;
  /** Resolves with its exit code when it ends by itself. */
  readonly exited: Promise<number>;
}

/** Where the scripts are and which deno runs them. */
export interface ScriptPlace {
  /** The directory holding `server.ts`, `client.ts` and `sysctl.ts`. */
  dir: string;
  /** The deno executable. */
  deno: string;
}

/**
 * Starts `script` (a file in `place.dir`) inside namespace `ns` with
 * `permissions` and `args` (add `--json` yourself).
 */
export function startScript(
  place: ScriptPlace,
  ns: string,
  script: string,
  permissions: string[],
  args: string[],
): ScriptRun {
  const child = new Deno.Command(inNamespace(ns)[0], {
    args: [...inNamespace(ns).slice(1), place.deno, "run", ...permissions, script, ...args],
    cwd: place.dir,
    stdin: "null", // a closed stdin is not a request to quit: they run until SIGTERM
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const events: ScriptEvent[] = [];
  const waiters = new Set<() => void>();
  const errors: string[] = [];
  const reading = (async () => {
    let rest = "";
    for await (const text of child.stdout.pipeThrough(new TextDecoderStream())) {
      const lines = (rest + text).split("\n");
      rest = lines.pop()!;
      for (const line of lines) {
        try {
          events.push(JSON.parse(line));
        } catch { /* not an event */ }
      }
      for (const wake of waiters) wake();
    }
  })();
  const readingErrors = (async () => {
    for await (const text of child.stderr.pipeThrough(new TextDecoderStream())) errors.push(text);
  })();
  const exited = (async () => {
    const status = await child.status;
    await Promise.all([reading, readingErrors]);
    for (const wake of waiters) wake();
    return status.code;
  })();
  let done = false;
  exited.then(() => done = true);
  const name = `${script} in ${ns}`;
  return {
    events,
    exited,
    waitFor(event, timeoutMs) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const found = events.find((e) => e.event === event);
          if (found) finish(() => resolve(found));
          else if (done) {
            const why = errors.join("").trim().split("\n")[0];
            finish(() =>
              reject(new Error(`${name} ended before "${event}"${why ? `: ${why}` : ""}`))
            );
          }
        };
        const timer = setTimeout(
          () => finish(() => reject(new Error(`${name}: no "${event}" within ${timeoutMs} ms`))),
          timeoutMs,
        );
        const finish = (then: () => void) => {
          clearTimeout(timer);
          waiters.delete(check);
          then();
        };
        waiters.add(check);
        check();
      });
    },
    async stop() {
      if (!done) {
        try {
          child.kill("SIGTERM");
        } catch { /* gone */ }
      }
      const timer = setTimeout(() => {
        try {
          child.kill("SIGKILL");
        } catch { /* gone */ }
      }, 5_000);
      try {
        return await exited;
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

/** Seconds since the Unix epoch of an event's ISO time. */
export function eventTime(event: ScriptEvent): number {
  return Date.parse(event.time) / 1000;
}

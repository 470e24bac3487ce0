/**
 * # `lab own`: your own program behind the router that forgets idle flows
 *
 * @run deno run --allow-run --allow-read --allow-write lab/lab.ts own --server CMD --port N --client CMD
 *
 * The `nat` scenario shows the kit's own scripts losing a flow to a router
 * that forgets it. This mode does the same to your programs: your server
 * command runs in the server's namespace, your client command in the
 * client's, with the lab's router between them, and the lab reports what
 * the router saw of each flow (when it forgot it, what it dropped) beside
 * each command's exit code and last lines of output. No namespace or nft
 * rule to write by hand, and no root where the system allows user
 * namespaces: it runs in the same sandbox as the rest of the lab
 * (`sandbox.ts`), and everything it made is gone when it ends.
 *
 * `lab.ts` hands `lab own ...` to {@linkcode ownMain}; the part that runs in
 * the sandbox is `own_inside.ts`.
 *
 * @module
 */
import {
  type CommandIO,
  createLineWriter,
  type LineWriter,
  parseCommandLine,
  parseFlags,
  parseInteger,
  runAgainWith,
  UsageError,
  waitForQuit,
} from "../tools/cli.ts";
import type { OwnPlan } from "./own_inside.ts";
import { escapeText, formatJson, formatReport, type OwnResult } from "./own_report.ts";
import { keepingFailure, runInSandbox, waitUntilWritten } from "./relay.ts";
import { isRoot, trySandbox } from "./sandbox.ts";
import { locateTools, SEARCHED, tool, useTools } from "./tools.ts";

/** What `lab own` runs, from its flags. */
export interface OwnOptions {
  /** The server's shell command. */
  server: string;
  /** The port it listens on. */
  port: number;
  /** The client's shell command. */
  client: string;
  /** Seconds after which the router forgets an idle flow. */
  timeoutSeconds: number;
  /** Seconds after which the client is stopped. */
  clientTimeoutSeconds: number;
  /** Print one JSON document instead of text. */
  json: boolean;
}

/** The `--help` text of `lab own`. */
export const OWN_HELP =
  `Usage: deno run --allow-run --allow-read --allow-write lab/lab.ts own --server CMD --port N --client CMD [options]

Runs your own programs through the lab's router that forgets idle flows, as
a NAT gateway or a load balancer does: the server command in the server's
network namespace, the client command in the client's, the router between
them. Reports what the router saw of each flow (when it forgot it, what it
dropped) beside each command's exit code and last lines of output.

Each command runs through sh -c, from the current directory (with deno task:
the project's), with LAB_SERVER (the server's address) and LAB_PORT in its
environment, and {server} and {port} replaced in its text. The lab waits until
something listens on --port in the server's namespace (at most 60 s), then
starts the client; when the client ends, it stops the server. deno in a
command is the deno that runs the lab. The namespaces have no way out to the
internet: cache your program's dependencies first (deno install, deno cache).
TMPDIR names an empty directory of the lab's, gone when the lab ends.

Options:
  --server CMD                 the server command; it must stay in the foreground
  --port N                     the port the server listens on, 1..65535
  --client CMD                 the client command; its exit code is the lab's verdict
  --middlebox-timeout SECONDS  the router forgets idle flows after this, 3..600 (default 5)
  --client-timeout SECONDS     stop the client after this long, 1..3600 (default 300)
  --json                       print one JSON document instead of text
  -h, --help                   show this help

Example (docs/lab.md has three, each failing untuned and passing tuned):
  deno task lab own --server "deno run --allow-net examples/hello_server.ts --host {server}" \\
    --port 8080 --client "deno run --allow-net --allow-ffi examples/fetch_client.ts --host {server} --tuned"

Quit early with Enter, Ctrl-C or SIGTERM: everything the lab made is gone
within 2 s. Exit codes: 0 when the client exited 0; 1 when it failed (its own
code is in the report), or the lab or the server could not run; 2 for bad
flags. Needs ip and unshare/setpriv (iproute2, util-linux), nft (nftables)
and, as an ordinary user, conntrack; as root, PostgreSQL refuses to run:
examples/pg_server.sh becomes the postgres user for it.`;

/**
 * Parses `lab own`'s flags. Throws a `UsageError` for anything it cannot
 * use; returns `"help"` for `--help`.
 *
 * @example
 * ```ts
 * import { parseOwnArgs } from "./own.ts";
 * parseOwnArgs(["--server", "redis-server --port 6379", "--port", "6379", "--client", "true"]);
 * // { server: "redis-server --port 6379", port: 6379, client: "true", timeoutSeconds: 5, ... }
 * ```
 */
export function parseOwnArgs(args: string[]): OwnOptions | "help" {
  const flags = parseFlags(args, {
    string: ["server", "port", "client", "middlebox-timeout", "client-timeout"],
    boolean: ["json"],
  });
  if (flags.help) return "help";
  const required = {
    server: "the command that runs your server",
    port: "the port your server listens on",
    client: "the command that runs your client",
  } as const;
  for (const [flag, what] of Object.entries(required)) {
    if (flags[flag as keyof typeof required] === undefined) {
      throw new UsageError(`--${flag} is needed: ${what}`);
    }
  }
  const number = (
    flag: "middlebox-timeout" | "client-timeout",
    min: number,
    max: number,
    or: number,
  ) => flags[flag] === undefined ? or : parseInteger(`--${flag}`, flags[flag]!, min, max);
  return {
    server: flags.server!,
    port: parseInteger("--port", flags.port!, 1, 65535),
    client: flags.client!,
    timeoutSeconds: number("middlebox-timeout", 3, 600, 5),
    clientTimeoutSeconds: number("client-timeout", 1, 3600, 300),
    json: flags.json,
  };
}

/**
 * `lab own`: check, run the commands in the sandbox, print. Returns the exit
 * code: 0 when the client exited 0, 1 when it failed or the lab could not
 * run, 2 for bad flags.
 */
export async function ownMain(args: string[], io: CommandIO = {}): Promise<number> {
  const stderr = io.stderr ?? ((line: string) => console.error(line));
  const options = parseCommandLine("lab.ts own", args, parseOwnArgs, OWN_HELP, stderr);
  if (typeof options === "number") return options;
  const plan = await checkBeforeRunning(options, args);
  if (typeof plan === "string") {
    stderr(`lab.ts own: ${plan}`);
    return 1;
  }
  const stdout = keepingFailure(io.stdout ?? Deno.stdout);
  const out = createLineWriter({
    output: stdout,
    droppedNotice: (n) => `(${n} lines of output dropped: stdout was not being read)`,
  });
  const quit = (io.quit ?? waitForQuit)();
  const outcome = await runSandboxed(plan, quit, (text) => {
    if (!options.json) out.write(text);
  });
  if ("error" in outcome) {
    await out.flush(500);
    stderr(`lab.ts own: ${escapeText(outcome.error)}`);
    return 1;
  }
  const result = outcome.result;
  printResult(result, options.json, out);
  // The report is the point of the run: wait for it to be read, however slowly.
  const written = await waitUntilWritten(out, stdout.failure, quit);
  const unwritten = written === "written"
    ? null
    : written === "stopped"
    ? "stopped before stdout took the whole report"
    : `the report could not be written to stdout: ${written.message.split("\n")[0]}`;
  if (result.failure !== null) {
    stderr(`lab.ts own: ${result.failure}; the server's last lines are in the report`);
    return 1;
  }
  if (unwritten !== null) {
    stderr(`lab.ts own: ${unwritten}`);
    return 1;
  }
  return result.passed ? 0 : 1;
}

function printResult(result: OwnResult, json: boolean, out: LineWriter) {
  if (json) out.write(formatJson(result));
  else out.write(["", ...formatReport(result)].join("\n"));
}

// Everything that can be known before anything runs.
async function checkBeforeRunning(options: OwnOptions, args: string[]): Promise<string | OwnPlan> {
  const granted = [
    Deno.permissions.querySync({ name: "run" }).state,
    Deno.permissions.querySync({ name: "read" }).state,
  ];
  if (granted.some((state) => state !== "granted")) {
    const needed = ["--allow-run", "--allow-read"];
    const lab = new URL("./lab.ts", import.meta.url).href;
    return `the lab needs ${needed.join(" ")}: ${runAgainWith(needed, lab, ["own", ...args])}`;
  }
  if (Deno.build.os !== "linux") return `the lab needs Linux namespaces; this is ${Deno.build.os}`;
  const { found, missing } = await locateTools();
  useTools(found);
  const root = await isRoot();
  const required = missing.filter((t) =>
    ["ip", "unshare", "setpriv", "nft"].includes(t.command) ||
    (t.command === "conntrack" && !root)
  );
  if (required.length > 0) {
    return `${required.map((t) => t.command).join(", ")} not found (${SEARCHED}): install the ` +
      `Debian package ${[...new Set(required.map((t) => t.package))].join(" and ")}` +
      (required.some((t) => t.command === "conntrack")
        ? " (conntrack: to read the router's flows as an ordinary user)"
        : "");
  }
  const sandbox = await trySandbox();
  if (sandbox) return sandbox;
  return {
    server: options.server,
    client: options.client,
    port: options.port,
    timeoutSeconds: options.timeoutSeconds,
    clientTimeoutSeconds: options.clientTimeoutSeconds,
    serverWaitSeconds: 60,
    cwd: Deno.cwd(),
    tools: found,
  };
}

// Starts lab/own_inside.ts in the sandbox (and an IPC namespace of its own,
// for servers that use System V shared memory) and relays its progress; a
// quit request kills the sandbox, and with it everything.
function runSandboxed(
  plan: OwnPlan,
  quit: Promise<unknown>,
  progress: (text: string) => void,
): Promise<{ result: OwnResult } | { error: string }> {
  const inside = decodeURIComponent(new URL("./own_inside.ts", import.meta.url).pathname);
  progress(`lab own: server, then client, through a router that forgets idle flows`);
  return runInSandbox<OwnResult>(
    [tool("unshare"), "--ipc", Deno.execPath(), "run", "-A", inside, JSON.stringify(plan)],
    quit,
    progress,
  );
}

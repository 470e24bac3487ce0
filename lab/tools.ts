/**
 * # The programs the lab runs, and where they are
 *
 * Debian installs `nft` and `conntrack` in `/usr/sbin` (and other systems
 * `ip` in `/sbin`; Debian has it in `/bin`, linked from `/sbin`), which is on
 * root's PATH but not on an ordinary user's (`/usr/local/bin:/usr/bin:/bin`).
 * Yet an ordinary user can run them: the lab gives them, inside its own user
 * namespace, the capabilities they need.
 * So the lab looks on the PATH first, then in `/usr/sbin` and `/sbin`, and
 * runs each program by the full path it found, everywhere: in `lab.ts`, in
 * the sandbox, and behind `ip netns exec` (which looks a program up on the
 * PATH it inherits, the user's).
 *
 * `lab.ts` finds them ({@linkcode locateTools}), tells this module
 * ({@linkcode useTools}) and passes the same table to `lab/inside.ts` in its
 * plan; every place that starts one asks {@linkcode tool} for its path.
 *
 * @module
 */

/** A program the lab runs, and the Debian package that has it. */
export interface Tool {
  /** The program's name. */
  command: string;
  /** The Debian package to install for it. */
  package: string;
  /** What the lab does without it. */
  without: string;
}

/** The programs the lab uses. */
export const TOOLS: Tool[] = [
  { command: "ip", package: "iproute2", without: "nothing: it makes the namespaces" },
  { command: "unshare", package: "util-linux", without: "nothing: it makes the sandbox" },
  { command: "setpriv", package: "util-linux", without: "nothing: it ties the sandbox to the lab" },
  {
    command: "tcpdump",
    package: "tcpdump",
    without: "no packets in the timeline or the diagram, only what the scripts reported; " +
      "probes are counted with the kernel's TCPKeepAlive counter",
  },
  { command: "nft", package: "nftables", without: "no nat scenario: the router needs it" },
  {
    command: "conntrack",
    package: "conntrack",
    without: "as an ordinary user, the router's countdown is not shown (root reads it from /proc)",
  },
];

/** Where the lab looks after the PATH: where Debian puts programs for the administrator. */
export const SYSTEM_DIRS: readonly string[] = ["/usr/sbin", "/sbin"];

/** Each tool found, by name: its full path. */
export type ToolPaths = Record<string, string>;

// Prints the first executable file named $1 in the PATH's directories, then
// in the system ones. Only absolute directories count: a relative one (".",
// or an empty entry) names another file from another working directory.
// `set -f`: a directory name with * in it is not a pattern.
const FIND = `set -f
IFS=:
for dir in $PATH ${SYSTEM_DIRS.join(" ")}; do
  case $dir in /*) ;; *) continue ;; esac
  if [ -f "$dir/$1" ] && [ -x "$dir/$1" ]; then printf '%s\\n' "$dir/$1"; exit 0; fi
done
exit 1`;

/**
 * The full path of `command`: the first executable file of that name on the
 * PATH (this process's, or `searchPath` when given), else in `/usr/sbin` or
 * `/sbin`; null when there is none. Asked of `/bin/sh`, so that the lab
 * needs no `--allow-env` to read the PATH.
 *
 * @example
 * ```ts
 * import { findTool } from "./tools.ts";
 * await findTool("nft", "/usr/local/bin:/usr/bin:/bin"); // "/usr/sbin/nft" on Debian
 * ```
 */
export async function findTool(command: string, searchPath?: string): Promise<string | null> {
  const output = await new Deno.Command("/bin/sh", {
    args: ["-c", FIND, "sh", command],
    env: searchPath === undefined ? undefined : { PATH: searchPath },
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).output();
  const path = new TextDecoder().decode(output.stdout).trim();
  return output.code === 0 && path.startsWith("/") ? path : null;
}

/** Where each of {@linkcode TOOLS} is, and those that are nowhere. */
export async function locateTools(
  searchPath?: string,
): Promise<{ found: ToolPaths; missing: Tool[] }> {
  const found: ToolPaths = {};
  const missing: Tool[] = [];
  for (const item of TOOLS) {
    const path = await findTool(item.command, searchPath);
    if (path) found[item.command] = path;
    else missing.push(item);
  }
  return { found, missing };
}

/** Where the search for a missing tool looked, for a message. */
export const SEARCHED = `on the PATH, in ${SYSTEM_DIRS.join(" or ")}`;

let paths: ToolPaths = {};

/** Tells this process where the tools are: what {@linkcode locateTools} found. */
export function useTools(found: ToolPaths): void {
  paths = { ...found };
}

/**
 * The path to run `command` by: the full path given to {@linkcode useTools},
 * or else the bare name, looked up on the PATH (as root, where the PATH has
 * the system directories: the lab's parts run on their own in tests).
 */
export function tool(command: string): string {
  return paths[command] ?? command;
}

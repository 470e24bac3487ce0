/**
 * # The lab's sandbox: its own namespaces, gone when it ends
 *
 * Everything the lab makes lives inside one process tree started with
 * `unshare`:
 *
 * - a new **network namespace** for the lab itself, so nothing it does can
 *   reach the host's network, and the host's sysctls, interfaces and
 *   firewall are never touched (each is per namespace);
 * - a new **mount namespace** with a private `/run/netns`, so `ip netns add`
 *   works without touching the host's list;
 * - a new **PID namespace** whose first process is the lab: when it dies,
 *   the kernel kills every process in it, and with them go the namespaces
 *   they held. `--kill-child` and `setpriv --pdeathsig` chain that to the
 *   `lab.ts` that started it, so even a `kill -9` of `lab.ts` leaves nothing;
 * - for an ordinary user, a **user namespace** (`--map-current-user
 *   --keep-caps`): the user keeps their uid and gains, inside, the
 *   capabilities to make namespaces, cables and firewall rules and to run
 *   tcpdump (which then does not try to change its user). As root, no user
 *   namespace: tcpdump, started as root in one, would try to become the
 *   `tcpdump` user, who does not exist there.
 *
 * Each program is run by the full path `tools.ts` found for it: `nft` and
 * `conntrack` are in `/usr/sbin`, off an ordinary user's PATH.
 *
 * @module
 */
import { tool } from "./tools.ts";

/**
 * Whether this process runs as root (uid 0). Asked of `id`, so that the lab
 * needs no `--allow-sys` for it.
 */
export async function isRoot(): Promise<boolean> {
  const output = await new Deno.Command("id", { args: ["-u"], stdout: "piped" }).output();
  return new TextDecoder().decode(output.stdout).trim() === "0";
}

/** The options of `unshare` for the sandbox, as root or as an ordinary user. */
export function unshareOptions(root: boolean): string[] {
  return [
    ...(root ? [] : ["--user", "--map-current-user", "--keep-caps"]),
    "--net",
    "--mount",
    "--pid",
    "--fork",
    "--kill-child",
    "--mount-proc",
  ];
}

/**
 * Tries the sandbox with `true` inside. Null when it works; otherwise one
 * line saying why and what to try.
 */
export async function trySandbox(): Promise<string | null> {
  const root = await isRoot();
  const output = await new Deno.Command(tool("unshare"), {
    args: [...unshareOptions(root), "true"],
    stdout: "null",
    stderr: "piped",
  }).output();
  if (output.code === 0) return null;
  const why = new TextDecoder().decode(output.stderr).trim().split("\n")[0];
  if (root) return `cannot make the lab's namespaces even as root (${why})`;
  return `this system does not let an ordinary user make namespaces (${why}); run it as root, ` +
    `or allow user namespaces (kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0, ` +
    `on Ubuntu kernel.apparmor_restrict_unprivileged_userns=0)`;
}

/** The whole command that runs `args` inside the sandbox. */
export async function sandboxCommand(args: string[]): Promise<string[]> {
  const root = await isRoot();
  return [
    tool("setpriv"),
    "--pdeathsig",
    "KILL",
    tool("unshare"),
    ...unshareOptions(root),
    ...args,
  ];
}

/**
 * Inside the sandbox: gives `ip netns` a private, empty `/run/netns` (a
 * tmpfs in the lab's own mount namespace; the host's is not touched).
 */
export async function privateNetnsDir(): Promise<void> {
  const exists = await Deno.stat("/run/netns").then(() => true, () => false);
  const target = exists ? "/run/netns" : "/run";
  const mounted = await new Deno.Command("mount", {
    args: ["-t", "tmpfs", "lab", target],
    stderr: "piped",
  }).output();
  if (mounted.code !== 0) {
    throw new Error(`mount tmpfs on ${target}: ${new TextDecoder().decode(mounted.stderr).trim()}`);
  }
  if (!exists) await Deno.mkdir("/run/netns");
}

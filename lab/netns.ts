/**
 * # Network namespaces, cables and counters for the lab
 *
 * Small steps over `ip` (iproute2), each a function: make a namespace with
 * its loopback up, join two with a virtual cable (a veth pair), cut a cable
 * so that one end vanishes without a FIN or RST, run a command inside a
 * namespace, and read a namespace's kernel counters (`/proc/net/netstat` is
 * per namespace: read from inside, it counts only that namespace's sockets).
 *
 * They work wherever `ip netns add` works: as root on a test machine, or
 * inside the lab's own user and mount namespace (`sandbox.ts`), where the
 * names live in a private `/run/netns` and vanish with it. `ip`, and what
 * runs behind `ip netns exec` (`nft`, `tcpdump`), are run by the full path
 * `tools.ts` found: some are in `/usr/sbin`, off an ordinary user's PATH.
 *
 * @module
 */
import { parseNetstat } from "@kakit/keepalive/proc-net";
import { tool } from "./tools.ts";

/** What a command printed, and how it exited. */
export interface Output {
  /** The exit code. */
  code: number;
  /** Everything it wrote to stdout. */
  stdout: string;
  /** Everything it wrote to stderr. */
  stderr: string;
}

/** Runs a command to its end and collects its output. */
export async function run(cmd: readonly string[]): Promise<Output> {
  const output = await new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder();
  return {
    code: output.code,
    stdout: text.decode(output.stdout),
    stderr: text.decode(output.stderr),
  };
}

/** Runs a command and throws an `Error` with its first line of stderr if it fails. */
export async function runOk(cmd: readonly string[]): Promise<string> {
  const output = await run(cmd);
  if (output.code !== 0) {
    const why = output.stderr.trim().split("\n")[0] || `exit code ${output.code}`;
    throw new Error(`${cmd.join(" ")}: ${why}`);
  }
  return output.stdout;
}

/** The prefix that runs a command inside namespace `ns`. */
export function inNamespace(ns: string): string[] {
  return [tool("ip"), "netns", "exec", ns];
}

/** Makes a network namespace with its loopback up. */
export async function addNamespace(ns: string): Promise<void> {
  await runOk([tool("ip"), "netns", "add", ns]);
  await runOk([tool("ip"), "-n", ns, "link", "set", "lo", "up"]);
}

/** Deletes a namespace; a namespace that is already gone is not an error. */
export async function deleteNamespace(ns: string): Promise<void> {
  await run([tool("ip"), "netns", "delete", ns]);
}

/** One end of a cable: a namespace, the interface's name in it, and its address with prefix length. */
export interface CableEnd {
  /** The namespace. */
  ns: string;
  /** The interface's name in it. */
  link: string;
  /** For example `10.231.1.2/24` or `fd6b:61::2/64`. */
  address: string;
}

/**
 * Joins two namespaces with a veth pair and brings both ends up with their
 * addresses (IPv6 ones without duplicate address detection, so they work
 * at once).
 */
export async function addCable(a: CableEnd, b: CableEnd): Promise<void> {
  await runOk([
    tool("ip"),
    "-n",
    a.ns,
    "link",
    "add",
    a.link,
    "type",
    "veth",
    "peer",
    "name",
    b.link,
    "netns",
    b.ns,
  ]);
  for (const end of [a, b]) {
    const nodad = end.address.includes(":") ? ["nodad"] : [];
    await runOk([tool("ip"), "-n", end.ns, "addr", "add", end.address, "dev", end.link, ...nodad]);
    await runOk([tool("ip"), "-n", end.ns, "link", "set", end.link, "up"]);
  }
}

/**
 * Cuts a cable at `end`: that interface is moved into `voidNs` (a namespace
 * with nothing in it) and brought up there. The other end keeps its link up
 * and goes on sending, and everything it sends is lost, as with a peer that
 * lost power behind a switch. (Setting the interface down instead would take
 * the carrier away from the other end for good, and its packets would never
 * reach the wire, nor a capture.)
 *
 * First the other end learns `end`'s hardware address for good (a permanent
 * neighbor entry): otherwise the move's brief carrier loss flushes it, and
 * the other end would ask for it (ARP, IPv6 neighbor discovery) instead of
 * sending its packets, and they would never be seen on the wire either.
 */
export async function cutCable(end: CableEnd, other: CableEnd, voidNs: string): Promise<void> {
  const [link] = JSON.parse(
    await runOk([tool("ip"), "-n", end.ns, "-j", "link", "show", end.link]),
  );
  const address = end.address.split("/")[0];
  await runOk([
    tool("ip"),
    "-n",
    other.ns,
    "neigh",
    "replace",
    address,
    "lladdr",
    link.address,
    "dev",
    other.link,
    "nud",
    "permanent",
  ]);
  await runOk([tool("ip"), "-n", end.ns, "link", "set", end.link, "netns", voidNs]);
  await runOk([tool("ip"), "-n", voidNs, "link", "set", end.link, "up"]);
}

/** Writes a sysctl inside a namespace (a path under /proc/sys/, like `net/ipv4/ip_forward`). */
export async function writeSysctl(ns: string, key: string, value: string | number): Promise<void> {
  const path = `/proc/sys/${key.replaceAll(".", "/")}`;
  await runOk([
    ...inNamespace(ns),
    "sh",
    "-c",
    'printf "%s\\n" "$1" > "$2"',
    "sh",
    String(value),
    path,
  ]);
}

/**
 * Reads one counter of a namespace's `/proc/net/netstat` (for example
 * `TcpExt` `TCPKeepAlive`, the keepalive probes its sockets sent).
 */
export async function readNetstat(ns: string, group: string, name: string): Promise<number> {
  const text = await runOk([...inNamespace(ns), "cat", "/proc/net/netstat"]);
  const value = parseNetstat(text)[group]?.[name];
  if (value === undefined) throw new Error(`no ${group} ${name} in /proc/net/netstat`);
  return value;
}

/**
 * A tcpdump running inside a namespace, writing pcap to a pipe. `stop()`
 * ends it and resolves with every byte it wrote.
 */
export interface Capture {
  /** Ends tcpdump and resolves with the pcap bytes it wrote. */
  stop(): Promise<Uint8Array>;
}

/**
 * Starts tcpdump on `link` inside `ns`, capturing TCP (the first 128 bytes
 * of each packet: headers only), and resolves once it is listening.
 */
export async function startCapture(ns: string, link: string): Promise<Capture> {
  const child = new Deno.Command(tool("ip"), {
    args: [
      "netns",
      "exec",
      ns,
      tool("tcpdump"),
      "-i",
      link,
      "-n",
      "-s",
      "128",
      "--immediate-mode",
      "-U",
      "-w",
      "-",
      "tcp",
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const chunks: Uint8Array[] = [];
  const reading = (async () => {
    for await (const chunk of child.stdout) chunks.push(chunk);
  })();
  const errors: string[] = [];
  const listening = Promise.withResolvers<void>();
  const readingErrors = (async () => {
    for await (const text of child.stderr.pipeThrough(new TextDecoderStream())) {
      errors.push(text);
      if (/listening on/.test(errors.join(""))) listening.resolve();
    }
    listening.reject(new Error(`tcpdump on ${link}: ${errors.join("").trim().split("\n")[0]}`));
  })();
  const timer = setTimeout(
    () => listening.reject(new Error(`tcpdump on ${link} did not start`)),
    10_000,
  );
  try {
    await listening.promise;
  } catch (error) {
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
    await child.status;
    throw error;
  } finally {
    clearTimeout(timer);
  }
  return {
    async stop() {
      try {
        child.kill("SIGTERM");
      } catch { /* already gone */ }
      await child.status;
      await Promise.all([reading, readingErrors.catch(() => {})]);
      const bytes = new Uint8Array(chunks.reduce((sum, chunk) => sum + chunk.length, 0));
      let offset = 0;
      for (const chunk of chunks) {
        bytes.set(chunk, offset);
        offset += chunk.length;
      }
      return bytes;
    },
  };
}

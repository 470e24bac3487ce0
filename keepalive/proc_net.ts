/**
 * # See what TCP keepalive is doing, from /proc
 *
 * The kernel publishes every TCP socket in `/proc/net/tcp` (IPv4) and
 * `/proc/net/tcp6` (IPv6), with the timer that is pending on it. While a
 * socket has `SO_KEEPALIVE` on and nothing in flight, that timer is the
 * keepalive timer, and the table says how long until it fires and how many
 * probes have gone unanswered. `/proc/net/netstat` counts every keepalive
 * probe sent in the network namespace (`TcpExt: TCPKeepAlive`). Together they
 * show keepalive at work without tcpdump.
 *
 * Linux only. Deno refuses every path under `/proc` unless the script runs
 * with `--allow-all` (`--allow-read=/proc` is not enough: denoland/deno issue
 * 27564), so a script that imports this module runs as `deno run -A`.
 *
 * Both files are per network namespace: they describe the namespace of the
 * process that reads them.
 *
 * @example Is keepalive armed on my connection?
 * ```ts
 * import { findTcpSocket, readTcpSockets } from "@kakit/keepalive/proc-net";
 *
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 8888 });
 * conn.setKeepAlive(true);
 * const socket = findTcpSocket(await readTcpSockets(), conn.localAddr, conn.remoteAddr);
 * console.log(socket?.timer, socket?.timerSeconds); // "keepalive" 7200
 * ```
 *
 * @module
 */

/**
 * The timer pending on a socket, from the `tr` column of `/proc/net/tcp`.
 * `keepalive` is also the timer of a socket in FIN_WAIT2.
 *
 * @example
 * ```ts
 * import { readTcpSockets, type TcpTimer } from "@kakit/keepalive/proc-net";
 * const armed: TcpTimer = "keepalive";
 * (await readTcpSockets()).filter((socket) => socket.timer === armed).length;
 * ```
 */
export type TcpTimer =
  | "none"
  | "retransmit"
  | "keepalive"
  | "time-wait"
  | "zero-window-probe";

/**
 * One row of `/proc/net/tcp` or `/proc/net/tcp6`.
 *
 * @example
 * ```ts
 * import { readTcpSockets, type TcpSocket } from "@kakit/keepalive/proc-net";
 * const probing: TcpSocket[] = (await readTcpSockets()).filter((s) => s.unansweredProbes > 0);
 * for (const s of probing) console.log(s.remoteAddress, s.remotePort, s.unansweredProbes);
 * ```
 */
export interface TcpSocket {
  /** Local address as text, e.g. `127.0.0.1` or `::1`. */
  localAddress: string;
  /** Local port. */
  localPort: number;
  /** Remote address as text; `0.0.0.0` or `::` for a listener. */
  remoteAddress: string;
  /** Remote port; 0 for a listener. */
  remotePort: number;
  /** The TCP state, e.g. `ESTABLISHED` or `LISTEN`. */
  state: string;
  /** The timer pending on the socket. */
  timer: TcpTimer;
  /** Seconds until the timer fires, to 0.01 s (0 when no timer is pending). */
  timerSeconds: number;
  /** Keepalive (or zero-window) probes sent without an answer so far. */
  unansweredProbes: number;
  /** Retransmissions of unacknowledged data so far. */
  retransmits: number;
  /** The socket's inode, as in the `socket:[INODE]` link of its descriptor. */
  inode: number;
}

// The states and timers, in the kernel's numbering (include/net/tcp_states.h
// and the `timer_active` values printed by net/ipv4/tcp_ipv4.c).
const STATES = [
  "",
  "ESTABLISHED",
  "SYN_SENT",
  "SYN_RECV",
  "FIN_WAIT1",
  "FIN_WAIT2",
  "TIME_WAIT",
  "CLOSE",
  "CLOSE_WAIT",
  "LAST_ACK",
  "LISTEN",
  "CLOSING",
  "NEW_SYN_RECV",
];
const TIMERS: TcpTimer[] = ["none", "retransmit", "keepalive", "time-wait", "zero-window-probe"];

// The table gives timer values in clock ticks of USER_HZ, which is 100 on Linux.
const USER_HZ = 100;

/**
 * Parses the text of `/proc/net/tcp` or `/proc/net/tcp6`.
 *
 * @example
 * ```ts
 * import { parseProcNetTcp } from "@kakit/keepalive/proc-net";
 *
 * const text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n" +
 *   "   0: 0100007F:22B8 0100007F:9E94 01 00000000:00000000 02:000AFC7E 00000000     0        0 4242 1 0 20 4 30 10 -1\n";
 * const [socket] = parseProcNetTcp(text);
 * console.log(socket.localPort, socket.timer, socket.timerSeconds); // 8888 "keepalive" 7199.98
 * ```
 */
export function parseProcNetTcp(text: string): TcpSocket[] {
  const sockets: TcpSocket[] = [];
  // The first line is a header; each other line is one socket.
  for (const line of text.split("\n").slice(1)) {
    const fields = line.trim().split(/\s+/);
    if (fields.length < 10) continue;
    const [local, remote] = [fields[1], fields[2]].map(parseHexEndpoint);
    const [timer, when] = fields[5].split(":");
    sockets.push({
      localAddress: local.address,
      localPort: local.port,
      remoteAddress: remote.address,
      remotePort: remote.port,
      state: STATES[parseInt(fields[3], 16)] ?? `STATE_${fields[3]}`,
      timer: TIMERS[parseInt(timer, 16)] ?? "none",
      timerSeconds: parseInt(when, 16) / USER_HZ,
      retransmits: parseInt(fields[6], 16),
      unansweredProbes: parseInt(fields[8], 10),
      inode: parseInt(fields[9], 10),
    });
  }
  return sockets;
}

/**
 * Reads every TCP socket of this network namespace, IPv4 and IPv6.
 * Needs `--allow-all` in Deno 2.9.
 *
 * @example
 * ```ts
 * import { readTcpSockets } from "@kakit/keepalive/proc-net";
 *
 * const listening = (await readTcpSockets()).filter((s) => s.state === "LISTEN");
 * console.log(listening.map((s) => s.localPort));
 * ```
 */
export async function readTcpSockets(): Promise<TcpSocket[]> {
  const sockets = parseProcNetTcp(await Deno.readTextFile("/proc/net/tcp"));
  try {
    sockets.push(...parseProcNetTcp(await Deno.readTextFile("/proc/net/tcp6")));
  } catch (error) {
    // A kernel without IPv6 has no tcp6 table, and then no IPv6 sockets.
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  return sockets;
}

/**
 * An address and port, as in `conn.localAddr` and `conn.remoteAddr`.
 *
 * @example
 * ```ts
 * import { type Endpoint, findTcpSocket, readTcpSockets } from "@kakit/keepalive/proc-net";
 * const server: Endpoint = { hostname: "127.0.0.1", port: 8888 };
 * const client: Endpoint = { hostname: "127.0.0.1", port: 40000 };
 * findTcpSocket(await readTcpSockets(), server, client)?.state;
 * ```
 */
export interface Endpoint {
  /** An IPv4 or IPv6 address as text (`127.0.0.1`, `::1`, `::ffff:127.0.0.1`). */
  hostname: string;
  /** The port. */
  port: number;
}

/**
 * Finds the row of one connection, given its two ends as Deno reports them.
 * An IPv4 address matches its IPv4-mapped IPv6 form (`::ffff:127.0.0.1`), the
 * way an IPv4 client appears on a dual-stack (`::`) listener.
 *
 * @example
 * ```ts
 * import { findTcpSocket, readTcpSockets } from "@kakit/keepalive/proc-net";
 *
 * const conn = await Deno.connect({ hostname: "::1", port: 8888 });
 * const socket = findTcpSocket(await readTcpSockets(), conn.localAddr, conn.remoteAddr);
 * console.log(socket?.state); // "ESTABLISHED"
 * ```
 */
export function findTcpSocket(
  sockets: TcpSocket[],
  local: Deno.Addr | Endpoint,
  remote: Deno.Addr | Endpoint,
): TcpSocket | undefined {
  if (!("hostname" in local) || !("hostname" in remote)) return undefined;
  const localKey = endpointKey(local.hostname, local.port);
  const remoteKey = endpointKey(remote.hostname, remote.port);
  return sockets.find((socket) =>
    endpointKey(socket.localAddress, socket.localPort) === localKey &&
    endpointKey(socket.remoteAddress, socket.remotePort) === remoteKey
  );
}

/**
 * Parses an address and port written the usual way, `127.0.0.1:8888` or
 * `[::1]:8888` (as the kit's scripts print them), for {@linkcode findTcpSocket}.
 *
 * @example
 * ```ts
 * import { parseEndpoint } from "@kakit/keepalive/proc-net";
 * parseEndpoint("[::1]:8888"); // { hostname: "::1", port: 8888 }
 * ```
 */
export function parseEndpoint(text: string): Endpoint {
  const match = text.match(/^\[(.+)\]:(\d+)$/) ?? text.match(/^([^:]+):(\d+)$/);
  if (!match) throw new TypeError(`not an address and port: ${JSON.stringify(text)}`);
  return { hostname: match[1], port: Number(match[2]) };
}

/**
 * Parses `/proc/net/netstat` (or `/proc/net/snmp`): pairs of lines, a header
 * of names and a line of numbers, each starting with the same prefix.
 *
 * @example
 * ```ts
 * import { parseNetstat } from "@kakit/keepalive/proc-net";
 *
 * const counters = parseNetstat("TcpExt: SyncookiesSent TCPKeepAlive\nTcpExt: 0 5\n");
 * console.log(counters.TcpExt.TCPKeepAlive); // 5
 * ```
 */
export function parseNetstat(text: string): Record<string, Record<string, number>> {
  const groups: Record<string, Record<string, number>> = {};
  const lines = text.split("\n").filter((line) => line.includes(":"));
  for (let i = 0; i + 1 < lines.length; i += 2) {
    const [prefix, ...names] = lines[i].trim().split(/\s+/);
    const [, ...values] = lines[i + 1].trim().split(/\s+/);
    const group: Record<string, number> = {};
    names.forEach((name, j) => group[name] = Number(values[j]));
    groups[prefix.replace(/:$/, "")] = group;
  }
  return groups;
}

/**
 * Reads how many keepalive probes this network namespace has sent since it
 * was made (`TcpExt: TCPKeepAlive` in `/proc/net/netstat`). Needs
 * `--allow-all` in Deno 2.9.
 *
 * @example
 * ```ts
 * import { readKeepaliveProbesSent } from "@kakit/keepalive/proc-net";
 *
 * const before = await readKeepaliveProbesSent();
 * await new Promise((r) => setTimeout(r, 10_000));
 * console.log(`${(await readKeepaliveProbesSent()) - before} probes in 10 s`);
 * ```
 */
export async function readKeepaliveProbesSent(): Promise<number> {
  const counters = parseNetstat(await Deno.readTextFile("/proc/net/netstat"));
  const sent = counters.TcpExt?.TCPKeepAlive;
  if (sent === undefined) throw new Error("/proc/net/netstat has no TcpExt TCPKeepAlive counter");
  return sent;
}

// --- Addresses -------------------------------------------------------------

// The table prints an address as the bytes of its 32-bit words in the
// machine's byte order (little-endian on x86 and arm64): IPv4 is one word,
// IPv6 four. The port is printed as a plain number.
function parseHexEndpoint(text: string): { address: string; port: number } {
  const [hex, port] = text.split(":");
  const bytes = new Uint8Array(hex.length / 2);
  for (let word = 0; word < bytes.length / 4; word++) {
    const value = parseInt(hex.slice(word * 8, word * 8 + 8), 16);
    new DataView(bytes.buffer).setUint32(word * 4, value, LITTLE_ENDIAN);
  }
  return { address: formatAddress(bytes), port: parseInt(port, 16) };
}

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

function formatAddress(bytes: Uint8Array): string {
  if (bytes.length === 4) return bytes.join(".");
  const view = new DataView(bytes.buffer);
  const groups = Array.from({ length: 8 }, (_, i) => view.getUint16(i * 2));
  // ::ffff:a.b.c.d is an IPv4 address on an IPv6 socket; show it the usual way.
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    return `::ffff:${bytes.slice(12).join(".")}`;
  }
  // Compress the longest run of two or more zero groups to "::" (RFC 5952).
  let bestStart = -1, bestLength = 1;
  for (let i = 0; i < 8; i++) {
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) [bestStart, bestLength] = [i, j - i];
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(":");
  return `${hex.slice(0, bestStart).join(":")}::${hex.slice(bestStart + bestLength).join(":")}`;
}

// A canonical key for an address and port, so that the text Deno reports
// and the text this module formats compare equal: IPv4 becomes IPv4-mapped
// IPv6, and IPv6 is expanded to eight full groups.
function endpointKey(hostname: string, port: number): string {
  return `${expandAddress(hostname)}/${port}`;
}

function expandAddress(hostname: string): string {
  let text = hostname.replace(/^\[|\]$/g, "").replace(/%.*$/, "");
  if (!text.includes(":")) text = `::ffff:${text}`;
  // A trailing dotted IPv4 part stands for the last two groups.
  const dotted = text.match(/(\d+)\.(\d+)\.(\d+)\.(\d+)$/);
  if (dotted) {
    const [a, b, c, d] = dotted.slice(1).map(Number);
    text = text.slice(0, dotted.index) +
      `${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head, tail] = text.includes("::") ? text.split("::") : [text, undefined];
  const headGroups = head ? head.split(":") : [];
  const tailGroups = tail ? tail.split(":") : [];
  const zeros = tail === undefined
    ? []
    : Array(8 - headGroups.length - tailGroups.length).fill("0");
  return [...headGroups, ...zeros, ...tailGroups].map((g) => parseInt(g, 16).toString(16)).join(
    ":",
  );
}

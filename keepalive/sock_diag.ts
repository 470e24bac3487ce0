/**
 * # Every TCP socket's state in one request: Linux `NETLINK_SOCK_DIAG`
 *
 * `ss` does not open `/proc/net/tcp`: it asks the kernel over a netlink
 * socket (`NETLINK_SOCK_DIAG`, request `SOCK_DIAG_BY_FAMILY`), and the kernel
 * answers with one message per socket, many messages to a read, each with
 * the socket's addresses, state and timer, and (when asked) its whole
 * `struct tcp_info`. Looking at 10,000 connections this way costs a few
 * hundred system calls, not 10,000 `getsockopt(TCP_INFO)` calls, and it needs
 * no file descriptor of the sockets: a process can look at sockets it does
 * not hold. It needs `--allow-ffi` only (Deno refuses `/proc` without
 * `--allow-all`, and has no netlink of its own).
 *
 * ```ts
 * import { SockDiag } from "@kakit/keepalive/sock-diag";
 *
 * using diag = new SockDiag();
 * for (const socket of diag.tcpSockets({ localPort: 8888, states: ["established"] })) {
 *   console.log(socket.remote, socket.timer, socket.tcpInfo?.getUint8(3)); // tcpi_probes
 * }
 * ```
 *
 * The request's filter (a port, some states) runs in the kernel, so sockets
 * that do not match cost nothing here. One request asks for one address
 * family; a listener on `::` also takes IPv4 connections, which the kernel
 * reports as IPv6 sockets with IPv4-mapped addresses (`::ffff:127.0.0.1`),
 * as Deno does.
 *
 * The command `tools/sock_diag.ts` of the kit prints this table, like
 * `ss -tn` with the keepalive timer and the unanswered probes.
 *
 * - https://man7.org/linux/man-pages/man7/sock_diag.7.html
 * - https://man7.org/linux/man-pages/man7/netlink.7.html
 * - include/uapi/linux/inet_diag.h (the request, the reply, the port filter)
 *
 * @module
 */

import {
  AF_INET,
  AF_INET6,
  AF_NETLINK,
  ERRNO,
  errno,
  ERRNO_SYMBOLS,
  IPPROTO_TCP,
  openCLibrary,
  SOCK_CLOEXEC,
  SOCK_RAW,
} from "./_linux.ts";
import {
  align4,
  DiagEntry,
  type DiagSocket,
  INET_DIAG_INFO,
  INET_DIAG_MSG,
  TCP_STATES,
  type TcpState,
} from "./_diag_entry.ts";

export {
  DiagEntry,
  type DiagSocket,
  type DiagTimer,
  formatAddress,
  type TcpState,
} from "./_diag_entry.ts";

/**
 * Which sockets to ask for. Every field narrows the answer; none means every
 * TCP socket. It is checked before anything is asked, each field read once:
 * a key it does not take (a misspelt one would widen the answer), an empty
 * list (it would match nothing) and a value outside the lists below are a
 * `TypeError`. Names are taken exactly as written here, lowercase: `"IPv4"`
 * or `"ESTABLISHED"` is refused, not guessed at.
 *
 * @example
 * ```ts
 * import { type DiagFilter, SockDiag } from "@kakit/keepalive/sock-diag";
 * const server: DiagFilter = { localPort: 8888, states: ["established"], families: ["ipv4"] };
 * using diag = new SockDiag();
 * diag.tcpSockets(server).length;
 * ```
 */
export interface DiagFilter {
  /** Only sockets whose local port is this (a server's connections and its listener), 0..65535. */
  localPort?: number;
  /** Only sockets in these states (at least one). */
  states?: readonly TcpState[];
  /** Only these address families, `"ipv4"` and/or `"ipv6"` (default both). */
  families?: readonly ("ipv4" | "ipv6")[];
}

/** The address families a {@linkcode DiagFilter} takes. */
const FAMILIES = ["ipv4", "ipv6"] as const;

// A DiagFilter checked, each field read once: the port, the states as the
// kernel's bit mask, and the families, each once.
interface CheckedFilter {
  localPort: number | undefined;
  states: number;
  families: readonly ("ipv4" | "ipv6")[];
}

// --- The protocol (include/uapi/linux/netlink.h, sock_diag.h, inet_diag.h) ---

const NETLINK_SOCK_DIAG = 4;
const MSG_DONTWAIT = 0x40;

const NLMSG_HEADER = 16;
const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;
const NLM_F_REQUEST = 0x1;
const NLM_F_DUMP = 0x300;
const SOCK_DIAG_BY_FAMILY = 20;

const INET_DIAG_REQ_V2 = 56;
const INET_DIAG_REQ_BYTECODE = 1; // the request attribute that holds a filter
const INET_DIAG_BC_S_EQ = 11; // "local port equals", followed by the port

// The kernel fills at most about 32 KiB per read of a dump, whatever the buffer.
const RECEIVE_BYTES = 32 * 1024;

/**
 * A netlink socket for asking the kernel about TCP sockets. Open one and
 * reuse it for every look; close it (or `using`) when done. Needs
 * `--allow-ffi`; Linux only.
 *
 * @example
 * ```ts
 * import { SockDiag } from "@kakit/keepalive/sock-diag";
 *
 * using diag = new SockDiag();
 * const listening = diag.tcpSockets({ states: ["listen"], families: ["ipv6"] });
 * console.log(listening.map((socket) => socket.local.port));
 * ```
 */
export class SockDiag {
  #fd: number;
  #libc: Libc;
  #buffer = new Uint8Array(RECEIVE_BYTES);
  #sequence = 0;

  /** Opens the netlink socket. Throws a `Deno.errors.NotCapable` naming `--allow-ffi` without it. */
  constructor() {
    this.#libc = openLibc();
    this.#fd = this.#libc.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (this.#fd < 0) throw new DiagError("socket(AF_NETLINK, NETLINK_SOCK_DIAG)", this.#errno());
  }

  /**
   * Every TCP socket that matches `filter`, in the kernel's order (one
   * request per address family, answered in reads of up to 32 KiB).
   */
  tcpSockets(filter: DiagFilter = {}): DiagSocket[] {
    const found: DiagSocket[] = [];
    this.forEachTcpSocket(filter, (entry) => found.push(entry.toSocket()));
    return found;
  }

  /**
   * Like {@linkcode SockDiag.tcpSockets}, without building a copy of every
   * socket: `visit` gets a {@linkcode DiagEntry} that reads the kernel's
   * message in place, and is only valid during the call. At 10,000 sockets
   * this is several times cheaper when only a few fields are read.
   */
  forEachTcpSocket(filter: DiagFilter, visit: (entry: DiagEntry) => void): void {
    if (this.#fd < 0) throw new DiagError("read from a closed SockDiag", ERRNO.EBADF);
    // Checked whole before the first request: a bad second family must not
    // come after a first family's sockets were visited.
    const checked = checkFilter(filter);
    // (A visitor that throws ends the look; the next one starts afresh.)
    for (const family of checked.families) {
      const sequence = ++this.#sequence;
      this.#send(request(family === "ipv4" ? AF_INET : AF_INET6, checked, sequence));
      try {
        this.#receive(visit, sequence);
      } catch (error) {
        // The rest of this dump may still be queued on the socket, and would
        // be read as the answer to the next request: start afresh instead.
        this.#reopen();
        throw error;
      }
    }
  }

  /** Closes the netlink socket. */
  close(): void {
    if (this.#fd >= 0) this.#libc.close(this.#fd);
    this.#fd = -1;
  }

  /** For `using diag = new SockDiag()`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #send(message: Uint8Array): void {
    // To the kernel: a zeroed sockaddr_nl (family AF_NETLINK, pid 0).
    const kernel = new Uint8Array(12);
    kernel[0] = AF_NETLINK;
    const sent = Number(
      this.#libc.sendto(this.#fd, message, BigInt(message.length), 0, kernel, kernel.length),
    );
    if (sent !== message.length) throw new DiagError("sendto(NETLINK_SOCK_DIAG)", this.#errno());
  }

  // The kernel queues the first part of the answer while it takes the
  // request, and each next part as the previous one is read, so a read never
  // has to wait: MSG_DONTWAIT turns a kernel that stopped answering into an
  // error instead of a hang.
  #reopen(): void {
    this.#libc.close(this.#fd);
    this.#fd = this.#libc.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  }

  #receive(visit: (entry: DiagEntry) => void, sequence: number): void {
    const buffer = this.#buffer;
    const view = new DataView(buffer.buffer);
    const entry = new DiagEntry(view);
    for (;;) {
      const got = Number(
        this.#libc.recv(this.#fd, buffer, BigInt(buffer.length), MSG_DONTWAIT),
      );
      if (got < 0) throw new DiagError("recv(NETLINK_SOCK_DIAG)", this.#errno());
      for (let at = 0; at + NLMSG_HEADER <= got;) {
        const length = view.getUint32(at, true);
        const type = view.getUint16(at + 4, true);
        if (length < NLMSG_HEADER || at + length > got) {
          throw new DiagError("a netlink message that does not fit its read", ERRNO.EBADMSG);
        }
        // A part of an earlier request's answer (there should be none): skipped.
        if (view.getUint32(at + 8, true) !== sequence) {
          at += align4(length);
          continue;
        }
        if (type === NLMSG_DONE) return;
        if (type === NLMSG_ERROR) {
          const code = -view.getInt32(at + NLMSG_HEADER, true);
          throw new DiagError("SOCK_DIAG_BY_FAMILY", code);
        }
        if (type === SOCK_DIAG_BY_FAMILY && length >= NLMSG_HEADER + INET_DIAG_MSG) {
          entry.point(at + NLMSG_HEADER, at + length);
          visit(entry);
        }
        at += align4(length);
      }
    }
  }

  #errno(): number {
    return errno(this.#libc);
  }
}

/**
 * The backlog the kernel holds for a listener of this process, found by its
 * address: what `listen` asked for, capped at `net.core.somaxconn`, which
 * a program cannot read without `/proc`. Null when no such listener exists.
 * Needs `--allow-ffi`.
 *
 * @example
 * ```ts
 * import { listenerBacklog } from "@kakit/keepalive/sock-diag";
 * const listener = Deno.listen({ port: 0, tcpBacklog: 100_000 });
 * listenerBacklog(listener.addr); // 4096 with Linux's default somaxconn
 * ```
 */
export function listenerBacklog(addr: Deno.NetAddr): number | null {
  using diag = new SockDiag();
  const family = addr.hostname.includes(":") ? "ipv6" : "ipv4";
  const found = diag.tcpSockets({ localPort: addr.port, states: ["listen"], families: [family] })
    .find((socket) => socket.local.hostname === addr.hostname);
  return found?.sendQueue ?? null;
}

/**
 * A failed netlink call: what was asked, and the kernel's errno.
 *
 * @example
 * ```ts
 * import { DiagError, SockDiag } from "@kakit/keepalive/sock-diag";
 *
 * const diag = new SockDiag();
 * diag.close();
 * try {
 *   diag.tcpSockets();
 * } catch (error) {
 *   if (error instanceof DiagError) console.log(error.errno); // 9 (EBADF)
 * }
 * ```
 */
export class DiagError extends Error {
  /** The errno, e.g. 13 (EACCES). */
  errno: number;
  /** Names the call and the errno. */
  constructor(call: string, errno: number) {
    super(`${call} failed: errno ${errno}`);
    this.name = "DiagError";
    this.errno = errno;
  }
}

// The filter, checked, each field read once (a getter is called once).
function checkFilter(filter: unknown): CheckedFilter {
  if (typeof filter !== "object" || filter === null || Array.isArray(filter)) {
    throw new TypeError("the filter must be an object { localPort?, states?, families? }");
  }
  const known = ["localPort", "states", "families"];
  const extra = Object.keys(filter).find((key) => !known.includes(key));
  if (extra !== undefined) {
    throw new TypeError(
      `unknown filter key ${JSON.stringify(extra)}: it takes localPort, states and families`,
    );
  }
  const { localPort, states, families } = filter as Record<string, unknown>;
  if (
    localPort !== undefined &&
    !(Number.isInteger(localPort) && (localPort as number) >= 0 && (localPort as number) <= 65535)
  ) {
    throw new TypeError(`localPort must be an integer from 0 to 65535, not ${shown(localPort)}`);
  }
  let mask = 0;
  for (const state of listOf(states, "states", TCP_STATES)) {
    mask |= 1 << (TCP_STATES.indexOf(state) + 1);
  }
  return {
    localPort: localPort as number | undefined,
    states: mask,
    families: [...new Set(listOf(families, "families", FAMILIES))],
  };
}

// A filter's list: every item one of `accepted` exactly, at least one item;
// all of `accepted` when the list is left out.
function listOf<T extends string>(list: unknown, name: string, accepted: readonly T[]): T[] {
  if (list === undefined) return [...accepted];
  const takes = accepted.map((value) => JSON.stringify(value)).join(", ");
  if (!Array.isArray(list) || list.length === 0) {
    throw new TypeError(`${name} must be a list of at least one of ${takes}, not ${shown(list)}`);
  }
  const items = [...list]; // read once: what is checked is what is used
  for (const item of items) {
    if (!accepted.includes(item)) {
      const what = name === "states" ? "TCP state" : "address family";
      throw new TypeError(`unknown ${what} ${shown(item)}: ${name} takes ${takes}`);
    }
  }
  return items;
}

// A value as an error message shows it: strings quoted, numbers as they
// are, anything else by its kind (never a function's source).
function shown(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) return value.length === 0 ? "an empty list" : "an array";
  if (value === null || ["number", "boolean", "bigint", "undefined"].includes(typeof value)) {
    return String(value);
  }
  return typeof value === "object" ? "an object" : `a ${typeof value}`;
}

// A dump request: netlink header, struct inet_diag_req_v2, and, for a port,
// a two-instruction filter program that the kernel runs on every socket.
function request(family: number, filter: CheckedFilter, sequence: number): Uint8Array {
  const port = filter.localPort;
  const states = filter.states;
  const bytecode = port === undefined ? 0 : 4 + 8;
  const message = new Uint8Array(NLMSG_HEADER + INET_DIAG_REQ_V2 + bytecode);
  const view = new DataView(message.buffer);
  view.setUint32(0, message.length, true);
  view.setUint16(4, SOCK_DIAG_BY_FAMILY, true);
  view.setUint16(6, NLM_F_REQUEST | NLM_F_DUMP, true);
  view.setUint32(8, sequence, true);
  const req = NLMSG_HEADER;
  view.setUint8(req, family);
  view.setUint8(req + 1, IPPROTO_TCP);
  view.setUint8(req + 2, 1 << (INET_DIAG_INFO - 1)); // idiag_ext: send tcp_info along
  view.setUint32(req + 4, states, true);
  if (port !== undefined) {
    // rtattr { len, type } and two inet_diag_bc_op { code, yes, no }: "if the
    // local port equals `port`, jump to the end (keep the socket), else jump
    // past it (drop it)". The second op only carries the port, in `no`.
    const at = req + INET_DIAG_REQ_V2;
    view.setUint16(at, 4 + 8, true);
    view.setUint16(at + 2, INET_DIAG_REQ_BYTECODE, true);
    view.setUint8(at + 4, INET_DIAG_BC_S_EQ);
    view.setUint8(at + 5, 8); // yes: the end of the program
    view.setUint16(at + 6, 8 + 4, true); // no: past the end
    view.setUint16(at + 10, port, true);
  }
  return message;
}

// --- The C library --------------------------------------------------------------

const SYMBOLS = {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  sendto: { parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"], result: "isize" },
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  close: { parameters: ["i32"], result: "i32" },
  ...ERRNO_SYMBOLS,
} as const;
type Libc = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

// glibc's name first, then musl's. Opened once per process, on first use.
let libc: Libc | undefined;
function openLibc(): Libc {
  return libc ??= openCLibrary(SYMBOLS, "reading sockets through NETLINK_SOCK_DIAG");
}

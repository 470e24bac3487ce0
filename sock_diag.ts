/**
 * # Every TCP socket's state in one request: Linux `NETLINK_SOCK_DIAG`
 *
 * @run deno run --allow-ffi sock_diag.ts [--port 8888]
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
 * ```ts ignore
 * import { SockDiag } from "./sock_diag.ts";
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
 * - https://man7.org/linux/man-pages/man7/sock_diag.7.html
 * - https://man7.org/linux/man-pages/man7/netlink.7.html
 * - include/uapi/linux/inet_diag.h (the request, the reply, the port filter)
 *
 * @module
 */

/** A TCP state, as `ss` names them. */
export type TcpState =
  | "established"
  | "syn-sent"
  | "syn-recv"
  | "fin-wait-1"
  | "fin-wait-2"
  | "time-wait"
  | "close"
  | "close-wait"
  | "last-ack"
  | "listen"
  | "closing";

// include/net/tcp_states.h: TCP_ESTABLISHED is 1, and so on in this order.
const TCP_STATES: readonly TcpState[] = [
  "established",
  "syn-sent",
  "syn-recv",
  "fin-wait-1",
  "fin-wait-2",
  "time-wait",
  "close",
  "close-wait",
  "last-ack",
  "listen",
  "closing",
];

/** Which timer the kernel has pending on the socket (`idiag_timer`). */
export type DiagTimer = "none" | "retransmit" | "keepalive" | "time-wait" | "zero-window-probe";
const TIMERS: readonly DiagTimer[] = [
  "none",
  "retransmit",
  "keepalive",
  "time-wait",
  "zero-window-probe",
];

/**
 * Which sockets to ask for. Every field narrows the answer; none means every
 * TCP socket. It is checked before anything is asked, each field read once:
 * a key it does not take (a misspelt one would widen the answer), an empty
 * list (it would match nothing) and a value outside the lists below are a
 * `TypeError`. Names are taken exactly as written here, lowercase: `"IPv4"`
 * or `"ESTABLISHED"` is refused, not guessed at.
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

/** One socket, as the kernel described it. */
export interface DiagSocket {
  /** The address family of the socket (an IPv4 peer of an IPv6 listener is "ipv6"). */
  family: "ipv4" | "ipv6";
  /** The TCP state. */
  state: TcpState;
  /** This end's address, formatted as Deno formats `conn.localAddr`. */
  local: Deno.NetAddr;
  /** The other end's address, formatted as Deno formats `conn.remoteAddr`. */
  remote: Deno.NetAddr;
  /**
   * The kernel's number for this socket, never reused while the system runs:
   * a key that tells a new connection from an old one with the same addresses.
   */
  cookie: bigint;
  /** The socket's inode (what `/proc/PID/fd` links show as `socket:[inode]`). */
  inode: number;
  /** The pending timer. */
  timer: DiagTimer;
  /** Milliseconds until that timer fires. */
  timerMs: number;
  /** Bytes received and not yet read; for a listener, connections waiting to be accepted. */
  receiveQueue: number;
  /** Bytes written and not yet acknowledged; for a listener, its backlog limit. */
  sendQueue: number;
  /**
   * The socket's `struct tcp_info` (include/uapi/linux/tcp.h), as many bytes
   * as this kernel has; null for a socket that has none (time-wait).
   */
  tcpInfo: DataView | null;
}

// --- The protocol (include/uapi/linux/netlink.h, sock_diag.h, inet_diag.h) ---

const AF_INET = 2;
const AF_INET6 = 10;
const AF_NETLINK = 16;
const SOCK_RAW = 3;
const SOCK_CLOEXEC = 0o2000000;
const NETLINK_SOCK_DIAG = 4;
const IPPROTO_TCP = 6;
const MSG_DONTWAIT = 0x40;

const NLMSG_HEADER = 16;
const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;
const NLM_F_REQUEST = 0x1;
const NLM_F_DUMP = 0x300;
const SOCK_DIAG_BY_FAMILY = 20;

const INET_DIAG_REQ_V2 = 56;
const INET_DIAG_MSG = 72;
const INET_DIAG_INFO = 2; // the reply attribute that holds struct tcp_info
const INET_DIAG_REQ_BYTECODE = 1; // the request attribute that holds a filter
const INET_DIAG_BC_S_EQ = 11; // "local port equals", followed by the port

// The kernel fills at most about 32 KiB per read of a dump, whatever the buffer.
const RECEIVE_BYTES = 32 * 1024;

/**
 * A netlink socket for asking the kernel about TCP sockets. Open one and
 * reuse it for every look; close it (or `using`) when done. Needs
 * `--allow-ffi`; Linux only.
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
    if (this.#fd < 0) throw new DiagError("read from a closed SockDiag", 9 /* EBADF */);
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
          throw new DiagError("a netlink message that does not fit its read", 74 /* EBADMSG */);
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
    const pointer = this.#libc.__errno_location();
    return pointer ? new Deno.UnsafePointerView(pointer).getInt32() : 0;
  }
}

/**
 * The backlog the kernel holds for a listener of this process, found by its
 * address: what `listen` asked for, capped at `net.core.somaxconn`, which
 * a program cannot read without `/proc`. Null when no such listener exists.
 * Needs `--allow-ffi`.
 *
 * @example
 * ```ts ignore
 * import { listenerBacklog } from "./sock_diag.ts";
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

/** A failed netlink call: what was asked, and the kernel's errno. */
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

/**
 * One socket's message from the kernel, read in place (struct
 * inet_diag_msg: family, state, timer, retrans; inet_diag_sockid with
 * big-endian ports, 16 address bytes each, the interface and the cookie;
 * then expires, rqueue, wqueue, uid, inode; then attributes). The same
 * object is moved to each next message: copy what you keep, or call
 * {@linkcode DiagEntry.toSocket}.
 */
export class DiagEntry {
  #view: DataView;
  #at = 0;
  #info = -1;
  #infoLength = 0;

  /** Reads from `view`; {@linkcode SockDiag} makes these. */
  constructor(view: DataView) {
    this.#view = view;
  }

  /** Moves to the message at `at`, whose attributes end at `end`. */
  point(at: number, end: number): void {
    this.#at = at;
    this.#info = -1;
    for (let attr = at + INET_DIAG_MSG; attr + 4 <= end;) {
      const length = this.#view.getUint16(attr, true);
      if (length < 4 || attr + length > end) break;
      if (this.#view.getUint16(attr + 2, true) === INET_DIAG_INFO) {
        this.#info = attr + 4;
        this.#infoLength = length - 4;
      }
      attr += align4(length);
    }
  }

  /** The socket's address family. */
  get family(): "ipv4" | "ipv6" {
    return this.#view.getUint8(this.#at) === AF_INET ? "ipv4" : "ipv6";
  }
  /** The TCP state. */
  get state(): TcpState {
    return TCP_STATES[this.#view.getUint8(this.#at + 1) - 1] ?? "close";
  }
  /** The pending timer (`idiag_timer`), as {@linkcode DiagSocket.timer}. */
  get timer(): DiagTimer {
    return TIMERS[this.#view.getUint8(this.#at + 2)] ?? "none";
  }
  /** Milliseconds until that timer fires (`idiag_expires`), as {@linkcode DiagSocket.timerMs}. */
  get timerMs(): number {
    return this.#view.getUint32(this.#at + 52, true);
  }
  /** The cookie as a number: exact below 2^53, which a running system never reaches. */
  get cookieNumber(): number {
    return this.#view.getUint32(this.#at + 48, true) * 2 ** 32 +
      this.#view.getUint32(this.#at + 44, true);
  }
  /**
   * Reads one `u32` of `struct tcp_info` at a byte offset (offsets in
   * include/uapi/linux/tcp.h), or `undefined` when the kernel sent none or a
   * shorter one.
   */
  tcpInfoU32(offset: number): number | undefined {
    if (this.#info < 0 || offset + 4 > this.#infoLength) return undefined;
    return this.#view.getUint32(this.#info + offset, true);
  }
  /** Reads one byte of `struct tcp_info`, like {@linkcode DiagEntry.tcpInfoU32}. */
  tcpInfoU8(offset: number): number | undefined {
    if (this.#info < 0 || offset + 1 > this.#infoLength) return undefined;
    return this.#view.getUint8(this.#info + offset);
  }
  /**
   * Whether this end's address is `address`: 4 bytes (IPv4) or 16 (IPv6),
   * an IPv4 address matching its IPv4-mapped form too. Compares the
   * kernel's bytes in place: no text is made.
   */
  localAddressIs(address: Uint8Array): boolean {
    const view = this.#view, at = this.#at + 8;
    const own = (i: number) => view.getUint8(at + i);
    const mapped = (bytes: (i: number) => number) =>
      [0, 1, 2, 3, 4, 5, 6, 7, 8, 9].every((i) => bytes(i) === 0) &&
      bytes(10) === 0xff && bytes(11) === 0xff;
    if (this.family === "ipv4") {
      if (address.length === 4) return [0, 1, 2, 3].every((i) => own(i) === address[i]);
      return mapped((i) => address[i]) && [0, 1, 2, 3].every((i) => own(i) === address[12 + i]);
    }
    if (address.length === 16) {
      for (let i = 0; i < 16; i++) if (own(i) !== address[i]) return false;
      return true;
    }
    return mapped(own) && [0, 1, 2, 3].every((i) => own(12 + i) === address[i]);
  }

  /** The remote end, formatted as Deno formats `conn.remoteAddr`. */
  remote(): Deno.NetAddr {
    return this.#address(24, 6);
  }
  /** The local end, formatted as Deno formats `conn.localAddr`. */
  local(): Deno.NetAddr {
    return this.#address(8, 4);
  }

  /** A copy of everything, that stays valid after the visit. */
  toSocket(): DiagSocket {
    const view = this.#view, at = this.#at;
    const info = this.#info < 0 ? null : new DataView(
      view.buffer.slice(
        view.byteOffset + this.#info,
        view.byteOffset + this.#info + this.#infoLength,
      ),
    );
    return {
      family: this.family,
      state: this.state,
      local: this.local(),
      remote: this.remote(),
      cookie: (BigInt(view.getUint32(at + 48, true)) << 32n) |
        BigInt(view.getUint32(at + 44, true)),
      timer: this.timer,
      timerMs: this.timerMs,
      receiveQueue: view.getUint32(at + 56, true),
      sendQueue: view.getUint32(at + 60, true),
      inode: view.getUint32(at + 68, true),
      tcpInfo: info,
    };
  }

  #address(addressAt: number, portAt: number): Deno.NetAddr {
    const view = this.#view, at = this.#at;
    const length = this.family === "ipv4" ? 4 : 16;
    const start = view.byteOffset + at + addressAt;
    return {
      transport: "tcp",
      hostname: formatAddress(new Uint8Array(view.buffer, start, length)),
      port: view.getUint16(at + portAt, false),
    };
  }
}

function align4(n: number): number {
  return (n + 3) & ~3;
}

/**
 * Address bytes as Deno prints them (RFC 5952): IPv4 dotted; IPv6 in
 * lowercase hex with the longest run of two or more zero groups written
 * `::`, and IPv4-mapped addresses as `::ffff:a.b.c.d`.
 */
export function formatAddress(bytes: Uint8Array): string {
  if (bytes.length === 4) return bytes.join(".");
  const groups = Array.from({ length: 8 }, (_, i) => (bytes[2 * i] << 8) | bytes[2 * i + 1]);
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    return `::ffff:${bytes.subarray(12).join(".")}`;
  }
  let bestAt = -1, bestLength = 1;
  for (let i = 0; i < 8;) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) [bestAt, bestLength] = [i, j - i];
    i = j;
  }
  const hex = (list: number[]) => list.map((g) => g.toString(16)).join(":");
  if (bestAt < 0) return hex(groups);
  return `${hex(groups.slice(0, bestAt))}::${hex(groups.slice(bestAt + bestLength))}`;
}

// --- The C library --------------------------------------------------------------

const SYMBOLS = {
  socket: { parameters: ["i32", "i32", "i32"], result: "i32" },
  sendto: { parameters: ["i32", "buffer", "usize", "i32", "buffer", "u32"], result: "isize" },
  recv: { parameters: ["i32", "buffer", "usize", "i32"], result: "isize" },
  close: { parameters: ["i32"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
} as const;
type Libc = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

// glibc's name first, then musl's. Opened once per process, on first use.
let libc: Libc | undefined;
function openLibc(): Libc {
  return libc ??= openCLibrary(SYMBOLS, "reading sockets through NETLINK_SOCK_DIAG");
}

/**
 * Opens the C library with `symbols`, under glibc's name or musl's, for
 * `purpose` (which the errors name): a `Deno.errors.NotCapable` that names
 * `--allow-ffi` without it, an `Error` on a system other than Linux or
 * without either library. `epoll_server.ts` opens its own symbols with it.
 *
 * @example
 * ```ts ignore
 * import { openCLibrary } from "./sock_diag.ts";
 * const { getpid } = openCLibrary({ getpid: { parameters: [], result: "i32" } }, "asking");
 * ```
 */
export function openCLibrary<S extends Deno.ForeignLibraryInterface>(
  symbols: S,
  purpose: string,
): Deno.DynamicLibrary<S>["symbols"] {
  if (Deno.build.os !== "linux") {
    throw new Error(`${purpose} works on Linux only, not ${Deno.build.os}`);
  }
  const names = [
    "libc.so.6",
    `libc.musl-${Deno.build.arch}.so.1`,
    `ld-musl-${Deno.build.arch}.so.1`,
  ];
  for (const name of names) {
    try {
      return Deno.dlopen(name, symbols).symbols;
    } catch (error) {
      if (error instanceof Deno.errors.NotCapable) {
        throw new Deno.errors.NotCapable(`${purpose} needs the --allow-ffi permission`);
      }
    }
  }
  throw new Error(`no C library found (tried ${names.join(", ")})`);
}

const USAGE = `Usage: deno run --allow-ffi sock_diag.ts [--port N]

Prints every TCP socket of this network namespace, one line each, the way
\`ss -tn\` does, with its keepalive timer and unanswered probes, read with one
NETLINK_SOCK_DIAG request per address family.

  --port N    only sockets whose LOCAL port is N (a server's listener and its
              connections; a client's sockets have the server's port as their
              remote port), 0..65535
  -h, --help  show this help

Exit codes: 0, 1 when the kernel cannot be asked (or --allow-ffi is missing),
2 for bad flags.`;

/**
 * `deno run --allow-ffi sock_diag.ts [--port N]`: one line per TCP socket
 * (on local port N), like `ss -tn` with the keepalive timer and the
 * unanswered probes. Returns the exit code: 0, 1 when the kernel cannot be
 * asked, 2 for bad flags.
 */
export function main(args: string[], print: (line: string) => void = console.log): number {
  if (args.length === 1 && (args[0] === "--help" || args[0] === "-h")) {
    print(USAGE);
    return 0;
  }
  const words = args.length === 1 && args[0].startsWith("--port=")
    ? ["--port", args[0].slice("--port=".length)]
    : args;
  const valid = words.length === 0 ||
    (words.length === 2 && words[0] === "--port" && /^\d{1,5}$/.test(words[1]) &&
      Number(words[1]) <= 65535);
  if (!valid) {
    console.error(
      `sock_diag.ts: expected nothing or --port 0..65535, not ${showTyped(args.join(" "))} ` +
        "(see --help)",
    );
    return 2;
  }
  const localPort = words.length === 2 ? Number(words[1]) : undefined;
  const at = (a: Deno.NetAddr) =>
    a.hostname.includes(":") ? `[${a.hostname}]:${a.port}` : `${a.hostname}:${a.port}`;
  try {
    using diag = new SockDiag();
    for (const s of diag.tcpSockets({ localPort })) {
      const probes = s.tcpInfo ? s.tcpInfo.getUint8(3) : "-";
      print(
        `${s.state} ${at(s.local)} ${
          at(s.remote)
        } timer:${s.timer},${s.timerMs}ms probes:${probes}`,
      );
    }
  } catch (error) {
    // Only the system's words here (the arguments were checked above), but a
    // message is shown as text, never able to move the cursor.
    const message = escapeControls(error instanceof Error ? error.message : String(error));
    const again = error instanceof Deno.errors.NotCapable
      ? `: deno run --allow-ffi sock_diag.ts${args.length ? " " + args.join(" ") : ""}`
      : "";
    console.error(`sock_diag.ts: ${message}${again}`);
    return 1;
  }
  return 0;
}

/**
 * What someone typed, quoted for a message: control characters (C0, DEL,
 * C1), format characters (bidi overrides such as U+202E, zero-width marks)
 * and line separators escaped as `\uXXXX`, and a long value cut to `max`
 * characters with its length said. This repeats `cli.ts`'s `showTyped` on
 * purpose: sock_diag.ts is a library first (keepalive.ts imports it) and
 * stays free of `cli.ts` and its `@std/cli` import.
 */
function showTyped(text: string, max = 40): string {
  const cut = text.length > max ? text.slice(0, max) : text;
  const quoted = escapeControls(JSON.stringify(cut));
  return text.length > max ? `${quoted.slice(0, -1)}..." (${text.length} characters)` : quoted;
}

// Each character a terminal would act on or that reorders or hides text
// (JSON already escapes C0, but not DEL, C1, U+202E, U+2028), as \uXXXX.
function escapeControls(text: string): string {
  return text.replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu, (c) => {
    const code = c.codePointAt(0)!;
    return code > 0xffff ? `\\u{${code.toString(16)}}` : `\\u${code.toString(16).padStart(4, "0")}`;
  });
}

if (import.meta.main) Deno.exit(main(Deno.args));

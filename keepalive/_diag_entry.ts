/**
 * # One socket's message in a `NETLINK_SOCK_DIAG` answer
 *
 * The kernel answers a dump request with one `struct inet_diag_msg` per
 * socket (include/uapi/linux/inet_diag.h), followed by attributes, the
 * socket's `struct tcp_info` among them. {@linkcode DiagEntry} reads one in
 * place, so that a look at 10,000 sockets makes no object per socket;
 * {@linkcode DiagSocket} is a copy that stays valid.
 *
 * @module
 */

import { AF_INET } from "./_linux.ts";

/**
 * A TCP state, as `ss` names them.
 *
 * @example
 * ```ts
 * import { SockDiag, type TcpState } from "@kakit/keepalive/sock-diag";
 * const closing: TcpState[] = ["fin-wait-1", "fin-wait-2", "close-wait", "last-ack", "closing"];
 * using diag = new SockDiag();
 * diag.tcpSockets({ states: closing }).length;
 * ```
 */
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

/** The TCP states in the kernel's order (include/net/tcp_states.h): TCP_ESTABLISHED is 1. */
export const TCP_STATES: readonly TcpState[] = [
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

/**
 * Which timer the kernel has pending on the socket (`idiag_timer`).
 *
 * @example
 * ```ts
 * import { type DiagTimer, SockDiag } from "@kakit/keepalive/sock-diag";
 * using diag = new SockDiag();
 * const armed: DiagTimer = "keepalive";
 * diag.tcpSockets({ states: ["established"] }).filter((socket) => socket.timer === armed);
 * ```
 */
export type DiagTimer = "none" | "retransmit" | "keepalive" | "time-wait" | "zero-window-probe";
const TIMERS: readonly DiagTimer[] = [
  "none",
  "retransmit",
  "keepalive",
  "time-wait",
  "zero-window-probe",
];

/**
 * One socket, as the kernel described it.
 *
 * @example
 * ```ts
 * import { type DiagSocket, SockDiag } from "@kakit/keepalive/sock-diag";
 * using diag = new SockDiag();
 * const sockets: DiagSocket[] = diag.tcpSockets({ localPort: 8888 });
 * for (const { state, remote, timer, timerMs } of sockets) {
 *   console.log(state, remote.hostname, remote.port, timer, timerMs);
 * }
 * ```
 */
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

/** The size of `struct inet_diag_msg`, before the attributes. */
export const INET_DIAG_MSG = 72;
/** The reply attribute that holds `struct tcp_info`. */
export const INET_DIAG_INFO = 2;

/**
 * One socket's message from the kernel, read in place (struct
 * inet_diag_msg: family, state, timer, retrans; inet_diag_sockid with
 * big-endian ports, 16 address bytes each, the interface and the cookie;
 * then expires, rqueue, wqueue, uid, inode; then attributes). The same
 * object is moved to each next message: copy what you keep, or call
 * {@linkcode DiagEntry.toSocket}.
 *
 * @example
 * ```ts
 * import { type DiagEntry, SockDiag } from "@kakit/keepalive/sock-diag";
 *
 * using diag = new SockDiag();
 * let unanswered = 0;
 * diag.forEachTcpSocket({ localPort: 8888, states: ["established"] }, (entry: DiagEntry) => {
 *   unanswered += entry.tcpInfoU8(3) ?? 0; // tcpi_probes, read in place
 * });
 * ```
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

/** `n` rounded up to a multiple of 4, as netlink aligns messages and attributes. */
export function align4(n: number): number {
  return (n + 3) & ~3;
}

/**
 * Address bytes as Deno prints them (RFC 5952): IPv4 dotted; IPv6 in
 * lowercase hex with the longest run of two or more zero groups written
 * `::`, and IPv4-mapped addresses as `::ffff:a.b.c.d`.
 *
 * @example
 * ```ts
 * import { formatAddress } from "@kakit/keepalive/sock-diag";
 * formatAddress(new Uint8Array([10, 0, 0, 1])); // "10.0.0.1"
 * formatAddress(new Uint8Array([0x20, 0x01, 0x0d, 0xb8, ...new Array(11).fill(0), 1])); // "2001:db8::1"
 * ```
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

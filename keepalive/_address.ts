/**
 * # Socket addresses: as text, as the kernel's bytes, and compared
 *
 * Deno and Node write an address as text (`127.0.0.1`, `::1`,
 * `::ffff:127.0.0.1`); the kernel hands out a `struct sockaddr`. Both are
 * turned into 16 bytes (IPv4 mapped into IPv6) and compared as bytes, so
 * that the ways of writing one address compare equal.
 *
 * @module
 */

import { AF_INET, AF_INET6 } from "./_linux.ts";

/** An address as the kernel's bytes would be compared with it: 16 bytes and a port. */
export interface WantedAddress {
  /** The address, IPv4 mapped into IPv6 (`::ffff:a.b.c.d`). */
  bytes: Uint8Array;
  /** The port. */
  port: number;
}

/** `addr` as bytes to compare with, or null when its host name is not an address. */
export function wantedAddress(addr: Deno.NetAddr): WantedAddress | null {
  const bytes = addressBytes(addr.hostname);
  return bytes && { bytes, port: addr.port };
}

/**
 * Whether a `struct sockaddr_in` or `sockaddr_in6` is `wanted` (address
 * and port), compared in place: a look at thousands of descriptors
 * allocates nothing per descriptor.
 */
export function sockaddrIs(sockaddr: Uint8Array, wanted: WantedAddress): boolean {
  return sockaddrPort(sockaddr) === wanted.port && sockaddrHasAddress(sockaddr, wanted.bytes);
}

/** A `struct sockaddr_in` or `sockaddr_in6`'s port. */
export function sockaddrPort(sockaddr: Uint8Array): number {
  return (sockaddr[2] << 8) | sockaddr[3];
}

/**
 * Whether a `struct sockaddr_in` or `sockaddr_in6` holds the address
 * `bytes` (16, IPv4 mapped into IPv6), compared in place; false for any
 * other family.
 */
export function sockaddrHasAddress(sockaddr: Uint8Array, bytes: Uint8Array): boolean {
  const family = sockaddr[0] | (sockaddr[1] << 8);
  if (family === AF_INET6) {
    for (let i = 0; i < 16; i++) if (sockaddr[8 + i] !== bytes[i]) return false;
    return true;
  }
  if (family !== AF_INET) return false;
  for (let i = 0; i < 10; i++) if (bytes[i] !== 0) return false;
  if (bytes[10] !== 0xff || bytes[11] !== 0xff) return false;
  for (let i = 0; i < 4; i++) if (sockaddr[4 + i] !== bytes[12 + i]) return false;
  return true;
}

/**
 * A `struct sockaddr`'s address as 16 bytes (IPv4 as `::ffff:a.b.c.d`) and
 * its port; null for a family other than IPv4 and IPv6.
 */
export function sockaddrAddress(sockaddr: Uint8Array): { bytes: Uint8Array; port: number } | null {
  const view = new DataView(sockaddr.buffer, sockaddr.byteOffset);
  const family = view.getUint16(0, true);
  const port = view.getUint16(2, false);
  if (family === AF_INET6) return { bytes: sockaddr.slice(8, 24), port };
  if (family !== AF_INET) return null;
  const bytes = new Uint8Array(16);
  bytes.set([0xff, 0xff], 10);
  bytes.set(sockaddr.subarray(4, 8), 12);
  return { bytes, port };
}

/**
 * An address as written (`127.0.0.1`, `::1`, `::ffff:127.0.0.1`, `[::1]`,
 * `fe80::1%eth0`) as 16 bytes, IPv4 mapped into IPv6, so that the two ways
 * Deno and Node write an address compare equal; null if it is not an
 * address. Strict: decimal IPv4 octets 0..255, IPv6 groups of 1 to 4 hex
 * digits, at most one `::`, an IPv4 tail only at the end. A zone id
 * (`%eth0`) is dropped: the socket addresses compared carry none here.
 */
export function addressBytes(hostname: string): Uint8Array | null {
  const bracketed = /^\[(.*)\]$/.exec(hostname);
  const [text, zone = null] = (bracketed ? bracketed[1] : hostname).split(/%(.*)/s);
  if (zone !== null && (zone === "" || !text.includes(":"))) return null;
  const bytes = new Uint8Array(16);
  const v4 = ipv4Bytes(text);
  if (v4) {
    bytes.set([0xff, 0xff], 10);
    bytes.set(v4, 12);
    return bytes;
  }
  const halves = text.split("::");
  if (halves.length > 2) return null;
  const words = (part: string) => part === "" ? [] : part.split(":");
  const head = words(halves[0]);
  const tail = halves.length === 2 ? words(halves[1]) : [];
  const lastGroups = halves.length === 2 ? tail : head;
  const last = lastGroups.at(-1);
  const v4Tail = last?.includes(".") ? ipv4Bytes(last) : null;
  if (last?.includes(".") && !v4Tail) return null;
  if (v4Tail) lastGroups.pop();
  const groups = [...head, ...tail];
  if (!groups.every((g) => /^[0-9a-f]{1,4}$/i.test(g))) return null;
  const room = 8 - (v4Tail ? 2 : 0);
  if (halves.length === 2 ? groups.length > room - 1 : groups.length !== room) return null;
  const all = [...head, ...new Array(room - groups.length).fill("0"), ...tail];
  all.forEach((g, i) => {
    const value = parseInt(g, 16);
    bytes.set([value >> 8, value & 255], 2 * i);
  });
  if (v4Tail) bytes.set(v4Tail, 12);
  return bytes;
}

function ipv4Bytes(text: string): number[] | null {
  const octets = text.split(".");
  if (octets.length !== 4 || !octets.every((o) => /^(0|[1-9][0-9]{0,2})$/.test(o))) return null;
  const values = octets.map(Number);
  return values.every((v) => v <= 255) ? values : null;
}

/** 16 address bytes back to text, for an error message (IPv4-mapped as `a.b.c.d`). */
export function formatBytesAddress(bytes: Uint8Array): string {
  if (bytes.subarray(0, 10).every((b) => b === 0) && bytes[10] === 0xff && bytes[11] === 0xff) {
    return bytes.subarray(12).join(".");
  }
  return Array.from({ length: 8 }, (_, i) => ((bytes[2 * i] << 8) | bytes[2 * i + 1]).toString(16))
    .join(":");
}

/** `host:port`, with IPv6 hosts in brackets. */
export function formatAddr(addr: Deno.NetAddr): string {
  return addr.hostname.includes(":")
    ? `[${addr.hostname}]:${addr.port}`
    : `${addr.hostname}:${addr.port}`;
}

/**
 * # Reading tcpdump's pcap output
 *
 * `tcpdump -w -` writes the classic pcap format: a 24-byte file header, then
 * one 16-byte record header per packet followed by its bytes. This module
 * turns that byte stream, chunk by chunk as it arrives from a pipe, into TCP
 * segments: addresses, ports, sequence numbers, flags and payload length.
 * Nothing of the payload is kept.
 *
 * Link types understood: Ethernet (a veth), Linux cooked v1 and v2
 * (`-i any`). IPv4 and IPv6 (without extension headers).
 *
 * @module
 */

/** TCP flag bits, as in the header's 13th byte. */
export const TCP_FLAGS = { FIN: 1, SYN: 2, RST: 4, PSH: 8, ACK: 16, URG: 32 } as const;

/** One TCP segment from a capture. */
export interface Segment {
  /** When the capture saw it: seconds since the Unix epoch, microsecond precision. */
  time: number;
  /** The sender's address. */
  source: string;
  /** The sender's port. */
  sourcePort: number;
  /** The receiver's address. */
  destination: string;
  /** The receiver's port. */
  destinationPort: number;
  /** Absolute sequence number. */
  seq: number;
  /** Absolute acknowledgment number (meaningful with the ACK flag). */
  ack: number;
  /** Flag bits, see {@linkcode TCP_FLAGS}. */
  flags: number;
  /** TCP payload length in bytes, from the IP header (not what was captured). */
  length: number;
}

/** A pcap stream that is read as it arrives. */
export interface PcapParser {
  /** Feeds the next chunk; returns the TCP segments completed by it. */
  push(chunk: Uint8Array): Segment[];
}

const LINK_ETHERNET = 1;
const LINK_LINUX_SLL = 113;
const LINK_LINUX_SLL2 = 276;

/**
 * Makes a parser for one pcap stream. Throws an `Error` if the stream does
 * not start like pcap or uses a link type it does not know.
 *
 * @example
 * ```ts
 * import { createPcapParser } from "./pcap.ts";
 * const tcpdump = new Deno.Command("tcpdump", { args: ["-i", "lo", "-w", "-"], stdout: "piped" }).spawn();
 * const parser = createPcapParser();
 * for await (const chunk of tcpdump.stdout) for (const segment of parser.push(chunk)) console.log(segment);
 * ```
 */
export function createPcapParser(): PcapParser {
  let pending: Uint8Array = new Uint8Array(0);
  let header: { littleEndian: boolean; nanoseconds: boolean; linkType: number } | null = null;
  return {
    push(chunk) {
      pending = concat(pending, chunk);
      const segments: Segment[] = [];
      let offset = 0;
      const view = new DataView(pending.buffer, pending.byteOffset, pending.byteLength);
      if (!header) {
        if (pending.length < 24) return segments;
        header = readFileHeader(view);
        offset = 24;
      }
      while (pending.length - offset >= 16) {
        const le = header.littleEndian;
        const capturedLength = view.getUint32(offset + 8, le);
        if (pending.length - offset - 16 < capturedLength) break;
        const seconds = view.getUint32(offset, le);
        const fraction = view.getUint32(offset + 4, le);
        const time = seconds + fraction / (header.nanoseconds ? 1e9 : 1e6);
        const frame = pending.subarray(offset + 16, offset + 16 + capturedLength);
        const segment = decodeFrame(frame, header.linkType, time);
        if (segment) segments.push(segment);
        offset += 16 + capturedLength;
      }
      pending = pending.slice(offset);
      return segments;
    },
  };
}

function readFileHeader(view: DataView) {
  const magic = view.getUint32(0, false);
  const formats: Record<number, { littleEndian: boolean; nanoseconds: boolean }> = {
    0xa1b2c3d4: { littleEndian: false, nanoseconds: false },
    0xd4c3b2a1: { littleEndian: true, nanoseconds: false },
    0xa1b23c4d: { littleEndian: false, nanoseconds: true },
    0x4d3cb2a1: { littleEndian: true, nanoseconds: true },
  };
  const format = formats[magic];
  if (!format) throw new Error(`not a pcap stream (magic 0x${magic.toString(16)})`);
  const linkType = view.getUint32(20, format.littleEndian);
  if (![LINK_ETHERNET, LINK_LINUX_SLL, LINK_LINUX_SLL2].includes(linkType)) {
    throw new Error(`pcap link type ${linkType} is not Ethernet or Linux cooked`);
  }
  return { ...format, linkType };
}

// The link header's length and where it says which protocol follows.
function decodeFrame(frame: Uint8Array, linkType: number, time: number): Segment | null {
  const view = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  let etherType: number;
  let offset: number;
  if (linkType === LINK_ETHERNET) {
    if (frame.length < 14) return null;
    etherType = view.getUint16(12);
    offset = 14;
    while (etherType === 0x8100 && frame.length >= offset + 4) { // VLAN tags
      etherType = view.getUint16(offset + 2);
      offset += 4;
    }
  } else if (linkType === LINK_LINUX_SLL) {
    if (frame.length < 16) return null;
    etherType = view.getUint16(14);
    offset = 16;
  } else {
    if (frame.length < 20) return null;
    etherType = view.getUint16(0);
    offset = 20;
  }
  if (etherType === 0x0800) return decodeIPv4(frame.subarray(offset), time);
  if (etherType === 0x86dd) return decodeIPv6(frame.subarray(offset), time);
  return null;
}

function decodeIPv4(packet: Uint8Array, time: number): Segment | null {
  if (packet.length < 20 || packet[0] >> 4 !== 4 || packet[9] !== 6) return null;
  const headerLength = (packet[0] & 0x0f) * 4;
  const totalLength = (packet[2] << 8) | packet[3];
  const source = [...packet.subarray(12, 16)].join(".");
  const destination = [...packet.subarray(16, 20)].join(".");
  return decodeTcp(packet.subarray(headerLength), totalLength - headerLength, {
    time,
    source,
    destination,
  });
}

function decodeIPv6(packet: Uint8Array, time: number): Segment | null {
  if (packet.length < 40 || packet[0] >> 4 !== 6 || packet[6] !== 6) return null;
  const payloadLength = (packet[4] << 8) | packet[5];
  return decodeTcp(packet.subarray(40), payloadLength, {
    time,
    source: formatIPv6(packet.subarray(8, 24)),
    destination: formatIPv6(packet.subarray(24, 40)),
  });
}

function decodeTcp(
  tcp: Uint8Array,
  tcpLength: number,
  ip: { time: number; source: string; destination: string },
): Segment | null {
  if (tcp.length < 14) return null;
  const view = new DataView(tcp.buffer, tcp.byteOffset, tcp.byteLength);
  const dataOffset = (tcp[12] >> 4) * 4;
  return {
    ...ip,
    sourcePort: view.getUint16(0),
    destinationPort: view.getUint16(2),
    seq: view.getUint32(4),
    ack: view.getUint32(8),
    flags: tcp[13],
    length: Math.max(0, tcpLength - dataOffset),
  };
}

// The short form (RFC 5952): lower case, the longest run of zero groups as ::.
function formatIPv6(bytes: Uint8Array): string {
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((bytes[i] << 8) | bytes[i + 1]);
  let best = { start: -1, length: 1 };
  for (let i = 0; i < 8;) {
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > best.length) best = { start: i, length: j - i };
    i = j === i ? i + 1 : j;
  }
  const hex = groups.map((group) => group.toString(16));
  if (best.start < 0) return hex.join(":");
  const head = hex.slice(0, best.start).join(":");
  const tail = hex.slice(best.start + best.length).join(":");
  return `${head}::${tail}`;
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  if (a.length === 0) return b.slice();
  const joined = new Uint8Array(a.length + b.length);
  joined.set(a);
  joined.set(b, a.length);
  return joined;
}

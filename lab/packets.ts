/**
 * # From captured segments to the story of a connection
 *
 * Turns the TCP segments of a capture ({@linkcode Segment}, from `pcap.ts`)
 * into the lines of a timeline: which side sent it, the flags as tcpdump
 * prints them, sequence and acknowledgment numbers relative to the
 * handshake (as in the blog's capture: `ack 1`), and what the segment is.
 *
 * How a keepalive probe is told apart: Linux sends it with a sequence number
 * one below the next one it would use (`snd_una - 1`) and no data, so the
 * receiver must answer with an ACK of what it really expects. Any other
 * empty segment is a plain ACK, or the answer to a probe when one is
 * outstanding from the other side.
 *
 * @module
 */
import type { Packet, PacketFate, PacketKind } from "./result.ts";
import { type Segment, TCP_FLAGS } from "./pcap.ts";

const { FIN, SYN, RST, PSH, ACK, URG } = TCP_FLAGS;

/**
 * Splits a capture into TCP connections (by their endpoints), each in time
 * order, in the order their first SYN was seen. Segments of a connection
 * whose SYN was not captured are left out.
 */
export function splitConnections(segments: readonly Segment[]): Segment[][] {
  const flows = new Map<string, Segment[]>();
  for (const segment of [...segments].sort((a, b) => a.time - b.time)) {
    const key = flowKey(segment);
    const flow = flows.get(key);
    if (flow) flow.push(segment);
    else if (isSyn(segment)) flows.set(key, [segment]);
  }
  return [...flows.values()];
}

/** The endpoint pair of a segment, the same in both directions. */
export function flowKey(segment: Segment): string {
  const a = `${segment.source}|${segment.sourcePort}`;
  const b = `${segment.destination}|${segment.destinationPort}`;
  return a < b ? `${a}|${b}` : `${b}|${a}`;
}

function isSyn(segment: Segment): boolean {
  return (segment.flags & SYN) !== 0 && (segment.flags & ACK) === 0;
}

/** TCP flags the way tcpdump prints them: F S R P, then `.` for ACK, then U. */
export function formatFlags(flags: number): string {
  const letters: [number, string][] = [[FIN, "F"], [SYN, "S"], [RST, "R"], [PSH, "P"], [
    ACK,
    ".",
  ], [URG, "U"]];
  return letters.filter(([bit]) => flags & bit).map(([, letter]) => letter).join("") || "none";
}

/**
 * Tells one connection's segments (in time order, starting with its SYN) as
 * packets: times relative to the SYN, the client being the side that sent
 * it. `fate` says where each segment ended up (all delivered by default).
 */
export function tellConnection(
  flow: readonly Segment[],
  fate: (segment: Segment, from: "client" | "server") => PacketFate = () => "delivered",
): Packet[] {
  const syn = flow.find(isSyn);
  if (!syn) return [];
  const fromClient = (s: Segment) => s.source === syn.source && s.sourcePort === syn.sourcePort;
  const synAck = flow.find((s) => !fromClient(s) && (s.flags & SYN) && (s.flags & ACK));
  const first = { client: syn.seq, server: synAck?.seq ?? 0 };
  const next = { client: 0, server: 0 }; // the next relative sequence number each side would use
  const probing = { client: false, server: false }; // a probe of this side awaits its answer
  let established = false;
  const packets: Packet[] = [];
  for (const segment of flow) {
    if (segment.time < syn.time) continue;
    const from = fromClient(segment) ? "client" : "server";
    const to = from === "client" ? "server" : "client";
    const seq = (segment.seq - first[from]) >>> 0;
    const ack = segment.flags & ACK ? (segment.ack - first[to]) >>> 0 : 0;
    let kind = kindOf(segment, seq, next[from], probing[to]);
    if (kind === "ack" && !established && from === "client" && ack === 1) kind = "handshake";
    if (kind === "handshake" && !(segment.flags & SYN)) established = true;
    if (kind === "probe answered") probing[to] = false;
    probing[from] = kind === "keepalive probe";
    const span = segment.length + (segment.flags & SYN ? 1 : 0) + (segment.flags & FIN ? 1 : 0);
    next[from] = Math.max(next[from], seq + span);
    packets.push({
      seconds: round(segment.time - syn.time),
      from,
      to,
      flags: formatFlags(segment.flags),
      seq,
      ack,
      length: segment.length,
      kind,
      fate: fate(segment, from),
    });
  }
  return packets;
}

function kindOf(
  segment: Segment,
  seq: number,
  next: number,
  otherSideProbing: boolean,
): PacketKind {
  if (segment.flags & RST) return "reset";
  if (segment.flags & SYN) return "handshake";
  // A probe: one below the next sequence number, no data (Linux) or one
  // byte of garbage (some other systems).
  if (next > 0 && seq === next - 1 && segment.length <= 1 && !(segment.flags & FIN)) {
    return "keepalive probe";
  }
  if (segment.flags & FIN) return seq + 1 <= next ? "retransmission" : "close";
  if (segment.length > 0) return seq + segment.length <= next ? "retransmission" : "data";
  return otherSideProbing ? "probe answered" : "ack";
}

function round(seconds: number): number {
  return Math.round(seconds * 1e6) / 1e6;
}

/**
 * Joins what a router saw on its two links into one connection as its ends
 * saw it: each segment once, at the time it entered the router, with the
 * client's addresses, and with its fate: `delivered` if it also left the
 * router on the other link (within half a second), `dropped-at-router` if it
 * never did. `clientSide` is the link to the client, `serverSide` the link to
 * the server (where the router's NAT has rewritten the client's address).
 * The two captures' flows are paired by the client's first sequence number,
 * which NAT leaves alone. `serverSidePort` is the client's port as the
 * server saw it, after NAT (null if the SYN never left the router).
 */
export function joinAtRouter(
  clientSide: readonly Segment[],
  serverSide: readonly Segment[],
): { flow: Segment[]; fates: Map<Segment, PacketFate>; serverSidePort: number | null }[] {
  const serverFlows = splitConnections(serverSide);
  return splitConnections(clientSide).map((flow) => {
    const syn = flow[0];
    const far = serverFlows.find((candidate) => candidate[0].seq === syn.seq) ?? [];
    const natAddress = far[0];
    const fates = new Map<Segment, PacketFate>();
    const unmatched = new Set(far);
    const takeMatch = (segment: Segment, among: Iterable<Segment>) => {
      for (const other of among) {
        if (
          other.seq === segment.seq && other.ack === segment.ack &&
          other.flags === segment.flags && other.length === segment.length &&
          other.time >= segment.time - 0.001 && other.time <= segment.time + 0.5
        ) return other;
      }
      return null;
    };
    const joined: Segment[] = [];
    const fromClient = (s: Segment) => s.source === syn.source && s.sourcePort === syn.sourcePort;
    const seenOnClientSide = new Set(flow.filter((s) => !fromClient(s)));
    for (const segment of flow.filter(fromClient)) {
      const match = takeMatch(segment, unmatched);
      if (match) unmatched.delete(match);
      fates.set(segment, match ? "delivered" : "dropped-at-router");
      joined.push(segment);
    }
    for (const segment of far) {
      if (!natAddress || segment.source === natAddress.source) continue; // the client's, counted above
      const asClientSaw: Segment = {
        ...segment,
        destination: syn.source,
        destinationPort: syn.sourcePort,
      };
      const match = takeMatch(segment, seenOnClientSide);
      if (match) seenOnClientSide.delete(match);
      fates.set(asClientSaw, match ? "delivered" : "dropped-at-router");
      joined.push(asClientSaw);
    }
    joined.sort((a, b) => a.time - b.time);
    return { flow: joined, fates, serverSidePort: natAddress?.sourcePort ?? null };
  });
}

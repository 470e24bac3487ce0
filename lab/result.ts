/**
 * # What a lab run found
 *
 * The shape of `lab.ts --json`, and what the timeline, the verdict table and
 * the SVG diagram are drawn from. Every number in it was measured in the
 * run; the names say what they hold and in which unit.
 *
 * @module
 */

/** A lane in the diagram: a machine (a network namespace) of the lab. */
export type Host = "client" | "router" | "server";

/** What a captured TCP segment is, in the words of the timeline. */
export type PacketKind =
  | "handshake"
  | "keepalive probe"
  | "probe answered"
  | "data"
  | "ack"
  | "retransmission"
  | "close"
  | "reset";

/** Where a packet ended up. */
export type PacketFate =
  /** It reached the other end. */
  | "delivered"
  /** The router had forgotten the flow and dropped it (seen going in, never coming out). */
  | "dropped-at-router"
  /** It went into a cable whose far end was cut: nobody received it. */
  | "lost";

/** One TCP segment of the scenario's connection, as the capture saw it. */
export interface Packet {
  /** Seconds since the connection's first SYN. */
  seconds: number;
  /** Who sent it. */
  from: "client" | "server";
  /** Who it was for. */
  to: "client" | "server";
  /** TCP flags the way tcpdump prints them: `S`, `S.`, `.`, `P.`, `F.`, `R`, `R.`. */
  flags: string;
  /** Sequence number relative to the sender's first (the SYN is 0), as tcpdump shows it. */
  seq: number;
  /** Acknowledgment number relative to the receiver's first; 0 when the ACK flag is off. */
  ack: number;
  /** TCP payload bytes. */
  length: number;
  /** What the segment is. */
  kind: PacketKind;
  /** Where it ended up. */
  fate: PacketFate;
}

/** Something that happened besides packets: a cut cable, an event a script printed. */
export interface Moment {
  /** Seconds since the connection's first SYN. */
  seconds: number;
  /** Where it happened. */
  host: Host;
  /** What happened, in a few words ("cable cut", "timed out (ETIMEDOUT)"). */
  text: string;
}

/** The router's connection-tracking entry for the flow, sampled while it ran. */
export interface ConntrackTrace {
  /** When the entry existed: from when it was first seen to when it was last seen, in seconds since the SYN. */
  present: { fromSeconds: number; toSeconds: number }[];
  /** The entry's countdown (seconds left before the router forgets the flow), sampled. */
  samples: { seconds: number; remainingSeconds: number }[];
  /** When the entry was first missed after it had existed, or null if it never went. */
  forgottenAtSeconds: number | null;
}

/** One line of the verdict table. */
export interface Check {
  /** What is compared ("probe cadence"). */
  name: string;
  /** What the settings predict, in words with units. */
  expected: string;
  /** What this run measured, in words with units. */
  observed: string;
  /** Whether the observed value is within the expected one's tolerance. */
  passed: boolean;
}

/** Values, keyed by what they hold with their unit (`cadenceSeconds`, `lineEchoed`). */
export type Values = Record<string, number | string | boolean | null>;

/** One scenario, or one variant of the nat scenario (each on its own connection). */
export interface ScenarioResult {
  /** `blog`, `dead-peer`, `nat-no-keepalive`, `nat-user-timeout`, `nat-idle-below`, `nat-idle-above`. */
  name: string;
  /** One line saying what it shows. */
  title: string;
  /** The lanes of its diagram, left to right. */
  hosts: Host[];
  /** What the scenario was run with. */
  settings: Values;
  /** What the settings predict. */
  expected: Values;
  /** What this run measured. */
  observed: Values;
  /** Expected against observed, one line of the verdict table each. */
  checks: Check[];
  /** Whether every check passed. */
  passed: boolean;
  /** Every captured segment of the connection, in time order. */
  packets: Packet[];
  /** What the scripts reported and what the lab did, in time order. */
  moments: Moment[];
  /** The router's entry for this flow (nat only); null elsewhere. */
  conntrack: ConntrackTrace | null;
  /** Seconds from the SYN to the end of the observation. */
  durationSeconds: number;
}

/** A whole run. */
export interface LabResult {
  /** Each scenario (each nat variant), in the order they ran. */
  scenarios: ScenarioResult[];
  /** Things the reader should know: a missing package and what the lab did instead. */
  notes: string[];
  /** Whether every scenario passed. */
  passed: boolean;
}

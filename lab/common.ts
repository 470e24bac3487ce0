/**
 * # What every lab scenario shares
 *
 * The context a scenario runs in, and small helpers to turn measurements
 * into the verdict table's lines and the diagram's moments.
 *
 * @module
 */
import type { Check, Host, Moment, Packet, PacketKind } from "./result.ts";
import { eventTime, type ScriptEvent, type ScriptPlace, type ScriptRun } from "./scripts.ts";

/** What a scenario needs from the lab. */
export interface LabContext {
  /** Where the kit's scripts are and the deno that runs them. */
  place: ScriptPlace;
  /** Tells the user what is happening now (one short line). */
  progress(text: string): void;
  /** Whether tcpdump is there; without it, scenarios fall back to kernel counters. */
  capture: boolean;
}

/** A line of the verdict table. */
export function check(name: string, expected: string, observed: string, passed: boolean): Check {
  return { name, expected, observed, passed };
}

/** Seconds with two decimals and the unit. */
export function seconds(value: number | null): string {
  return value === null ? "never" : `${value.toFixed(2)} s`;
}

/**
 * How late a kernel timer of `seconds` may fire: the timer wheel rounds a
 * timeout up to the granularity of the level it lands in, at most 1/8 of it
 * (a 17 s timer fired at 18.87 s here), plus a little for scheduling. A
 * chain of timers (idle, then each probe) adds up, so a detection is
 * allowed the slack of its whole length.
 */
export function timerSlack(seconds: number): number {
  return seconds / 8 + 0.1;
}

/**
 * Whether a measured time is what a chain of kernel timers adding up to
 * `expected` gives: not earlier than 10% (or `early` s) before it, not later
 * than its {@linkcode timerSlack} plus `late` after it.
 */
export function onTime(value: number | null, expected: number, late = 0, early = 0): boolean {
  return value !== null && value >= expected - Math.max(expected * 0.1, early) &&
    value <= expected + timerSlack(expected) + late;
}

/** Waits `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.max(0, ms)));
}

/** Rounds to milliseconds, for the JSON. */
export function ms(value: number): number {
  return Math.round(value * 1000) / 1000;
}

/** The packets of one kind sent by one side. */
export function packetsOf(
  packets: Packet[],
  kind: PacketKind,
  from?: "client" | "server",
): Packet[] {
  return packets.filter((p) => p.kind === kind && (from === undefined || p.from === from));
}

/** The median of the gaps between successive times, or null with fewer than two. */
export function medianGap(times: number[]): number | null {
  if (times.length < 2) return null;
  const gaps = times.slice(1).map((t, i) => t - times[i]).sort((a, b) => a - b);
  const middle = Math.floor(gaps.length / 2);
  return gaps.length % 2 ? gaps[middle] : (gaps[middle - 1] + gaps[middle]) / 2;
}

/**
 * A script's events as moments of the diagram, times relative to `start`
 * (seconds since the epoch); `describe` words an event, or returns null to
 * leave it out. The scripts stamp their events to the millisecond, and
 * after the fact (a line is reported sent once the write returned): each is
 * placed in the middle of its millisecond, so that it does not come before
 * a packet of the same millisecond that caused it.
 */
export function momentsOf(
  run: ScriptRun,
  host: Host,
  start: number,
  describe: (event: ScriptRun["events"][number]) => string | null,
): Moment[] {
  const moments: Moment[] = [];
  for (const event of run.events) {
    const text = describe(event);
    if (text !== null) {
      moments.push({
        seconds: Math.round((eventTime(event) + 0.0005 - start) * 1e4) / 1e4,
        host,
        text,
      });
    }
  }
  return moments;
}

/** How server.ts and client.ts events read in the diagram. */
export function describeScriptEvent(event: ScriptRun["events"][number]): string | null {
  switch (event.event) {
    case "accepted":
      return "accepted";
    case "connected":
      return "connected";
    case "sent":
      return `sends a line (${event.bytes} bytes)`;
    case "received":
      return `echo received (${event.bytes} bytes)`;
    case "echoed":
      return `echoes ${event.bytes} bytes`;
    case "timed-out":
      return `timed out (${event.code})`;
    case "peer-closed":
    case "server-closed":
      return "closed by peer";
    case "reset":
      return "reset";
    default:
      return null;
  }
}

/**
 * Without a capture, the zero of a scenario's clock: the earlier of the
 * server's `accepted` and the client's `connected` (seconds since the epoch).
 */
export function firstReport(server: ScriptRun, connected: ScriptEvent): number {
  const accepted = server.events.find((event) => event.event === "accepted");
  return Math.min(eventTime(connected), accepted ? eventTime(accepted) : Infinity);
}

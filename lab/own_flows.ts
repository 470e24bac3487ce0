/**
 * # What the router saw of each flow, from samples of its tables
 *
 * `lab own` reads the router's connection-tracking table and its drop
 * counters about twice a second while the user's commands run, and hands
 * each sample to a {@linkcode FlowTracker}. The tracker turns the samples
 * into one story per flow: when it was first seen, when it was last active,
 * whether the router forgot it (and after how long idle), and how many of
 * its packets the router dropped after that.
 *
 * How each is read from the table:
 *
 * - **last active**: an established entry's countdown starts again at the
 *   router's timeout with every packet, so `now - (timeout - left)` is when
 *   the flow last carried a packet (to about half a second with samples
 *   every half second: the kernel shows whole seconds). In the other states (a handshake, a close) a changed state or
 *   a countdown that went up means a packet came since the last sample.
 * - **forgotten**: an entry last seen ESTABLISHED that is gone from the next
 *   sample. Listing the table removes expired entries, so it is gone from
 *   the first sample after its countdown ran out. An entry that goes after
 *   a close (TIME_WAIT, CLOSE...) is `closed`: that is no forgetting.
 * - **dropped**: the router counts the packets it drops as invalid (those
 *   of a flow it no longer knows) per port: the client's source port for
 *   packets from the client, the port the router gave the flow for packets
 *   from the server (masquerading keeps the client's port when it can).
 *
 * @module
 */
import type { ConntrackEntry } from "./router.ts";

/** One flow through the router, as the samples showed it. Times are seconds on the run's clock. */
export interface FlowReport {
  /** The client's end, `address:port`. */
  client: string;
  /** The server's end, `address:port`. */
  server: string;
  /**
   * When it was first seen: the first sample that showed it, or earlier
   * when its countdown said it had carried a packet before that.
   */
  firstSeenSeconds: number;
  /** When it last carried a packet, as far as the samples tell (to about a second). */
  lastActiveSeconds: number;
  /** Its last state in the table (ESTABLISHED, TIME_WAIT...). */
  lastState: string;
  /**
   * The lowest countdown seen while it was established, in whole seconds:
   * how close the router came to forgetting it (null if never seen established).
   */
  lowestRemainingSeconds: number | null;
  /**
   * How it ended: `forgotten` (gone from the table while established: the
   * router's timeout ran out), `closed` (gone after a close), `tracked`
   * (still in the table when the lab stopped looking).
   */
  end: "forgotten" | "closed" | "tracked";
  /** When a sample first showed it gone; null while it is there. */
  goneSeconds: number | null;
  /** For a forgotten flow: how long it had been idle when it was seen gone. */
  idleSeconds: number | null;
  /** Packets from the client that the router dropped as belonging to no flow it knew, after. */
  droppedFromClient: number;
  /** The same from the server's side. */
  droppedFromServer: number;
}

/** Packets dropped as invalid so far, per port: what the router's counters held at a sample. */
export interface DropSample {
  /** Packets from the client, by the client's source port. */
  fromClient: Map<number, number>;
  /** Packets from the server, by the router's port for the flow. */
  fromServer: Map<number, number>;
}

/** Something that changed between two samples: for the progress lines. */
export interface FlowEvent {
  /** `new`: first seen; `forgotten`, `closed`: gone; `dropped`: its first dropped packet. */
  kind: "new" | "forgotten" | "closed" | "dropped";
  /** The flow, as it stands after the sample. */
  flow: FlowReport;
}

/** Made by {@linkcode createFlowTracker}. */
export interface FlowTracker {
  /** Takes one sample taken at `seconds`; returns what changed. */
  observe(seconds: number, entries: ConntrackEntry[], drops: DropSample): FlowEvent[];
  /** Every flow so far (at most the tracker's limit), in the order they were seen. */
  flows(): FlowReport[];
  /** Flows past the limit, counted but not followed. */
  flowsLeftOut(): number;
  /** Dropped packets whose port belonged to no flow seen. */
  unattributedDrops(): number;
}

interface Followed {
  report: FlowReport;
  sourcePort: number;
  state: string;
  remainingSeconds: number;
}

// What a tracker holds between samples.
interface TrackerState {
  timeoutSeconds: number;
  maxFlows: number;
  notBeforeSeconds: number;
  /** The flows in the table at the last sample, by key. */
  followed: Map<string, Followed>;
  /** Every flow followed, in the order seen. */
  all: Followed[];
  /** Keys of the flows past the limit, each counted once. */
  leftOut: Set<string>;
  /** The counters at the last sample, per port. */
  dropTotals: DropSample;
  unattributed: number;
}

/**
 * A tracker for a router that forgets established flows after
 * `timeoutSeconds`; it follows at most `maxFlows` flows (a program that
 * opens thousands is counted, not listed). No flow is said to be first seen
 * before `notBeforeSeconds` (when the client started).
 *
 * @example
 * ```ts
 * import { createFlowTracker } from "./own_flows.ts";
 * const tracker = createFlowTracker(5);
 * const entry = {
 *   source: "10.231.1.2", sourcePort: 40000, destination: "10.231.2.2", destinationPort: 8080,
 *   state: "ESTABLISHED", remainingSeconds: 5,
 * };
 * const none = { fromClient: new Map(), fromServer: new Map() };
 * tracker.observe(1, [entry], none); // [{ kind: "new", ... }]
 * tracker.observe(7, [], none); // [{ kind: "forgotten", flow: { idleSeconds: 6, ... } }]
 * ```
 */
export function createFlowTracker(
  timeoutSeconds: number,
  maxFlows = 100,
  notBeforeSeconds = -Infinity,
): FlowTracker {
  const state: TrackerState = {
    timeoutSeconds,
    maxFlows,
    notBeforeSeconds,
    followed: new Map(),
    all: [],
    leftOut: new Set(),
    dropTotals: { fromClient: new Map(), fromServer: new Map() },
    unattributed: 0,
  };
  return {
    observe(seconds, entries, drops) {
      const events: FlowEvent[] = [];
      observeEntries(state, seconds, entries, events);
      observeDrops(state, drops, events);
      return events;
    },
    flows: () => state.all.map((flow) => ({ ...flow.report })),
    flowsLeftOut: () => state.leftOut.size,
    unattributedDrops: () => state.unattributed,
  };
}

// When the entry says the flow last carried a packet.
function activeAt(
  state: TrackerState,
  seconds: number,
  entry: ConntrackEntry,
  before: Followed | undefined,
): number {
  if (entry.state === "ESTABLISHED") {
    // The kernel shows the countdown in whole seconds, rounded down: a
    // shown `left` means between left and left + 1 s, so the packet came
    // no earlier than this. Of the samples of one idle stretch the latest
    // such bound is the closest (the caller keeps the greatest).
    return Math.min(seconds, seconds - state.timeoutSeconds + entry.remainingSeconds);
  }
  const changed = !before || before.state !== entry.state ||
    entry.remainingSeconds > before.remainingSeconds;
  return changed ? seconds : before.report.lastActiveSeconds;
}

// Entries new since the last sample, entries still there, entries gone.
function observeEntries(
  state: TrackerState,
  seconds: number,
  entries: ConntrackEntry[],
  events: FlowEvent[],
) {
  const present = new Set<string>();
  for (const entry of entries) {
    const key = `${entry.source}:${entry.sourcePort}>${entry.destination}:${entry.destinationPort}`;
    present.add(key);
    const before = state.followed.get(key);
    if (before) {
      before.report.lastActiveSeconds = Math.max(
        before.report.lastActiveSeconds,
        activeAt(state, seconds, entry, before),
      );
      noteCountdown(before.report, entry);
      before.state = entry.state;
      before.remainingSeconds = entry.remainingSeconds;
      before.report.lastState = entry.state;
    } else if (state.all.length >= state.maxFlows) {
      state.leftOut.add(key);
    } else {
      const flow = newFlow(state, seconds, entry);
      state.followed.set(key, flow);
      state.all.push(flow);
      events.push({ kind: "new", flow: flow.report });
    }
  }
  for (const [key, flow] of state.followed) {
    if (present.has(key)) continue;
    state.followed.delete(key);
    const report = flow.report;
    report.goneSeconds = seconds;
    if (flow.state === "ESTABLISHED") {
      report.end = "forgotten";
      report.idleSeconds = round(seconds - report.lastActiveSeconds);
    } else {
      report.end = "closed";
    }
    events.push({ kind: report.end as "forgotten" | "closed", flow: report });
  }
}

function newFlow(state: TrackerState, seconds: number, entry: ConntrackEntry): Followed {
  const activeSeconds = activeAt(state, seconds, entry, undefined);
  const firstSeenSeconds = Math.max(state.notBeforeSeconds, Math.min(seconds, activeSeconds));
  // Never active before it was first seen: the countdown's whole seconds
  // can put the inferred packet before the lab could have seen the flow.
  const lastActiveSeconds = Math.max(firstSeenSeconds, activeSeconds);
  const report: FlowReport = {
    client: joinHostPort(entry.source, entry.sourcePort),
    server: joinHostPort(entry.destination, entry.destinationPort),
    firstSeenSeconds,
    lastActiveSeconds,
    lastState: entry.state,
    lowestRemainingSeconds: null,
    end: "tracked",
    goneSeconds: null,
    idleSeconds: null,
    droppedFromClient: 0,
    droppedFromServer: 0,
  };
  noteCountdown(report, entry);
  return {
    report,
    sourcePort: entry.sourcePort,
    state: entry.state,
    remainingSeconds: entry.remainingSeconds,
  };
}

// New drops on a port go to the latest flow with that port that the router
// no longer has (its packets are the invalid ones); else to the latest flow
// with that port at all.
function observeDrops(state: TrackerState, drops: DropSample, events: FlowEvent[]) {
  for (const side of ["fromClient", "fromServer"] as const) {
    for (const [port, total] of drops[side]) {
      const added = total - (state.dropTotals[side].get(port) ?? 0);
      state.dropTotals[side].set(port, total);
      if (added <= 0) continue;
      const candidates = state.all.filter((flow) => flow.sourcePort === port);
      const flow = candidates.findLast((f) => f.report.end !== "tracked") ?? candidates.at(-1);
      if (!flow) {
        state.unattributed += added;
        continue;
      }
      const report = flow.report;
      const first = report.droppedFromClient + report.droppedFromServer === 0;
      if (side === "fromClient") report.droppedFromClient += added;
      else report.droppedFromServer += added;
      if (first) events.push({ kind: "dropped", flow: report });
    }
  }
}

function noteCountdown(report: FlowReport, entry: ConntrackEntry) {
  if (entry.state !== "ESTABLISHED") return;
  report.lowestRemainingSeconds = Math.min(
    report.lowestRemainingSeconds ?? Infinity,
    entry.remainingSeconds,
  );
}

/** `address:port`, with brackets around an IPv6 address. */
export function joinHostPort(address: string, port: number): string {
  return address.includes(":") ? `[${address}]:${port}` : `${address}:${port}`;
}

function round(seconds: number): number {
  return Math.round(seconds * 100) / 100;
}

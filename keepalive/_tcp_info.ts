/**
 * # `TCP_INFO`: reading it, and telling keepalive probes apart in it
 *
 * A connection's `struct tcp_info` (include/uapi/linux/tcp.h) counts the
 * segments in and out, the probes unanswered, and how long ago the peer last
 * sent an ACK or data. Two looks at it, some time apart, say which keepalive
 * probes went out between them and whether they were answered:
 * {@linkcode probesBetween}, shared by both watchers (one connection read
 * with `getsockopt`, every connection of a port read with one netlink dump).
 *
 * @module
 */

import { lastErrno, libc } from "./_libc.ts";
import { IPPROTO_TCP, TCP_ESTABLISHED, TCP_INFO } from "./_linux.ts";
import { SyscallError } from "./options.ts";
import type { DiagEntry } from "./sock_diag.ts";

/**
 * Live keepalive state of a connection, from `TCP_INFO`.
 *
 * @example
 * ```ts
 * import { getKeepAliveState, type KeepAliveState } from "@kakit/keepalive";
 *
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 8888 });
 * const state: KeepAliveState = getKeepAliveState(conn);
 * if (state.unansweredProbes > 0) console.log(`silent for ${state.sinceLastAckMs} ms`);
 * ```
 */
export interface KeepAliveState {
  /** Whether the connection is established (not closing or closed). */
  established: boolean;
  /** Keepalive probes sent since the peer last answered (`tcpi_probes`). */
  unansweredProbes: number;
  /** Segments sent and not yet acknowledged (`tcpi_unacked`); keepalive waits for 0. */
  unackedSegments: number;
  /** Bytes written but not yet sent (`tcpi_notsent_bytes`); keepalive waits for 0. */
  notSentBytes: number;
  /** Milliseconds since the peer's last ACK, a probe's answer included (`tcpi_last_ack_recv`). */
  sinceLastAckMs: number;
  /** Milliseconds since the peer last sent data (`tcpi_last_data_recv`). */
  sinceLastDataMs: number;
  /** Segments sent on the connection, probes included (`tcpi_segs_out`). */
  segmentsOut: number;
  /** Segments sent that carried data (`tcpi_data_segs_out`). */
  dataSegmentsOut: number;
  /** Segments received (`tcpi_segs_in`). */
  segmentsIn: number;
  /** Segments received that carried data (`tcpi_data_segs_in`). */
  dataSegmentsIn: number;
}

/**
 * When a {@linkcode ProbeEvent} happened. A watcher only looks now and then
 * (every `pollMs`), so the moment `onEvent` is called is not the moment the
 * probe went out: stamp an event with `Date.now() - event.agoMs`, taken in
 * `onEvent`, not with the time of the call.
 *
 * How it is known (`agoFrom`), by kind:
 *
 * - `answered` and `late-answer`: the answer's arrival, from the kernel's
 *   clock (`tcpi_last_ack_recv`, to a few ms): `"kernel"`. The probe itself
 *   left one round trip earlier.
 * - `unanswered`: with `watchKeepAliveAll` given the interval (as
 *   `getKeepAlive` returns it), from the keepalive timer the kernel re-armed,
 *   `interval` ahead, when it sent the probe: `"kernel"`. Otherwise from the
 *   silence so far and the socket's idle time and interval (probe N leaves
 *   after `time + (N - 1) * interval` of silence, or a little later: the
 *   kernel's timers fire up to an eighth late): `"estimate"`, and the probe
 *   is at most `agoMs` old. Without the idle time and interval: `"seen"`.
 * - `peer-probe`: nothing in `tcp_info` records when the peer's probe came:
 *   `"seen"`.
 *
 * `"seen"` means `agoMs` is 0: the event happened at some moment of the
 * `windowMs` before the look, and all that is known is when it was seen.
 *
 * @example
 * ```ts
 * import { type ProbeTiming, watchKeepAlive } from "@kakit/keepalive";
 *
 * const stamp = (timing: ProbeTiming) => new Date(Date.now() - timing.agoMs).toISOString();
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 8888 });
 * watchKeepAlive(conn, (event) => console.log(stamp(event), event.kind, event.agoFrom));
 * ```
 */
export interface ProbeTiming {
  /**
   * How long before `onEvent` was called the event happened, in ms (whole,
   * from 0 to `windowMs`): what `agoFrom` says.
   */
  agoMs: number;
  /** How `agoMs` is known: `"kernel"` (measured), `"estimate"` (an upper bound), `"seen"` (0: unknown). */
  agoFrom: "kernel" | "estimate" | "seen";
  /**
   * The time since the watcher's previous look at the connection, in ms:
   * the event happened within it, whatever `agoFrom` says.
   */
  windowMs: number;
}

/**
 * What `watchKeepAlive` saw happen on a connection, and when
 * ({@linkcode ProbeTiming}).
 *
 * @example
 * ```ts
 * import { type ProbeEvent, watchKeepAlive } from "@kakit/keepalive";
 *
 * const onEvent = (event: ProbeEvent) => {
 *   if (event.kind === "unanswered") console.log(`probe ${event.probe} of ${event.of ?? "?"}`);
 * };
 * const conn = await Deno.connect({ hostname: "127.0.0.1", port: 8888 });
 * watchKeepAlive(conn, onEvent);
 * ```
 */
export type ProbeEvent =
  & ProbeTiming
  & (
    | {
      /** This side's kernel sent a keepalive probe and the peer answered it. */
      kind: "answered";
      /** How long the connection had been silent when the probe went out, in ms. */
      idleMs: number;
    }
    | {
      /** This side's kernel sent a keepalive probe that is still unanswered. */
      kind: "unanswered";
      /** Which unanswered probe this is, from 1. */
      probe: number;
      /**
       * How many unanswered probes end the connection (`TCP_KEEPCNT`), or null
       * when a user timeout decides instead (then see `userTimeoutMs`).
       */
      of: number | null;
      /** `TCP_USER_TIMEOUT` in ms: the silence after which the connection fails; 0 when unset. */
      userTimeoutMs: number;
    }
    | {
      /** The peer answered at last, after probes already reported as unanswered. */
      kind: "late-answer";
      /** How many probes were unanswered until then. */
      unanswered: number;
    }
    | {
      /** The peer sent a keepalive probe and this side's kernel answered it. */
      kind: "peer-probe";
    }
  );

/**
 * What a watcher knows of a connection's keepalive, asked for only when a
 * probe went unanswered: the limits, and for the probe's time, the idle
 * time and interval (ms) and the kernel's pending keepalive timer (ms
 * left), each when known.
 */
export interface ProbeClock {
  /** `TCP_KEEPCNT`. */
  retries: number;
  /** `TCP_USER_TIMEOUT`, in ms. */
  userTimeout: number;
  /** `TCP_KEEPIDLE`, in ms, when known. */
  time?: number;
  /** `TCP_KEEPINTVL`, in ms, when known. */
  interval?: number;
  /** The ms left on the kernel's keepalive timer, or null when not known. */
  keepaliveTimerMs: number | null;
}

/** A connection's `TCP_INFO`, read with `getsockopt` from its descriptor. */
export function readTcpInfo(fd: number): KeepAliveState {
  const info = new Uint8Array(232);
  const length = new Uint32Array([info.length]);
  if (libc().getsockopt(fd, IPPROTO_TCP, TCP_INFO, info, length) !== 0) {
    throw new SyscallError("getsockopt TCP_INFO", lastErrno());
  }
  // Offsets of struct tcp_info in include/uapi/linux/tcp.h.
  const view = new DataView(info.buffer);
  const u32 = (offset: number) => view.getUint32(offset, true);
  return {
    established: view.getUint8(0) === TCP_ESTABLISHED,
    unansweredProbes: view.getUint8(3),
    unackedSegments: u32(24),
    sinceLastDataMs: u32(52),
    sinceLastAckMs: u32(56),
    segmentsOut: u32(136),
    segmentsIn: u32(140),
    notSentBytes: u32(144),
    dataSegmentsIn: u32(152),
    dataSegmentsOut: u32(156),
  };
}

/**
 * The fields of {@linkcode KeepAliveState} from a dumped `struct tcp_info`
 * (the same offsets as {@linkcode readTcpInfo}'s), into `state`; false when
 * the kernel sent too short a one.
 */
export function readTcpInfoInto(entry: DiagEntry, state: KeepAliveState): boolean {
  const dataSegmentsOut = entry.tcpInfoU32(156);
  if (dataSegmentsOut === undefined) return false;
  state.established = entry.tcpInfoU8(0) === TCP_ESTABLISHED;
  state.unansweredProbes = entry.tcpInfoU8(3)!;
  state.unackedSegments = entry.tcpInfoU32(24)!;
  state.sinceLastDataMs = entry.tcpInfoU32(52)!;
  state.sinceLastAckMs = entry.tcpInfoU32(56)!;
  state.segmentsOut = entry.tcpInfoU32(136)!;
  state.segmentsIn = entry.tcpInfoU32(140)!;
  state.notSentBytes = entry.tcpInfoU32(144)!;
  state.dataSegmentsIn = entry.tcpInfoU32(152)!;
  state.dataSegmentsOut = dataSegmentsOut;
  return true;
}

/** A {@linkcode KeepAliveState} of zeros, to be filled by {@linkcode readTcpInfoInto}. */
export function emptyState(): KeepAliveState {
  return {
    established: false,
    unansweredProbes: 0,
    unackedSegments: 0,
    sinceLastDataMs: 0,
    sinceLastAckMs: 0,
    segmentsOut: 0,
    segmentsIn: 0,
    notSentBytes: 0,
    dataSegmentsIn: 0,
    dataSegmentsOut: 0,
  };
}

/**
 * What happened between two looks at one connection's `TCP_INFO`,
 * `elapsedMs` apart: the probes it sent (answered or not) and the peer's
 * probes it answered, each with when it happened ({@linkcode ProbeTiming}).
 * `clock` is asked only when a probe went unanswered.
 */
export function probesBetween(
  previous: KeepAliveState,
  current: KeepAliveState,
  elapsedMs: number,
  clock: () => ProbeClock,
  onEvent: (event: ProbeEvent) => void,
): void {
  // Keepalive only probes an established connection with nothing in
  // flight and nothing waiting to be sent. A look in which data moved,
  // or the connection began to close (a FIN carries no data either), or
  // data waits (a zero-window probe looks like a keepalive probe) has no
  // keepalive probes to report.
  const quiet = current.established && previous.established &&
    current.unackedSegments === 0 && current.notSentBytes === 0 &&
    current.dataSegmentsIn === previous.dataSegmentsIn &&
    current.dataSegmentsOut === previous.dataSegmentsOut;
  const sent = current.segmentsOut - previous.segmentsOut;
  const received = current.segmentsIn - previous.segmentsIn;
  if (!quiet || (sent <= 0 && received <= 0)) return;
  // The answer to our probe is an ACK the kernel accepts, so it restarts
  // tcpi_last_ack_recv, after at least a second of silence. The peer's
  // own probe does not: it repeats an old byte, and the kernel only
  // answers it. (The clock counts in kernel ticks, up to 10 ms.)
  const silentMs = previous.sinceLastAckMs + elapsedMs;
  const answer = received > 0 && current.sinceLastAckMs + 500 < silentMs;
  const peerProbes = answer ? received - 1 : received;
  const ourProbes = sent - peerProbes;
  const at = timingWithin(elapsedMs);
  if (answer && ourProbes > 0) {
    onEvent({
      kind: "answered",
      idleMs: Math.round(silentMs - current.sinceLastAckMs),
      ...at(current.sinceLastAckMs, "kernel"),
    });
  } else if (answer && previous.unansweredProbes > 0) {
    onEvent({
      kind: "late-answer",
      unanswered: previous.unansweredProbes,
      ...at(current.sinceLastAckMs, "kernel"),
    });
  } else if (current.unansweredProbes > previous.unansweredProbes) {
    unansweredBetween(previous, current, clock(), at, onEvent);
  }
  // Nothing in tcp_info moves when the peer's probe comes: only seen.
  for (let i = 0; i < peerProbes; i++) onEvent({ kind: "peer-probe", ...at(0, "seen") });
}

// A ProbeTiming for an event `agoMs` before a look `elapsedMs` after the
// previous one: it happened after that look, so never longer ago.
function timingWithin(
  elapsedMs: number,
): (agoMs: number, agoFrom: ProbeTiming["agoFrom"]) => ProbeTiming {
  const windowMs = Math.max(0, Math.round(elapsedMs));
  return (agoMs, agoFrom) => ({
    agoMs: Math.min(Math.max(0, Math.round(agoMs)), windowMs),
    agoFrom,
    windowMs,
  });
}

// The probes sent since the last look and still unanswered, each with its
// best known time (ProbeTiming explains the three ways).
function unansweredBetween(
  previous: KeepAliveState,
  current: KeepAliveState,
  clock: ProbeClock,
  at: ReturnType<typeof timingWithin>,
  onEvent: (event: ProbeEvent) => void,
): void {
  const { retries, userTimeout, time, interval, keepaliveTimerMs } = clock;
  const latest = current.unansweredProbes;
  // The silence keepalive counts (tcp_timer.c, keepalive_time_elapsed):
  // since the peer's last ACK or last data, whichever came later.
  const silentMs = Math.min(current.sinceLastAckMs, current.sinceLastDataMs);
  const known = (ms: number | undefined): ms is number => ms !== undefined && ms > 0;
  for (let probe = previous.unansweredProbes + 1; probe <= latest; probe++) {
    // After each probe the kernel re-arms the timer `interval` ahead.
    const timing = known(interval) && keepaliveTimerMs !== null
      ? at(interval - keepaliveTimerMs + (latest - probe) * interval, "kernel")
      : known(time) && known(interval)
      ? at(silentMs - time - (probe - 1) * interval, "estimate")
      : at(0, "seen");
    onEvent({
      kind: "unanswered",
      probe,
      // With a user timeout the kernel ignores the probe count (tcp(7)).
      of: userTimeout > 0 ? null : retries,
      userTimeoutMs: userTimeout,
      ...timing,
    });
  }
}

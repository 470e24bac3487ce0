/**
 * # The lab's results as text
 *
 * A timeline per scenario in the spirit of the blog's tcpdump capture, one
 * line per packet (and a line for each thing that happened meanwhile), and a
 * verdict table at the end.
 *
 * @module
 */
import type { LabResult, Packet, ScenarioResult } from "./result.ts";

/** The timeline of one scenario, as lines. */
export function formatTimeline(scenario: ScenarioResult): string[] {
  const lines = [
    `== ${scenario.name}: ${scenario.title}`,
    `   time  from -> to        flags   seq   ack  len  what`,
  ];
  const rows: { seconds: number; text: string }[] = [
    ...scenario.packets.map((packet) => ({ seconds: packet.seconds, text: packetLine(packet) })),
    ...scenario.moments.map((moment) => ({
      seconds: moment.seconds,
      text: `${time(moment.seconds)}  (${moment.host}: ${moment.text})`,
    })),
  ];
  if (scenario.conntrack?.forgottenAtSeconds != null) {
    const at = scenario.conntrack.forgottenAtSeconds;
    rows.push({ seconds: at, text: `${time(at)}  (router: forgets the flow)` });
  }
  rows.sort((a, b) => a.seconds - b.seconds); // stable: a packet before a moment of the same time
  if (scenario.packets.length === 0) lines.push("   (no capture: tcpdump is not installed)");
  lines.push(...rows.map((row) => row.text));
  if (scenario.conntrack) lines.push(`   router's entry: ${describeConntrack(scenario)}`);
  return lines;
}

function packetLine(packet: Packet): string {
  const where = packet.fate === "dropped-at-router"
    ? `${packet.from} -> router`
    : `${packet.from} -> ${packet.to}`;
  const fate = packet.fate === "dropped-at-router"
    ? ", DROPPED at the router"
    : packet.fate === "lost"
    ? ", lost (nobody at the other end)"
    : "";
  const ack = packet.flags.includes(".") ? String(packet.ack) : "-";
  return `${time(packet.seconds)}  ${where.padEnd(16)}  ${`[${packet.flags}]`.padEnd(6)} ${
    String(packet.seq).padStart(5)
  } ${ack.padStart(5)} ${String(packet.length).padStart(4)}  ${packet.kind}${fate}`;
}

function time(seconds: number): string {
  return seconds.toFixed(3).padStart(7);
}

function describeConntrack(scenario: ScenarioResult): string {
  const trace = scenario.conntrack!;
  if (trace.samples.length === 0) return "never seen";
  const lowest = Math.min(...trace.samples.map((s) => s.remainingSeconds));
  const refreshes =
    trace.samples.filter((s, i) =>
      i > 0 && s.remainingSeconds > trace.samples[i - 1].remainingSeconds
    ).length;
  const end = trace.forgottenAtSeconds === null
    ? "still there when the lab stopped"
    : `forgotten at ${trace.forgottenAtSeconds.toFixed(2)} s`;
  return `countdown went as low as ${lowest} s, refreshed ${refreshes} times; ${end}`;
}

/**
 * The verdict table, as lines: a heading per scenario, then one line per
 * check. Times are checked with a tolerance: within 10% for a cadence, up to
 * 1.5 s late for a detection or a failure.
 */
export function formatVerdict(result: LabResult): string[] {
  const checks = result.scenarios.flatMap((scenario) => scenario.checks);
  const rows = result.scenarios.flatMap((scenario) => [
    [scenario.name],
    ...scenario.checks.map((
      c,
    ) => [`  ${c.name}`, c.expected, c.observed, c.passed ? "pass" : "FAIL"]),
  ]);
  const header = ["check", "expected", "observed", "result"];
  const widths = header.map((h, i) =>
    Math.max(h.length, ...rows.map((row) => row[i]?.length ?? 0))
  );
  const line = (cells: string[]) =>
    cells.length === 1
      ? cells[0]
      : cells.map((cell, i) => cell.padEnd(widths[i])).join("  ").trimEnd();
  const failed = checks.filter((c) => !c.passed).length;
  return [
    line(header),
    line(widths.map((w) => "-".repeat(w))),
    ...rows.map(line),
    "",
    failed === 0
      ? `all ${checks.length} checks passed`
      : `${failed} of ${checks.length} checks FAILED`,
  ];
}

/**
 * # What `lab own` found, and how it is printed
 *
 * The shape of `lab own --json` ({@linkcode OwnResult}), and the text
 * report: the flows the router saw, what it dropped, and each command's
 * exit code and last lines of output.
 *
 * Nothing a program printed reaches the terminal as it was: control
 * characters (escape sequences, a carriage return, C1 controls),
 * format characters (bidirectional overrides, zero-width marks) and line
 * separators are written as `\u001b`-style escapes, in the text
 * ({@linkcode escapeText}) and in the JSON ({@linkcode formatJson}, which
 * stays valid JSON holding the same strings).
 *
 * @module
 */
import type { CommandReport, OutputLine } from "./own_command.ts";
import type { FlowEvent, FlowReport } from "./own_flows.ts";

/** What one `lab own` run found. Times are seconds since the server command started. */
export interface OwnResult {
  /** Seconds after which the router forgot an idle flow. */
  timeoutSeconds: number;
  /** The server's address, as the client was given it (LAB_SERVER). */
  serverAddress: string;
  /** The client's address (the server sees the router's instead). */
  clientAddress: string;
  /** The port the server listened on. */
  port: number;
  /** Why the client never ran (the server did not listen), or null. */
  failure: string | null;
  /** When the server listened; null if it never did. */
  listeningAfterSeconds: number | null;
  /** The server command. */
  server: CommandReport;
  /** The client command; null if it never ran. */
  client: CommandReport | null;
  /** Each flow through the router, in the order they were seen. */
  flows: FlowReport[];
  /** Flows past the hundredth, not followed. */
  flowsLeftOut: number;
  /**
   * The router's drop counters: packets of flows it did not know (it had
   * forgotten them), other packets it refused, and of the first kind those
   * on a port of no flow seen.
   */
  drops: { invalid: number; other: number; unattributed: number };
  /** Whether the router's connection table could be read (as an ordinary user it takes conntrack). */
  conntrackReadable: boolean;
  /** What the reader should know (a command that tried to download). */
  notes: string[];
  /** Whether the client exited with code 0. */
  passed: boolean;
}

/** Characters that must not reach a terminal raw: controls, format characters, separators. */
const UNSAFE = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu;

function escapeCharacter(c: string): string {
  const code = c.codePointAt(0)!;
  return code > 0xffff ? `\\u{${code.toString(16)}}` : `\\u${code.toString(16).padStart(4, "0")}`;
}

/**
 * Text from a program, safe to print: every control, format and separator
 * character written as an escape (a tab too, so columns stay put), and a
 * backslash doubled so that an escape cannot be forged.
 *
 * @example
 * ```ts
 * import { escapeText } from "./own_report.ts";
 * escapeText("red \x1b[31mtext\r"); // "red \\u001b[31mtext\\u000d"
 * ```
 */
export function escapeText(text: string): string {
  return text.replaceAll("\\", "\\\\").replace(UNSAFE, escapeCharacter);
}

/**
 * The result as one JSON document, with every character that a terminal
 * would act on escaped (`JSON.stringify` leaves DEL, the C1 controls and
 * format characters as they are; here they become `\u009b`-style escapes,
 * which JSON reads back as the same characters).
 *
 * @example
 * ```ts
 * import { formatJson } from "./own_report.ts";
 * formatJson({ text: "a\u009bb" }); // '{\n  "text": "a\\u009bb"\n}'
 * ```
 */
export function formatJson(value: unknown): string {
  // Its only raw newlines are its own, between lines: those stay.
  return JSON.stringify(value, null, 2).replace(
    UNSAFE,
    (c) => c === "\n" ? c : escapeCharacter(c),
  );
}

/** Seconds with one decimal. */
function s(seconds: number): string {
  return `${seconds.toFixed(1)} s`;
}

/**
 * One progress line for something the router did.
 *
 * @example
 * ```ts
 * import { describeEvent } from "./own_report.ts";
 * describeEvent({ kind: "forgotten", flow: {
 *   client: "10.231.1.2:40000", server: "10.231.2.2:8080", firstSeenSeconds: 1,
 *   lastActiveSeconds: 1.2, lastState: "ESTABLISHED", lowestRemainingSeconds: 0,
 *   end: "forgotten", goneSeconds: 6.7,
 *   idleSeconds: 5.5, droppedFromClient: 0, droppedFromServer: 0,
 * } });
 * // "forgot 10.231.1.2:40000 -> 10.231.2.2:8080 at 6.7 s, idle 5.5 s"
 * ```
 */
export function describeEvent(event: FlowEvent): string {
  const flow = event.flow;
  const name = `${flow.client} -> ${flow.server}`;
  switch (event.kind) {
    case "new":
      return `new flow ${name} at ${s(flow.firstSeenSeconds)} (${flow.lastState})`;
    case "forgotten":
      return `forgot ${name} at ${s(flow.goneSeconds!)}, idle ${s(flow.idleSeconds!)}`;
    case "closed":
      return `flow ${name} gone after its close (${flow.lastState}) at ${s(flow.goneSeconds!)}`;
    case "dropped":
      return `dropped a packet of the forgotten flow ${name}`;
  }
}

/**
 * How the router treated one flow, in words.
 *
 * @example
 * ```ts ignore
 * flowFate(flow); // "kept it until it closed (countdown never below 3 of 5 s)"
 * ```
 */
export function flowFate(flow: FlowReport, timeoutSeconds: number): string {
  if (flow.end === "forgotten") {
    return `forgot it at ${s(flow.goneSeconds!)}, idle ${s(flow.idleSeconds!)}`;
  }
  const lowest = flow.lowestRemainingSeconds === null
    ? ""
    : ` (countdown never below ${flow.lowestRemainingSeconds} of ${timeoutSeconds} s)`;
  const open = flow.end === "tracked" && flow.lastState === "ESTABLISHED";
  return `${open ? "kept it" : "kept it until it closed"}${lowest}`;
}

function dropped(flow: FlowReport): string {
  const total = flow.droppedFromClient + flow.droppedFromServer;
  if (total === 0) return "none";
  return `${total} (${flow.droppedFromClient} from the client, ${flow.droppedFromServer} from the server)`;
}

/** A table with columns padded to their widest cell. */
function table(rows: string[][]): string[] {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((row) => row[i].length)));
  return rows.map((row) =>
    "  " + row.map((cell, i) => i === row.length - 1 ? cell : cell.padEnd(widths[i])).join("  ")
  );
}

/** How a command ended, in words. */
export function describeEnd(report: CommandReport): string {
  const how = report.exitCode !== null
    ? `exit code ${report.exitCode}`
    : report.signal !== null
    ? `ended by ${report.signal}`
    : "still running";
  const when = report.endedSeconds === null ? "" : ` at ${s(report.endedSeconds)}`;
  return report.stoppedBecause
    ? `stopped by the lab (${report.stoppedBecause})${when}: ${how}`
    : `${how}${when}`;
}

/** A command's last lines, escaped, each with when it came. */
export function formatOutput(report: CommandReport): string[] {
  if (report.output.length === 0) return ["    (no output)"];
  const lines = report.linesLeftOut > 0
    ? [`    (${report.linesLeftOut} earlier lines left out)`]
    : [];
  return lines.concat(report.output.map(outputLine));
}

function outputLine(line: OutputLine): string {
  const cut = line.cutCharacters > 0 ? ` ... (${line.cutCharacters} more characters)` : "";
  const mark = line.stream === "stderr" ? "!" : "|";
  return `    ${line.seconds.toFixed(2).padStart(7)} ${mark} ${escapeText(line.text)}${cut}`;
}

function commandSection(name: string, report: CommandReport, extra: string[] = []): string[] {
  return [
    `${name}: ${escapeText(report.command)}`,
    ...extra.map((line) => `  ${line}`),
    `  ${describeEnd(report)}; its last lines (| stdout, ! stderr):`,
    ...formatOutput(report),
  ];
}

/**
 * The report as text: the flows the router saw, its drops, then each
 * command: how it ended and its last lines of output (escaped).
 */
export function formatReport(result: OwnResult): string[] {
  const lines = [
    `lab own: a router that forgets idle flows after ${result.timeoutSeconds} s; ` +
    `the server at ${result.serverAddress} port ${result.port}; times in seconds since the ` +
    `server command started`,
    "",
  ];
  if (result.failure === null) {
    lines.push("flows through the router:");
    if (!result.conntrackReadable) {
      lines.push("  (the router's connection table could not be read: install conntrack)");
    } else if (result.flows.length === 0) {
      lines.push("  none: the client never connected to the server through the router");
    } else {
      lines.push(...table([
        ["flow", "first seen", "last active", "the router", "packets dropped"],
        ...result.flows.map((flow) => [
          `${flow.client} -> ${flow.server}`,
          s(flow.firstSeenSeconds),
          s(flow.lastActiveSeconds),
          flowFate(flow, result.timeoutSeconds),
          dropped(flow),
        ]),
      ]));
    }
    if (result.flowsLeftOut > 0) {
      lines.push(`  and ${result.flowsLeftOut} more flows, not followed`);
    }
    lines.push(
      `router's drop counters: ${result.drops.invalid} packets of flows it did not know ` +
        `(forgotten), ${result.drops.other} others`,
      "",
    );
  }
  const listening = result.listeningAfterSeconds === null
    ? `never listened on port ${result.port}`
    : `listening on port ${result.port} at ${s(result.listeningAfterSeconds)}`;
  if (result.client) lines.push(...commandSection("client", result.client), "");
  lines.push(...commandSection("server", result.server, [listening]), "");
  lines.push(...result.notes.map((note) => `note: ${note}`), verdict(result));
  return lines;
}

/**
 * The last line: what happened, in one sentence.
 *
 * @example
 * ```ts ignore
 * verdict(result); // "the client failed (exit code 1); the router forgot 1 of 1 flows and dropped 7 of their packets"
 * ```
 */
export function verdict(result: OwnResult): string {
  if (result.failure !== null || result.client === null) {
    return `the client did not run: ${result.failure ?? "the server did not listen"}`;
  }
  const forgotten = result.flows.filter((flow) => flow.end === "forgotten");
  const dropped = result.flows.reduce(
    (sum, flow) => sum + flow.droppedFromClient + flow.droppedFromServer,
    0,
  );
  const client = result.passed
    ? "the client succeeded (exit code 0)"
    : `the client failed (${describeEnd(result.client)})`;
  const router = !result.conntrackReadable
    ? "the router's flows could not be read"
    : result.flows.length === 0
    ? "the router saw no flow to the server"
    : forgotten.length === 0
    ? `the router forgot none of ${result.flows.length} flows`
    : `the router forgot ${forgotten.length} of ${result.flows.length} flows and dropped ` +
      `${dropped} of their packets`;
  // Only the first flows are followed one by one: say how many were not.
  const leftOut = result.flowsLeftOut > 0
    ? ` (${result.flowsLeftOut} more flows not followed; the router dropped ` +
      `${result.drops.invalid} packets of forgotten flows in all)`
    : "";
  return `${client}; ${router}${leftOut}`;
}

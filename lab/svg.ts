/**
 * # The lab run as a picture
 *
 * {@link renderSvg} draws a lab run ({@link LabResult}) as one SVG document:
 * one sequence diagram per scenario, stacked top to bottom, under a legend.
 *
 * In each diagram every machine of the scenario (client, router, server) is
 * a vertical lane, and time runs down the page, in seconds since the
 * connection's first SYN. Every captured TCP segment is an arrow from its
 * sender's lane towards its receiver's, labelled with what it is and its
 * tcpdump flags: keepalive probes (orange) and their answers (green) are
 * dashed, retransmissions dotted, resets thick and dark red. A segment the
 * router dropped because it had forgotten the flow ends in a red X on the
 * router's lane; a segment that went into a cut cable ends in a red X
 * halfway to its receiver. Dots on a lane are things that happened there
 * (the cable cut, a timeout). On the router's lane, green bars show when its
 * connection-tracking entry for the flow existed, and a mark shows when it
 * forgot the flow.
 *
 * The vertical scale is linear in time, except that rows of events closer
 * together than a line of text are pushed apart, so the position stays
 * strictly increasing with time but is not proportional where it is crowded;
 * the tick labels on the left always show the true seconds.
 *
 * The document is self-contained: no scripts, no fonts or images fetched.
 *
 * @module
 */
import type { ConntrackTrace, Host, LabResult, Moment, Packet, ScenarioResult } from "./result.ts";

export type * from "./result.ts";

const WIDTH = 960;
const MARGIN = 20;
const AXIS_X = 80;
const LANE_LEFT = 230;
const LANE_RIGHT = 830;
/** Least vertical distance between two rows of events, in px. */
const MIN_GAP = 22;
/** How far an arrow falls over its whole length, in px. */
const SLOPE = 5;
const FONT = "DejaVu Sans, Verdana, Helvetica, Arial, sans-serif";
const TEXT_COLOUR = "#1a1a1a";
const MUTED = "#666666";
const DROP_COLOUR = "#d7191c";
const CONNTRACK_COLOUR = "#238b45";
const TITLE_CHARS = 100;

/** How an arrow of one kind of packet is drawn. */
interface ArrowStyle {
  stroke: string;
  width: number;
  dash: string | null;
}

const ARROW_STYLES: Readonly<Record<string, Readonly<ArrowStyle>>> = Object.freeze({
  "handshake": { stroke: "#1f5fbf", width: 1.5, dash: null },
  "data": { stroke: "#222222", width: 1.5, dash: null },
  "ack": { stroke: "#7a7a7a", width: 1.2, dash: null },
  "close": { stroke: "#6a3d9a", width: 1.5, dash: null },
  "keepalive probe": { stroke: "#e66100", width: 2, dash: "7 4" },
  "probe answered": { stroke: "#1b9e77", width: 2, dash: "7 4" },
  "retransmission": { stroke: "#c51b7d", width: 2, dash: "2 3" },
  "reset": { stroke: "#a50f15", width: 3, dash: null },
});

const FALLBACK_STYLE: Readonly<ArrowStyle> = Object.freeze({
  stroke: "#444444",
  width: 1.5,
  dash: "1 2",
});

const ENTITIES: Readonly<Record<string, string>> = Object.freeze({
  "&": "&amp;",
  "<": "&lt;",
  ">": "&gt;",
  '"': "&quot;",
  "'": "&apos;",
});

/** Attribute values of an element; null and undefined ones are left out. */
type Attrs = Record<string, string | number | null | undefined>;

/** A time where the diagram has one or more rows of events. */
interface Knot {
  seconds: number;
  /** y of the first row at this time. */
  top: number;
  /** y of the last row at this time. */
  bottom: number;
}

/** Where everything of one scenario goes, y relative to the time origin. */
interface Layout {
  lanes: Map<string, number>;
  knots: Knot[];
  pxPerSecond: number;
  packetRows: number[];
  momentRows: number[];
  forgottenRow: number | null;
  maxSeconds: number;
  /** y of the bottom of the timeline. */
  end: number;
}

/** Where one packet's arrow starts and ends. */
interface ArrowGeometry {
  x1: number;
  y1: number;
  x2: number;
  y2: number;
  /** +1 when it travels rightwards, -1 leftwards. */
  direction: number;
  /** Where its label is centred. */
  labelX: number;
  /** Whether it ends in an X instead of at its receiver. */
  stopped: boolean;
}

/** Drops control characters (tab and line breaks become spaces) and anything XML cannot hold. */
function stripControl(text: string): string {
  let out = "";
  for (const ch of text) {
    const code = ch.codePointAt(0) ?? 0;
    if (code === 9 || code === 10 || code === 13) out += " ";
    else if (!isForbidden(code)) out += ch;
  }
  return out;
}

/** Whether a code point is a control character, a lone surrogate or a non-character. */
function isForbidden(code: number): boolean {
  return code < 0x20 || (code >= 0x7f && code <= 0x9f) ||
    (code >= 0xd800 && code <= 0xdfff) || code === 0xfffe || code === 0xffff;
}

/** Text made safe for XML content and attribute values. */
function esc(text: unknown): string {
  return stripControl(String(text)).replace(/[&<>"']/g, (c) => ENTITIES[c]);
}

/** A coordinate or length, rounded to a tenth of a pixel. */
function num(n: number): string {
  if (!Number.isFinite(n)) return "0";
  const rounded = Math.round(n * 10) / 10;
  return String(rounded === 0 ? 0 : rounded);
}

/** A time taken from the result as a usable, non-negative number of seconds. */
function secondsOf(t: unknown): number {
  return typeof t === "number" && Number.isFinite(t) && t > 0 ? t : 0;
}

/** An element; `content` must already be escaped markup. */
function tag(name: string, attrs: Attrs, content?: string): string {
  const list = Object.entries(attrs)
    .filter(([, value]) => value !== null && value !== undefined)
    .map(([key, value]) => ` ${key}="${typeof value === "number" ? num(value) : esc(value)}"`)
    .join("");
  return content === undefined ? `<${name}${list}/>` : `<${name}${list}>${content}</${name}>`;
}

/** A text element holding `text`, escaped. */
function textTag(attrs: Attrs, text: string): string {
  return tag("text", attrs, esc(text));
}

/** Lower case, with runs of anything but letters and digits turned into one dash. */
function slug(text: unknown): string {
  return stripControl(String(text)).toLowerCase().replace(/[^a-z0-9]+/g, "-")
    .replace(/^-+|-+$/g, "") || "unknown";
}

/** Splits `text` into lines of at most about `width` characters, at spaces. */
function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of stripControl(text).split(" ")) {
    if (line !== "" && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line === "" ? word : `${line} ${word}`;
  }
  lines.push(line);
  return lines;
}

/** The drawing style of a packet kind. */
function styleOf(kind: string): Readonly<ArrowStyle> {
  return Object.hasOwn(ARROW_STYLES, kind) ? ARROW_STYLES[kind] : FALLBACK_STYLE;
}

/** Stroke attributes of an arrow style. */
function strokeAttrs(style: Readonly<ArrowStyle>): Attrs {
  return {
    stroke: style.stroke,
    "stroke-width": style.width,
    "stroke-dasharray": style.dash,
    fill: "none",
  };
}

/** Pixels per second: readable for runs up to 40 s, compressed beyond. */
function pxPerSecondFor(seconds: number): number {
  return seconds <= 40 ? 24 : Math.max(3, 960 / seconds);
}

/** The distance between tick labels, in seconds, so that they are at least 40 px apart. */
function tickStep(pxPerSecond: number): number {
  const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600];
  return steps.find((step) => step * pxPerSecond >= 40) ?? 7200;
}

/**
 * Gives each event (by its time) a row: proportional to time, but at least
 * {@link MIN_GAP} below the row before; events at the same time get one row each.
 */
function placeRows(times: number[], pxPerSecond: number): { rows: number[]; knots: Knot[] } {
  const order = times.map((seconds, index) => ({ seconds: secondsOf(seconds), index }))
    .sort((a, b) => a.seconds - b.seconds || a.index - b.index);
  const knots: Knot[] = [{ seconds: 0, top: 0, bottom: 0 }];
  const rows = times.map(() => 0);
  let originFree = true;
  for (const { seconds, index } of order) {
    const last = knots[knots.length - 1];
    if (seconds === last.seconds) {
      if (!originFree) last.bottom += MIN_GAP;
      rows[index] = last.bottom;
    } else {
      const gap = originFree ? 0 : MIN_GAP;
      const y = last.bottom + Math.max(gap, pxPerSecond * (seconds - last.seconds));
      knots.push({ seconds, top: y, bottom: y });
      rows[index] = y;
    }
    originFree = false;
  }
  return { rows, knots };
}

/** The y of a time: the first row at a knot, interpolated between knots. */
function yAt(layout: Pick<Layout, "knots" | "pxPerSecond">, t: number): number {
  const seconds = secondsOf(t);
  const { knots } = layout;
  let k = 0;
  while (k + 1 < knots.length && knots[k + 1].seconds <= seconds) k++;
  const a = knots[k];
  if (seconds === a.seconds) return a.top;
  const b = knots[k + 1];
  if (b === undefined) return a.bottom + layout.pxPerSecond * (seconds - a.seconds);
  return a.bottom + ((b.top - a.bottom) * (seconds - a.seconds)) / (b.seconds - a.seconds);
}

/** The x of each host's lane, spread evenly between the lane margins. */
function laneXs(hosts: readonly Host[]): Map<string, number> {
  const lanes = new Map<string, number>();
  const n = hosts.length;
  hosts.forEach((host, i) => {
    if (lanes.has(host)) return;
    const x = n <= 1
      ? (LANE_LEFT + LANE_RIGHT) / 2
      : LANE_LEFT + (i * (LANE_RIGHT - LANE_LEFT)) / (n - 1);
    lanes.set(host, x);
  });
  return lanes;
}

/** The x of a host's lane; a host without a lane goes to the side it belongs on. */
function laneX(lanes: Map<string, number>, host: string): number {
  const x = lanes.get(host);
  if (x !== undefined) return x;
  if (host === "client") return LANE_LEFT;
  if (host === "server") return LANE_RIGHT;
  return (LANE_LEFT + LANE_RIGHT) / 2;
}

/** Places every event of a scenario and measures its timeline. */
function layoutScenario(scenario: ScenarioResult): Layout {
  const packets = scenario.packets ?? [];
  const moments = scenario.moments ?? [];
  const forgotten = scenario.conntrack?.forgottenAtSeconds ?? null;
  const times = [
    ...packets.map((p) => p.seconds),
    ...moments.map((m) => m.seconds),
    ...(forgotten === null ? [] : [forgotten]),
  ];
  const maxSeconds = Math.max(secondsOf(scenario.durationSeconds), ...times.map(secondsOf));
  const pxPerSecond = pxPerSecondFor(maxSeconds);
  const { rows, knots } = placeRows(times, pxPerSecond);
  const partial = { knots, pxPerSecond };
  const lastRow = Math.max(0, ...rows);
  return {
    lanes: laneXs(scenario.hosts ?? []),
    knots,
    pxPerSecond,
    packetRows: rows.slice(0, packets.length),
    momentRows: rows.slice(packets.length, packets.length + moments.length),
    forgottenRow: forgotten === null ? null : rows[rows.length - 1],
    maxSeconds,
    end: Math.max(yAt(partial, maxSeconds), lastRow + MIN_GAP),
  };
}

/** Where a packet's arrow goes: to its receiver, or to the X where it was dropped or lost. */
function arrowGeometry(p: Packet, y: number, lanes: Map<string, number>): ArrowGeometry {
  const x1 = laneX(lanes, p.from);
  const receiverX = laneX(lanes, p.to);
  const direction = receiverX >= x1 ? 1 : -1;
  const full = Math.abs(receiverX - x1) || 40;
  let x2 = receiverX === x1 ? x1 + 40 : receiverX;
  if (p.fate === "dropped-at-router") x2 = lanes.get("router") ?? (x1 + receiverX) / 2;
  if (p.fate === "lost") x2 = (x1 + receiverX) / 2;
  const nextLane = [...lanes.values()]
    .filter((x) => (x - x1) * direction > 0)
    .reduce((nearest, x) => Math.abs(x - x1) < Math.abs(nearest - x1) ? x : nearest, x2);
  const labelEnd = Math.abs(nextLane - x1) < Math.abs(x2 - x1) ? nextLane : x2;
  return {
    x1,
    y1: y,
    x2,
    y2: y + (SLOPE * Math.abs(x2 - x1)) / full,
    direction,
    labelX: (x1 + labelEnd) / 2,
    stopped: p.fate === "dropped-at-router" || p.fate === "lost",
  };
}

/** A filled arrowhead whose tip is the arrow's end. */
function arrowhead(g: ArrowGeometry, colour: string): string {
  const length = Math.hypot(g.x2 - g.x1, g.y2 - g.y1) || 1;
  const ux = (g.x2 - g.x1) / length;
  const uy = (g.y2 - g.y1) / length;
  const backX = g.x2 - 10 * ux;
  const backY = g.y2 - 10 * uy;
  const points = [
    [g.x2, g.y2],
    [backX - 4 * uy, backY + 4 * ux],
    [backX + 4 * uy, backY - 4 * ux],
  ].map(([x, y]) => `${num(x)},${num(y)}`).join(" ");
  return tag("polygon", { class: "arrowhead", points, fill: colour });
}

/** The red X where a packet was dropped or lost, centred on (x, y). */
function xMark(x: number, y: number): string {
  return tag("path", {
    class: "x-mark",
    transform: `translate(${num(x)} ${num(y)})`,
    d: "M-6 -6L6 6M-6 6L6 -6",
    stroke: DROP_COLOUR,
    "stroke-width": 3,
    "stroke-linecap": "round",
    fill: "none",
  });
}

/** Text drawn with a white halo, so that lines under it do not hide it. */
function haloText(attrs: Attrs, text: string): string {
  return textTag(
    { ...attrs, stroke: "#ffffff", "stroke-width": 3, "paint-order": "stroke" },
    text,
  );
}

/** The arrow's short label: kind, flags and payload size. */
function packetLabel(p: Packet): string {
  const size = typeof p.length === "number" && p.length > 0 ? ` ${p.length} B` : "";
  return `${p.kind} [${p.flags}]${size}`;
}

/** The packet's full description, shown as a tooltip. */
function packetTooltip(p: Packet): string {
  return `${p.seconds} s, ${p.from} → ${p.to}: ${p.kind} [${p.flags}] seq ${p.seq} ack ${p.ack}` +
    ` length ${p.length}, ${p.fate}`;
}

/** What the text next to the X says. */
function dropText(p: Packet): string {
  return p.fate === "lost" ? "lost: cable cut" : "dropped by router";
}

/** One packet: exactly one `<g class="packet ...">` with its arrow and labels. */
function renderPacket(p: Packet, y: number, lanes: Map<string, number>): string {
  const g = arrowGeometry(p, y, lanes);
  const style = styleOf(p.kind);
  const parts = [
    tag("title", {}, esc(packetTooltip(p))),
    tag("line", { class: "arrow", x1: g.x1, y1: g.y1, x2: g.x2, y2: g.y2, ...strokeAttrs(style) }),
    g.stopped ? xMark(g.x2, g.y2) : arrowhead(g, style.stroke),
    haloText(
      { class: "label", x: g.labelX, y: y - 4, "text-anchor": "middle", fill: style.stroke },
      packetLabel(p),
    ),
  ];
  if (g.stopped) {
    const anchor = g.direction > 0 ? "start" : "end";
    const attrs = { x: g.x2 + 11 * g.direction, y: g.y2 + 4, "text-anchor": anchor };
    parts.push(haloText({ class: "drop-label", ...attrs, fill: DROP_COLOUR }, dropText(p)));
  }
  return tag("g", {
    class: `packet kind-${slug(p.kind)} fate-${slug(p.fate)}`,
    "data-seconds": String(p.seconds),
    "data-from": p.from,
    "data-to": p.to,
    "data-kind": p.kind,
    "data-fate": p.fate,
  }, parts.join(""));
}

/** A dot on the host's lane with what happened there; text on the side away from the edge. */
function renderMoment(m: Moment, y: number, lanes: Map<string, number>): string {
  const x = laneX(lanes, m.host);
  const rightmost = lanes.size > 1 && x >= Math.max(...lanes.values());
  const text = haloText({
    x: x + (rightmost ? -10 : 10),
    y: y + 4,
    "text-anchor": rightmost ? "end" : "start",
    fill: TEXT_COLOUR,
    "font-style": "italic",
  }, m.text);
  return tag("g", {
    class: "moment",
    "data-seconds": String(m.seconds),
    "data-host": m.host,
  }, tag("circle", { cx: x, cy: y, r: 4.5, fill: TEXT_COLOUR }) + text);
}

/** The bars of the router's conntrack entry, drawn under the arrows. */
function renderConntrackBars(trace: ConntrackTrace, layout: Layout): string {
  const x = laneX(layout.lanes, "router");
  return (trace.present ?? []).map((span) => {
    const top = yAt(layout, span.fromSeconds);
    const bottom = yAt(layout, span.toSeconds);
    return tag("rect", {
      class: "conntrack-entry",
      "data-from-seconds": String(span.fromSeconds),
      "data-to-seconds": String(span.toSeconds),
      x: x - 6,
      y: top,
      width: 12,
      height: Math.max(2, bottom - top),
      rx: 3,
      fill: "#c7e9c0",
      stroke: CONNTRACK_COLOUR,
    });
  }).join("");
}

/** The mark where the router forgot the flow. */
function renderForgotten(trace: ConntrackTrace, layout: Layout): string {
  if (trace.forgottenAtSeconds === null || layout.forgottenRow === null) return "";
  const x = laneX(layout.lanes, "router");
  const y = layout.forgottenRow;
  const line = tag("line", {
    x1: x - 14,
    y1: y,
    x2: x + 14,
    y2: y,
    stroke: CONNTRACK_COLOUR,
    "stroke-width": 3,
  });
  const text = haloText(
    { x: x + 18, y: y + 4, fill: CONNTRACK_COLOUR, "font-weight": "bold" },
    "router forgets the flow",
  );
  return tag("g", {
    class: "conntrack-forgotten",
    "data-seconds": String(trace.forgottenAtSeconds),
  }, line + text);
}

/** The time axis on the left: tick labels in seconds and faint grid lines. */
function renderAxis(layout: Layout): string {
  const step = tickStep(layout.pxPerSecond);
  const ticks: string[] = [];
  for (let t = 0; t <= layout.maxSeconds + 1e-9; t += step) {
    const y = yAt(layout, t);
    ticks.push(tag(
      "g",
      { class: "tick", "data-seconds": String(t) },
      [
        tag("line", { x1: AXIS_X, y1: y, x2: WIDTH - MARGIN, y2: y, stroke: "#ececec" }),
        tag("line", { x1: AXIS_X - 5, y1: y, x2: AXIS_X, y2: y, stroke: MUTED }),
        textTag({ x: AXIS_X - 9, y: y + 4, "text-anchor": "end", fill: MUTED }, `${t} s`),
      ].join(""),
    ));
  }
  const axis = tag("line", {
    class: "time-axis",
    x1: AXIS_X,
    y1: 0,
    x2: AXIS_X,
    y2: layout.end,
    stroke: MUTED,
  });
  const caption = textTag(
    { x: MARGIN, y: -22, fill: MUTED, "font-size": 11 },
    "seconds since the SYN ↓",
  );
  return ticks.join("") + axis + caption;
}

/** The lanes: a labelled box at the top and a vertical line down the timeline. */
function renderLanes(layout: Layout): string {
  return [...layout.lanes].map(([host, x]) =>
    tag(
      "g",
      { class: "lane-head" },
      [
        tag("rect", {
          x: x - 45,
          y: -60,
          width: 90,
          height: 24,
          rx: 4,
          fill: "#f2f2f2",
          stroke: "#888888",
        }),
        textTag({ x, y: -43, "text-anchor": "middle", "font-weight": "bold" }, host),
      ].join(""),
    ) +
    tag("line", {
      class: "lane",
      "data-host": host,
      x1: x,
      y1: -36,
      x2: x,
      y2: layout.end + 10,
      stroke: "#9a9a9a",
      "stroke-width": 1.5,
    })
  ).join("");
}

/** The scenario's heading: a PASS or FAIL badge, its name, and its title (wrapped). */
function renderHeading(scenario: ScenarioResult): { markup: string; height: number } {
  const passed = scenario.passed === true;
  const badge = tag("rect", {
    x: MARGIN,
    y: 8,
    width: 46,
    height: 20,
    rx: 4,
    fill: passed ? "#1a7f37" : "#b42318",
  }) + textTag({
    class: passed ? "verdict pass" : "verdict fail",
    x: MARGIN + 23,
    y: 23,
    "text-anchor": "middle",
    fill: "#ffffff",
    "font-weight": "bold",
  }, passed ? "PASS" : "FAIL");
  const lines = wrap(`${scenario.name} — ${scenario.title}`, TITLE_CHARS);
  const texts = lines.map((line, i) =>
    textTag({ x: MARGIN + 56, y: 23 + 18 * i, "font-size": 15, fill: TEXT_COLOUR }, line)
  );
  const markup = tag("g", { class: "scenario-heading" }, badge + texts.join(""));
  return { markup, height: 40 + 18 * (lines.length - 1) };
}

/** One scenario's diagram, its top at y = 0; returns its markup and height. */
function renderScenario(scenario: ScenarioResult): { markup: string; height: number } {
  const heading = renderHeading(scenario);
  const layout = layoutScenario(scenario);
  const origin = heading.height + 72;
  const trace = scenario.conntrack ?? null;
  const body = [
    renderAxis(layout),
    renderLanes(layout),
    trace === null ? "" : renderConntrackBars(trace, layout),
    ...(scenario.packets ?? []).map((p, i) => renderPacket(p, layout.packetRows[i], layout.lanes)),
    ...(scenario.moments ?? []).map((m, i) => renderMoment(m, layout.momentRows[i], layout.lanes)),
    trace === null ? "" : renderForgotten(trace, layout),
  ].join("");
  const markup = heading.markup + tag("g", { transform: `translate(0 ${origin})` }, body);
  return { markup, height: origin + layout.end + 36 };
}

/** A sample of one line of the legend, 34 px wide, starting at (x, y). */
function legendSample(kind: string, x: number, y: number): string {
  if (kind === "x") return xMark(x + 17, y);
  if (kind === "conntrack") {
    return tag("rect", {
      x: x + 11,
      y: y - 7,
      width: 12,
      height: 14,
      rx: 3,
      fill: "#c7e9c0",
      stroke: CONNTRACK_COLOUR,
    });
  }
  if (kind === "moment") return tag("circle", { cx: x + 17, cy: y, r: 4.5, fill: TEXT_COLOUR });
  const style = styleOf(kind);
  const g = { x1: x, y1: y, x2: x + 34, y2: y, direction: 1, labelX: 0, stopped: false };
  return tag("line", { x1: x, y1: y, x2: x + 26, y2: y, ...strokeAttrs(style) }) +
    arrowhead(g, style.stroke);
}

/** The legend: what each line style, the X, the bar and the dot mean. */
function renderLegend(top: number): { markup: string; height: number } {
  const items: [string, string][] = [
    ["handshake", "handshake"],
    ["data", "data"],
    ["ack", "ack"],
    ["close", "close (FIN)"],
    ["keepalive probe", "keepalive probe"],
    ["probe answered", "probe answered"],
    ["retransmission", "retransmission"],
    ["reset", "reset (RST)"],
    ["x", "dropped or lost"],
    ["conntrack", "router's conntrack entry"],
    ["moment", "event on a host"],
  ];
  const columns = 4;
  const markup = items.map(([kind, label], i) => {
    const x = MARGIN + (i % columns) * 230;
    const y = top + 10 + Math.floor(i / columns) * 22;
    return tag(
      "g",
      { class: "legend-item" },
      legendSample(kind, x, y) + textTag({ x: x + 44, y: y + 4, fill: TEXT_COLOUR }, label),
    );
  }).join("");
  const rows = Math.ceil(items.length / columns);
  return { markup: tag("g", { class: "legend" }, markup), height: rows * 22 + 10 };
}

/** The run's notes, wrapped, one paragraph each. */
function renderNotes(notes: readonly string[], top: number): { markup: string; height: number } {
  const lines = notes.flatMap((note) => wrap(`Note: ${note}`, 130));
  const markup = lines.map((line, i) =>
    textTag({ class: "note", x: MARGIN, y: top + 14 + 17 * i, fill: MUTED }, line)
  ).join("");
  return { markup, height: lines.length === 0 ? 0 : lines.length * 17 + 10 };
}

/** The document's title line: how many scenarios and whether they passed. */
function summaryLine(result: LabResult): string {
  const scenarios = result.scenarios ?? [];
  const failed = scenarios.filter((s) => s.passed !== true).length;
  const count = `${scenarios.length} scenario${scenarios.length === 1 ? "" : "s"}`;
  const verdict = result.passed === true && failed === 0
    ? "all passed"
    : `${failed} failed${result.passed === true ? "" : " (run failed)"}`;
  return `TCP keepalive lab: ${count}, ${verdict}`;
}

/** The title, legend and notes above the diagrams. */
function renderHeader(result: LabResult): { markup: string; height: number } {
  const title = textTag(
    { class: "run-title", x: MARGIN, y: 30, "font-size": 18, "font-weight": "bold" },
    summaryLine(result),
  );
  const legend = renderLegend(50);
  const notes = renderNotes(result.notes ?? [], 50 + legend.height);
  return {
    markup: title + legend.markup + notes.markup,
    height: 50 + legend.height + notes.height + 10,
  };
}

/**
 * Draws a lab run as a self-contained SVG document: a legend, then for each
 * scenario a sequence diagram with a lane per host, time growing downwards,
 * and one arrow per captured packet.
 *
 * Each packet is exactly one `<g class="packet kind-… fate-…">` element with
 * `data-seconds`, `data-from`, `data-to`, `data-kind` and `data-fate`, in the
 * order of `scenario.packets`; no other element has a class starting with
 * `packet`. All text from the result is XML-escaped, with control characters
 * removed.
 *
 * @param result The run, as `lab.ts --json` prints it.
 * @returns The SVG document, starting with an XML declaration.
 */
export function renderSvg(result: LabResult): string {
  const header = renderHeader(result);
  const parts = [header.markup];
  let y = header.height;
  const scenarios = result.scenarios ?? [];
  for (const scenario of scenarios) {
    const block = renderScenario(scenario);
    const attrs = { class: "scenario", "data-name": scenario.name, transform: `translate(0 ${y})` };
    parts.push(tag("g", attrs, block.markup));
    y += block.height + 24;
  }
  if (scenarios.length === 0) {
    parts.push(textTag({ class: "empty", x: MARGIN, y: y + 20, fill: MUTED }, "No scenarios."));
    y += 40;
  }
  const height = Math.ceil(y);
  const svg = tag(
    "svg",
    {
      xmlns: "http://www.w3.org/2000/svg",
      width: WIDTH,
      height,
      viewBox: `0 0 ${WIDTH} ${height}`,
      "font-family": FONT,
      "font-size": 12,
      fill: TEXT_COLOUR,
    },
    [
      tag("title", {}, esc(summaryLine(result))),
      tag("rect", { x: 0, y: 0, width: WIDTH, height, fill: "#ffffff" }),
      ...parts,
    ].join("\n"),
  );
  return `<?xml version="1.0" encoding="UTF-8"?>\n${svg}\n`;
}

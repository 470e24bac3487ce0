/**
 * The lab's SVG sequence diagram, drawn from small made-up results: it must
 * be well-formed XML, hold one arrow element per packet with the packet's
 * data, put the X of a dropped packet on the router's lane and of a lost one
 * halfway, and escape every text it takes from the result.
 */
import { assert, assertEquals } from "@std/assert";
import { XMLValidator } from "fast-xml-parser";
import { renderSvg } from "../lab/svg.ts";
import type {
  Host,
  LabResult,
  Packet,
  PacketFate,
  PacketKind,
  ScenarioResult,
} from "../lab/result.ts";

function packet(
  seconds: number,
  from: "client" | "server",
  flags: string,
  kind: PacketKind,
  fate: PacketFate = "delivered",
  length = 0,
): Packet {
  const to = from === "client" ? "server" : "client";
  return { seconds, from, to, flags, seq: 0, ack: 0, length, kind, fate };
}

function scenario(name: string, hosts: Host[], extra: Partial<ScenarioResult>): ScenarioResult {
  return {
    name,
    title: `what ${name} shows`,
    hosts,
    settings: {},
    expected: {},
    observed: {},
    checks: [],
    passed: true,
    packets: [],
    moments: [],
    conntrack: null,
    durationSeconds: 20,
    ...extra,
  };
}

const HANDSHAKE: Packet[] = [
  packet(0, "client", "S", "handshake"),
  packet(0.0001, "server", "S.", "handshake"),
  packet(0.0002, "client", ".", "handshake"),
];

const BLOG = scenario("blog", ["client", "server"], {
  packets: [
    ...HANDSHAKE,
    packet(0.5, "client", "P.", "data", "delivered", 6),
    packet(0.5001, "server", ".", "ack"),
    packet(10.5, "client", ".", "keepalive probe"),
    packet(10.5002, "server", ".", "probe answered"),
    packet(12.5, "client", ".", "keepalive probe"),
    packet(12.5002, "server", ".", "probe answered"),
  ],
  durationSeconds: 16,
});

const DEAD_PEER = scenario("dead-peer", ["client", "server"], {
  passed: false,
  packets: [
    ...HANDSHAKE,
    packet(5, "client", ".", "keepalive probe", "lost"),
    packet(7, "client", ".", "keepalive probe", "lost"),
    packet(9, "client", ".", "keepalive probe", "lost"),
    packet(9.5, "client", "P.", "retransmission", "lost", 6),
    packet(11, "client", "R.", "reset", "lost"),
  ],
  moments: [
    { seconds: 2, host: "server", text: "cable cut" },
    { seconds: 11, host: "client", text: "timed out (ETIMEDOUT)" },
  ],
  durationSeconds: 12,
});

const NAT = scenario("nat-idle-above", ["client", "router", "server"], {
  packets: [
    ...HANDSHAKE,
    packet(1, "client", "P.", "data", "delivered", 6),
    packet(1.0002, "server", ".", "ack"),
    packet(44, "client", "P.", "data", "dropped-at-router", 6),
    packet(44.5, "client", "P.", "retransmission", "dropped-at-router", 6),
    packet(45, "server", "R", "reset"),
    packet(46, "client", "F.", "close"),
  ],
  moments: [{ seconds: 44, host: "client", text: "request after the idle" }],
  conntrack: {
    present: [{ fromSeconds: 0, toSeconds: 31 }, { fromSeconds: 33, toSeconds: 34 }],
    samples: [{ seconds: 1, remainingSeconds: 30 }],
    forgottenAtSeconds: 32,
  },
  durationSeconds: 50,
});

function run(...scenarios: ScenarioResult[]): LabResult {
  return { scenarios, notes: [], passed: scenarios.every((s) => s.passed) };
}

/** `value`, after failing the test if it is null or undefined (`assert` does not narrow here). */
function must<T>(value: T | null | undefined, message: string): T {
  assert(value !== null && value !== undefined, message);
  return value as T;
}

function attributes(tag: string): Record<string, string> {
  return Object.fromEntries([...tag.matchAll(/([\w-]+)="([^"]*)"/g)].map((m) => [m[1], m[2]]));
}

/** Each packet's `<g>`: its attributes and what it holds (it holds no other `<g>`). */
function packetGroups(svg: string): { attrs: Record<string, string>; body: string }[] {
  return [...svg.matchAll(/<g (class="packet[^>]*)>([\s\S]*?)<\/g>/g)]
    .map((m) => ({ attrs: attributes(m[1]), body: m[2] }));
}

function laneX(svg: string, host: string): number {
  const re = new RegExp(`<line class="lane" data-host="${host}" x1="([\\d.]+)"`);
  return Number(must(svg.match(re), `no lane for ${host}`)[1]);
}

function xMarkX(body: string): number {
  const m = body.match(/class="x-mark" transform="translate\(([\d.]+) /);
  return Number(must(m, `no X mark in ${body}`)[1]);
}

function arrowY(body: string): number {
  const m = body.match(/<line class="arrow" x1="[\d.]+" y1="([\d.-]+)"/);
  return Number(must(m, `no arrow in ${body}`)[1]);
}

function count(text: string, needle: string): number {
  return text.split(needle).length - 1;
}

Deno.test("the SVG is well-formed, self-contained XML with a size and a viewBox", () => {
  const svg = renderSvg(run(BLOG, DEAD_PEER, NAT));
  assertEquals(XMLValidator.validate(svg), true);
  const attrs = attributes(must(svg.match(/<svg [^>]*>/), "no <svg> element")[0]);
  assertEquals(attrs.xmlns, "http://www.w3.org/2000/svg");
  assert(Number(attrs.width) > 0 && Number(attrs.height) > 0);
  assertEquals(attrs.viewBox, `0 0 ${attrs.width} ${attrs.height}`);
  assert(/sans-serif/.test(attrs["font-family"]));
  assert(!/<script|href=|@import|url\(/i.test(svg));
  assertEquals(count(svg, "http"), 1, "the namespace is the only address");
});

Deno.test("one packet element per packet, in order, carrying the packet's data", () => {
  const result = run(BLOG, DEAD_PEER, NAT);
  const svg = renderSvg(result);
  const packets = result.scenarios.flatMap((s) => s.packets);
  assertEquals(count(svg, 'class="packet'), packets.length);
  const groups = packetGroups(svg);
  assertEquals(groups.length, packets.length);
  groups.forEach(({ attrs }, i) => {
    const p = packets[i];
    assertEquals(attrs["data-seconds"], String(p.seconds));
    assertEquals([attrs["data-from"], attrs["data-to"]], [p.from, p.to]);
    assertEquals([attrs["data-kind"], attrs["data-fate"]], [p.kind, p.fate]);
    const classes = attrs.class.split(" ");
    assertEquals(classes[0], "packet");
    assert(classes.includes(`kind-${p.kind.replace(" ", "-")}`), attrs.class);
    assert(classes.includes(`fate-${p.fate}`), attrs.class);
  });
});

Deno.test("each scenario has a heading with its name, title and verdict, and its lanes", () => {
  const svg = renderSvg(run(BLOG, DEAD_PEER, NAT));
  assert(svg.includes("blog — what blog shows"));
  assert(svg.includes("nat-idle-above — what nat-idle-above shows"));
  assertEquals(count(svg, ">PASS</text>"), 2);
  assertEquals(count(svg, ">FAIL</text>"), 1);
  assertEquals(count(svg, 'class="lane" data-host="router"'), 1);
  assertEquals(count(svg, 'class="lane" data-host="client"'), 3);
  assert(laneX(svg, "client") < laneX(svg, "router"));
  assert(laneX(svg, "router") < laneX(svg, "server"));
});

Deno.test("a packet dropped at the router ends in an X on the router's lane", () => {
  const svg = renderSvg(run(NAT));
  const router = laneX(svg, "router");
  const dropped = packetGroups(svg).filter((g) => g.attrs["data-fate"] === "dropped-at-router");
  assertEquals(dropped.length, 2);
  for (const { body } of dropped) {
    assert(Math.abs(xMarkX(body) - router) < 1, body);
    assert(!body.includes("arrowhead"), "a dropped packet has no arrowhead");
    assert(body.includes("dropped by router"));
  }
  const delivered = packetGroups(svg).filter((g) => g.attrs["data-fate"] === "delivered");
  assert(delivered.every(({ body }) => !body.includes("x-mark") && body.includes("arrowhead")));
});

Deno.test("a lost packet ends in an X halfway to its receiver", () => {
  const svg = renderSvg(run(DEAD_PEER));
  const halfway = (laneX(svg, "client") + laneX(svg, "server")) / 2;
  const lost = packetGroups(svg).filter((g) => g.attrs["data-fate"] === "lost");
  assertEquals(lost.length, 5);
  for (const { body } of lost) {
    assert(Math.abs(xMarkX(body) - halfway) < 1, body);
    assert(body.includes("lost: cable cut"));
  }
});

Deno.test("without a router lane, a packet dropped at the router ends halfway", () => {
  const odd = scenario("odd", ["client", "server"], {
    packets: [packet(1, "server", ".", "keepalive probe", "dropped-at-router")],
  });
  const svg = renderSvg(run(odd));
  const [group] = packetGroups(svg);
  const halfway = (laneX(svg, "client") + laneX(svg, "server")) / 2;
  assert(Math.abs(xMarkX(group.body) - halfway) < 1);
});

Deno.test("moments and the router's conntrack entry are drawn", () => {
  const svg = renderSvg(run(DEAD_PEER, NAT));
  assertEquals(count(svg, 'class="moment"'), 3);
  assert(/class="moment" data-seconds="2" data-host="server">[\s\S]*?cable cut</.test(svg));
  assert(svg.includes("timed out (ETIMEDOUT)"));
  const dots = [
    ...svg.matchAll(/class="moment" data-seconds="[^"]*" data-host="(\w+)"><circle cx="([\d.]+)"/g),
  ];
  assertEquals(dots.length, 3);
  for (const [, host, cx] of dots) assertEquals(Number(cx), laneX(svg, host), host);
  assertEquals(count(svg, 'class="conntrack-entry"'), 2);
  assertEquals(count(svg, 'class="conntrack-forgotten" data-seconds="32"'), 1);
  assertEquals(count(svg, "router forgets the flow"), 1);
  const bar = must(
    svg.match(/class="conntrack-entry"[^>]* x="([\d.]+)"[^>]* width="([\d.]+)"/),
    "no bar",
  );
  assertEquals(Number(bar[1]) + Number(bar[2]) / 2, laneX(svg, "router"));
  assertEquals(count(renderSvg(run(BLOG)), "router forgets the flow"), 0);
});

Deno.test("time grows downwards, strictly, and close packets get rows of their own", () => {
  const svg = renderSvg(run(BLOG));
  const ys = packetGroups(svg).map((g) => arrowY(g.body));
  for (let i = 1; i < ys.length; i++) {
    assert(ys[i] - ys[i - 1] >= 15, `rows ${i - 1} and ${i} overlap: ${ys}`);
  }
  assert(ys[6] - ys[4] > 9 * 15, "ten idle seconds take more room than a crowded row");
  for (const tick of ["0 s", "2 s", "14 s", "16 s"]) assert(svg.includes(`>${tick}</text>`), tick);
  assert(!svg.includes(">18 s</text>"));
});

Deno.test("probes, answers, retransmissions and resets look different from the rest", () => {
  const svg = renderSvg(run(BLOG, DEAD_PEER, NAT));
  const look = (kind: string) => {
    const group = must(packetGroups(svg).find((g) => g.attrs["data-kind"] === kind), kind);
    const line = attributes(must(group.body.match(/<line class="arrow"[^>]*>/), kind)[0]);
    return `${line.stroke} ${line["stroke-dasharray"] ?? "solid"} ${line["stroke-width"]}`;
  };
  const looks = [
    "handshake",
    "data",
    "keepalive probe",
    "probe answered",
    "retransmission",
    "reset",
  ]
    .map(look);
  assertEquals(new Set(looks).size, looks.length, looks.join(" | "));
  assert(look("keepalive probe").includes(" 7 4 "), "probes are dashed");
  assert(look("handshake").includes(" solid "));
  for (const label of ["keepalive probe", "probe answered", "retransmission", "dropped or lost"]) {
    assert(/class="legend"/.test(svg) && svg.includes(`>${label}</text>`), label);
  }
});

Deno.test("text from the result is escaped and stripped of control characters", () => {
  const nasty = scenario("x<y & \"z\" 'w'", ["client", "server"], {
    title: "a <b>bold</b> & \"quoted\" 'title'\u0007 with a bell",
    packets: [packet(1, "client", "P.", 'data" onload="alert(1)' as PacketKind)],
    moments: [{ seconds: 2, host: "client", text: "<cut> & \u001b[31mred" }],
  });
  const result: LabResult = { ...run(nasty), notes: ['needs <tcpdump> & "conntrack"'] };
  const svg = renderSvg(result);
  assertEquals(XMLValidator.validate(svg), true);
  assert(svg.includes("x&lt;y &amp; &quot;z&quot; &apos;w&apos;"));
  assert(svg.includes("a &lt;b&gt;bold&lt;/b&gt; &amp; &quot;quoted&quot; &apos;title&apos; with"));
  assert(svg.includes("&lt;cut&gt; &amp; [31mred"));
  assert(svg.includes("needs &lt;tcpdump&gt; &amp; &quot;conntrack&quot;"));
  assert(svg.includes('data-kind="data&quot; onload=&quot;alert(1)"'));
  assert(!svg.includes("<b>") && !svg.includes('onload="') && !svg.includes("<cut>"));
  // deno-lint-ignore no-control-regex
  assert(!/[\u0000-\u0008\u000b\u000c\u000e-\u001f]/.test(svg), "a control character got through");
  assertEquals(count(svg, 'class="packet'), 1);
});

Deno.test("a run without scenarios still renders valid XML", () => {
  const svg = renderSvg({ scenarios: [], notes: [], passed: true });
  assertEquals(XMLValidator.validate(svg), true);
  assertEquals(count(svg, 'class="packet'), 0);
  assert(svg.includes("No scenarios."));
  assert(svg.includes("0 scenarios"));
});

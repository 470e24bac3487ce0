/**
 * # A router that forgets idle flows
 *
 * Three namespaces in a row, client - router - server, like a laptop behind
 * a NAT gateway or a service behind a cloud load balancer. The router
 * forwards and masquerades (the server only ever sees the router's address,
 * and has no route back except through it), and its connection tracking
 * forgets an established flow after `timeoutSeconds` without a packet, the
 * way AWS's NAT gateway does after 350 s. After that, the flow's packets are
 * dropped without a word: no FIN, no RST. Only keepalive probes sent more
 * often than the timeout keep the entry alive.
 *
 * What makes it forget cleanly (each one a pitfall when left out):
 * - `nf_conntrack_tcp_timeout_established` is the countdown, per namespace;
 * - `nf_conntrack_tcp_loose=0`: a mid-stream packet of a forgotten flow is
 *   not picked up as a new flow, it is "invalid" and dropped;
 * - only a bare SYN from the client's side may start a flow;
 * - the router's own input is closed, or its stack would answer the late
 *   packets with a RST that tells the ends what happened.
 *
 * Needs `ip` (iproute2) and `nft` (nftables). Used by `lab.ts` inside its
 * sandbox, and by tests as root with namespaces of their own.
 *
 * @module
 */
import { addCable, inNamespace, run, runOk, writeSysctl } from "./netns.ts";
import { tool } from "./tools.ts";

/** The three namespaces (already made, with loopback up) and the router's memory. */
export interface RouterOptions {
  /** The client's namespace. */
  client: string;
  /** The router's namespace. */
  router: string;
  /** The server's namespace. */
  server: string;
  /** Seconds after which the router forgets an idle established flow. */
  timeoutSeconds: number;
}

/** A router built by {@linkcode buildRouter}. */
export interface Router {
  /** The client's address, on the client - router link. */
  clientAddress: string;
  /** The server's address: the client connects to it through the router. */
  serverAddress: string;
  /** The router's interface facing the client, and the one facing the server. */
  links: { clientSide: string; serverSide: string };
  /**
   * The router's connection-tracking entries for TCP flows to the server;
   * null when they cannot be read (see {@linkcode readConntrack}).
   */
  readConntrack(): Promise<ConntrackEntry[] | null>;
  /** Packets the router dropped: of flows it had forgotten (invalid), and others. */
  readDrops(): Promise<{ invalid: number; other: number }>;
}

/** One entry of the router's connection table. */
export interface ConntrackEntry {
  /** The client's address and port, as the client sent them. */
  source: string;
  /** The client's port. */
  sourcePort: number;
  /** The server's address. */
  destination: string;
  /** The server's port. */
  destinationPort: number;
  /** TCP state as conntrack tracks it (ESTABLISHED, TIME_WAIT...). */
  state: string;
  /** Seconds left before the entry is forgotten. */
  remainingSeconds: number;
}

const NET = { clientSide: "10.231.1", serverSide: "10.231.2" };

/**
 * Joins `client` - `router` - `server` with two cables, makes the router
 * forward and masquerade, and sets its memory for idle flows. Throws an
 * `Error` naming the step that failed (for example a missing `nft`).
 */
export async function buildRouter(options: RouterOptions): Promise<Router> {
  const links = { clientSide: "to-client", serverSide: "to-server" };
  await addCable(
    { ns: options.client, link: "to-router", address: `${NET.clientSide}.2/24` },
    { ns: options.router, link: links.clientSide, address: `${NET.clientSide}.1/24` },
  );
  await addCable(
    { ns: options.router, link: links.serverSide, address: `${NET.serverSide}.1/24` },
    { ns: options.server, link: "to-router", address: `${NET.serverSide}.2/24` },
  );
  // The client reaches everything through the router; the server has no
  // route to the client's network at all: its answers go to the router's
  // address, and only the NAT sends them on.
  await runOk([
    tool("ip"),
    "-n",
    options.client,
    "route",
    "add",
    "default",
    "via",
    `${NET.clientSide}.1`,
  ]);
  await loadRules(options.router, links);
  await writeSysctl(options.router, "net.ipv4.ip_forward", 1);
  await writeSysctl(options.router, "net.netfilter.nf_conntrack_tcp_loose", 0);
  await writeSysctl(
    options.router,
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    options.timeoutSeconds,
  );
  return {
    clientAddress: `${NET.clientSide}.2`,
    serverAddress: `${NET.serverSide}.2`,
    links,
    readConntrack: () => readConntrack(options.router),
    readDrops: () => readDrops(options.router),
  };
}

// The rules, in nft's own language. Counters are named so they can be read
// back as numbers.
function rules(links: { clientSide: string; serverSide: string }): string {
  return `
table inet lab_router {
  counter dropped_invalid {}
  counter dropped_other {}
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
    ct state invalid counter name dropped_invalid drop
    iifname "${links.clientSide}" oifname "${links.serverSide}" tcp flags & (syn | ack | fin | rst) == syn ct state new accept
    counter name dropped_other drop
  }
  chain input {
    type filter hook input priority filter; policy drop;
    iifname "lo" accept
  }
}
table ip lab_nat {
  chain postrouting {
    type nat hook postrouting priority srcnat;
    oifname "${links.serverSide}" masquerade
  }
}
`;
}

async function loadRules(router: string, links: { clientSide: string; serverSide: string }) {
  const child = new Deno.Command(tool("ip"), {
    args: ["netns", "exec", router, tool("nft"), "-f", "-"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(rules(links)));
  await writer.close();
  const output = await child.output();
  if (output.code !== 0) {
    const why = new TextDecoder().decode(output.stderr).trim().split("\n")[0];
    throw new Error(`nft in the router: ${why || `exit code ${output.code}`}`);
  }
}

/**
 * The router's TCP entries, from `/proc/net/nf_conntrack`, or else from
 * `conntrack -L` (package conntrack); null when neither works. An ordinary
 * user cannot read the file even in a namespace of their own (it belongs to
 * a root that is not mapped there), but `conntrack` asks the kernel over
 * netlink, which the namespace's capabilities allow. A line looks like
 * `ipv4 2 tcp 6 298 ESTABLISHED src=10.231.1.2 dst=10.231.2.2 sport=40000
 * dport=8888 ...`: the number after `tcp 6` is the countdown.
 */
export async function readConntrack(router: string): Promise<ConntrackEntry[] | null> {
  let output = await run([...inNamespace(router), "cat", "/proc/net/nf_conntrack"]);
  if (output.code !== 0) {
    output = await run([...inNamespace(router), tool("conntrack"), "-L"]).catch(() => output);
  }
  return output.code === 0 ? parseConntrack(output.stdout) : null;
}

/** Parses conntrack's table text (either format above) into entries. */
export function parseConntrack(text: string): ConntrackEntry[] {
  const entries: ConntrackEntry[] = [];
  for (const line of text.split("\n")) {
    const fields = line.trim().split(/\s+/);
    const tcp = fields.indexOf("tcp");
    if (tcp < 0) continue;
    const remainingSeconds = Number(fields[tcp + 2]);
    const state = fields[tcp + 3];
    const field = (name: string) =>
      fields.find((f) => f.startsWith(`${name}=`))?.slice(name.length + 1);
    const source = field("src");
    const destination = field("dst");
    if (!source || !destination || !Number.isFinite(remainingSeconds)) continue;
    entries.push({
      source,
      sourcePort: Number(field("sport")),
      destination,
      destinationPort: Number(field("dport")),
      state,
      remainingSeconds,
    });
  }
  return entries;
}

async function readDrops(router: string): Promise<{ invalid: number; other: number }> {
  const text = await runOk([...inNamespace(router), tool("nft"), "-j", "list", "counters"]);
  const counters: Record<string, number> = {};
  for (const item of JSON.parse(text).nftables ?? []) {
    if (item.counter) counters[item.counter.name] = item.counter.packets;
  }
  return { invalid: counters.dropped_invalid ?? 0, other: counters.dropped_other ?? 0 };
}

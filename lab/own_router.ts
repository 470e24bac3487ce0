/**
 * # The router's tables, read for `lab own`
 *
 * `router.ts` builds the router and counts its drops in total. For the
 * user's own program the lab says which flow each dropped packet belonged
 * to, so it adds a table of its own in the router's namespace: a chain that
 * runs just before the router's (priority `filter - 1`) and, for every
 * packet conntrack calls invalid (a packet of a flow the router no longer
 * knows: `nf_conntrack_tcp_loose=0` keeps it from being taken for a new
 * flow), counts it per port in a set. It decides nothing: the router's
 * chain drops the packet right after.
 *
 * {@linkcode readSample} reads the connection table and those counters in
 * one go (one process per sample, about twice a second).
 *
 * @module
 */
import { type ConntrackEntry, parseConntrack } from "./router.ts";
import type { DropSample } from "./own_flows.ts";
import { inNamespace, runOk } from "./netns.ts";
import { tool } from "./tools.ts";

// Sets keyed by port, each element with a counter of its own.
function countingRules(links: { clientSide: string; serverSide: string }): string {
  return `
table inet lab_own {
  set from_client {
    type inet_service
    flags dynamic
    counter
    size 65535
  }
  set from_server {
    type inet_service
    flags dynamic
    counter
    size 65535
  }
  chain forward {
    type filter hook forward priority filter - 1; policy accept;
    ct state invalid iifname "${links.clientSide}" update @from_client { tcp sport }
    ct state invalid iifname "${links.serverSide}" update @from_server { tcp dport }
  }
}
`;
}

/** Adds the counting table to the router in namespace `router`. */
export async function addFlowCounters(
  router: string,
  links: { clientSide: string; serverSide: string },
): Promise<void> {
  const child = new Deno.Command(inNamespace(router)[0], {
    args: [...inNamespace(router).slice(1), tool("nft"), "-f", "-"],
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(countingRules(links)));
  await writer.close();
  const output = await child.output();
  if (output.code !== 0) {
    const why = new TextDecoder().decode(output.stderr).trim().split("\n")[0];
    throw new Error(`nft in the router (per-flow counters): ${why || `exit code ${output.code}`}`);
  }
}

const SEPARATOR = "--- lab own: counters ---";

// The connection table from /proc (root) or else conntrack (an ordinary
// user, see router.ts's readConntrack), then the counting table as JSON.
const SAMPLE = `
if ! cat /proc/net/nf_conntrack 2>/dev/null; then
  "$0" -L 2>/dev/null || echo "no-conntrack"
fi
echo "${SEPARATOR}"
"$1" -j list table inet lab_own`;

/** One look at the router. */
export interface RouterSample {
  /** Its TCP entries; null when the table could not be read. */
  entries: ConntrackEntry[] | null;
  /** Its invalid packets so far, per port. */
  drops: DropSample;
}

/** Reads the router's connection table and the per-port drop counters. */
export async function readSample(router: string): Promise<RouterSample> {
  const text = await runOk([
    ...inNamespace(router),
    "sh",
    "-c",
    SAMPLE,
    tool("conntrack"),
    tool("nft"),
  ]);
  const at = text.indexOf(SEPARATOR);
  const table = at < 0 ? "" : text.slice(0, at);
  const counters = at < 0 ? "" : text.slice(at + SEPARATOR.length);
  return {
    entries: at < 0 || /^no-conntrack$/m.test(table) ? null : parseConntrack(table),
    drops: parseCounters(counters),
  };
}

/**
 * The per-port counters from `nft -j list table inet lab_own`: each set
 * element is `{ "elem": { "val": PORT, "counter": { "packets": N } } }`.
 *
 * @example
 * ```ts
 * import { parseCounters } from "./own_router.ts";
 * const json = JSON.stringify({ nftables: [{ set: { name: "from_client", elem: [
 *   { elem: { val: 40000, counter: { packets: 7, bytes: 420 } } },
 * ] } }] });
 * parseCounters(json).fromClient.get(40000); // 7
 * ```
 */
export function parseCounters(json: string): DropSample {
  const drops: DropSample = { fromClient: new Map(), fromServer: new Map() };
  let document: { nftables?: unknown[] };
  try {
    document = JSON.parse(json);
  } catch {
    return drops;
  }
  for (const item of document.nftables ?? []) {
    const set = (item as { set?: { name?: string; elem?: unknown[] } }).set;
    const into = set?.name === "from_client"
      ? drops.fromClient
      : set?.name === "from_server"
      ? drops.fromServer
      : null;
    if (!into) continue;
    for (const element of set?.elem ?? []) {
      const inner = (element as { elem?: { val?: unknown; counter?: { packets?: unknown } } })
        .elem;
      const port = inner?.val;
      const packets = inner?.counter?.packets;
      if (typeof port === "number" && typeof packets === "number") into.set(port, packets);
    }
  }
  return drops;
}

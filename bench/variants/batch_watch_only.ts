/**
 * # The batch watcher alone: every probe counted, none printed
 *
 * @run deno run --allow-net --allow-ffi bench/variants/batch_watch_only.ts --port 0 --idle 2 --interval 2 --count 3
 *
 * The bench's row for what `watchKeepAliveAll` (`keepalive.ts`, one
 * `NETLINK_SOCK_DIAG` look at every connection each second) costs by
 * itself. `server.ts --watch` also prints a line for every probe it sees:
 * at 10,000 connections probed every 2 s, that is 5,000 lines a second,
 * which costs about as much again. Here the probes are only counted.
 *
 * It listens (`--hostname`, `--port`, `--backlog`), sets `--idle`,
 * `--interval`, `--count` on the listener, accepts and holds every
 * connection without reading it (nothing to do while they are idle), and
 * on SIGTERM takes the watcher's last look and prints
 * `{"event":"watched","probes":N}` before it exits. Its other lines are
 * `listening` and `accepted`, named as `server.ts --json` names them.
 *
 * @module
 */
import { parseArgs } from "@std/cli/parse-args";
import { getKeepAlive, setKeepAlive, watchKeepAliveAll } from "../../keepalive.ts";

function integer(flags: Record<string, string | undefined>, name: string, fallback: string) {
  const text = flags[name] ?? fallback;
  if (!/^\d+$/.test(text)) {
    console.error(
      `batch_watch_only: --${name} must be a whole number, not ${JSON.stringify(text)}`,
    );
    Deno.exit(2);
  }
  return Number(text);
}

const flags = parseArgs(Deno.args, {
  string: ["hostname", "port", "backlog", "idle", "interval", "count"],
  default: { hostname: "127.0.0.1" },
});
const listener = Deno.listen({
  hostname: flags.hostname,
  port: integer(flags, "port", "8888"),
  tcpBacklog: integer(flags, "backlog", "511"),
});
setKeepAlive(listener, {
  time: integer(flags, "idle", "2") * 1000,
  interval: integer(flags, "interval", "2") * 1000,
  retries: integer(flags, "count", "3"),
});
const { hostname, port } = listener.addr;
console.log(JSON.stringify({ event: "listening", address: `${hostname}:${port}` }));

let probes = 0;
const watcher = watchKeepAliveAll({ hostname, port }, () => probes++, {
  limits: getKeepAlive(listener),
});
Deno.addSignalListener("SIGTERM", () => {
  watcher.stop(); // the last look: probes since the one before
  console.log(JSON.stringify({ event: "watched", probes }));
  Deno.exit(0);
});

// Accept and hold. The accepted lines are few and rare; printing them
// synchronously is fine here.
const held: Deno.TcpConn[] = [];
for await (const conn of listener) {
  conn.setKeepAlive(true);
  held.push(conn);
  console.log(JSON.stringify({ event: "accepted", open: held.length }));
}

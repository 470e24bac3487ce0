/**
 * # The batch watcher alone: every probe counted, none printed
 *
 * @run deno run --allow-net --allow-ffi bench/variants/batch_watch_only.ts --port 0 --idle 2 --interval 2 --count 3
 *
 * The bench's row for what `watchKeepAliveAll` (`@kakit/keepalive`, one
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
import { parseFlags, parseHostname, parseInteger } from "../../tools/cli.ts";
import { getKeepAlive, setKeepAlive, watchKeepAliveAll } from "@kakit/keepalive";

// The kit's strict flags; anything wrong is one line and exit code 2.
function start() {
  const flags = parseFlags(Deno.args, {
    string: ["hostname", "port", "backlog", "idle", "interval", "count"],
    boolean: [],
    default: {
      hostname: "127.0.0.1",
      port: "8888",
      backlog: "511",
      idle: "2",
      interval: "2",
      count: "3",
    },
  });
  const options = {
    hostname: parseHostname("--hostname", flags.hostname!),
    port: parseInteger("--port", flags.port!, 0, 65535),
    tcpBacklog: parseInteger("--backlog", flags.backlog!, 1, 65535),
    time: parseInteger("--idle", flags.idle!, 1, 32767) * 1000,
    interval: parseInteger("--interval", flags.interval!, 1, 32767) * 1000,
    retries: parseInteger("--count", flags.count!, 1, 127),
  };
  const { hostname, port, tcpBacklog, time, interval, retries } = options;
  const listener = Deno.listen({ hostname, port, tcpBacklog });
  setKeepAlive(listener, { time, interval, retries });
  return listener;
}

let listener: Deno.TcpListener;
try {
  listener = start();
} catch (error) {
  console.error(
    `batch_watch_only: ${error instanceof Error ? error.message.split("\n")[0] : error}`,
  );
  Deno.exit(error instanceof Error && error.name === "UsageError" ? 2 : 1);
}
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

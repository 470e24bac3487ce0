/**
 * # server.ts's job done by node:net, for the bench's comparison row
 *
 * @run node bench/baselines/node_server.mjs [--hostname H] [--port N] [--backlog N] [--idle S]
 *
 * What `server.ts` does, written the way a Node program would: listen,
 * `setKeepAlive(true, idle)` on every connection, read (counting the bytes,
 * which are never used) until the connection ends, and say how it ended.
 * It prints one JSON line per event, with the event names of
 * `server.ts --json`, so that `bench/scale.ts` reads both the same way:
 * `listening` (with `address`), `accepted` (`peer`, `open`), `peer-closed`,
 * `reset` (ECONNRESET), `timed-out` (ETIMEDOUT) and `error`.
 *
 * Output never stalls the server: `process.stdout` to a pipe writes
 * asynchronously in Node (on POSIX), queueing what the pipe cannot take yet.
 * SIGTERM ends it. Node 20 or later, no dependencies.
 *
 * @module
 */
import net from "node:net";
import { parseArgs } from "node:util";

const USAGE = "usage: node bench/baselines/node_server.mjs [--hostname H] [--port N] " +
  "[--backlog N] [--idle S]";

// ## The command line

function parseCommandLine() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        hostname: { type: "string", default: "127.0.0.1" },
        port: { type: "string", default: "8888" },
        backlog: { type: "string", default: "511" },
        idle: { type: "string" },
      },
    }));
  } catch (error) {
    fail(`${error.message}; ${USAGE}`);
  }
  const port = integer("--port", values.port, 0, 65535);
  const backlog = integer("--backlog", values.backlog, 1, 65535);
  // Node's setKeepAlive takes the idle time in milliseconds; 60 s unless told.
  const idleMs = values.idle === undefined
    ? 60_000
    : integer("--idle", values.idle, 1, 32767) * 1000;
  return { hostname: values.hostname, port, backlog, idleMs };
}

function integer(flag, text, min, max) {
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < min || value > max) {
    fail(`${flag} must be an integer from ${min} to ${max}, not ${JSON.stringify(text)}`);
  }
  return value;
}

function fail(message) {
  process.stderr.write(`node_server: ${message}\n`);
  process.exit(2);
}

function print(event) {
  process.stdout.write(`${JSON.stringify(event)}\n`);
}

// ## Listening, accepting, and keepalive on each connection

const options = parseCommandLine();
let open = 0;

const server = net.createServer((socket) => {
  // Read once, now: after the connection ends Node forgets the address.
  const peer = hostPort(socket.remoteAddress, socket.remotePort);
  open++;
  socket.setKeepAlive(true, options.idleMs);
  print({ event: "accepted", peer, open });

  // Reading is what makes the end visible; the bytes are only counted.
  let bytes = 0;
  socket.on("data", (chunk) => bytes += chunk.length);
  // A FIN: "end" (Node then ends its own side, allowHalfOpen being false).
  socket.on("end", () => print({ event: "peer-closed", peer, bytes }));
  socket.on("error", (error) => {
    if (error.code === "ECONNRESET") print({ event: "reset", peer, bytes });
    else if (error.code === "ETIMEDOUT") {
      print({ event: "timed-out", peer, bytes, code: error.code });
    } else print({ event: "error", peer, message: error.message });
  });
  socket.on("close", () => open--);
});

server.on("error", (error) => print({ event: "error", peer: null, message: error.message }));
server.listen({ host: options.hostname, port: options.port, backlog: options.backlog }, () => {
  const { address, port } = server.address();
  print({ event: "listening", address: hostPort(address, port) });
});

/** `host:port`, with an IPv6 host in brackets, as server.ts writes addresses. */
function hostPort(host, port) {
  return host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
}

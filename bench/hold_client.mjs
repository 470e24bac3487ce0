/**
 * # The bench's client: many idle connections, opened and ended on command
 *
 * @run node bench/hold_client.mjs --host 127.0.0.1 --port 8888 [--batch 500]
 *
 * `bench/scale.ts` starts one of these per server it measures and drives it
 * through stdin, one command a line; each command gets one JSON line back on
 * stdout:
 *
 * - `open N`: opens N more connections, `--batch` at a time (each batch waits
 *   until all of it connected or failed), and holds them idle:
 *   `{"opened":N,"total":T,"ms":...}`, plus `"failed"` and `"errors"` (count
 *   per error code) when some could not connect;
 * - `close`: ends every connection with a FIN (`socket.destroy()` of an idle
 *   socket closes it, and the kernel sends a FIN):
 *   `{"closing":N,"at":EPOCH_MS}`, `at` being the wall-clock time taken just
 *   before the first one, to compare with when the server noticed;
 * - `reset`: the same with `socket.resetAndDestroy()`, so each sends a RST;
 * - `quit`: ends every connection and exits.
 *
 * The connections never send a byte and never enable keepalive, so every
 * keepalive probe the kernel counts in the bench's namespace is the server's.
 * Errors are reported in a reply (or as `{"error":...}`), never as a stack
 * trace. Node 20 or later, no dependencies.
 *
 * @module
 */
import net from "node:net";
import { performance } from "node:perf_hooks";
import readline from "node:readline";
import { parseArgs } from "node:util";

const USAGE = "usage: node bench/hold_client.mjs --host HOST --port PORT [--batch 500]";

// ## The command line

function parseCommandLine() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        host: { type: "string", default: "127.0.0.1" },
        port: { type: "string" },
        batch: { type: "string", default: "500" },
      },
    }));
  } catch (error) {
    fail(`${error.message}; ${USAGE}`);
  }
  const port = Number(values.port);
  const batch = Number(values.batch);
  if (values.port === undefined) fail(`--port is missing; ${USAGE}`);
  if (!/^\d+$/.test(values.port) || port < 1 || port > 65535) {
    fail(`--port must be an integer from 1 to 65535, not ${JSON.stringify(values.port)}; ${USAGE}`);
  }
  if (!Number.isInteger(batch) || batch < 1) fail(`--batch must be a positive integer; ${USAGE}`);
  return { host: values.host, port, batch };
}

function fail(message) {
  process.stderr.write(`hold_client: ${message}\n`);
  process.exit(2);
}

// ## The connections held

const options = parseCommandLine();
/** Every connection that is open (connected, and not ended by us or the server). */
const held = new Set();

/** Opens one connection; resolves with null once connected, or with its error code. */
function connectOne() {
  return new Promise((resolve) => {
    const socket = net.connect({ host: options.host, port: options.port });
    socket.once("connect", () => {
      held.add(socket);
      resolve(null);
    });
    // Before the connection, an error is this connection failing; after it,
    // the server ended it (a reset, when the server is killed): either way it
    // is no longer held, and nothing is thrown.
    socket.on("error", (error) => {
      held.delete(socket);
      resolve(error.code ?? error.message);
    });
    socket.once("close", () => held.delete(socket));
  });
}

/** `open N`: N more connections, a batch at a time. */
async function open(count) {
  const start = performance.now();
  const errors = {};
  let failed = 0;
  for (let done = 0; done < count;) {
    const size = Math.min(options.batch, count - done);
    const outcomes = await Promise.all(Array.from({ length: size }, connectOne));
    for (const code of outcomes) {
      if (code === null) continue;
      failed++;
      errors[code] = (errors[code] ?? 0) + 1;
    }
    done += size;
  }
  const reply = {
    opened: count - failed,
    total: held.size,
    ms: Math.round((performance.now() - start) * 10) / 10,
  };
  return failed === 0 ? reply : { ...reply, failed, errors };
}

/**
 * `close` and `reset`: ends every connection at once. The time is taken
 * before the first one ends, as a wall-clock time (milliseconds since the
 * epoch, with a fraction) that the bench compares with its own clock.
 */
function endAll(how) {
  const sockets = [...held];
  held.clear();
  const at = performance.timeOrigin + performance.now();
  for (const socket of sockets) {
    if (how === "reset") socket.resetAndDestroy();
    else socket.destroy();
  }
  return { closing: sockets.length, at };
}

// ## The commands, one a line, answered in order

async function obey(line) {
  const [command, argument] = line.trim().split(/\s+/);
  switch (command) {
    case "open": {
      const count = Number(argument);
      if (!Number.isInteger(count) || count < 0) {
        return { error: `open needs a count, not ${line}` };
      }
      return await open(count);
    }
    case "close":
      return endAll("close");
    case "reset":
      return endAll("reset");
    case "quit":
      endAll("close");
      process.exit(0);
      break;
    default:
      return { error: `unknown command: ${line.trim()}` };
  }
}

const lines = readline.createInterface({ input: process.stdin });
let previous = Promise.resolve();
lines.on("line", (line) => {
  if (line.trim() === "") return;
  previous = previous.then(async () => {
    let reply;
    try {
      reply = await obey(line);
    } catch (error) {
      reply = { error: String(error?.message ?? error).split("\n")[0] };
    }
    process.stdout.write(`${JSON.stringify(reply)}\n`);
  });
});
// The bench went away: nobody will ask for anything more.
lines.on("close", () => previous.then(() => process.exit(0)));

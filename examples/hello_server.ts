/**
 * # A tiny HTTP server for the fetch example
 *
 * @run deno run --allow-net examples/hello_server.ts [--host ADDRESS] [--port 8080]
 *
 * Answers every request with the port the request came from, so a client
 * can tell whether two requests shared one connection (behind the lab's
 * router, that is the router's port for the flow). It runs until it is
 * stopped (SIGTERM or Ctrl-C).
 *
 * @module
 */
import { parseArgs } from "@std/cli/parse-args";

const flags = parseArgs(Deno.args, { string: ["host", "port"], default: { port: "8080" } });
const server = Deno.serve({
  hostname: flags.host ?? "0.0.0.0",
  port: Number(flags.port),
  onListen: ({ hostname, port }) => console.log(`listening on ${hostname} port ${port}`),
}, (_request, info) => new Response(`${info.remoteAddr.port}\n`));
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, () => server.shutdown());
}
await server.finished;

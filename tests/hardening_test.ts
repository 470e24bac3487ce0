/**
 * server.ts under stress, with both engines (`--engine deno`, the default,
 * and `--engine epoll`): a descriptor table that runs out, an exact
 * `--max-connections`, a thousand resets at once, a 1 GiB flood on one
 * connection beside idle ones, and SIGTERM with thousands open. Smaller
 * numbers than the benchmark's (`deno task bench`), same faults. Loopback
 * only; no root needed (prlimit lowers the server's own limit), except for
 * the burst of 12,000, which needs a namespace whose listen queue can hold them.
 */
import { assert, assertEquals } from "@std/assert";
import net from "node:net";
import {
  assertSummaryAddsUp,
  delay,
  netnsTest,
  runOk,
  type ScriptProcess,
  spawnScript,
  withNetns,
} from "./_helpers.ts";

const ENGINES = [
  { engine: "deno", permissions: ["--allow-net"] },
  { engine: "epoll", permissions: ["--allow-net", "--allow-ffi"] },
];

function startServer(
  engine: (typeof ENGINES)[number],
  args: string[],
  prefix: string[] = [],
): ScriptProcess {
  return spawnScript(
    "server.ts",
    ["--hostname", "127.0.0.1", "--port", "0", "--json", "--engine", engine.engine, ...args],
    { permissions: engine.permissions, prefix },
  );
}

async function listeningPort(server: ScriptProcess): Promise<number> {
  const listening = await server.waitForEvent("listening");
  return Number(String(listening.address).match(/:(\d+)$/)![1]);
}

function count(server: ScriptProcess, event: string): number {
  return server.lines.filter((line) => line.includes(`"event":"${event}"`)).length;
}

async function waitForCount(server: ScriptProcess, event: string, n: number, timeoutMs = 20_000) {
  const deadline = performance.now() + timeoutMs;
  while (count(server, event) < n) {
    if (performance.now() > deadline) {
      throw new Error(`${count(server, event)} "${event}" events after ${timeoutMs} ms, not ${n}`);
    }
    await delay(20);
  }
}

// Connections from this process (the limit here is 20,000), in batches.
async function openConnections(port: number, n: number, batch = 200): Promise<net.Socket[]> {
  const sockets: net.Socket[] = [];
  for (let done = 0; done < n; done += batch) {
    sockets.push(
      ...await Promise.all(
        Array.from(
          { length: Math.min(batch, n - done) },
          () =>
            new Promise<net.Socket>((resolve, reject) => {
              const socket = net.connect(port, "127.0.0.1", () => resolve(socket));
              socket.once("error", reject);
            }),
        ),
      ),
    );
  }
  for (const socket of sockets) socket.on("error", () => {});
  return sockets;
}

async function quit(server: ScriptProcess): Promise<Record<string, unknown>> {
  await server.write("\n");
  const summary = await server.waitForEvent("summary", 20_000);
  assertSummaryAddsUp(summary);
  assertEquals((await server.finish()).code, 0);
  return summary;
}

function residentKiB(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  return Number(status.match(/^VmRSS:\s+(\d+) kB$/m)![1]);
}

for (const engine of ENGINES) {
  const name = `--engine ${engine.engine}`;

  Deno.test(`${name}: 400 connections against 256 descriptors, then released: it survives and accepts again`, async () => {
    await using server = startServer(engine, ["--backlog", "1024"], [
      "prlimit",
      "--nofile=256:256",
      "--",
    ]);
    const port = await listeningPort(server);
    const sockets = await openConnections(port, 400);
    await server.waitForEvent("accept-error");
    for (const socket of sockets) socket.destroy();
    await server.waitForEvent("accept-resumed", 20_000);
    // Every one of the 400 is accounted for, then a new one is accepted.
    const [late] = await openConnections(port, 1);
    await server.waitForLine((line) =>
      line.includes(`:${late.localPort}"`) && line.includes('"accepted"')
    );
    late.destroy();
    await waitForCount(server, "peer-closed", count(server, "accepted"));
    const summary = await quit(server);
    assertEquals(summary.connections, 401);
    assertEquals([summary.errors, summary.closedOnQuit], [0, 0]);
    assert(Number(summary.acceptPauses) >= 1);
  });

  Deno.test(`${name}: --max-connections 100 keeps exactly 100 of 150`, async () => {
    await using server = startServer(engine, ["--max-connections", "100"]);
    const port = await listeningPort(server);
    const sockets = await openConnections(port, 150);
    await waitForCount(server, "rejected", 50);
    assertEquals(count(server, "accepted"), 100);
    for (const socket of sockets) socket.destroy();
    const summary = await quit(server);
    assertEquals([summary.accepted, summary.rejected, summary.errors], [100, 50, 0]);
  });

  Deno.test(`${name}: 1,000 connections reset at once are each counted as a reset`, async () => {
    await using server = startServer(engine, ["--backlog", "1024", "--max-connections", "2000"]);
    const port = await listeningPort(server);
    const sockets = await openConnections(port, 1000);
    await waitForCount(server, "accepted", 1000);
    for (const socket of sockets) socket.resetAndDestroy();
    await waitForCount(server, "reset", 1000);
    const summary = await quit(server);
    assertEquals([summary.reset, summary.errors, summary.peerClosed], [1000, 0, 0]);
  });

  Deno.test(`${name}: a 1 GiB flood on one connection, 200 idle beside it: memory bounded, every byte counted`, async () => {
    await using server = startServer(engine, []);
    const port = await listeningPort(server);
    const idle = await openConnections(port, 200);
    const [flood] = await openConnections(port, 1);
    await waitForCount(server, "accepted", 201);
    // (Node forgets a socket's port once it is closed.)
    const [floodPort, idlePort] = [flood.localPort, idle[0].localPort];
    const before = residentKiB(server.child.pid);
    const chunk = new Uint8Array(1 << 20).fill(0x1b); // escape bytes, never printed
    let peak = before;
    for (let i = 0; i < 1024; i++) {
      if (!flood.write(chunk)) await new Promise((resolve) => flood.once("drain", resolve));
      if (i % 64 === 0) peak = Math.max(peak, residentKiB(server.child.pid));
    }
    flood.end();
    const closed = JSON.parse(
      await server.waitForLine(
        (line) => line.includes(`:${floodPort}"`) && line.includes("peer-closed"),
        60_000,
      ),
    );
    assertEquals(closed.bytes, 1 << 30);
    // An idle one's close is still noticed after the flood.
    idle[0].destroy();
    await server.waitForLine((line) =>
      line.includes(`:${idlePort}"`) && line.includes("peer-closed")
    );
    assert(
      peak - before < 64 * 1024,
      `resident memory grew ${((peak - before) / 1024).toFixed(1)} MiB`,
    );
    assert(
      !server.lines.some((line) => line.includes("\x1b")),
      "a peer's bytes reached the output",
    );
    for (const socket of idle) socket.destroy();
    await quit(server);
  });

  Deno.test(`${name}: peers that reset while the server quits are counted once, as resets`, async () => {
    await using server = startServer(engine, ["--backlog", "1024"]);
    const port = await listeningPort(server);
    const sockets = await openConnections(port, 400);
    await waitForCount(server, "accepted", 400);
    // Stopped, the server sees the resets and the SIGTERM together when it
    // goes on: some connections end by themselves while it is quitting.
    server.child.kill("SIGSTOP");
    try {
      for (const socket of sockets.slice(0, 200)) socket.resetAndDestroy();
      await delay(200);
      server.child.kill("SIGTERM");
      await delay(100);
    } finally {
      server.child.kill("SIGCONT");
    }
    const summary = await server.waitForEvent("summary", 20_000);
    assertSummaryAddsUp(summary);
    assertEquals(summary.accepted, 400);
    assertEquals(
      Number(summary.reset) + Number(summary.closedOnQuit),
      400,
      JSON.stringify(summary),
    );
    assert(Number(summary.reset) <= 200);
    assertEquals((await server.finish()).code, 0);
    for (const socket of sockets) socket.destroy();
  });

  Deno.test(`${name}: SIGTERM with 2,000 open: exit 0 and a summary that adds up`, async () => {
    await using server = startServer(engine, ["--backlog", "1024", "--max-connections", "5000"]);
    const port = await listeningPort(server);
    const sockets = await openConnections(port, 2000);
    await waitForCount(server, "accepted", 2000);
    const started = performance.now();
    server.child.kill("SIGTERM");
    const summary = await server.waitForEvent("summary", 20_000);
    assertSummaryAddsUp(summary);
    assertEquals([summary.accepted, summary.closedOnQuit, summary.errors], [2000, 2000, 0]);
    assertEquals((await server.finish()).code, 0);
    assert(performance.now() - started < 10_000, "quit within 10 s");
    for (const socket of sockets) socket.destroy();
  });

  netnsTest(
    `${name}: 16,000 connections opened as fast as a client can, then closed at once, stdout a file: no line dropped`,
    async () => {
      await withNetns(async (ns) => {
        // A listen queue that holds the whole burst (net.core.somaxconn is
        // per namespace; this one is the test's own).
        await runOk([...ns.exec, "sysctl", "-q", "-w", "net.core.somaxconn=16384"]);
        const dir = await Deno.makeTempDir({ prefix: "kakit-burst-" });
        const file = `${dir}/events.jsonl`;
        const flags = [
          "--hostname",
          "127.0.0.1",
          "--port",
          "0",
          "--json",
          "--engine",
          engine.engine,
        ]
          .concat(["--backlog", "16384", "--max-connections", "20000"]);
        // A regular file takes every write at once: nothing may be dropped.
        const server = new Deno.Command(ns.exec[0], {
          args: [...ns.exec.slice(1), "sh", "-c", `exec "$@" > ${file}`, "sh", Deno.execPath()]
            .concat(["run", ...engine.permissions, "server.ts", ...flags]),
          cwd: `${import.meta.dirname}/..`,
          stdin: "null",
        }).spawn();
        const lines = async (event: string) =>
          (await Deno.readTextFile(file).catch(() => "")).split("\n")
            .filter((line) => line.includes(`"event":"${event}"`));
        const waitFor = async (event: string, n: number) => {
          const deadline = performance.now() + 60_000;
          while ((await lines(event)).length < n && (await lines("output-dropped")).length === 0) {
            assert(performance.now() < deadline, `${(await lines(event)).length} ${event} in 60 s`);
            await delay(100);
          }
        };
        try {
          await waitFor("listening", 1);
          const [listening] = await lines("listening");
          const port = JSON.parse(listening).address.match(/:(\d+)$/)[1];
          const client = new Deno.Command(ns.exec[0], {
            args: [...ns.exec.slice(1), "node", "bench/hold_client.mjs", "--port", port],
            cwd: `${import.meta.dirname}/..`,
            stdin: "piped",
            stdout: "piped",
            stderr: "inherit",
          }).spawn();
          const replies = client.stdout.pipeThrough(new TextDecoderStream()).getReader();
          const writer = client.stdin.getWriter();
          // 16,000 connections as fast as a client opens them (500 at a
          // time), then all closed at once: bursts of lines the writer must
          // take while the descriptors keep it busy.
          for (const [command, event] of [["open 16000", "accepted"], ["close", "peer-closed"]]) {
            await writer.write(new TextEncoder().encode(`${command}\n`));
            await replies.read();
            await waitFor(event, 16000);
          }
          server.kill("SIGTERM");
          assertEquals((await server.status).code, 0);
          await writer.write(new TextEncoder().encode("quit\n"));
          await writer.close();
          await replies.cancel();
          await client.status;
          assertEquals(
            await lines("output-dropped"),
            [],
            "lines were dropped though stdout took them",
          );
          const summary = JSON.parse((await lines("summary"))[0]);
          assertEquals([(await lines("accepted")).length, summary.accepted], [16000, 16000]);
          assertEquals([(await lines("peer-closed")).length, summary.peerClosed], [16000, 16000]);
        } finally {
          try {
            server.kill("SIGKILL");
          } catch { /* it exited */ }
          await server.status;
          await Deno.remove(dir, { recursive: true });
        }
      });
    },
  );
}

/**
 * Issue 18's library promises, each checked against the kernel (settings
 * read back with getsockopt), on loopback:
 *
 * - `--allow-ffi` narrowed to the C library's path is enough, and
 *   `canTuneKeepAlive()` says so, without prompting, in both cases;
 * - `setKeepAliveAll` takes a host name (every address: `localhost` is
 *   127.0.0.1 and ::1 here) and lists; a name that does not resolve is a
 *   `ResolveError` before anything is set;
 * - it finds every matching socket however far apart the descriptors are:
 *   thousands of closed numbers below and between them;
 * - `setKeepAlive` finds a connection made after thousands of closed
 *   numbers, and one made in a hole low down;
 * - `setKeepAliveAllEvery` stretches its interval when a call costs more
 *   than a twentieth of it.
 */
import { assert, assertEquals, assertThrows } from "@std/assert";
import {
  canTuneKeepAlive,
  getKeepAlive,
  keepAliveTuningSupport,
  ResolveError,
  setKeepAlive,
  setKeepAliveAll,
  setKeepAliveAllEvery,
} from "@kakit/keepalive";
import { LIBC_PATHS } from "../keepalive/_linux.ts";
import { run } from "./_helpers.ts";
import dns from "node:dns/promises";

async function pairs(count: number, listener: Deno.TcpListener) {
  const made: Deno.TcpConn[][] = [];
  for (let i = 0; i < count; i++) {
    const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
    made.push([client, await listener.accept()]);
  }
  return made;
}

Deno.test("--allow-ffi narrowed to the C library's path tunes, and canTuneKeepAlive says so", async () => {
  const libc = LIBC_PATHS.find((path) => {
    try {
      return Deno.statSync(path).isFile;
    } catch {
      return false;
    }
  });
  assert(libc, `none of ${LIBC_PATHS.join(", ")} exists here`);
  const script = await Deno.makeTempFile({ dir: ".", suffix: "_narrowed.ts" });
  try {
    await Deno.writeTextFile(
      script,
      `import { canTuneKeepAlive, getKeepAlive, keepAliveTuningSupport, setKeepAlive, setKeepAliveAll } from "@kakit/keepalive";
       import { SockDiag } from "@kakit/keepalive/sock-diag";
       const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
       console.log(JSON.stringify(keepAliveTuningSupport()));
       if (canTuneKeepAlive()) {
         setKeepAlive(listener, { time: 7_000 });
         console.log(getKeepAlive(listener).time);
         // Far from the lowest free number: a look at every descriptor, errno read on the way.
         const conn = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
         const more = Array.from({ length: 20 }, () => Deno.listen({ hostname: "127.0.0.1", port: 0 }));
         setKeepAlive(conn, { time: 8_000 });
         console.log(getKeepAlive(conn).time);
         // A host name: getaddrinfo's list read with memcpy.
         console.log(setKeepAliveAll({ time: 9_000 }, { hostname: "localhost", port: listener.addr.port }));
         // An error's text: strerror, read the same way.
         conn.close();
         try { setKeepAlive(conn, true); } catch (error) { console.log(error.code); }
         // The netlink reader.
         const diag = new SockDiag();
         console.log(diag.tcpSockets({ localPort: listener.addr.port }).length > 0);
         diag.close();
         for (const l of more) l.close();
       }
       listener.close();`,
    );
    const narrowed = await run([
      Deno.execPath(),
      "run",
      "--allow-net",
      `--allow-ffi=${libc}`,
      script,
    ]);
    assertEquals(narrowed.code, 0, narrowed.stderr);
    assertEquals(narrowed.stdout.trim().split("\n"), [
      '{"available":true}',
      "7000",
      "8000",
      "1",
      "EBADF",
      "true",
    ]);
    // Without it: false, and the reason names the narrowed flag; no prompt
    // (stdin is not a terminal here, but the call never asks anyway).
    const without = await run([Deno.execPath(), "run", "--allow-net", script]);
    assertEquals(without.code, 0, without.stderr);
    const support = JSON.parse(without.stdout.trim());
    assertEquals(support.available, false);
    assertEquals(support.missing, "permission");
    assert(support.message.includes("--allow-ffi="), support.message);
  } finally {
    await Deno.remove(script);
  }
  assertEquals(canTuneKeepAlive(), true, "-A here");
  assertEquals(keepAliveTuningSupport(), { available: true });
});

Deno.test("setKeepAliveAll takes a host name (every address) and lists; an unknown name is a ResolveError", async () => {
  using v4 = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  let v6: Deno.TcpListener | null = null;
  try {
    v6 = Deno.listen({ hostname: "::1", port: v4.addr.port });
  } catch { /* no IPv6 loopback: the name still resolves to 127.0.0.1 */ }
  const conns: Deno.TcpConn[] = [];
  try {
    conns.push(await Deno.connect({ hostname: "127.0.0.1", port: v4.addr.port }));
    conns.push(await v4.accept());
    if (v6) {
      conns.push(await Deno.connect({ hostname: "::1", port: v4.addr.port }));
      conns.push(await v6.accept());
    }
    const [toV4, , toV6] = conns;
    // localhost: what the system's resolver says (node:dns, as the drivers
    // resolve): 127.0.0.1, and ::1 where /etc/hosts has it.
    const addresses = (await dns.lookup("localhost", { all: true })).map((a) => a.address);
    const tuned = setKeepAliveAll({ time: 11_000 }, { hostname: "localhost", port: v4.addr.port });
    const expected = [toV4, toV6].filter((conn) =>
      conn && addresses.includes(conn.remoteAddr.hostname)
    );
    assertEquals(tuned, expected.length, `localhost is ${addresses.join(", ")}`);
    for (const conn of expected) assertEquals(getKeepAlive(conn!).time, 11_000);
    // A list: two peers, by address.
    const list = [{ hostname: "127.0.0.1", port: v4.addr.port }, {
      hostname: "::1",
      port: v4.addr.port,
    }];
    assertEquals(setKeepAliveAll({ time: 12_000 }, list), v6 ? 2 : 1);
    assertEquals(getKeepAlive(toV4).time, 12_000);
    // A name that does not resolve: an error before anything is set.
    const error = assertThrows(
      () =>
        setKeepAliveAll({ time: 13_000 }, [{ hostname: "127.0.0.1" }, {
          hostname: "no-such-host.invalid",
        }]),
      ResolveError,
      "no-such-host.invalid",
    );
    assert(["EAI_NONAME", "EAI_AGAIN", "EAI_FAIL", "EAI_NODATA"].includes(error.code), error.code);
    assertEquals(getKeepAlive(toV4).time, 12_000, "set before the name was refused");
    assertThrows(() => setKeepAliveAll(true, []), TypeError, "empty list");
    // Nothing that would read as {} (every connection) or skip an entry:
    // a hole in a list, a Map, a hidden or inherited key. Each refused
    // before anything is set.
    const port = v4.addr.port;
    // deno-lint-ignore no-sparse-arrays
    const holey = [{ hostname: "127.0.0.1", port }, , { hostname: "::1", port }];
    assertThrows(() => setKeepAliveAll({ time: 14_000 }, holey as never), TypeError, "filter[1]");
    assertThrows(() => setKeepAliveAll({ time: 14_000 }, new Map() as never), TypeError, "object");
    const hidden = Object.defineProperty({ port }, "hostnme", { value: "10.1.1.1" });
    assertThrows(() => setKeepAliveAll({ time: 14_000 }, hidden), TypeError, "hostnme");
    const inherited = Object.create({ hostname: "10.1.1.1" });
    assertThrows(() => setKeepAliveAll({ time: 14_000 }, inherited), TypeError, "object");
    assertEquals(getKeepAlive(toV4).time, 12_000, "set by a refused filter");
    assertThrows(() => setKeepAliveAll(true, [{ port: 0 }]), TypeError, "filter[0].port");
    assertThrows(() => setKeepAliveAll(true, { hostname: "bad name" }), TypeError, "host name");
    assertThrows(
      () => setKeepAliveAllEvery(1_000, true, { hostname: "no-such-host.invalid" }),
      ResolveError,
    );
  } finally {
    for (const conn of conns) conn.close();
    v6?.close();
  }
});

Deno.test("setKeepAliveAll finds every matching socket across thousands of closed numbers", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  // 1,200 pairs, then the lowest 1,100 closed: a gap of 2,200 numbers
  // below the 100 left. Then 3,000 numbers filled with files and the
  // lowest 2,000 of those closed, so more open connections lie above a
  // second gap.
  const made = await pairs(1_200, listener);
  for (const pair of made.splice(0, 1_100)) for (const conn of pair) conn.close();
  const files: Deno.FsFile[] = [];
  for (let i = 0; i < 3_000; i++) files.push(Deno.openSync("/dev/null"));
  const above = await pairs(50, listener);
  for (const file of files.splice(0, 2_900)) file.close();
  try {
    const open = [...made, ...above];
    const filter = { hostname: "127.0.0.1", port: listener.addr.port };
    assertEquals(setKeepAliveAll({ time: 21_000 }, filter), open.length);
    for (const [client] of open) assertEquals(getKeepAlive(client).time, 21_000);
    // setKeepAlive finds the newest, above the gaps, and one in a hole low down.
    const [newest] = await pairs(1, listener);
    setKeepAlive(newest[0], { time: 22_000 });
    assertEquals(getKeepAlive(newest[0]).time, 22_000);
    open.push(newest);
  } finally {
    for (const pair of [...made, ...above]) for (const conn of pair) conn.close();
    for (const file of files) file.close();
  }
});

Deno.test("setKeepAliveAllEvery never takes more than a twentieth of the loop", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const made = await pairs(2_000, listener);
  // Its first call runs inside setKeepAliveAllEvery: timed from outside,
  // that is the call's cost plus a little (checking the arguments).
  const start = performance.now();
  const every = setKeepAliveAllEvery(100, { time: 31_000 }, {});
  const cost = performance.now() - start;
  try {
    assert(every.tuned() >= 4_000, String(every.tuned()));
    // Never below everyMs, never above 20 times the call (it cannot have
    // taken longer than we saw), and above everyMs when the call took over
    // a twentieth of it. No figure of this machine's speed is asserted.
    const interval = every.intervalMs();
    assert(interval >= 100, String(interval));
    assert(
      interval <= Math.max(100, Math.ceil(20 * cost)),
      `${interval} ms after a ${cost} ms call`,
    );
    if (cost > 10) assert(interval > 100, `a ${cost.toFixed(1)} ms call, yet every ${interval} ms`);
  } finally {
    every.stop();
    for (const pair of made) for (const conn of pair) conn.close();
  }
});

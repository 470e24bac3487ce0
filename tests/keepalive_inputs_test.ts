/**
 * Tests for what @kakit/keepalive takes as input: every argument is checked at
 * the call (a TypeError there, not a failure later in a timer), a key it
 * does not take is refused (a misspelt filter key must not widen the
 * filter), and each option is read once, so that what was checked is what
 * the kernel gets: read back with getsockopt (getKeepAlive), or seen in the
 * probes the kernel sends. On loopback; no root.
 */
import { assert, assertEquals, assertThrows } from "@std/assert";
import {
  getKeepAlive,
  type ProbeEvent,
  setKeepAlive,
  setKeepAliveAll,
  setKeepAliveAllEvery,
  watchKeepAlive,
  watchKeepAliveAll,
} from "@kakit/keepalive";
import { delay } from "./_helpers.ts";

/** A connected pair on 127.0.0.1, closed with `using`. */
async function loopbackPair() {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  const server = await listener.accept();
  return {
    listener,
    client,
    server,
    [Symbol.dispose]() {
      for (const socket of [client, server, listener]) socket.close();
    },
  };
}

/**
 * An object whose `key` reads `first` once, then `later` on every read
 * after: a getter that changes between reads.
 */
function changing<T>(key: string, first: T, later: T, rest: object = {}) {
  let reads = 0;
  return Object.defineProperty({ ...rest }, key, {
    enumerable: true,
    get: () => reads++ === 0 ? first : later,
  });
}

Deno.test("setKeepAlive reads each option once: the kernel gets the value that was checked", async () => {
  using pair = await loopbackPair();
  // 1500 ms is refused (not whole seconds); read a second time, it would
  // reach setsockopt as 1.5 s, which the kernel takes as 1 s.
  setKeepAlive(pair.client, changing("time", 5_000, 1_500, { interval: 2_000 }));
  assertEquals(getKeepAlive(pair.client).time, 5_000);
  assertEquals(getKeepAlive(pair.client).interval, 2_000);
});

Deno.test("setKeepAliveAll reads each option once: the kernel gets the value that was checked", async () => {
  using pair = await loopbackPair();
  const filter = { hostname: "127.0.0.1", port: pair.listener.addr.port };
  assertEquals(setKeepAliveAll(changing("time", 6_000, 1_500), filter), 1);
  assertEquals(getKeepAlive(pair.client).time, 6_000);
});

Deno.test("setKeepAliveAllEvery checks its options once and sets exactly those on every call", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const filter = { hostname: "127.0.0.1", port: listener.addr.port };
  const errors: unknown[] = [];
  const every = setKeepAliveAllEvery(
    100,
    changing("time", 8_000, 1_500),
    filter,
    (error) => errors.push(error),
  );
  try {
    // A connection made after the first call: tuned by a later one.
    using later = await Deno.connect(filter);
    using _accepted = await listener.accept();
    await delay(350);
    assertEquals(errors, []);
    assertEquals(getKeepAlive(later).time, 8_000);
  } finally {
    every.stop();
  }
});

Deno.test("watchKeepAliveAll refuses a filter key it does not take, instead of watching every address", () => {
  const limits = { retries: 3, userTimeout: 0 };
  assertThrows(
    () => watchKeepAliveAll({ port: 8888, hostnme: "1.2.3.4" } as never, () => {}, { limits }),
    TypeError,
    'unknown filter key "hostnme": it takes port and hostname',
  );
  assertThrows(
    () => watchKeepAliveAll({ transport: "unix", port: 8888 } as never, () => {}, { limits }),
    TypeError,
    'transport "tcp", not "unix"',
  );
  // A listener's addr, transport and all, is taken as it is.
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  watchKeepAliveAll(listener.addr, () => {}, { limits }).stop();
});

Deno.test("watchKeepAliveAll and watchKeepAlive check every argument's type at the call", async () => {
  const limits = { retries: 3, userTimeout: 0 };
  const bad: [() => unknown, string][] = [
    [
      () => watchKeepAliveAll({ port: 8888 }, 5 as never, { limits }),
      "onEvent must be a function, not 5",
    ],
    [() => watchKeepAliveAll(null as never, () => {}, { limits }), "the filter must be an object"],
    [() => watchKeepAliveAll({ port: "8888" } as never, () => {}, { limits }), 'not "8888"'],
    [
      () => watchKeepAliveAll({ port: 8888, hostname: 5 } as never, () => {}, { limits }),
      "hostname must be an IP address",
    ],
    [
      () => watchKeepAliveAll({ port: 8888 }, () => {}, undefined as never),
      "options must be an object",
    ],
    [
      () => watchKeepAliveAll({ port: 8888 }, () => {}, { limits, onError: "x" } as never),
      "onError must be a function",
    ],
    [
      () => watchKeepAliveAll({ port: 8888 }, () => {}, { limits, pollMS: 50 } as never),
      'unknown watchKeepAliveAll option "pollMS"',
    ],
    [
      () => watchKeepAliveAll({ port: 8888 }, () => {}, { limits, pollMs: "50" } as never),
      'pollMs must be an integer from 10 to 60000, not "50"',
    ],
    [
      () => watchKeepAliveAll({ port: 8888 }, () => {}, { limits: { retries: 3 } } as never),
      "limits must be",
    ],
    [
      () =>
        watchKeepAliveAll(
          { port: 8888 },
          () => {},
          { limits: { ...limits, interval: "1" } } as never,
        ),
      "limits must be",
    ],
    [
      () =>
        watchKeepAliveAll({ port: 8888 }, () => {}, { limits: { ...limits, retires: 3 } } as never),
      'not "retires"',
    ],
  ];
  for (const [call, message] of bad) assertThrows(call, TypeError, message);
  // What getKeepAlive returns is what limits take.
  using pair = await loopbackPair();
  const settings = getKeepAlive(pair.listener);
  watchKeepAliveAll(pair.listener.addr, () => {}, { limits: settings }).stop();

  assertThrows(
    () => watchKeepAlive(pair.client, 5 as never),
    TypeError,
    "onEvent must be a function",
  );
  assertThrows(
    () => watchKeepAlive(pair.client, () => {}, { pollms: 50 } as never),
    TypeError,
    'unknown watchKeepAlive option "pollms": it takes pollMs',
  );
  assertThrows(
    () => watchKeepAlive(pair.client, () => {}, null as never),
    TypeError,
    "must be an object",
  );
  watchKeepAlive(pair.client, () => {}, { pollMs: 50 }).stop();
});

Deno.test("watchKeepAliveAll reads its filter once: a hostname that changes after the check still watches what was checked", async () => {
  using listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  setKeepAlive(listener, { time: 1_000, interval: 1_000, retries: 3 });
  using _client = await Deno.connect({ hostname: "127.0.0.1", port: listener.addr.port });
  using _accepted = await listener.accept();
  const events: ProbeEvent[] = [];
  // Read again, "::" would ask the kernel for IPv6 sockets only: none of
  // this IPv4 listener's connections would be watched.
  const filter = changing("hostname", "127.0.0.1", "::", { port: listener.addr.port });
  const watcher = watchKeepAliveAll(filter as never, (event) => events.push(event), {
    limits: getKeepAlive(listener),
    pollMs: 100,
  });
  try {
    // The first probe leaves 1 s after the connection's last traffic.
    for (let i = 0; i < 60 && events.length === 0; i++) await delay(100);
  } finally {
    watcher.stop();
  }
  assert(events.some((event) => event.kind === "answered"), JSON.stringify(events));
});

/**
 * Tests for the package as a package (keepalive/): it imports nothing
 * outside its folder, so a copy of the folder with an import map runs; it
 * opens no C library on import, so importing it needs no permission; its
 * exports map is the documented one; and it still exports every name the
 * old keepalive.ts did (people's code and the scripts use them).
 */
import { assert, assertEquals } from "@std/assert";
import * as keepalive from "@kakit/keepalive";
// Types cannot be listed at run time: the compiler checks these are exported.
import type {
  KeepAliveAllTimer,
  KeepAliveConnection,
  KeepAliveOption,
  KeepAliveOptions,
  KeepAliveSettings,
  KeepAliveSocket,
  KeepAliveState,
  LocalFilter,
  NodeServerLike,
  NodeSocketLike,
  NodeStreamLike,
  PeerFilter,
  PeerFilters,
  ProbeEvent,
  ProbeTiming,
  TcpSocket,
  WatchAllOptions,
} from "@kakit/keepalive";
import { ROOT_DIR, run } from "./_helpers.ts";

const PACKAGE_DIR = `${ROOT_DIR}keepalive`;

// A use of each type, so that a name missing from mod.ts fails the type check.
type _Exported = [
  KeepAliveAllTimer,
  KeepAliveConnection,
  KeepAliveOption,
  KeepAliveOptions,
  KeepAliveSettings,
  KeepAliveSocket,
  KeepAliveState,
  LocalFilter,
  NodeServerLike,
  NodeSocketLike,
  NodeStreamLike,
  PeerFilter,
  PeerFilters,
  ProbeEvent,
  ProbeTiming,
  TcpSocket,
  WatchAllOptions,
];

Deno.test("mod.ts exports every value the old keepalive.ts exported, by the same name", () => {
  const values = [
    "KEEPALIVE_LIMITS",
    "KeepAliveError",
    "ResolveError",
    "canTuneKeepAlive",
    "keepAliveTuningSupport",
    "SyscallError",
    "UnsupportedSystemError",
    "getKeepAlive",
    "getKeepAliveState",
    "isValidKeepAliveValue",
    "keepAliveGaveUp",
    "setKeepAlive",
    "setKeepAliveAll",
    "setKeepAliveAllEvery",
    "setUserTimeout",
    "socketDescriptor",
    "watchKeepAlive",
    "watchKeepAliveAll",
  ];
  assertEquals(Object.keys(keepalive).sort(), values.sort());
});

Deno.test("the exports map is the documented one, and every entry point is a file of the package", async () => {
  const config = JSON.parse(await Deno.readTextFile(`${PACKAGE_DIR}/deno.json`));
  assertEquals([config.name, config.version, config.license], ["@kakit/keepalive", "0.1.0", "MIT"]);
  assertEquals(config.exports, {
    ".": "./mod.ts",
    "./watch": "./watch.ts",
    "./all": "./all.ts",
    "./sock-diag": "./sock_diag.ts",
    "./proc-net": "./proc_net.ts",
    "./flags": "./flags.ts",
    "./epoll": "./epoll.ts",
  });
});

Deno.test("no file of the package imports anything outside its folder", async () => {
  for await (const entry of Deno.readDir(PACKAGE_DIR)) {
    if (!entry.name.endsWith(".ts")) continue;
    const text = await Deno.readTextFile(`${PACKAGE_DIR}/${entry.name}`);
    // Every specifier of a static import or export, or a dynamic import().
    const specifiers = [
      ...text.matchAll(/^(?:import|export)\b[^;]*?\bfrom\s+"([^"]+)"/gms),
      ...text.matchAll(/^import\s+"([^"]+)"/gm),
      ...text.matchAll(/\bimport\(\s*"([^"]+)"\s*\)/g),
    ].map((match) => match[1]);
    for (const specifier of specifiers) {
      assert(
        /^\.\/[^/]+\.ts$/.test(specifier) || /^(npm|jsr|node):/.test(specifier),
        `${entry.name} imports ${
          JSON.stringify(specifier)
        }: the package takes nothing from outside`,
      );
    }
  }
});

// What a user does today: copy keepalive/ beside their code and map its name.
// The script tunes a loopback connection and reads it back from the kernel.
const USER_SCRIPT = `
import { getKeepAlive, setKeepAlive } from "@kakit/keepalive";
await import("@kakit/keepalive/watch");
await import("@kakit/keepalive/all");
await import("@kakit/keepalive/sock-diag");
await import("@kakit/keepalive/proc-net");
await import("@kakit/keepalive/flags");
console.log("imported");
using listener = Deno.listen({ hostname: "::1", port: 0 });
using conn = await Deno.connect({ hostname: "::1", port: listener.addr.port });
using _accepted = await listener.accept();
try {
  setKeepAlive(conn, { time: 60_000, interval: 10_000, retries: 3 });
  console.log(JSON.stringify(getKeepAlive(conn)));
} catch (error) {
  console.log(error.name + ": " + error.message);
}
`;

Deno.test("a copy of keepalive/ with an import map runs alone, and importing it needs no --allow-ffi", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await copyDir(PACKAGE_DIR, `${dir}/keepalive`);
    const imports: Record<string, string> = { "@kakit/keepalive": "./keepalive/mod.ts" };
    for (const [name, file] of [["watch", "watch"], ["all", "all"], ["sock-diag", "sock_diag"]]) {
      imports[`@kakit/keepalive/${name}`] = `./keepalive/${file}.ts`;
    }
    imports["@kakit/keepalive/proc-net"] = "./keepalive/proc_net.ts";
    imports["@kakit/keepalive/flags"] = "./keepalive/flags.ts";
    await Deno.writeTextFile(`${dir}/deno.json`, JSON.stringify({ imports }));
    await Deno.writeTextFile(`${dir}/main.ts`, USER_SCRIPT);
    const deno = [Deno.execPath(), "run", "--no-lock", "--allow-net"];
    const tuned = await run([...deno, "--allow-ffi", "main.ts"], { cwd: dir });
    assertEquals(tuned.code, 0, tuned.stderr);
    assertEquals(tuned.stdout.trim().split("\n"), [
      "imported",
      JSON.stringify({
        enabled: true,
        time: 60_000,
        interval: 10_000,
        retries: 3,
        userTimeout: 0,
      }),
    ]);
    const refused = await run([...deno, "main.ts"], { cwd: dir });
    assertEquals(refused.code, 0, refused.stderr);
    assertEquals(refused.stdout.trim().split("\n"), [
      "imported",
      "NotCapable: per-connection keepalive tuning needs " +
      `--allow-ffi=/lib/${Deno.build.arch}-linux-gnu/libc.so.6 (the C library; or --allow-ffi): ` +
      "it calls setsockopt through FFI",
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

async function copyDir(from: string, to: string): Promise<void> {
  await Deno.mkdir(to, { recursive: true });
  for await (const entry of Deno.readDir(from)) {
    if (entry.isFile) await Deno.copyFile(`${from}/${entry.name}`, `${to}/${entry.name}`);
  }
}

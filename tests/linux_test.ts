/**
 * Tests for keepalive/_linux.ts, the package's one C-library opener and its
 * errno helpers, against the real C library and Deno's own errors: the
 * numbers and names agree with what the system says, and a missing
 * --allow-ffi is one line that names the flag and what needed it.
 */
import { assertEquals } from "@std/assert";
import {
  ERRNO,
  errno,
  ERRNO_SYMBOLS,
  errnoName,
  openCLibrary,
  strerror,
} from "../keepalive/_linux.ts";
import { run } from "./_helpers.ts";

Deno.test("errno and strerror read what the C library left, and errnoName names it", () => {
  const libc = openCLibrary({
    close: { parameters: ["i32"], result: "i32" },
    ...ERRNO_SYMBOLS,
  }, "testing");
  assertEquals(libc.close(-1), -1);
  const code = errno(libc);
  assertEquals([code, errnoName(code), strerror(libc, code)], [9, "EBADF", "Bad file descriptor"]);
  assertEquals(strerror(libc, ERRNO.ECONNRESET), "Connection reset by peer");
  assertEquals(strerror(libc, ERRNO.ETIMEDOUT), "Connection timed out");
  assertEquals(errnoName(99_999), "errno 99999");
});

Deno.test("errnoName agrees with Deno's own error codes for the errno in its message", async () => {
  // A port nobody listens on: Deno says ECONNREFUSED, and which errno.
  const port = (() => {
    using listener = Deno.listen({ hostname: "::1", port: 0 });
    return listener.addr.port;
  })();
  const failures: unknown[] = [];
  await Deno.connect({ hostname: "::1", port }).catch((error) => failures.push(error));
  await Deno.readFile("/nonexistent/kakit").catch((error) => failures.push(error));
  assertEquals(failures.length, 2);
  for (const error of failures as (Error & { code: string })[]) {
    const number = Number(/\(os error (\d+)\)/.exec(error.message)?.[1]);
    assertEquals(errnoName(number), error.code, error.message);
  }
  assertEquals(failures.map((error) => (error as { code: string }).code), [
    "ECONNREFUSED",
    "ENOENT",
  ]);
});

Deno.test("without --allow-ffi, opening the C library is one line naming the flag and the purpose", async () => {
  const script = await Deno.makeTempFile({ suffix: ".ts" });
  try {
    await Deno.writeTextFile(
      script,
      `import { openCLibrary } from ${
        JSON.stringify(new URL("../keepalive/_linux.ts", import.meta.url).href)
      };
       import { SockDiag } from ${
        JSON.stringify(new URL("../keepalive/sock_diag.ts", import.meta.url).href)
      };
       const symbols = { getpid: { parameters: [], result: "i32" } } as const;
       const attempts = [
         () => openCLibrary(symbols, "--engine epoll (epoll through FFI)"),
         () => openCLibrary(symbols, "asking for the pid", "it calls getpid"),
         () => new SockDiag(),
       ];
       for (const attempt of attempts) {
         try { attempt(); } catch (error) { console.log(error.name + ": " + error.message); }
       }`,
    );
    const { code, stdout } = await run([Deno.execPath(), "run", script]);
    const flag = `--allow-ffi=/lib/${Deno.build.arch}-linux-gnu/libc.so.6`;
    assertEquals(code, 0);
    assertEquals(stdout.trim().split("\n"), [
      `NotCapable: --engine epoll (epoll through FFI) needs ${flag} (the C library; or --allow-ffi)`,
      `NotCapable: asking for the pid needs ${flag} (the C library; or --allow-ffi): it calls getpid`,
      `NotCapable: reading sockets through NETLINK_SOCK_DIAG needs ${flag} (the C library; or --allow-ffi)`,
    ]);
  } finally {
    await Deno.remove(script);
  }
});

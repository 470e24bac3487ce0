/**
 * `server.ts --engine epoll` (the package's keepalive/epoll.ts) must behave as the default
 * engine does: this runs server.ts's own tests, the namespace tests of its
 * tuning flags and of --watch at scale again, with every
 * server they start on the epoll engine (tests/_helpers.ts adds
 * `--engine epoll` and `--allow-ffi` when KAKIT_SERVER_ENGINE=epoll).
 */
import { assertEquals } from "@std/assert";
import { CI, netnsUnavailableReason, requiringTest, ROOT_DIR } from "./_helpers.ts";

// server_test.ts runs anywhere; the other two are all namespace tests, which
// skip for an ordinary user: then there is nothing to run them again for, and
// this test skips with the same reason (with CI=true it runs and must pass).
const files: [string, string | null][] = [
  ["server_test.ts", null],
  ["tuning_test.ts", netnsUnavailableReason()],
  ["watch_all_test.ts", netnsUnavailableReason()],
];

for (const [file, unavailable] of files) {
  requiringTest(`tests/${file} passes with server.ts --engine epoll`, unavailable, async () => {
    const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
      args: ["test", "-A", `tests/${file}`],
      cwd: ROOT_DIR,
      env: { KAKIT_SERVER_ENGINE: "epoll", NO_COLOR: "1" },
      stdin: "null",
    }).output();
    const output = new TextDecoder().decode(stdout) + new TextDecoder().decode(stderr);
    // The whole report on failure: which tests failed, and why.
    assertEquals(code, 0, output);
    const summary = output.match(/ok \| (\d+) passed \| 0 failed/);
    assertEquals(summary !== null && Number(summary[1]) > 0, true, output);
    // With CI=true nothing may hide behind a skip.
    if (CI) assertEquals(/\| [1-9]\d* ignored/.test(output), false, output);
  });
}

/**
 * # Every TCP socket's state in one request: Linux `NETLINK_SOCK_DIAG` (moved)
 *
 * The library now lives in the package: `@kakit/keepalive/sock-diag`
 * (`keepalive/sock_diag.ts`), and the command in `tools/sock_diag.ts`
 * (`deno run --allow-ffi tools/sock_diag.ts [--port N]`). This file only
 * re-exports both, and the C library opener (`keepalive/_linux.ts`), so that
 * code importing `./sock_diag.ts` (and `deno run --allow-ffi sock_diag.ts`)
 * keeps working meanwhile. It will be deleted.
 *
 * @module
 */
import { main } from "./tools/sock_diag.ts";

export * from "./keepalive/sock_diag.ts";
export { openCLibrary } from "./keepalive/_linux.ts";
export { main };

if (import.meta.main) Deno.exit(main(Deno.args));

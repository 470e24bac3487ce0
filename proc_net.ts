/**
 * # See what TCP keepalive is doing, from /proc (moved)
 *
 * The parsers now live in the package: `@kakit/keepalive/proc-net`
 * (`keepalive/proc_net.ts`). This file only re-exports them, so that code
 * importing `./proc_net.ts` keeps working meanwhile. It will be deleted.
 *
 * @module
 */
export * from "./keepalive/proc_net.ts";

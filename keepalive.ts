/**
 * # Per-connection TCP keepalive for Deno, on Linux (moved)
 *
 * The library now lives in the package `keepalive/` (`@kakit/keepalive`);
 * this file only re-exports it, so that code importing `./keepalive.ts`
 * keeps working while it moves to `import ... from "@kakit/keepalive"`.
 * It will be deleted.
 *
 * @module
 */
export * from "./keepalive/mod.ts";

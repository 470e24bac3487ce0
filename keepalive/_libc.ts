/**
 * # The C library calls of the socket-option code, opened on first use
 *
 * `setsockopt`, `getsockopt`, `getsockname`, `getpeername` and `getrlimit`,
 * opened through `_linux.ts` the first time a call needs them: opening
 * needs `--allow-ffi`, and a script that imports the package but tunes
 * nothing still runs with `--allow-net` alone.
 *
 * @module
 */

import { errno, openCLibrary, strerror } from "./_linux.ts";

const LIBC_SYMBOLS = {
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  getpeername: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  getrlimit: { parameters: ["i32", "buffer"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
  strerror: { parameters: ["i32"], result: "pointer" },
} as const;

/** The socket-option code's C library functions. */
export type Libc = Deno.DynamicLibrary<typeof LIBC_SYMBOLS>["symbols"];

let loaded: Libc | undefined;

/**
 * The C library, opened on the first call. Without `--allow-ffi` it throws
 * `Deno.errors.NotCapable` ("per-connection keepalive tuning needs the
 * --allow-ffi permission (it calls setsockopt through FFI)"); on another
 * system, an `UnsupportedSystemError`.
 */
export function libc(): Libc {
  return loaded ??= openCLibrary(
    LIBC_SYMBOLS,
    "per-connection keepalive tuning",
    "it calls setsockopt through FFI",
  );
}

/** The errno the last failed call left. */
export function lastErrno(): number {
  return errno(libc());
}

/** The C library's text for an errno, e.g. "Invalid argument". */
export function errorText(code: number): string {
  return strerror(libc(), code);
}

/** `getsockopt` for an int, or null when it fails. */
export function getOption(fd: number, level: number, option: number): number | null {
  const value = new Int32Array(1);
  const length = new Uint32Array([4]);
  return libc().getsockopt(fd, level, option, value, length) === 0 ? value[0] : null;
}

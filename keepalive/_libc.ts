/**
 * # The C library calls of the socket-option code, opened on first use
 *
 * `setsockopt`, `getsockopt`, `getsockname`, `getpeername`, `getrlimit`,
 * and what finding descriptors and resolving names needs (`eventfd`,
 * `open`, `read`, `close`, `getaddrinfo`), opened through `_linux.ts` the
 * first time a call needs them: opening needs `--allow-ffi`, and a script
 * that imports the package but tunes nothing still runs with `--allow-net`
 * alone.
 *
 * Each call here costs a system call (a few hundred ns): the buffers they
 * fill are allocated once and reused, so that a look at thousands of
 * descriptors allocates nothing per descriptor.
 *
 * @module
 */

import {
  errno,
  ERRNO_SYMBOLS,
  ffiGrant,
  libcPermissionFlag,
  openCLibrary,
  strerror,
  UnsupportedSystemError,
} from "./_linux.ts";

const LIBC_SYMBOLS = {
  setsockopt: { parameters: ["i32", "i32", "i32", "buffer", "u32"], result: "i32" },
  getsockopt: { parameters: ["i32", "i32", "i32", "buffer", "buffer"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  getpeername: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  getrlimit: { parameters: ["i32", "buffer"], result: "i32" },
  eventfd: { parameters: ["u32", "i32"], result: "i32" },
  open: { parameters: ["buffer", "i32"], result: "i32" },
  read: { parameters: ["i32", "buffer", "usize"], result: "isize" },
  close: { parameters: ["i32"], result: "i32" },
  getaddrinfo: { parameters: ["buffer", "usize", "buffer", "buffer"], result: "i32" },
  getaddrinfoAsync: {
    name: "getaddrinfo",
    parameters: ["buffer", "usize", "buffer", "buffer"],
    result: "i32",
    nonblocking: true,
  },
  freeaddrinfo: { parameters: ["usize"], result: "void" },
  gai_strerror: { parameters: ["i32"], result: "usize" },
  ...ERRNO_SYMBOLS,
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

const optionValue = new Int32Array(1);
const optionLength = new Uint32Array(1);

/** `getsockopt` for an int, or null when it fails. */
export function getOption(fd: number, level: number, option: number): number | null {
  optionLength[0] = 4;
  return libc().getsockopt(fd, level, option, optionValue, optionLength) === 0
    ? optionValue[0]
    : null;
}

/** `setsockopt` for an int: 0, or -1 with errno set. */
export function setOption(fd: number, level: number, option: number, value: number): number {
  optionValue[0] = value;
  return libc().setsockopt(fd, level, option, optionValue, 4);
}

const nameBuffer = new Uint8Array(128);
const nameLength = new Uint32Array(1);

/**
 * `getsockname` (`which` = "local") or `getpeername` ("peer") into a buffer
 * shared by every call: the `struct sockaddr`, valid until the next call,
 * or null when the call failed (errno says why: EBADF for an unused
 * number, ENOTSOCK, ENOTCONN).
 */
export function socketName(fd: number, which: "local" | "peer"): Uint8Array | null {
  nameLength[0] = nameBuffer.length;
  const c = libc();
  const result = which === "local"
    ? c.getsockname(fd, nameBuffer, nameLength)
    : c.getpeername(fd, nameBuffer, nameLength);
  return result === 0 ? nameBuffer : null;
}

/**
 * Whether per-socket tuning works here, and if not, why: `system` (not
 * Linux, or no C library found) or `permission` (no `--allow-ffi` for the
 * C library). Never prompts: the permission is queried, not requested.
 */
export function tuningSupport():
  | { available: true }
  | { available: false; missing: "system" | "permission"; message: string } {
  if (Deno.build.os !== "linux") {
    return { available: false, missing: "system", message: new UnsupportedSystemError().message };
  }
  const grant = ffiGrant();
  if (grant !== "blanket" && grant.length === 0) {
    return {
      available: false,
      missing: "permission",
      message: `per-connection keepalive tuning needs ${libcPermissionFlag()} ` +
        `(the C library; or --allow-ffi)`,
    };
  }
  try {
    libc();
    return { available: true };
  } catch (error) {
    const missing = error instanceof UnsupportedSystemError ? "system" : "permission";
    return { available: false, missing, message: (error as Error).message };
  }
}

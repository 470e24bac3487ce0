/**
 * # Linux, as the package sees it: the C library and its numbers
 *
 * Everything here is Linux's ABI, the same on x86_64 and aarch64 (both use
 * the kernel's generic numbering for socket options and errno values), so it
 * is written once: the constants of `<sys/socket.h>`, `<netinet/tcp.h>` and
 * `<errno.h>` that the package uses, their names for error messages, and the
 * one function that opens the C library through FFI.
 *
 * Each module opens the C library with the symbols it needs, on its first
 * call that needs them, never on import: a script that imports the package
 * but tunes nothing still runs without `--allow-ffi`.
 *
 * - https://man7.org/linux/man-pages/man7/socket.7.html
 * - https://man7.org/linux/man-pages/man7/tcp.7.html
 * - https://man7.org/linux/man-pages/man3/errno.3.html
 *
 * @module
 */

// --- Socket levels and options (include/uapi/asm-generic/socket.h, linux/tcp.h)

/** The socket level of `setsockopt`/`getsockopt`. */
export const SOL_SOCKET = 1;
/** `SOL_SOCKET` option: the socket's type (`SOCK_STREAM`...). */
export const SO_TYPE = 3;
/** `SOL_SOCKET` option: keepalive on or off. */
export const SO_KEEPALIVE = 9;
/** `SOL_SOCKET` option: 1 for a listening socket. */
export const SO_ACCEPTCONN = 30;
/** `SOL_SOCKET` option: the socket's protocol (`IPPROTO_TCP`...). */
export const SO_PROTOCOL = 38;

/** The TCP level of `setsockopt`/`getsockopt`, and TCP's protocol number. */
export const IPPROTO_TCP = 6;
/** Seconds of silence before the first keepalive probe. */
export const TCP_KEEPIDLE = 4;
/** Seconds between unanswered keepalive probes. */
export const TCP_KEEPINTVL = 5;
/** Unanswered keepalive probes before the connection fails. */
export const TCP_KEEPCNT = 6;
/** The connection's `struct tcp_info` (read only). */
export const TCP_INFO = 11;
/** Milliseconds sent data may stay unacknowledged. */
export const TCP_USER_TIMEOUT = 18;
/** `tcpi_state` of an established connection (include/net/tcp_states.h). */
export const TCP_ESTABLISHED = 1;

/** The IPv4 address family (`sockaddr_in`). */
export const AF_INET = 2;
/** The IPv6 address family (`sockaddr_in6`). */
export const AF_INET6 = 10;
/** The netlink address family. */
export const AF_NETLINK = 16;
/** A stream socket (TCP's type). */
export const SOCK_STREAM = 1;
/** A raw socket (netlink's type). */
export const SOCK_RAW = 3;
/** `socket`/`accept4` flag: non-blocking. */
export const SOCK_NONBLOCK = 0o4000;
/** `socket`/`accept4` flag: closed on `exec`. */
export const SOCK_CLOEXEC = 0o2000000;
/** `getrlimit` resource: the limit on open files. */
export const RLIMIT_NOFILE = 7;

// --- errno (include/uapi/asm-generic/errno-base.h, errno.h) ---------------------

/** The errno values the package meets, by name: `ERRNO.EBADF` is 9. */
export const ERRNO = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EIO: 5,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EINVAL: 22,
  ENFILE: 23,
  EMFILE: 24,
  ENOSPC: 28,
  EPIPE: 32,
  EBADMSG: 74,
  ENOTSOCK: 88,
  ENOPROTOOPT: 92,
  EPROTONOSUPPORT: 93,
  EOPNOTSUPP: 95,
  EAFNOSUPPORT: 97,
  EADDRINUSE: 98,
  EADDRNOTAVAIL: 99,
  ENETDOWN: 100,
  ENETUNREACH: 101,
  ENETRESET: 102,
  ECONNABORTED: 103,
  ECONNRESET: 104,
  ENOBUFS: 105,
  ENOTCONN: 107,
  ETIMEDOUT: 110,
  ECONNREFUSED: 111,
  EHOSTDOWN: 112,
  EHOSTUNREACH: 113,
} as const;

const ERRNO_NAMES = new Map<number, string>(
  Object.entries(ERRNO).map(([name, code]) => [code, name]),
);

/**
 * The name of an errno value (`"ECONNRESET"` for 104), as Deno's errors
 * carry it in `code`; `errno N` for one the package does not name.
 *
 * @example
 * ```ts
 * import { errnoName } from "./_linux.ts";
 * errnoName(110); // "ETIMEDOUT"
 * ```
 */
export function errnoName(code: number): string {
  return ERRNO_NAMES.get(code) ?? `errno ${code}`;
}

// --- The C library ------------------------------------------------------------------

/**
 * Thrown on a system other than Linux, or a Linux without glibc or musl: the
 * socket options, `TCP_INFO` and netlink used here are Linux's.
 */
export class UnsupportedSystemError extends Error {
  /** Says which system this is, what needed Linux (`purpose`), and which systems work. */
  constructor(detail?: string, purpose: string = "per-connection keepalive tuning") {
    super(
      `${purpose} works on Linux only, with glibc or musl ` +
        `(this is ${Deno.build.os}${detail ? `: ${detail}` : ""})`,
    );
    this.name = "UnsupportedSystemError";
  }
}

// glibc's name first, then musl's (Alpine): the same symbols in both. The
// dynamic loader finds them, with the blanket --allow-ffi.
const LIBC_NAMES = [
  "libc.so.6",
  `libc.musl-${Deno.build.arch}.so.1`,
  `ld-musl-${Deno.build.arch}.so.1`,
  "libc.so",
];

/**
 * Where the C library lives, by full path: Deno grants a narrowed
 * `--allow-ffi=PATH` for that path as written, and for nothing else (not
 * the bare name, not the same file through another link). Debian and
 * Ubuntu first, as `/lib` and as `/usr/lib`; then Fedora, Arch, Alpine.
 */
export const LIBC_PATHS: readonly string[] = [
  `/lib/${Deno.build.arch}-linux-gnu/libc.so.6`,
  `/usr/lib/${Deno.build.arch}-linux-gnu/libc.so.6`,
  "/lib64/libc.so.6",
  "/usr/lib64/libc.so.6",
  "/usr/lib/libc.so.6",
  "/lib/libc.so.6",
  `/lib/ld-musl-${Deno.build.arch}.so.1`,
  `/usr/lib/ld-musl-${Deno.build.arch}.so.1`,
];

/**
 * The narrowed permission to suggest: `--allow-ffi=` the first of
 * {@linkcode LIBC_PATHS} that exists (looked for only where reading is
 * already allowed: asking must not prompt), else Debian's.
 */
export function libcPermissionFlag(): string {
  const exists = (path: string) => {
    if (Deno.permissions.querySync({ name: "read", path }).state !== "granted") return false;
    try {
      return Deno.statSync(path).isFile;
    } catch {
      return false;
    }
  };
  return `--allow-ffi=${LIBC_PATHS.find(exists) ?? LIBC_PATHS[0]}`;
}

/**
 * What FFI this process may use for the C library, queried (never
 * prompted): `"blanket"` for `--allow-ffi`, else those of
 * {@linkcode LIBC_PATHS} it was narrowed to (none: no grant).
 */
export function ffiGrant(): "blanket" | string[] {
  if (Deno.permissions.querySync({ name: "ffi" }).state === "granted") return "blanket";
  return LIBC_PATHS.filter((path) =>
    Deno.permissions.querySync({ name: "ffi", path }).state === "granted"
  );
}

/**
 * Opens the C library with `symbols`, for `purpose`, which the errors name.
 * With the blanket `--allow-ffi` it is opened by name (glibc's, then
 * musl's); with `--allow-ffi` narrowed to paths, by whichever of
 * {@linkcode LIBC_PATHS} is allowed.
 *
 * - not Linux, or no C library: an {@linkcode UnsupportedSystemError}
 *   (`<purpose> works on Linux only, with glibc or musl (this is ...)`);
 * - no `--allow-ffi` for it: a `Deno.errors.NotCapable` whose message is
 *   `<purpose> needs --allow-ffi=<the C library's path> (or --allow-ffi)`,
 *   followed by `: <how>` when `how` is given.
 *
 * Call it on first use and keep the result: each call opens the library
 * again.
 *
 * @example
 * ```ts
 * import { errno, ERRNO_SYMBOLS, openCLibrary, strerror } from "./_linux.ts";
 *
 * const libc = openCLibrary({
 *   close: { parameters: ["i32"], result: "i32" },
 *   ...ERRNO_SYMBOLS,
 * }, "closing descriptors");
 * if (libc.close(12345) !== 0) console.log(strerror(libc, errno(libc))); // "Bad file descriptor"
 * ```
 */
export function openCLibrary<S extends Deno.ForeignLibraryInterface>(
  symbols: S,
  purpose: string,
  how?: string,
): Deno.DynamicLibrary<S>["symbols"] {
  if (Deno.build.os !== "linux") throw new UnsupportedSystemError(undefined, purpose);
  const failures: string[] = [];
  const grant = ffiGrant();
  // Without any grant, the names: Deno then asks at a terminal, or refuses.
  for (const name of grant === "blanket" || grant.length === 0 ? LIBC_NAMES : grant) {
    try {
      return Deno.dlopen(name, symbols).symbols;
    } catch (error) {
      if (error instanceof Deno.errors.NotCapable) {
        throw new Deno.errors.NotCapable(
          `${purpose} needs ${libcPermissionFlag()} (the C library; or --allow-ffi)` +
            (how ? `: ${how}` : ""),
        );
      }
      failures.push(`${name}: ${(error as Error).message.split("\n")[0]}`);
    }
  }
  throw new UnsupportedSystemError(`no C library found (${failures.join("; ")})`, purpose);
}

/**
 * The C library symbols that {@linkcode errno} and {@linkcode strerror}
 * need, to spread into the symbols a module opens. Addresses are plain
 * numbers (`usize`) copied out with `memcpy` into a buffer: Deno lets only
 * the blanket `--allow-ffi` read memory through `Deno.UnsafePointerView`,
 * and these work with FFI narrowed to the C library's path too.
 */
export const ERRNO_SYMBOLS = {
  __errno_location: { parameters: [], result: "usize" },
  strerror: { parameters: ["i32"], result: "usize" },
  strlen: { parameters: ["usize"], result: "usize" },
  memcpy: { parameters: ["buffer", "usize", "usize"], result: "usize" },
} as const;

/** {@linkcode ERRNO_SYMBOLS}, as {@linkcode openCLibrary} returns them. */
export type ErrnoSymbols = Deno.DynamicLibrary<typeof ERRNO_SYMBOLS>["symbols"];

const errnoValue = new Int32Array(1);

/**
 * The errno the C library left after the last call that failed, read
 * through `lib`'s `__errno_location` and `memcpy` (open it with
 * {@linkcode ERRNO_SYMBOLS}). Read it right after the failed call: the
 * next call may change it.
 *
 * @example
 * ```ts
 * import { errno, ERRNO_SYMBOLS, openCLibrary } from "./_linux.ts";
 * const libc = openCLibrary({
 *   close: { parameters: ["i32"], result: "i32" },
 *   ...ERRNO_SYMBOLS,
 * }, "closing descriptors");
 * libc.close(-1);
 * errno(libc); // 9 (EBADF)
 * ```
 */
export function errno(lib: Pick<ErrnoSymbols, "__errno_location" | "memcpy">): number {
  const address = lib.__errno_location();
  if (!address) return 0;
  lib.memcpy(errnoValue, BigInt(address), 4n);
  return errnoValue[0];
}

/**
 * The C library's text for an errno (`"Connection reset by peer"` for
 * 104), through `lib`'s `strerror` (open it with {@linkcode ERRNO_SYMBOLS});
 * `errno N` if it has none.
 *
 * @example
 * ```ts
 * import { ERRNO_SYMBOLS, openCLibrary, strerror } from "./_linux.ts";
 * const libc = openCLibrary({ ...ERRNO_SYMBOLS }, "errors");
 * strerror(libc, 22); // "Invalid argument"
 * ```
 */
export function strerror(lib: ErrnoSymbols, code: number): string {
  return cStringAt(lib, lib.strerror(code)) ?? `errno ${code}`;
}

/**
 * The NUL-terminated string at `address` (a `char *` a C function
 * returned, as a `usize`), copied out with `strlen` and `memcpy`; null for
 * a null pointer.
 */
export function cStringAt(
  lib: Pick<ErrnoSymbols, "strlen" | "memcpy">,
  address: number | bigint,
): string | null {
  if (!address) return null;
  const bytes = new Uint8Array(Number(lib.strlen(BigInt(address))));
  lib.memcpy(bytes, BigInt(address), BigInt(bytes.length));
  return new TextDecoder().decode(bytes);
}

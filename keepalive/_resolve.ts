/**
 * # Host names to addresses, the way the C library resolves them
 *
 * `setKeepAliveAll` matches a peer by its address, but users know their
 * database by a name (`db.internal`, `localhost`, a URL's host). The name
 * is resolved with the C library's `getaddrinfo`, through FFI: the resolver
 * `node:net`, `Deno.connect` and `fetch` use, with `/etc/hosts` first and
 * every address of the name (A and AAAA records). `Deno.resolveDns` would
 * skip `/etc/hosts`, and needs `--allow-net`.
 *
 * Two ways: blocking ({@linkcode resolveNow}, for a call that returns at
 * once), and on another thread ({@linkcode resolveLater}, for a timer that
 * must not hold up the event loop while a name server thinks).
 *
 * @module
 */

import { sockaddrAddress } from "./_address.ts";
import { libc } from "./_libc.ts";
import { cStringAt, SOCK_STREAM } from "./_linux.ts";

/**
 * A host name that does not resolve. `code` is the C library's name for
 * why (`EAI_NONAME`: no such name; `EAI_AGAIN`: no answer from the name
 * server, try later; `EAI_FAIL`, `EAI_NODATA`, `EAI_SYSTEM`...).
 *
 * @example
 * ```ts
 * import { ResolveError, setKeepAliveAll } from "@kakit/keepalive";
 * try {
 *   setKeepAliveAll({ time: 60_000 }, { hostname: "no-such-host.invalid" });
 * } catch (error) {
 *   if (error instanceof ResolveError) console.log(error.code); // "EAI_NONAME"
 * }
 * ```
 */
export class ResolveError extends Error {
  /** The name that did not resolve. */
  readonly hostname: string;
  /** The C library's name for why: `EAI_NONAME`, `EAI_AGAIN`... */
  readonly code: string;

  /** A name that `getaddrinfo` could not resolve, with its error `status`. */
  constructor(hostname: string, status: number, text: string) {
    const code = EAI_NAMES[status] ?? `EAI ${status}`;
    super(`${JSON.stringify(hostname)} does not resolve: ${text} (${code})`);
    this.name = "ResolveError";
    this.hostname = hostname;
    this.code = code;
  }
}

// glibc's and musl's values (netdb.h).
const EAI_NAMES: Record<number, string> = {
  [-2]: "EAI_NONAME",
  [-3]: "EAI_AGAIN",
  [-4]: "EAI_FAIL",
  [-5]: "EAI_NODATA",
  [-6]: "EAI_FAMILY",
  [-9]: "EAI_ADDRFAMILY",
  [-10]: "EAI_MEMORY",
  [-11]: "EAI_SYSTEM",
};

// struct addrinfo on 64-bit Linux (glibc and musl alike): ai_flags,
// ai_family, ai_socktype, ai_protocol, ai_addrlen (4 bytes each, then 4 of
// padding), ai_addr at 24, ai_canonname at 32, ai_next at 40.
const ADDRINFO_SIZE = 48;
const AI_SOCKTYPE = 8;
const AI_ADDRLEN = 16;
const AI_ADDR = 24;
const AI_NEXT = 40;

function hints(): Uint8Array {
  // Stream sockets only: one entry per address instead of three.
  const bytes = new Uint8Array(ADDRINFO_SIZE);
  new DataView(bytes.buffer).setInt32(AI_SOCKTYPE, SOCK_STREAM, true);
  return bytes;
}

/**
 * Every address of `hostname` (16 bytes each, IPv4 mapped into IPv6),
 * resolved now; the event loop waits meanwhile. Throws a
 * {@linkcode ResolveError} when the name does not resolve.
 */
export function resolveNow(hostname: string): Uint8Array[] {
  const result = new BigUint64Array(1);
  const status = libc().getaddrinfo(cString(hostname), 0n, hints(), result);
  return collect(hostname, status, result[0]);
}

/** As {@linkcode resolveNow}, on another thread: the event loop goes on. */
export async function resolveLater(hostname: string): Promise<Uint8Array[]> {
  const name = cString(hostname);
  const given = hints();
  const result = new BigUint64Array(1);
  const status = await libc().getaddrinfoAsync(name, 0n, given, result);
  return collect(hostname, status, result[0]);
}

function cString(text: string): Uint8Array {
  return new TextEncoder().encode(`${text}\0`);
}

// Reads the list getaddrinfo made by copying each entry out with memcpy
// (Deno.UnsafePointerView would need the blanket --allow-ffi), then frees it.
function collect(hostname: string, status: number, list: bigint): Uint8Array[] {
  const c = libc();
  if (status !== 0) {
    throw new ResolveError(
      hostname,
      status,
      cStringAt(c, c.gai_strerror(status)) ?? "unknown error",
    );
  }
  const addresses: Uint8Array[] = [];
  const entry = new Uint8Array(ADDRINFO_SIZE);
  const fields = new DataView(entry.buffer);
  try {
    for (let at = list; at !== 0n;) {
      c.memcpy(entry, at, BigInt(ADDRINFO_SIZE));
      const length = fields.getUint32(AI_ADDRLEN, true);
      const sockaddr = fields.getBigUint64(AI_ADDR, true);
      if (sockaddr !== 0n && length >= 16 && length <= 128) {
        const bytes = new Uint8Array(length);
        c.memcpy(bytes, sockaddr, BigInt(length));
        const address = sockaddrAddress(bytes);
        if (address && !addresses.some((known) => sameBytes(known, address.bytes))) {
          addresses.push(address.bytes);
        }
      }
      at = fields.getBigUint64(AI_NEXT, true);
    }
  } finally {
    if (list !== 0n) c.freeaddrinfo(list);
  }
  return addresses;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.every((byte, i) => byte === b[i]);
}

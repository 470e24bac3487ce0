/**
 * # The process's descriptor table, as far as finding a socket needs it
 *
 * Two facts about Linux's table make a search cheap:
 *
 * - **It is never larger than its capacity**, `FDSize` in
 *   `/proc/self/status`: every open descriptor is below it, however far
 *   apart they are (a gap of thousands of closed numbers included). A look
 *   up to it misses nothing, and costs one system call per number (an
 *   unused number fails at once, with EBADF). Without `/proc`, the limit on
 *   open files bounds the look instead (slower, as complete).
 * - **A new descriptor gets the lowest free number.** Just after a
 *   connection is made, the lowest free number is usually one above it:
 *   the first place to look.
 *
 * `/proc/self/status` is read through the C library (FFI), not Deno's file
 * API: Deno refuses `/proc` without `--allow-all`, and `--allow-ffi`
 * already grants what a read would.
 *
 * @module
 */

import { libc } from "./_libc.ts";
import { RLIMIT_NOFILE } from "./_linux.ts";

const O_RDONLY_CLOEXEC = 0o2000000;
const EFD_CLOEXEC = 0o2000000;
const STATUS_PATH = new TextEncoder().encode("/proc/self/status\0");
const status = new Uint8Array(8192);

/**
 * One above the highest number an open descriptor can have right now: the
 * table's capacity (`FDSize`), or, when `/proc` cannot be read, the limit
 * on open files (at most 1,048,576; 1024 if it cannot be read either).
 */
export function descriptorCeiling(): number {
  return tableCapacity() ?? openFileLimit();
}

/** The table's capacity from `/proc/self/status`, or null. */
export function tableCapacity(): number | null {
  const c = libc();
  const fd = c.open(STATUS_PATH, O_RDONLY_CLOEXEC);
  if (fd < 0) return null;
  let length = 0;
  try {
    // The FDSize line comes early; one read of 8 KiB holds the whole file.
    const read = Number(c.read(fd, status, BigInt(status.length)));
    if (read <= 0) return null;
    length = read;
  } finally {
    c.close(fd);
  }
  const text = new TextDecoder().decode(status.subarray(0, length));
  const match = /^FDSize:\s*(\d+)$/m.exec(text);
  return match ? Number(match[1]) : null;
}

/**
 * How many descriptor numbers a process may use: its limit on open files,
 * at most 1,048,576 (1024 if it cannot be read).
 */
export function openFileLimit(): number {
  const limits = new BigUint64Array(2);
  if (libc().getrlimit(RLIMIT_NOFILE, limits) !== 0) return 1024;
  return Number(limits[0] > 1_048_576n ? 1_048_576n : limits[0]);
}

/**
 * The lowest free descriptor number, found the way the kernel finds it: by
 * making a descriptor (an eventfd, no path to look up) and closing it
 * again. Null when none can be made (the table is full).
 */
export function lowestFreeDescriptor(): number | null {
  const c = libc();
  const fd = c.eventfd(0, EFD_CLOEXEC);
  if (fd < 0) return null;
  c.close(fd);
  return fd;
}

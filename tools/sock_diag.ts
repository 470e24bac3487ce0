/**
 * # Every TCP socket of this network namespace, the way `ss -tn` shows them
 *
 * @run deno run --allow-ffi tools/sock_diag.ts [--port 8888]
 *
 * One line per TCP socket (only those on local port N with `--port N`): its
 * state, its two ends, the timer the kernel has pending on it and how many
 * keepalive probes went unanswered. It asks the kernel once per address
 * family over `NETLINK_SOCK_DIAG` (`@kakit/keepalive/sock-diag`), so it
 * needs `--allow-ffi` only: no `/proc`, which Deno refuses without
 * `--allow-all`.
 *
 * - https://man7.org/linux/man-pages/man7/sock_diag.7.html
 *
 * @module
 */
import { SockDiag } from "@kakit/keepalive/sock-diag";
import { printError, showTyped, writeText } from "./cli.ts";

const USAGE = `Usage: deno run --allow-ffi tools/sock_diag.ts [--port N]

Prints every TCP socket of this network namespace, one line each, the way
\`ss -tn\` does, with its keepalive timer and unanswered probes, read with one
NETLINK_SOCK_DIAG request per address family.

  --port N    only sockets whose LOCAL port is N (a server's listener and its
              connections; a client's sockets have the server's port as their
              remote port), 0..65535
  -h, --help  show this help

Exit codes: 0, 1 when the kernel cannot be asked (or --allow-ffi is missing),
2 for bad flags.`;

/**
 * `deno run --allow-ffi tools/sock_diag.ts [--port N]`: one line per TCP socket
 * (on local port N), like `ss -tn` with the keepalive timer and the
 * unanswered probes. Returns the exit code: 0, 1 when the kernel cannot be
 * asked, 2 for bad flags.
 */
export function main(args: string[], print: (line: string) => void = printLine): number {
  try {
    return run(args, print);
  } catch (error) {
    if (!(error instanceof OutputError)) throw error;
    printError(`sock_diag.ts: cannot write: ${error.message}`);
    return 1;
  }
}

// stdout refused a line (> /dev/full, a closed pipe): one line, exit 1.
class OutputError extends Error {}
function printLine(line: string): void {
  const failed = writeText(line);
  if (failed !== null) throw new OutputError(failed);
}

function run(args: string[], print: (line: string) => void): number {
  if (args.length === 1 && (args[0] === "--help" || args[0] === "-h")) {
    print(USAGE);
    return 0;
  }
  const words = args.length === 1 && args[0].startsWith("--port=")
    ? ["--port", args[0].slice("--port=".length)]
    : args;
  const valid = words.length === 0 ||
    (words.length === 2 && words[0] === "--port" && /^\d{1,5}$/.test(words[1]) &&
      Number(words[1]) <= 65535);
  if (!valid) {
    printError(
      `sock_diag.ts: expected nothing or --port 0..65535, not ${showTyped(args.join(" "))} ` +
        "(see --help)",
    );
    return 2;
  }
  const localPort = words.length === 2 ? Number(words[1]) : undefined;
  const at = (a: Deno.NetAddr) =>
    a.hostname.includes(":") ? `[${a.hostname}]:${a.port}` : `${a.hostname}:${a.port}`;
  try {
    using diag = new SockDiag();
    for (const s of diag.tcpSockets({ localPort })) {
      const probes = s.tcpInfo ? s.tcpInfo.getUint8(3) : "-";
      print(
        `${s.state} ${at(s.local)} ${
          at(s.remote)
        } timer:${s.timer},${s.timerMs}ms probes:${probes}`,
      );
    }
  } catch (error) {
    if (error instanceof OutputError) throw error;
    // Only the system's words here (the arguments were checked above), but a
    // message is shown as text, never able to move the cursor.
    const message = escapeControls(error instanceof Error ? error.message : String(error));
    const again = error instanceof Deno.errors.NotCapable
      ? `: deno run --allow-ffi tools/sock_diag.ts${args.length ? " " + args.join(" ") : ""}`
      : "";
    printError(`sock_diag.ts: ${message}${again}`);
    return 1;
  }
  return 0;
}

// Each character a terminal would act on or that reorders or hides text
// (JSON already escapes C0, but not DEL, C1, U+202E, U+2028), as \uXXXX.
function escapeControls(text: string): string {
  return text.replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu, (c) => {
    const code = c.codePointAt(0)!;
    return code > 0xffff ? `\\u{${code.toString(16)}}` : `\\u${code.toString(16).padStart(4, "0")}`;
  });
}

if (import.meta.main) Deno.exit(main(Deno.args));

// Real runs: a listener on 127.0.0.1:37543 with one connection, whose
// accepted end has keepalive on (the first probe due in 7200 s):
//
//   $ deno run --allow-ffi tools/sock_diag.ts --port 37543
//   listen 127.0.0.1:37543 0.0.0.0:0 timer:none,0ms probes:0
//   established 127.0.0.1:37543 127.0.0.1:35576 timer:keepalive,7199972ms probes:0
//
//   $ deno run tools/sock_diag.ts            (exit code 1)
//   sock_diag.ts: reading sockets through NETLINK_SOCK_DIAG needs the --allow-ffi permission: deno run --allow-ffi tools/sock_diag.ts
//
//   $ deno run --allow-ffi tools/sock_diag.ts --port 99999            (exit code 2)
//   sock_diag.ts: expected nothing or --port 0..65535, not "--port 99999" (see --help)

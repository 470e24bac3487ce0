/**
 * Shared by the tests that prove the kit with real components through the
 * lab's router that forgets idle flows (lab/router.ts): the client - router
 * - server namespaces, the plan's tuning, a fixture run in the client's
 * namespace, and real servers (Redis, PostgreSQL, MariaDB) started in the
 * server's namespace, each in a throwaway directory, stopped at scope exit.
 *
 * @module
 */
import { assertEquals } from "@std/assert";
import { buildRouter, type Router } from "../lab/router.ts";
import { planKeepAlive } from "../tools/plan.ts";
import { netnsUnavailableReason, otherUserUnavailableReason, run, withNetns } from "./_helpers.ts";

/** Seconds after which the router forgets an idle flow. */
export const TIMEOUT = 5;
/** How long each client stays idle: more than three timeouts. */
export const IDLE = 3 * TIMEOUT + 1;
/** How long a request after the idle may take before it counts as lost. */
export const WAIT = 5;

/** plan.ts's plan for the router's timeout and a 10 s deadline, as @kakit/keepalive options. */
export const tuning = (() => {
  const plan = planKeepAlive({ middleboxTimeoutSeconds: TIMEOUT, detectWithinSeconds: 10 });
  return {
    time: plan.idleSeconds * 1000,
    interval: plan.intervalSeconds * 1000,
    retries: plan.count,
    userTimeout: plan.userTimeoutSeconds * 1000,
  };
})();

/** The three namespaces of {@linkcode withRouterPath} and the router between them. */
export interface Path {
  client: string;
  router: string;
  server: string;
  /** The client's prefix to run a command in its namespace. */
  inClient: string[];
  /** The server's. */
  inServer: string[];
  net: Router;
}

/** Runs `fn` on a fresh client - router - server path, the router forgetting idle flows after TIMEOUT s. */
export function withRouterPath<T>(fn: (path: Path) => Promise<T>): Promise<T> {
  return withNetns((client) =>
    withNetns((router) =>
      withNetns(async (server) => {
        const net = await buildRouter({
          client: client.name,
          router: router.name,
          server: server.name,
          timeoutSeconds: TIMEOUT,
        });
        return await fn({
          client: client.name,
          router: router.name,
          server: server.name,
          inClient: client.exec,
          inServer: server.exec,
          net,
        });
      })
    )
  );
}

/** Runs `tests/fixtures/FIXTURE` in the client's namespace and returns the JSON it printed last. */
export async function clientFixture(
  path: Path,
  fixture: string,
  args: object,
): Promise<Record<string, unknown>> {
  const output = await run([
    ...path.inClient,
    Deno.execPath(),
    "run",
    "--allow-net",
    "--allow-ffi",
    "--allow-env",
    "--allow-read",
    "--allow-sys",
    `tests/fixtures/${fixture}`,
    JSON.stringify(args),
  ]);
  assertEquals(output.code, 0, output.stderr);
  return JSON.parse(output.stdout.trim().split("\n").at(-1)!);
}

/** Where `command` is, on the PATH or in /usr/sbin or /sbin (Debian keeps daemons there), or null. */
export async function findCommand(command: string): Promise<string | null> {
  const found = await run(["sh", "-c", 'PATH="$PATH:/usr/sbin:/sbin" command -v "$0"', command]);
  return found.code === 0 ? found.stdout.trim() : null;
}

/**
 * Why the router tests cannot run here, or null: namespaces, `nft`, and each
 * of `commands` (a command and the Debian package that has it).
 */
export async function routerUnavailableReason(
  commands: [string, string][] = [],
): Promise<string | null> {
  const reason = netnsUnavailableReason();
  if (reason) return reason;
  for (const [command, pkg] of [["nft", "nftables"], ...commands]) {
    if (!await findCommand(command)) return `${command} is missing (Debian package ${pkg})`;
  }
  return null;
}

/** A database or cache server started in the server's namespace. */
export interface ServerProcess extends AsyncDisposable {
  /** The address and port clients connect to. */
  host: string;
  port: number;
}

const TAIL_CHARS = 4_000; // how much of a server's log is kept for an error message

/**
 * Spawns `cmd`, reads its stdout and stderr until `ready` matches (keeping
 * only the log's tail, never all of it), then keeps draining them. At scope
 * exit it sends `stop`, then SIGKILL if the server is still there after 10 s.
 */
async function startLogged(
  cmd: string[],
  ready: RegExp,
  options: { cwd?: string; stop: Deno.Signal; name: string },
): Promise<AsyncDisposable> {
  const child = new Deno.Command(cmd[0], {
    args: cmd.slice(1),
    cwd: options.cwd,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let tail = "";
  const seen = Promise.withResolvers<void>();
  const drain = (stream: ReadableStream<Uint8Array>) =>
    (async () => {
      for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
        tail = (tail + chunk).slice(-TAIL_CHARS);
        if (ready.test(tail)) seen.resolve();
      }
    })();
  const drained = Promise.all([drain(child.stdout), drain(child.stderr)]);
  const stop = async () => {
    try {
      child.kill(options.stop);
    } catch { /* already gone */ }
    const timer = setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch { /* already gone */ }
    }, 10_000);
    await child.status;
    clearTimeout(timer);
    await drained.catch(() => {});
  };
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    await Promise.race([
      seen.promise,
      child.status.then(({ code }) => {
        throw new Error(`${options.name} exited ${code} before it was ready: ${tail}`);
      }),
      new Promise((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`${options.name} not ready in 60 s: ${tail}`)),
          60_000,
        );
      }),
    ]);
  } catch (error) {
    await stop();
    throw error;
  } finally {
    clearTimeout(timer);
  }
  return { [Symbol.asyncDispose]: stop };
}

/** Starts Debian's `redis-server` in the server's namespace, on port 6379, saving nothing. */
export async function startRedis(path: Path): Promise<ServerProcess> {
  const server = await startLogged(
    [
      ...path.inServer,
      "redis-server",
      ...["--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no"],
      ...["--save", "", "--appendonly", "no", "--daemonize", "no"],
    ],
    /Ready to accept connections/,
    { stop: "SIGKILL", name: "redis-server" },
  );
  return {
    host: path.net.serverAddress,
    port: 6379,
    [Symbol.asyncDispose]: () => server[Symbol.asyncDispose](),
  };
}

/** The newest PostgreSQL of Debian's `postgresql` packages: its bin directory, or null. */
export function postgresBinDir(): string | null {
  let versions: string[];
  try {
    versions = [...Deno.readDirSync("/usr/lib/postgresql")].map((entry) => entry.name);
  } catch {
    return null;
  }
  const usable = versions.filter((version) => {
    try {
      return Deno.statSync(`/usr/lib/postgresql/${version}/bin/postgres`).isFile;
    } catch {
      return false;
    }
  }).sort((a, b) => Number(b) - Number(a));
  return usable.length ? `/usr/lib/postgresql/${usable[0]}/bin` : null;
}

/** Why PostgreSQL cannot be started here, or null. */
export async function postgresUnavailableReason(): Promise<string | null> {
  const reason = await routerUnavailableReason();
  if (reason) return reason;
  if (!postgresBinDir()) {
    return "PostgreSQL is missing: no /usr/lib/postgresql/*/bin/postgres (Debian package postgresql)";
  }
  const user = await postgresUser();
  if (!user) return "there is no user `postgres` (Debian's package postgresql makes it)";
  // PostgreSQL refuses to run as root: it runs as that user, which the
  // sandbox of deno task test (a user namespace mapping only uid 0) lacks.
  const why = otherUserUnavailableReason(user.uid);
  return why && `PostgreSQL refuses root and must run as the user postgres, but ${why}`;
}

// The uid and gid of the user `postgres`, or null.
async function postgresUser(): Promise<{ uid: number; gid: number } | null> {
  const [uid, gid] = await Promise.all(["-u", "-g"].map((flag) => run(["id", flag, "postgres"])));
  if (uid.code !== 0 || gid.code !== 0) return null;
  return { uid: Number(uid.stdout), gid: Number(gid.stdout) };
}

/**
 * Starts Debian's PostgreSQL in the server's namespace as the user
 * `postgres` (it refuses root), on a fresh cluster in a temporary
 * directory of that user's, listening on the server's address, port 5432,
 * any client trusted (user `postgres`, database `postgres`). At scope exit
 * it shuts down at once (SIGQUIT) and the directory is removed.
 */
export async function startPostgres(path: Path): Promise<ServerProcess> {
  const bin = postgresBinDir();
  const user = await postgresUser();
  if (!bin || !user) throw new Error(await postgresUnavailableReason() ?? "no PostgreSQL");
  return await inTempDir("kakit-pg-", async (dir) => {
    await Deno.chown(dir, user.uid, user.gid);
    // setpriv execs (runuser would fork): the pid the test kills is postgres's.
    const asPostgres = ["setpriv", "--reuid", "postgres", "--regid", "postgres", "--init-groups"];
    const initdb = await run([
      ...asPostgres,
      ...[`${bin}/initdb`, "-D", `${dir}/data`, "-U", "postgres", "-A", "trust"],
      ...["--no-locale", "-E", "UTF8", "--no-sync"],
    ], { cwd: dir });
    if (initdb.code !== 0) throw new Error(`initdb exited ${initdb.code}: ${initdb.stderr}`);
    // The client arrives masqueraded as the router's address: trust any.
    await Deno.writeTextFile(
      `${dir}/data/pg_hba.conf`,
      "host all all 0.0.0.0/0 trust\nhost all all ::/0 trust\n",
      { append: true },
    );
    const host = path.net.serverAddress;
    const server = await startLogged(
      [
        ...path.inServer,
        ...asPostgres,
        ...[`${bin}/postgres`, "-D", `${dir}/data`, "-k", dir, "-p", "5432"],
        ...["-c", `listen_addresses=${host}`, "-c", "fsync=off"],
      ],
      /ready to accept connections/,
      { cwd: dir, stop: "SIGQUIT", name: "postgres" },
    );
    return { host, port: 5432, server };
  });
}

/** Why MariaDB cannot be started here, or null. */
export function mariadbUnavailableReason(): Promise<string | null> {
  return routerUnavailableReason([
    ["mariadbd", "mariadb-server"],
    ["mariadb-install-db", "mariadb-server"],
  ]);
}

/**
 * Starts Debian's MariaDB in the server's namespace, on a throwaway data
 * directory, listening on the server's address, port 3306, with no
 * grant tables (any user may connect, from anywhere). Root may run it
 * (`--user=root`), uid 0 of a user namespace too. At scope exit it is
 * killed and the directory removed.
 */
export async function startMariadb(path: Path): Promise<ServerProcess> {
  const [mariadbd, installDb] = await Promise.all(
    ["mariadbd", "mariadb-install-db"].map(findCommand),
  );
  if (!mariadbd || !installDb) throw new Error(await mariadbUnavailableReason() ?? "no MariaDB");
  return await inTempDir("kakit-mariadb-", async (dir) => {
    const common = ["--no-defaults", `--datadir=${dir}/data`, "--user=root", "--skip-name-resolve"];
    const install = await run([installDb, ...common, "--skip-test-db"], { cwd: dir });
    if (install.code !== 0) {
      throw new Error(`mariadb-install-db exited ${install.code}: ${install.stderr.slice(-2000)}`);
    }
    const host = path.net.serverAddress;
    const server = await startLogged(
      [
        ...path.inServer,
        mariadbd,
        ...common,
        ...[`--bind-address=${host}`, "--port=3306", `--socket=${dir}/mariadbd.sock`],
        ...[
          `--pid-file=${dir}/mariadbd.pid`,
          "--skip-grant-tables",
          "--innodb-buffer-pool-size=16M",
        ],
      ],
      /ready for connections/,
      { cwd: dir, stop: "SIGKILL", name: "mariadbd" },
    );
    return { host, port: 3306, server };
  });
}

// Runs `start` with a new temporary directory; the server it starts and the
// directory go together at scope exit, and the directory at once if it fails.
async function inTempDir(
  prefix: string,
  start: (dir: string) => Promise<{ host: string; port: number; server: AsyncDisposable }>,
): Promise<ServerProcess> {
  const dir = await Deno.makeTempDir({ prefix });
  try {
    const { host, port, server } = await start(dir);
    return {
      host,
      port,
      async [Symbol.asyncDispose]() {
        await server[Symbol.asyncDispose]();
        await Deno.remove(dir, { recursive: true });
      },
    };
  } catch (error) {
    await Deno.remove(dir, { recursive: true });
    throw error;
  }
}

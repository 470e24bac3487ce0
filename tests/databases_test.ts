/**
 * Real databases through the lab's router that forgets idle flows
 * (lab/router.ts, forgetting after 5 s), each driver tuned as
 * docs/drivers.md says: a query after 16 s of idle is lost without tuning
 * (the router drops its packets without a word), and answered on the same
 * connection with it (the same backend pid, the same connection id).
 *
 * - Debian's PostgreSQL with npm:pg, a `Client` and a `Pool` tuned in its
 *   `connect` event; and a `Pool` whose own idle timeout is shorter than
 *   the router's: nothing is lost even untuned, the pool opens a new
 *   connection;
 * - the same PostgreSQL with npm:postgres (postgres.js), tuned with
 *   `setKeepAliveAll` after the first query;
 * - Debian's MariaDB with npm:mysql2, its socket handed in through mysql2's
 *   `stream` option and tuned once connected.
 *
 * Each test starts its own server in the server's namespace (the host runs
 * none). Root, `ip`, `nft` and the servers needed: skipped on a laptop, run
 * in CI. PostgreSQL also needs the user `postgres` (it refuses root), which
 * the sandbox of `deno task test` (only uid 0 exists there) lacks.
 */
import { assert, assertEquals, assertMatch, assertNotEquals } from "@std/assert";
import { requiringTest } from "./_helpers.ts";
import {
  clientFixture,
  IDLE,
  mariadbUnavailableReason,
  type Path,
  postgresUnavailableReason,
  startMariadb,
  startPostgres,
  tuning,
  WAIT,
  withRouterPath,
} from "./_router.ts";

const postgresReason = await postgresUnavailableReason();
const mariadbReason = await mariadbUnavailableReason();

type Result = Record<string, unknown>;
const shown = (result: Result) => JSON.stringify(result);

// Untuned: the router forgot the connection; the query on it is dropped and
// nothing comes back in WAIT seconds.
function assertLost(result: Result) {
  assertEquals(result.second, null, `the query after the idle was answered: ${shown(result)}`);
  assertMatch(String(result.error), /timed out/, shown(result));
  assert(Number(result.secondsWaited) >= WAIT - 0.1, shown(result));
}

// Tuned: answered, on the same connection as before the idle.
function assertSameConnection(result: Result) {
  assertEquals(result.error, null, shown(result));
  assert(typeof result.first === "number" && result.first > 0, shown(result));
  assertEquals(result.second, result.first, `answered on another connection: ${shown(result)}`);
}

// The fixture's arguments: the server's address, the idle, the wait, and the tuning or none.
const args = (server: { host: string; port: number }, tuned: boolean, extra: object = {}) => ({
  host: server.host,
  port: server.port,
  idleSeconds: IDLE,
  waitSeconds: WAIT,
  tuning: tuned ? tuning : null,
  ...extra,
});

// Runs `fn` with a fresh PostgreSQL on the server's side of a fresh router.
function withPostgres(fn: (path: Path, server: { host: string; port: number }) => Promise<void>) {
  return withRouterPath(async (path) => {
    await using server = await startPostgres(path);
    await fn(path, server);
  });
}

requiringTest(
  "npm:pg's Client to a real PostgreSQL through a NAT that forgets: lost untuned, answered on the same connection tuned",
  postgresReason,
  () =>
    withPostgres(async (path, server) => {
      const [plain, tuned] = await Promise.all([
        clientFixture(path, "db_pg_client.ts", args(server, false)),
        clientFixture(path, "db_pg_client.ts", args(server, true)),
      ]);
      assertLost(plain);
      assertSameConnection(tuned);
      assertEquals((tuned.settings as Result).time, tuning.time, "read back from pg's socket");
    }),
);

requiringTest(
  "npm:pg's Pool through a NAT that forgets: lost untuned, kept when tuned in its connect event, and its own short idle timeout loses nothing",
  postgresReason,
  () =>
    withPostgres(async (path, server) => {
      // The pool keeps an unused connection far longer than the idle...
      const keeps = { idleTimeoutMillis: 4 * IDLE * 1000 };
      // ... or closes it itself well before the router forgets it.
      const closes = { idleTimeoutMillis: 2_000 };
      const [plain, tuned, short] = await Promise.all([
        clientFixture(path, "db_pg_pool.ts", args(server, false, keeps)),
        clientFixture(path, "db_pg_pool.ts", args(server, true, keeps)),
        clientFixture(path, "db_pg_pool.ts", args(server, false, closes)),
      ]);
      assertLost(plain);
      assertEquals(plain.closed, 0, shown(plain));
      assertSameConnection(tuned);
      assertEquals([tuned.opened, tuned.closed], [1, 0], shown(tuned));
      assertEquals((tuned.settings as Result).time, tuning.time, "read back from pg's socket");
      // Untuned, yet answered: the pool had closed its connection (FIN, while
      // the router still knew the flow) and opened another for the query.
      assertEquals(short.error, null, shown(short));
      assertEquals([short.opened, short.closed], [2, 1], shown(short));
      assert(typeof short.second === "number", shown(short));
      assertNotEquals(short.second, short.first, `the same backend answered: ${shown(short)}`);
    }),
);

requiringTest(
  "npm:postgres (postgres.js) through a NAT that forgets: lost untuned, answered on the same connection after setKeepAliveAll",
  postgresReason,
  () =>
    withPostgres(async (path, server) => {
      const [plain, tuned] = await Promise.all([
        clientFixture(path, "db_postgres_js.ts", args(server, false)),
        clientFixture(path, "db_postgres_js.ts", args(server, true)),
      ]);
      assertLost(plain);
      assertSameConnection(tuned);
      assertEquals(tuned.tuned, 1, `setKeepAliveAll tuned ${tuned.tuned} sockets, not 1`);
    }),
);

requiringTest(
  "npm:mysql2 to a real MariaDB through a NAT that forgets: lost untuned, answered on the same connection with a tuned socket",
  mariadbReason,
  () =>
    withRouterPath(async (path) => {
      await using server = await startMariadb(path);
      const [plain, tuned] = await Promise.all([
        clientFixture(path, "db_mysql2.ts", args(server, false)),
        clientFixture(path, "db_mysql2.ts", args(server, true)),
      ]);
      assertLost(plain);
      assertSameConnection(tuned);
      assertEquals((tuned.settings as Result).time, tuning.time, "read back from our socket");
      assert(tuned.ourSocketKept, `mysql2 did not use the socket it was given: ${shown(tuned)}`);
    }),
);

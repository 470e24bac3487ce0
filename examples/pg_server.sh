#!/bin/sh
# A throwaway PostgreSQL for examples/pg_client.ts behind the lab's router:
#
#   deno task lab own --server "sh examples/pg_server.sh" --port 5432 --client "..."
#
# It makes a new cluster in a temporary directory (in $TMPDIR: the lab gives
# its commands an empty one of their own, gone when the lab ends), lets everyone in
# without a password (trust: for a throwaway cluster only), and runs
# postgres in the foreground on $LAB_SERVER port $LAB_PORT (the lab sets
# both; 127.0.0.1 and 5432 without it).
set -eu

# PostgreSQL refuses to run as root: as root, this script runs itself again
# as the postgres user (Debian's package makes that user). Its text is read
# from stdin, so that user need not be able to read this file.
if [ "$(id -u)" = 0 ]; then
  exec runuser -u postgres -- sh -s < "$0"
fi

# PostgreSQL's programs look up the current directory: start in one every
# user may enter.
cd /

# Debian keeps initdb and postgres off the PATH, in /usr/lib/postgresql/VERSION/bin.
for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V); do PATH="$dir:$PATH"; done
if ! command -v initdb >/dev/null; then
  echo "initdb not found: install PostgreSQL (Debian: apt-get install postgresql)" >&2
  exit 1
fi

data=$(mktemp -d)
initdb --pgdata "$data" --username postgres --auth trust --no-sync >/dev/null
# initdb's trust covers only local connections; the client comes through
# the router, from its address.
printf 'host all all 0.0.0.0/0 trust\nhost all all ::/0 trust\n' >>"$data/pg_hba.conf"
exec postgres -D "$data" -c listen_addresses="${LAB_SERVER:-127.0.0.1}" -p "${LAB_PORT:-5432}" \
  -c unix_socket_directories="$data"

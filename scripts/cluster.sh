#!/usr/bin/env bash
# Three rendezvous nodes on one machine, sharing a private PostgreSQL and a private
# nats-server, all on loopback (docs/cluster.md). For trying a cluster out, not for
# production: the database lives in a temporary directory and goes when this stops.
#
#   scripts/cluster.sh [TOKEN_FILE]      # Ctrl-C stops everything
#
# Needs Debian's postgresql and nats-server packages. Nodes listen on 127.0.0.1:8081-8083,
# PostgreSQL on 127.0.0.1:8432 and NATS on 127.0.0.1:8422. Put a load balancer in front of
# the nodes (docs/cluster.md shows one); executors and harnesses may use any node.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
codexexec="${CODEXEXEC:-$root/.venv/bin/codexexec}"
tokens="${1:-}"
bindir="$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")"
nats="$(command -v nats-server || echo /usr/sbin/nats-server)"
work="$(mktemp -d /var/tmp/codexexec-cluster.XXXXXX)"
pids=()
as_db_user=()
if [ "$(id -u)" = 0 ]; then  # PostgreSQL refuses to run as root
  chown nobody: "$work"
  as_db_user=(setpriv --reuid=nobody --regid=nogroup --clear-groups)
fi

stop() {
  trap - EXIT INT TERM
  # Nodes first (they drain), then the bus and the database under them.
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null || true
    [ "$i" -le 0 ] || wait "${pids[i]}" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  "${as_db_user[@]}" "$bindir/pg_ctl" -D "$work/pg" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap stop EXIT INT TERM

"${as_db_user[@]}" "$bindir/initdb" -D "$work/pg" -A trust -U cx --no-locale -E UTF8 >/dev/null
"${as_db_user[@]}" "$bindir/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w \
  -o "-h 127.0.0.1 -p 8432 -k $work" start >/dev/null
GOMAXPROCS=1 "$nats" -a 127.0.0.1 -p 8422 >"$work/nats.log" 2>&1 &
pids+=($!)

args=(--db postgresql://cx@127.0.0.1:8432/postgres --bus nats://127.0.0.1:8422)
[ -n "$tokens" ] && args+=(--token-file "$tokens")
for port in 8081 8082 8083; do
  "$codexexec" rendezvous --listen "http://127.0.0.1:$port" "${args[@]}" &
  pids+=($!)
done
echo "three nodes: http://127.0.0.1:8081 http://127.0.0.1:8082 http://127.0.0.1:8083 (Ctrl-C stops)" >&2
wait

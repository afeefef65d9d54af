#!/usr/bin/env bash
# PostgreSQL benchmark: pgbench select-only (-S) and TPC-B-like, with -M simple and
# -M prepared, -c 8 -j 2, against one throwaway cluster directly, through a throwaway
# pgbouncer (session mode), and through postern with every statement recorded, in one
# run. Prints TPS and mean latency for each and the ratios postern/direct and
# postern/pgbouncer. postern is measured over TLS (as developers use it) against
# pgbouncer with client TLS (`client_tls_sslmode`, clients connecting with
# sslmode=verify-full to both), and, for parity with the plaintext peers, both without. Then
# connection setup: `pgbench -C` (a new connection per transaction) over TLS.
#
# pgbouncer keeps no record of statements. Its recording-equivalent setting is the
# server's own statement log: `pgbouncer-tls-logged` reaches the same database through
# pgbouncer with client TLS as a role for which PostgreSQL logs every statement with its
# duration and parameters (`log_min_duration_statement = 0`), the way a PostgreSQL
# deployment without postern gets a statement transcript. Both comparisons are printed.
#
#   bench/pg.sh                  # 10 s per run, 3 rounds, scale 10
#   SECONDS_PER_RUN=5 ROUNDS=1 SCALE=2 bench/pg.sh
#   SCRIPTS=-S MODES=prepared bench/pg.sh    # one workload
#
# Each round runs every path once, in a rotating order; each figure is the median over
# the rounds (this 2-core VM varies by ±10% from run to run).
#
# Everything runs on 127.0.0.1 ports chosen by the kernel, in a temp dir, stopped on exit.
# Needs: postgresql, postgresql-client, pgbouncer (script/bootstrap installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${SECONDS_PER_RUN:-10}
ROUNDS=${ROUNDS:-3}
SCALE=${SCALE:-10}
CLIENTS=8
THREADS=2

cargo build --release --quiet
BIN=$PWD/target/release/postern
T=$(mktemp -d /tmp/postern-pgbench.XXXXXX)
chmod 755 "$T"
PIDS=()
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_pg() { if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [[ -f $T/run/pgbouncer.pid ]] && kill "$(cat "$T/run/pgbouncer.pid")" 2>/dev/null || true
  [[ -f $T/run/pg/postmaster.pid ]] && as_pg "$PGBIN/pg_ctl" -D "$T/run/pg" -m immediate stop >/dev/null 2>&1 || true
  wait 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

PGPORT=$(port); BOUNCER=$(port); PG_LISTEN=$(port); API=$(port)
SUPER_PW=super-$RANDOM$RANDOM
APP_PW=app-$RANDOM$RANDOM
mkdir -p "$T/run"
echo "$SUPER_PW" > "$T/pwfile"
[[ $(id -u) -eq 0 ]] && chown -R postgres:postgres "$T/run" "$T/pwfile"
as_pg "$PGBIN/initdb" -D "$T/run/pg" -U postgres --no-sync --auth-local=trust --auth-host=scram-sha-256 \
  --pwfile="$T/pwfile" >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$T/run/pg" -l "$T/run/pg.log" -w -o \
  "-p $PGPORT -k $T/run -c listen_addresses=127.0.0.1 -c max_connections=100 -c shared_buffers=256MB -c fsync=off -c synchronous_commit=off" \
  start >/dev/null
export PGPASSFILE=/dev/null PGSERVICEFILE=/dev/null
PGPASSWORD=$SUPER_PW psql -X -q "host=127.0.0.1 port=$PGPORT user=postgres dbname=postgres" \
  -c "CREATE ROLE app LOGIN PASSWORD '$APP_PW'" -c "CREATE DATABASE bench OWNER app" \
  -c "CREATE ROLE applog LOGIN PASSWORD '$APP_PW' IN ROLE app" \
  -c "ALTER ROLE applog SET log_min_duration_statement = 0"
echo "initialising pgbench scale $SCALE ..."
PGPASSWORD=$APP_PW pgbench -q -i -s "$SCALE" "host=127.0.0.1 port=$PGPORT user=app dbname=bench" >/dev/null 2>&1

# pgbouncer, session mode, SCRAM both ways (it refuses to run as root); client TLS with a
# throwaway P-256 certificate issued by a throwaway CA, as postern's is, so that clients
# verify the same chain on both paths (sslmode=verify-full).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=bench-ca -keyout "$T/run/bouncer-ca.key" -out "$T/run/bouncer-ca.crt" >/dev/null 2>&1
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=127.0.0.1 \
  -keyout "$T/run/bouncer.key" -out "$T/run/bouncer.csr" >/dev/null 2>&1
printf 'subjectAltName=IP:127.0.0.1\n' > "$T/run/bouncer.ext"
openssl x509 -req -in "$T/run/bouncer.csr" -CA "$T/run/bouncer-ca.crt" -CAkey "$T/run/bouncer-ca.key" \
  -CAcreateserial -days 1 -extfile "$T/run/bouncer.ext" -out "$T/run/bouncer.crt" >/dev/null 2>&1
cat > "$T/run/userlist.txt" <<U
"app" "$APP_PW"
U
cat > "$T/run/pgbouncer.ini" <<INI
[databases]
bench = host=127.0.0.1 port=$PGPORT dbname=bench
bench_logged = host=127.0.0.1 port=$PGPORT dbname=bench user=applog password=$APP_PW
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $T/run/userlist.txt
pool_mode = session
max_client_conn = 100
default_pool_size = 20
logfile = $T/run/pgbouncer.log
pidfile = $T/run/pgbouncer.pid
client_tls_sslmode = allow
client_tls_key_file = $T/run/bouncer.key
client_tls_cert_file = $T/run/bouncer.crt
INI
[[ $(id -u) -eq 0 ]] && chown -R postgres:postgres "$T/run"
as_pg pgbouncer "$T/run/pgbouncer.ini" >/dev/null 2>&1 &
PIDS+=($!)

# postern: a user, a role, the target, its brokered credential; a developer token.
P="$BIN --data-dir $T/data"
$P admin role add bench --allow '*' --databases bench --db-users app >/dev/null
$P admin user add dev --role bench >/dev/null
echo "bench password 123" | $P admin user set-password dev --password-stdin >/dev/null
$P admin target add pg1 --postgres "127.0.0.1:$PGPORT" --tls-mode disable >/dev/null
echo "$APP_PW" | $P admin target set-credential pg1 --db-user app --password-stdin >/dev/null
cat > "$T/postern.toml" <<CFG
[postgres]
listen = "127.0.0.1:$PG_LISTEN"
allow_plaintext = true
CFG
RUST_LOG=warn $BIN serve --config "$T/postern.toml" --data-dir "$T/data" --ssh-listen 127.0.0.1:0 \
  --api-listen "127.0.0.1:$API" > "$T/serve.out" 2> "$T/serve.log" &
SERVE_PID=$!
PIDS+=($SERVE_PID)
for _ in $(seq 100); do grep -q "postern ready" "$T/serve.out" 2>/dev/null && break; sleep 0.1; done
export HOME=$T/home
mkdir -p "$HOME"
echo "bench password 123" | $BIN login --server "https://127.0.0.1:$API" --user dev --password-stdin >/dev/null 2>&1
$BIN db login pg1 >/dev/null
TOKEN=$(cut -d: -f5 "$HOME/.pgpass")
CA=$HOME/.postern/ca.crt

declare -A CONN=(
  [direct]="host=127.0.0.1 port=$PGPORT user=app dbname=bench sslmode=disable"
  [pgbouncer]="host=127.0.0.1 port=$BOUNCER user=app dbname=bench sslmode=disable"
  [pgbouncer-tls]="host=127.0.0.1 port=$BOUNCER user=app dbname=bench sslmode=verify-full sslrootcert=$T/run/bouncer-ca.crt"
  [pgbouncer-tls-logged]="host=127.0.0.1 port=$BOUNCER user=app dbname=bench_logged sslmode=verify-full sslrootcert=$T/run/bouncer-ca.crt"
  [postern]="host=127.0.0.1 port=$PG_LISTEN user=dev dbname=pg1/bench sslmode=disable"
  [postern-tls]="host=127.0.0.1 port=$PG_LISTEN user=dev dbname=pg1/bench sslmode=verify-full sslrootcert=$CA"
)
declare -A PW=([direct]=$APP_PW [pgbouncer]=$APP_PW [pgbouncer-tls]=$APP_PW [pgbouncer-tls-logged]=$APP_PW
  [postern]=$TOKEN [postern-tls]=$TOKEN)
ORDER=(direct pgbouncer pgbouncer-tls pgbouncer-tls-logged postern postern-tls)

# CPU time a process has used, in clock ticks (user + system).
ticks() { [[ -n $1 ]] && awk '{print $14 + $15}' "/proc/$1/stat" || echo 0; }
proxy_pid() { case $1 in pgbouncer*) cat "$T/run/pgbouncer.pid" ;; postern*) echo "$SERVE_PID" ;; esac; }
HZ=$(getconf CLK_TCK)

bench() { # name script mode [extra] -> "tps latency_ms proxy_cpu_us_per_transaction"
  local out pid before after
  pid=$(proxy_pid "$1")
  before=$(ticks "$pid")
  out=$(PGPASSWORD=${PW[$1]} pgbench -n $2 ${4:-} -M "$3" -c $CLIENTS -j $THREADS -T "$RUN" "${CONN[$1]}" 2>&1) ||
    { echo "pgbench failed for $1:" >&2; echo "$out" >&2; tail -20 "$T/serve.log" >&2; exit 1; }
  after=$(ticks "$pid")
  local tps lat n
  tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
  lat=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$out")
  n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$out")
  echo "$tps $lat $(( (after - before) * 1000000 / HZ / (n > 0 ? n : 1) ))"
}

echo "pgbench -c $CLIENTS -j $THREADS -T $RUN, scale $SCALE, $(nproc) CPUs, median of $ROUNDS rounds; postern records every statement"
for script in ${SCRIPTS:-"-S" ""}; do
  name=${script:+select-only}; name=${name:-tpcb-like}
  for mode in ${MODES:-simple prepared}; do
    declare -A TPS=() LAT=() CPU=()
    for round in $(seq "$ROUNDS"); do
      for i in "${!ORDER[@]}"; do
        who=${ORDER[$(( (i + round) % ${#ORDER[@]} ))]}
        read -r tps lat cpu < <(bench "$who" "$script" "$mode")
        TPS[$who]+="$tps "
        LAT[$who]+="$lat "
        CPU[$who]+="$cpu "
      done
    done
    declare -A MED=()
    for who in "${ORDER[@]}"; do
      read -r tps lat < <(python3 -c "
import statistics, sys
t = [float(x) for x in '${TPS[$who]}'.split()]; l = [float(x) for x in '${LAT[$who]}'.split()]
print(statistics.median(t), statistics.median(l))")
      MED[$who]=$tps
      printf "%-11s %-8s %-20s tps %10.1f   latency %6.3f ms   (runs: %s)\n" "$name" "$mode" "$who" "$tps" "$lat" "${TPS[$who]% }"
    done
    python3 -c "
d, b, bt, bl, p, t = ${MED[direct]}, ${MED[pgbouncer]}, ${MED[pgbouncer-tls]}, ${MED[pgbouncer-tls-logged]}, ${MED[postern]}, ${MED[postern-tls]}
print(f'  => postern/direct {p/d:.2f}x   postern/pgbouncer {p/b:.2f}x   postern-tls/pgbouncer-tls {t/bt:.2f}x   postern-tls/pgbouncer-tls-logged {t/bl:.2f}x')"
    # CPU the proxy itself spent per transaction (steadier than tps on a shared VM).
    python3 -c "
import statistics
m = lambda s: statistics.median([float(x) for x in s.split()])
b, bt, p, t = m('${CPU[pgbouncer]}'), m('${CPU[pgbouncer-tls]}'), m('${CPU[postern]}'), m('${CPU[postern-tls]}')
print(f'     proxy CPU per transaction: pgbouncer {b:.1f} us, postern {p:.1f} us ({b/p:.2f}x);  pgbouncer-tls {bt:.1f} us, postern-tls {t:.1f} us ({bt/t:.2f}x)')"
  done
done
# Connection setup over TLS: a new connection (TLS handshake, authentication, and for
# postern the brokered login to the target) per select-only transaction.
if [[ -z ${SKIP_CONNECT:-} ]]; then
  declare -A CT=() CC=()
  for round in $(seq "$ROUNDS"); do
    for who in direct pgbouncer-tls postern-tls; do
      read -r tps lat cpu < <(bench "$who" -S simple -C)
      CT[$who]+="$tps "
      CC[$who]+="$cpu "
    done
  done
  for who in direct pgbouncer-tls postern-tls; do
    printf "%-11s %-8s %-13s tps %10.1f   (runs: %s)\n" connect simple "$who" \
      "$(python3 -c "import statistics; print(statistics.median([float(x) for x in '${CT[$who]}'.split()]))")" "${CT[$who]% }"
  done
  python3 -c "
import statistics
m = lambda s: statistics.median([float(x) for x in s.split()])
print(f'  => postern-tls/pgbouncer-tls {m(\"${CT[postern-tls]}\")/m(\"${CT[pgbouncer-tls]}\"):.2f}x   proxy CPU per connection: pgbouncer-tls {m(\"${CC[pgbouncer-tls]}\"):.0f} us, postern-tls {m(\"${CC[postern-tls]}\"):.0f} us')"
fi
statements=$(find "$T/data/recordings" -name '*.pg.jsonl' -exec cat {} + | grep -c '"type":"statement"' || true)
echo "statements recorded by postern: $statements"
echo "statement log lines written by PostgreSQL (pgbouncer-tls-logged): $(grep -c 'LOG:  duration:' "$T/run/pg.log" || true)"

#!/usr/bin/env bash
# Session set-up through a load balancer: `ssh … true` connections per second through
# HAProxy with one postern replica, then with two, on one PostgreSQL store; prints both
# and the ratio two/one.
#
#   bench/replicas.sh                      # 20 s per run, 8 clients in parallel
#   SECONDS_PER_RUN=10 CLIENTS=4 bench/replicas.sh
#
# "Each replica has its own cores", on a machine with few: every replica runs in a cgroup
# of its own (cgroup v1 `cpu` controller, /sys/fs/cgroup/cpu/postern-bench-*) with a CPU
# quota of QUOTA µs per 100 ms (default 40000: 0.4 of a core), so two replicas have twice
# the CPU of one while the clients, sshd, HAProxy and PostgreSQL share the rest in both
# runs. Needs root (cgroups), haproxy, openssh-server, PostgreSQL (script/bootstrap).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${SECONDS_PER_RUN:-20}
CLIENTS=${CLIENTS:-8}
QUOTA=${QUOTA:-40000}

cargo build --release --quiet
BIN=$PWD/target/release/postern
T=$(mktemp -d /tmp/postern-bench-replicas.XXXXXX)
# Its own temp dir: the postgres user owns it (and cannot enter $T).
STORE_DIR=$(mktemp -d /tmp/postern-bench-store.XXXXXX)
CG=/sys/fs/cgroup/cpu
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  script/store-cluster stop "$STORE_DIR" >/dev/null 2>&1 || true
  for g in a b; do rmdir "$CG/postern-bench-$g" 2>/dev/null || true; done
  rm -rf "$T"
}
trap cleanup EXIT
mkdir -p /run/sshd 2>/dev/null || true
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ME=$(id -un)

STORE=$(script/store-cluster start "$STORE_DIR")
psql "$STORE/postgres" -qAtc "CREATE DATABASE bench"
export POSTERN_STORE_URL="$STORE/bench"

ssh-keygen -q -t ed25519 -N '' -f "$T/client" -C bench
A="$BIN --data-dir $T/a"
$A admin target-ca | head -1 > "$T/target_ca.pub"
TPORT=$(port)
mkdir -p "$T/target/home"
ssh-keygen -q -t ed25519 -N '' -f "$T/target/host"
cat > "$T/target/config" <<CFG
ListenAddress 127.0.0.1:$TPORT
HostKey $T/target/host
PidFile $T/target/pid
TrustedUserCAKeys $T/target_ca.pub
AuthorizedKeysFile none
StrictModes no
UsePAM no
PasswordAuthentication no
PermitRootLogin prohibit-password
MaxStartups 1000
SetEnv HOME=$T/target/home
CFG
/usr/sbin/sshd -D -e -f "$T/target/config" 2>"$T/target/log" &
PIDS+=($!)
$A admin role add bench --allow '*' --logins "$ME" >/dev/null
$A admin user add bench --role bench >/dev/null
$A admin user add-key bench "$T/client.pub" >/dev/null
$A admin target add target --ssh "127.0.0.1:$TPORT" --host-key "$(cut -d' ' -f1,2 "$T/target/host.pub")" >/dev/null

declare -A SSH API
start_replica() { # name
  local n=$1
  SSH[$n]=$(port); API[$n]=$(port)
  mkdir -p "$CG/postern-bench-$n"
  echo 100000 > "$CG/postern-bench-$n/cpu.cfs_period_us"
  echo "$QUOTA" > "$CG/postern-bench-$n/cpu.cfs_quota_us"
  # The shell joins the cgroup, then becomes postern: every thread it starts is in it.
  POSTERN_MASTER_KEY=$(cat "$T/a/keys/master.key") RUST_LOG=warn bash -c \
    "echo \$\$ > $CG/postern-bench-$n/cgroup.procs; exec $BIN serve --data-dir $T/$n --ssh-listen 127.0.0.1:${SSH[$n]} --pg-listen 127.0.0.1:0 --api-listen 127.0.0.1:${API[$n]}" \
    > "$T/$n.out" 2> "$T/$n.log" &
  PIDS+=($!)
  for _ in $(seq 200); do grep -q "postern ready" "$T/$n.out" 2>/dev/null && break; sleep 0.1; done
  grep -q "postern ready" "$T/$n.out" || { echo "bench: replica $n did not start" >&2; cat "$T/$n.log" >&2; exit 1; }
}
start_replica a
start_replica b

LB=$(port)
balancer() { # servers…
  local cfg="$T/haproxy-$#.cfg"
  {
    printf 'global\n    maxconn 4000\ndefaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n'
    printf 'frontend ssh\n    bind 127.0.0.1:%s\n    default_backend replicas\n' "$LB"
    printf 'backend replicas\n    balance roundrobin\n    option httpchk GET /v1/ready\n    http-check expect status 200\n'
    for s in "$@"; do
      printf '    server %s 127.0.0.1:%s check port %s check-ssl verify none inter 1s\n' "$s" "${SSH[$s]}" "${API[$s]}"
    done
  } > "$cfg"
  /usr/sbin/haproxy -db -f "$cfg" > "$T/haproxy.log" 2>&1 &
  HAPROXY=$!
  PIDS+=($HAPROXY)
  sleep 2
}

echo "[127.0.0.1]:$LB $(cut -d' ' -f1,2 "$T/a/keys/ssh_host_ed25519_key.pub")" > "$T/known_hosts"
SSH_CMD=(ssh -i "$T/client" -o IdentitiesOnly=yes -o UserKnownHostsFile="$T/known_hosts"
  -o StrictHostKeyChecking=yes -o BatchMode=yes -o ControlMaster=no -F /dev/null
  -p "$LB" "$ME@target@127.0.0.1" true)

rate() { # how many `ssh … true` complete per second with CLIENTS in parallel
  python3 - "$SECONDS_PER_RUN" "$CLIENTS" "${SSH_CMD[@]}" <<'PY'
import subprocess, sys, threading, time
secs, clients, cmd = float(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
done, failed = [0], [0]
lock = threading.Lock()
end = time.monotonic() + secs
def run():
    while time.monotonic() < end:
        ok = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0
        with lock:
            if ok: done[0] += 1
            else: failed[0] += 1
start = time.monotonic()
ts = [threading.Thread(target=run) for _ in range(clients)]
for t in ts: t.start()
for t in ts: t.join()
print(f"{done[0] / (time.monotonic() - start):.1f} {failed[0]}")
PY
}

balancer a
"${SSH_CMD[@]}" || { echo "bench: the path through the balancer does not work" >&2; cat "$T/a.log" >&2; exit 1; }
read -r ONE FAILED_ONE < <(rate)
kill "$HAPROXY"; wait "$HAPROXY" 2>/dev/null || true
balancer a b
read -r TWO FAILED_TWO < <(rate)

echo "ssh true through HAProxy, $CLIENTS clients, ${SECONDS_PER_RUN}s, replicas capped at $QUOTA us/100 ms CPU each:"
echo "  one replica:  $ONE sessions/s ($FAILED_ONE failed)"
echo "  two replicas: $TWO sessions/s ($FAILED_TWO failed)"
python3 -c "import sys; r = float(sys.argv[2]) / float(sys.argv[1]); print(f'  ratio two/one: {r:.2f}x (target >= 1.6x: {\"met\" if r >= 1.6 else \"missed\"})')" "$ONE" "$TWO"

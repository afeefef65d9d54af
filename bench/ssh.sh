#!/usr/bin/env bash
# SSH benchmark: the same workloads straight to a throwaway sshd, through postern, and
# through OpenSSH's own jump host (`ssh -J`, a second throwaway sshd), in one run.
# Prints each figure and the ratios postern/direct and postern/ssh -J.
#
#   bench/ssh.sh                 # 512 MiB bulk, 2000 echo round trips, 50 connects
#   BULK_MIB=64 ECHOES=500 CONNECTS=20 bench/ssh.sh   # quicker
#
# Everything runs on 127.0.0.1 ports chosen by the kernel, in a temp dir, and is stopped
# on exit. Needs: openssh-server, openssh-client, python3 (script/bootstrap installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
BULK_MIB=${BULK_MIB:-512}
ECHOES=${ECHOES:-2000}
CONNECTS=${CONNECTS:-50}

cargo build --release --quiet
BIN=$PWD/target/release/postern
T=$(mktemp -d /tmp/postern-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$T"
}
trap cleanup EXIT
mkdir -p /run/sshd 2>/dev/null || true

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ME=$(id -un)

ssh-keygen -q -t ed25519 -N '' -f "$T/client" -C bench
P="$BIN --data-dir $T/data"
$P admin target-ca | head -1 > "$T/target_ca.pub"

start_sshd() { # name port
  local d="$T/$1"; mkdir -p "$d"
  ssh-keygen -q -t ed25519 -N '' -f "$d/host"
  cp "$T/client.pub" "$d/authorized_keys"
  cat > "$d/config" <<CFG
ListenAddress 127.0.0.1:$2
HostKey $d/host
PidFile $d/pid
AuthorizedKeysFile $d/authorized_keys
TrustedUserCAKeys $T/target_ca.pub
StrictModes no
UsePAM no
PasswordAuthentication no
PermitRootLogin prohibit-password
CFG
  /usr/sbin/sshd -D -e -f "$d/config" 2>"$d/log" &
  PIDS+=($!)
}

TPORT=$(port); JPORT=$(port); SSH_PORT=$(port)
start_sshd target "$TPORT"
start_sshd jump "$JPORT"
$P admin role add bench --allow '*' --logins "$ME" --max-session-ttl 8h >/dev/null
$P admin user add bench --role bench >/dev/null
$P admin user add-key bench "$T/client.pub" >/dev/null
$P admin target add target --ssh "127.0.0.1:$TPORT" --host-key "$(cut -d' ' -f1,2 "$T/target/host.pub")" >/dev/null
RUST_LOG=warn $BIN serve --data-dir "$T/data" --ssh-listen "127.0.0.1:$SSH_PORT" \
  --pg-listen 127.0.0.1:0 --api-listen 127.0.0.1:0 > "$T/serve.out" 2> "$T/serve.log" &
PIDS+=($!)
for _ in $(seq 100); do grep -q "postern ready" "$T/serve.out" 2>/dev/null && break; sleep 0.1; done

{
  echo "[127.0.0.1]:$TPORT $(cut -d' ' -f1,2 "$T/target/host.pub")"
  echo "[127.0.0.1]:$JPORT $(cut -d' ' -f1,2 "$T/jump/host.pub")"
  echo "[127.0.0.1]:$SSH_PORT $(cut -d' ' -f1,2 "$T/data/keys/ssh_host_ed25519_key.pub")"
} > "$T/known_hosts"
cat > "$T/ssh_config" <<CFG
Host *
  IdentityFile $T/client
  IdentitiesOnly yes
  UserKnownHostsFile $T/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  ControlMaster no
CFG
# The three ways to reach the same target.
DIRECT=(ssh -F "$T/ssh_config" -p "$TPORT" "$ME@127.0.0.1")
POSTERN=(ssh -F "$T/ssh_config" -p "$SSH_PORT" "$ME@target@127.0.0.1")
JUMP=(ssh -F "$T/ssh_config" -J "$ME@127.0.0.1:$JPORT" -p "$TPORT" "$ME@127.0.0.1")

for v in DIRECT POSTERN JUMP; do
  declare -n cmd=$v
  out=$("${cmd[@]}" 'echo ok')
  [[ $out == ok ]] || { echo "bench: $v path does not work" >&2; cat "$T/serve.log" >&2; exit 1; }
done

export BULK_MIB ECHOES CONNECTS
export DIRECT_CMD="${DIRECT[*]}" POSTERN_CMD="${POSTERN[*]}" JUMP_CMD="${JUMP[*]}"
python3 - "$T" <<'PY'
import os, subprocess, sys, time, statistics, shlex

T = sys.argv[1]
bulk = int(os.environ["BULK_MIB"]); echoes = int(os.environ["ECHOES"]); connects = int(os.environ["CONNECTS"])
def cmd(name):
    return shlex.split(os.environ[name])

paths = {"direct": cmd("DIRECT_CMD"), "postern": cmd("POSTERN_CMD"), "ssh -J": cmd("JUMP_CMD")}
# Printable payload (recordings store text; zeros would be \u0000-escaped).
payload = f"yes 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdef | head -c {bulk * 1048576}"

def bulk_mib_s(c):
    t = time.perf_counter()
    subprocess.run(c + [payload], stdout=subprocess.DEVNULL, check=True)
    return bulk / (time.perf_counter() - t)

def echo_rtts(c):
    p = subprocess.Popen(c[:1] + ["-T"] + c[1:] + ["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    rtts = []
    for i in range(echoes + 50):
        t = time.perf_counter()
        p.stdin.write(b"x")
        if p.stdout.read(1) != b"x":
            raise SystemExit("echo broke")
        if i >= 50:  # warm-up
            rtts.append((time.perf_counter() - t) * 1e6)
    p.stdin.close(); p.wait()
    rtts.sort()
    return rtts[len(rtts) // 2], rtts[int(len(rtts) * 0.99) - 1]

def setup_ms(c):
    times = []
    for _ in range(connects):
        t = time.perf_counter()
        subprocess.run(c + ["true"], check=True)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)

res = {}
for name, c in paths.items():
    b = bulk_mib_s(c)
    p50, p99 = echo_rtts(c)
    s = setup_ms(c)
    res[name] = (b, p50, p99, s)
    print(f"{name:8}  bulk {b:8.1f} MiB/s   echo p50 {p50:7.0f} us  p99 {p99:7.0f} us   setup {s:6.1f} ms", flush=True)

pd, pp, pj = res["direct"], res["postern"], res["ssh -J"]
print()
print(f"throughput  postern/direct {pp[0]/pd[0]:.2f}x   postern/ssh -J {pp[0]/pj[0]:.2f}x   (target >= 1.0x ssh -J)")
print(f"echo p99    postern-direct {pp[2]-pd[2]:+.0f} us   postern-ssh -J {pp[2]-pj[2]:+.0f} us   (target: added p99 < 1000 us)")
print(f"setup       postern/direct {pp[3]/pd[3]:.2f}x   postern/ssh -J {pp[3]/pj[3]:.2f}x   (target <= 1.1x ssh -J)")
PY

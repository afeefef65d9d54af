#!/usr/bin/env bash
# SSH benchmark: the same workloads straight to a throwaway sshd, through postern, and
# through OpenSSH's own jump host (`ssh -J`, a second throwaway sshd), in one run.
# Prints each figure and the ratios postern/direct and postern/ssh -J.
#
#   bench/ssh.sh                 # 512 MiB bulk per payload, 2000 echo round trips,
#                                # 50 connects, 30 multiplexed commands, 100 GETs via -L
#   BULK_MIB=64 ECHOES=500 CONNECTS=20 bench/ssh.sh   # quicker
#   PTYS=1000 bench/ssh.sh       # also: 1,000 concurrent PTY sessions through postern
#                                # (100 connections x 10 channels, asyncssh), memory each
#
# Bulk runs three payloads (text, zeros, random bytes) as `ssh host cat FILE`; postern
# records every byte, and the size of its recording per byte relayed is printed too.
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
MaxStartups 1000
SetEnv HOME=$d/home
CFG
  # Sessions get a home of their own: shells read no startup files of the machine's
  # account, so the target's cost per session is the shell alone.
  mkdir -p "$d/home"
  /usr/sbin/sshd -D -e -f "$d/config" 2>"$d/log" &
  PIDS+=($!)
}

TPORT=$(port); JPORT=$(port); SSH_PORT=$(port)
start_sshd target "$TPORT"
start_sshd jump "$JPORT"
$P admin role add bench --allow '*' --logins "$ME" --max-session-ttl 8h --port-forwarding true >/dev/null
$P admin user add bench --role bench >/dev/null
$P admin user add-key bench "$T/client.pub" >/dev/null
$P admin target add target --ssh "127.0.0.1:$TPORT" --host-key "$(cut -d' ' -f1,2 "$T/target/host.pub")" >/dev/null
RUST_LOG=warn $BIN serve --data-dir "$T/data" --ssh-listen "127.0.0.1:$SSH_PORT" \
  --pg-listen 127.0.0.1:0 --api-listen 127.0.0.1:0 > "$T/serve.out" 2> "$T/serve.log" &
SERVE_PID=$!
PIDS+=($SERVE_PID)
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

# Payloads on the target's disk (the target is this machine): the same bytes each path.
python3 - "$T" "$BULK_MIB" <<'PY'
import os, sys
t, mib = sys.argv[1], int(sys.argv[2])
line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdef\n"
n = mib << 20
with open(f"{t}/text.bin", "wb") as f:
    f.write((line * (n // len(line) + 1))[:n])
with open(f"{t}/zeros.bin", "wb") as f:
    f.write(bytes(n))
with open(f"{t}/random.bin", "wb") as f:
    f.write(os.urandom(n))
PY
# A web server on the target side for -L.
HTTP_PORT=$(port)
mkdir -p "$T/www" && echo hello > "$T/www/index.html"
(cd "$T/www" && exec python3 -m http.server --bind 127.0.0.1 "$HTTP_PORT" >/dev/null 2>&1) &
PIDS+=($!)
export BULK_MIB ECHOES CONNECTS HTTP_PORT
export DIRECT_CMD="${DIRECT[*]}" POSTERN_CMD="${POSTERN[*]}" JUMP_CMD="${JUMP[*]}"
python3 - "$T" <<'PY'
import os, subprocess, sys, time, statistics, shlex

T = sys.argv[1]
bulk = int(os.environ["BULK_MIB"]); echoes = int(os.environ["ECHOES"]); connects = int(os.environ["CONNECTS"])
def cmd(name):
    return shlex.split(os.environ[name])

paths = {"direct": cmd("DIRECT_CMD"), "postern": cmd("POSTERN_CMD"), "ssh -J": cmd("JUMP_CMD")}
payloads = ["text", "zeros", "random"]

def bulk_mib_s(c, payload):
    t = time.perf_counter()
    subprocess.run(c + [f"cat {T}/{payload}.bin"], stdout=subprocess.DEVNULL, check=True)
    return bulk / (time.perf_counter() - t)

def newest_recording():
    newest = None
    for root, _, files in os.walk(f"{T}/data/recordings"):
        for f in files:
            p = os.path.join(root, f)
            if newest is None or os.path.getmtime(p) > os.path.getmtime(newest):
                newest = p
    return newest

def mux_ms(c):
    sock = f"{T}/mux-{abs(hash(tuple(c)))}"
    m = subprocess.Popen(c[:1] + ["-M", "-N", "-S", sock] + c[1:])
    for _ in range(100):
        if subprocess.run(["ssh", "-S", sock, "-O", "check", "x"], capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    times = []
    for _ in range(30):
        t = time.perf_counter()
        subprocess.run(["ssh", "-S", sock, "x", "true"], check=True)
        times.append((time.perf_counter() - t) * 1000)
    m.terminate(); m.wait()
    return statistics.median(times)

def gets_s(c):
    import socket, urllib.request
    s = socket.socket(); s.bind(("127.0.0.1", 0)); local = s.getsockname()[1]; s.close()
    hp = os.environ["HTTP_PORT"]
    t = subprocess.Popen(c[:1] + ["-N", "-L", f"{local}:127.0.0.1:{hp}"] + c[1:])
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{local}/").read(); break
        except Exception:
            time.sleep(0.1)
    start = time.perf_counter()
    for _ in range(100):
        assert urllib.request.urlopen(f"http://127.0.0.1:{local}/").read() == b"hello\n"
    took = time.perf_counter() - start
    t.terminate(); t.wait()
    return took

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
record = {}
for name, c in paths.items():
    b = {}
    for payload in payloads:
        b[payload] = bulk_mib_s(c, payload)
        if name == "postern":
            # The channel's recording holds both directions; here only output crossed.
            time.sleep(0.5)
            record[payload] = os.path.getsize(newest_recording()) / (bulk << 20)
    p50, p99 = echo_rtts(c)
    s = setup_ms(c)
    mux = mux_ms(c)
    gets = gets_s(c)
    res[name] = (b, p50, p99, s, mux, gets)
    bulk_text = "  ".join(f"{p} {b[p]:7.1f}" for p in payloads)
    print(f"{name:8}  bulk MiB/s {bulk_text}   echo p50 {p50:6.0f} us  p99 {p99:6.0f} us   setup {s:6.1f} ms   mux {mux:5.1f} ms   100 GETs via -L {gets:5.2f} s", flush=True)

pd, pp, pj = res["direct"], res["postern"], res["ssh -J"]
print()
for p in payloads:
    print(f"throughput {p:6}  postern/direct {pp[0][p]/pd[0][p]:.2f}x   postern/ssh -J {pp[0][p]/pj[0][p]:.2f}x   (target >= 1.0x ssh -J)   recording {record[p]:.3f} bytes per byte relayed (target <= 1.05)")
print(f"echo p99    postern-direct {pp[2]-pd[2]:+.0f} us   postern-ssh -J {pp[2]-pj[2]:+.0f} us   (target: added p99 < 1000 us)")
print(f"setup       postern/direct {pp[3]/pd[3]:.2f}x   postern/ssh -J {pp[3]/pj[3]:.2f}x   (target <= 1.1x ssh -J)")
print(f"mux command postern/direct {pp[4]/pd[4]:.2f}x   (target <= 1.5x direct)")
print(f"100 GETs -L postern/direct {pp[5]/pd[5]:.2f}x   (target <= 1.5x direct)")
PY

# Many concurrent terminals: postern's memory per PTY session.
if [[ ${PTYS:-0} -gt 0 ]]; then
  export PTYS SERVE_PID SSH_PORT ME T
  python3 - <<'PY'
import asyncio, os, asyncssh

n = int(os.environ["PTYS"]); pid = os.environ["SERVE_PID"]; T = os.environ["T"]
def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

async def conn():
    return await asyncssh.connect("127.0.0.1", port=int(os.environ["SSH_PORT"]),
        username=f"{os.environ['ME']}@target", client_keys=[f"{T}/client"],
        known_hosts=f"{T}/known_hosts")

async def main():
    before = rss_kib()
    conns = await asyncio.gather(*(conn() for _ in range((n + 9) // 10)))
    async def shell(c, i):
        # `cat` on a terminal rather than a login shell: the target's cost per session
        # stays small, so postern's is what is measured.
        p = await c.create_process("exec cat", term_type="xterm", term_size=(80, 24))
        p.stdin.write(f"ready-{i}\n")
        while f"ready-{i}" not in await p.stdout.readline():
            pass
        return p
    procs = await asyncio.gather(*(shell(conns[i // 10], i) for i in range(n)))
    await asyncio.sleep(2)
    during = rss_kib()
    print(f"ptys        {len(procs)} established   postern RSS {before/1024:.0f} MiB -> {during/1024:.0f} MiB   {(during-before)/len(procs):.0f} KiB each (target <= 256 KiB)")
    for p in procs:
        p.stdin.write_eof()
    for c in conns:
        c.close()

asyncio.run(main())
PY
fi

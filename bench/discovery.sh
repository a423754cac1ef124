#!/usr/bin/env bash
# Discovery benchmark: PROCESSES simulated processes heartbeating at HZ
#   (a) to `qmesh discovery` over kdb+ IPC — the blog's async
#       .master.storeHb, one connection per process, as q clients do;
#   (b) to etcd as leases kept alive — gRPC LeaseKeepAlive, one HTTP/2
#       connection and stream per process, as one etcd client per process.
# One run each, same machine, same load generator (one thread). Between the
# generator's "ready" and "done" lines the server's CPU time (utime+stime
# from /proc) and its resident memory (VmRSS, and VmHWM: the peak) are
# read; printed: CPU as a fraction of one core, CPU per heartbeat, RSS, and
# the ratios etcd/qmesh.
#
# usage: bench/discovery.sh
# env:   PROCESSES (10000), HZ (1), SECONDS_PER_RUN (30), ETCD (etcd)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/qmesh-target}"
N="${PROCESSES:-10000}"
HZ="${HZ:-1}"
SECS="${SECONDS_PER_RUN:-30}"
ETCD="${ETCD:-etcd}"

command -v "$ETCD" >/dev/null || { echo "etcd not found (apt-get install -y etcd-server)" >&2; exit 1; }
ulimit -n "$((N * 2 + 1024))" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p qmesh-discovery --example discovery_load --example discovery_server
B="$CARGO_TARGET_DIR/release"

tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
HZ_CLK=$(getconf CLK_TCK)

# Runs the load generator against a server (pid $2) and prints
# "cpu_core_fraction cpu_us_per_beat rss_mib hwm_mib beats".
measure() {
    local mode=$1 pid=$2 target=$3 out="$tmp/$1.load"
    "$B/examples/discovery_load" "$mode" --target "$target" --processes "$N" --hz "$HZ" --seconds "$SECS" \
        >"$out" 2>"$tmp/$mode.load.err" &
    local lg=$!
    pids+=($lg)
    until grep -q '^ready' "$out" 2>/dev/null; do
        kill -0 "$lg" 2>/dev/null || { cat "$tmp/$mode.load.err" >&2; exit 1; }
        sleep 0.2
    done
    local t0 c0 t1 c1
    t0=$(date +%s.%N); c0=$(ticks "$pid")
    until grep -q '^done' "$out" 2>/dev/null; do sleep 0.2; done
    t1=$(date +%s.%N); c1=$(ticks "$pid")
    local rss hwm sent errors
    rss=$(kb "$pid" VmRSS); hwm=$(kb "$pid" VmHWM)
    sent=$(sed -n 's/^done sent=\([0-9]*\).*/\1/p' "$out")
    errors=$(sed -n 's/.*errors=\([0-9]*\).*/\1/p' "$out")
    wait "$lg" || true
    [ "$errors" = 0 ] || echo "WARNING: $mode: $errors failed beats" >&2
    python3 - "$t0" "$t1" "$c0" "$c1" "$HZ_CLK" "$rss" "$hwm" "$sent" <<'PY'
import sys
t0, t1, c0, c1, hz, rss, hwm, sent = map(float, sys.argv[1:])
cpu = (c1 - c0) / hz
print(f"{cpu / (t1 - t0):.4f} {cpu * 1e6 / max(sent, 1):.2f} {rss / 1024:.1f} {hwm / 1024:.1f} {int(sent)}")
PY
}

# (a) qmesh discovery: the library `qmesh discovery` runs (the example
# spares a release build of the whole binary), with its store on.
DATA="$tmp/discovery-data"
"$B/examples/discovery_server" --data "$DATA" >"$tmp/discovery.out" 2>"$tmp/discovery.err" &
QPID=$!
pids+=($QPID)
until grep -q "listening ipc" "$tmp/discovery.out" 2>/dev/null; do sleep 0.05; done
QADDR=$(grep "listening ipc" "$tmp/discovery.out" | awk '{print $NF}')
read -r q_cpu q_us q_rss q_hwm q_sent < <(measure discovery "$QPID" "$QADDR")
kill "$QPID"; wait "$QPID" 2>/dev/null || true

# (b) etcd, a single member, its defaults (snapshots, fsync) on a tmp dir
EPORT=$(free_port); PPORT=$(free_port)
"$ETCD" --data-dir "$tmp/etcd" --listen-client-urls "http://127.0.0.1:$EPORT" \
    --advertise-client-urls "http://127.0.0.1:$EPORT" --listen-peer-urls "http://127.0.0.1:$PPORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$PPORT" --initial-cluster "default=http://127.0.0.1:$PPORT" \
    --log-level error >"$tmp/etcd.out" 2>&1 &
EPID=$!
pids+=($EPID)
for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$EPORT") 2>/dev/null && break; sleep 0.05; done
read -r e_cpu e_us e_rss e_hwm e_sent < <(measure etcd "$EPID" "127.0.0.1:$EPORT")

echo "machine: $(nproc) cores, $(uname -r); $N processes at ${HZ} Hz; ${SECS}s measured after every process connected and beat once"
echo "etcd: $("$ETCD" --version 2>/dev/null | head -1)"
printf '%-10s %12s %14s %10s %10s %10s\n' server cpu_cores cpu_us/beat rss_MiB peak_MiB beats
printf '%-10s %12s %14s %10s %10s %10s\n' qmesh "$q_cpu" "$q_us" "$q_rss" "$q_hwm" "$q_sent"
printf '%-10s %12s %14s %10s %10s %10s\n' etcd "$e_cpu" "$e_us" "$e_rss" "$e_hwm" "$e_sent"
python3 - "$q_cpu" "$q_us" "$q_rss" "$e_cpu" "$e_us" "$e_rss" <<'PY'
import sys
qc, qu, qr, ec, eu, er = map(float, sys.argv[1:])
print(f"etcd/qmesh: cpu per heartbeat {eu / qu:.1f}x   cpu {ec / qc:.1f}x   rss {er / qr:.1f}x")
print(f"targets: qmesh <= 0.2 core ({'met' if qc <= 0.2 else 'MISSED'}), >= 3x cheaper per heartbeat than etcd ({'met' if eu / qu >= 3 else 'MISSED'})")
PY

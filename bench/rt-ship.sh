#!/usr/bin/env bash
# Log-shipping benchmark: rt.qpk's path end to end — a Publisher writes its
# local log (fsync before publish returns), the log is shipped to a
# `qmesh rt` node (--durability always), and a Subscriber copies the node's
# merged log to its own disk and reads it from there — against
#   (a) the direct IPC path of bench/rt.sh (sync .rt.pub to the node, the
#       node's pushes to an IPC subscriber), same node binary;
#   (b) NATS JetStream (file storage, sync_interval: always, publish acks).
# 100-byte messages, one run on this machine, one fresh node per row.
# Prints throughput (messages the node acknowledged as durable per second)
# and publish->subscriber latency p50/p99, unbatched and batched, and at a
# fixed rate, then the ratios against the targets: log shipping within 1.5x
# of the direct path's throughput, p99 <= 2 ms at 100,000 msgs/s.
#
# usage: bench/rt-ship.sh
# env:   MESSAGES (200000), UNBATCHED (20000: the unbatched ship run, one
#        fsync per message), SIZE (100), PUBLISHERS (2), WINDOW (1000),
#        BATCH (1000), RATE (100000), CONCURRENCY (8: callers per publisher in
#        the concurrent unbatched row, sharing fsyncs), NATS (nats-server; /usr/sbin/nats-server),
#        QMESH (the qmesh binary running the node; default: this tree's release build),
#        NATS_TIMEOUT (120: seconds a NATS run may take)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/qmesh-target}"
N="${MESSAGES:-200000}"
NU="${UNBATCHED:-20000}"
SIZE="${SIZE:-100}"
P="${PUBLISHERS:-2}"
W="${WINDOW:-1000}"
BATCH="${BATCH:-1000}"
RATE="${RATE:-100000}"
C="${CONCURRENCY:-8}"
NATS="${NATS:-$(command -v nats-server || echo /usr/sbin/nats-server)}"

# where cargo put an executable (artifacts may live outside $CARGO_TARGET_DIR: cargo's build-dir)
exe() {
    cargo build --release --locked -q --message-format=json "$@" |
        python3 -c 'import sys, json; [print(m["executable"]) for m in map(json.loads, sys.stdin) if m.get("executable")]' |
        tail -1
}
QMESH="${QMESH:-$(exe -p qmesh --bin qmesh)}"
NATS_TIMEOUT="${NATS_TIMEOUT:-120}"
B=$(exe -p qmesh-rt-node --example rt_bench)

tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return; sleep 0.05; done; echo "port $1 not up" >&2; exit 1; }

echo "machine: $(nproc) cores, $(uname -r); data in $tmp ($(df -h "$tmp" | awk 'NR==2{print $1}'))"
echo "node: $QMESH ($("$QMESH" --version 2>/dev/null || echo '?'))"
echo "messages=$N unbatched=$NU size=$SIZE publishers=$P window=$W batch=$BATCH rate=$RATE"

# One fresh `qmesh rt` node per run: `run NAME KIND ARGS…` prints rt_bench's line.
run() {
    local name=$1 kind=$2; shift 2
    local port; port=$(free_port)
    mkdir -p "$tmp/$name"
    "$QMESH" rt --bind 127.0.0.1 -p "$port" --http 0 --data "$tmp/$name/node" --stream bench \
        --durability always >/dev/null 2>"$tmp/$name.err" &
    local pid=$!; pids+=($pid)
    wait_port "$port"
    "$B" "$kind" "127.0.0.1:$port" --dir "$tmp/$name/client" "$@"
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

common=(--size "$SIZE" --publishers "$P" --window "$W")
DIRECT=$(run direct rt --messages "$N" "${common[@]}"); echo "$DIRECT"
DIRECT_BATCH=$(run directbatch rt --messages "$N" --size "$SIZE" --publishers 1 --async); echo "$DIRECT_BATCH"
DIRECT_RATE=$(run directrate rt --messages "$N" "${common[@]}" --rate "$RATE"); echo "$DIRECT_RATE"
SHIP=$(run ship ship --messages "$NU" "${common[@]}" --batch 1); echo "$SHIP"
SHIP_CONC=$(run shipconc ship --messages "$NU" "${common[@]}" --batch 1 --concurrency "$C"); echo "$SHIP_CONC"
SHIP_BATCH=$(run shipbatch ship --messages "$N" "${common[@]}" --batch "$BATCH"); echo "$SHIP_BATCH"
SHIP_RATE=$(run shiprate ship --messages "$N" "${common[@]}" --batch "$BATCH" --rate "$RATE"); echo "$SHIP_RATE"

NATS_OUT="not run"
NATS_RATE="not run"
if [ -x "$NATS" ]; then
    nats() {
        local port; port=$(free_port)
        rm -rf "$tmp/nats"
        printf 'listen: 127.0.0.1:%s\njetstream { store_dir: "%s/nats", sync_interval: always }\n' "$port" "$tmp" >"$tmp/nats.conf"
        if ! "$NATS" -c "$tmp/nats.conf" -t >/dev/null 2>&1; then
            printf 'listen: 127.0.0.1:%s\njetstream { store_dir: "%s/nats" }\n' "$port" "$tmp" >"$tmp/nats.conf"
        fi
        "$NATS" -c "$tmp/nats.conf" >"$tmp/nats.log" 2>&1 &
        local pid=$!; pids+=($pid)
        wait_port "$port"
        # bounded: rt_bench's JetStream subscriber has been seen waiting for deliveries that never come
        timeout "$NATS_TIMEOUT" "$B" nats "127.0.0.1:$port" "$@" || echo "NATS run did not finish in ${NATS_TIMEOUT}s"
        kill "$pid"; wait "$pid" 2>/dev/null || true
    }
    NATS_OUT=$(nats --messages "$N" "${common[@]}"); echo "$NATS_OUT"
    NATS_RATE=$(nats --messages "$N" "${common[@]}" --rate "$RATE"); echo "$NATS_RATE"
else
    echo "nats-server not found (apt-get install -y nats-server)"
fi

python3 - "$DIRECT" "$DIRECT_BATCH" "$DIRECT_RATE" "$SHIP" "$SHIP_BATCH" "$SHIP_RATE" "$NATS_OUT" "$NATS_RATE" "$RATE" "$SHIP_CONC" "$C" <<'PY'
import sys
def parse(line):
    return dict(kv.split('=', 1) for kv in line.split() if '=' in kv) if '=' in line else None
d, db, dr, s, sb, sr, n, nr = (parse(x) for x in sys.argv[1:9])
rate = float(sys.argv[9])
sc = parse(sys.argv[10])
rows = [('direct IPC, sync (window)', d), ('direct IPC, batching (async)', db), (f'direct IPC at {rate:.0f}/s', dr),
        ('log shipping, unbatched', s), (f'log shipping, unbatched, {sys.argv[11]} callers', sc),
        ('log shipping, batched', sb), (f'log shipping at {rate:.0f}/s', sr),
        ('NATS JetStream', n), (f'NATS JetStream at {rate:.0f}/s', nr)]
print()
print(f"{'':34}{'msgs/s':>12}{'p50 us':>10}{'p99 us':>10}")
for name, r in rows:
    if r:
        print(f"{name:34}{float(r['throughput_msgs_per_s']):>12.0f}{float(r['p50_us']):>10.1f}{float(r['p99_us']):>10.1f}")
    else:
        print(f"{name:34}{'not run':>12}")
def t(r): return float(r['throughput_msgs_per_s'])
print()
for name, a, b in [('unbatched', s, d), ('batched', sb, db)]:
    if a and b:
        x = t(b) / t(a)
        print(f"direct / log shipping throughput, {name}: x{x:.2f} (target <= 1.5: {'met' if x <= 1.5 else 'NOT met'})")
if sr:
    p99 = float(sr['p99_us'])
    print(f"log shipping p99 at {rate:.0f}/s: {p99/1000:.2f} ms, achieved {t(sr):.0f} msgs/s "
          f"(target <= 2 ms: {'met' if p99 <= 2000 else 'NOT met'})")
if n and sb:
    print(f"log shipping batched / NATS JetStream throughput: x{t(sb)/t(n):.2f}")
if nr and sr:
    print(f"p99 at {rate:.0f}/s: NATS {float(nr['p99_us'])/1000:.2f} ms, log shipping {float(sr['p99_us'])/1000:.2f} ms")
PY

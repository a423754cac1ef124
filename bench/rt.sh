#!/usr/bin/env bash
# Reliable-transport stream benchmark: 100-byte messages, every publish
# acknowledged only once on disk (fsync before ack), against
#   (a) qmesh rt            (--durability always: group commit),
#   (b) NATS JetStream      (file storage, sync_interval: always, publish acks),
#   (c) Redis Streams       (appendonly yes, appendfsync always, XADD),
# with the same count, size, publishers and pipelining window, one run on
# this machine. Prints publish throughput and publish->subscriber latency
# (p50/p99) for each, then the ratios. Extra qmesh rows: the batching
# publisher (async sends, one sync at the end) and latency at a fixed rate.
#
# usage: bench/rt.sh
# env:   MESSAGES (200000), SIZE (100), PUBLISHERS (2), WINDOW (1000),
#        RATE (100000: the fixed-rate latency run), NATS (nats-server), REDIS (redis-server)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/qmesh-target}"
N="${MESSAGES:-200000}"
SIZE="${SIZE:-100}"
P="${PUBLISHERS:-2}"
W="${WINDOW:-1000}"
RATE="${RATE:-100000}"
NATS="${NATS:-nats-server}"
REDIS="${REDIS:-redis-server}"

cargo build --release -q -p qmesh-rt-node --example rt_bench
B="$CARGO_TARGET_DIR/release/examples/rt_bench"

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
field() { sed -n "s/.*$1=\([^ ]*\).*/\1/p"; }

common=(--messages "$N" --size "$SIZE" --publishers "$P" --window "$W")
echo "machine: $(nproc) cores, $(uname -r); data in $tmp ($(df -h "$tmp" | awk 'NR==2{print $1}'))"
echo "messages=$N size=$SIZE publishers=$P window=$W"

# (a) qmesh rt
rt() {
    local name=$1; shift
    local port; port=$(free_port)
    mkdir -p "$tmp/$name"
    # the node of `qmesh rt --stream bench --durability always`, run by the bench binary
    "$B" serve "$tmp/$name" "$port" >/dev/null 2>"$tmp/$name.err" &
    local pid=$!; pids+=($pid)
    wait_port "$port"
    "$B" rt "127.0.0.1:$port" "$@"
    kill "$pid"; wait "$pid" 2>/dev/null || true
}
RT=$(rt rt "${common[@]}"); echo "$RT"
RT_BATCH=$(rt rtbatch --messages "$N" --size "$SIZE" --publishers 1 --async); echo "$RT_BATCH"
RT_RATE=$(rt rtrate "${common[@]}" --rate "$RATE"); echo "$RT_RATE"

# (b) NATS JetStream
NATS_OUT="not run"
if command -v "$NATS" >/dev/null; then
    port=$(free_port)
    cat >"$tmp/nats.conf" <<CONF
listen: 127.0.0.1:$port
jetstream { store_dir: "$tmp/nats", sync_interval: always }
CONF
    if ! "$NATS" -c "$tmp/nats.conf" -t >/dev/null 2>&1; then
        echo "nats-server $("$NATS" --version 2>&1 | head -1) refuses sync_interval: always; running with its strictest default" >&2
        printf 'listen: 127.0.0.1:%s\njetstream { store_dir: "%s/nats" }\n' "$port" "$tmp" >"$tmp/nats.conf"
    fi
    "$NATS" -c "$tmp/nats.conf" >"$tmp/nats.log" 2>&1 &
    pids+=($!)
    wait_port "$port"
    NATS_OUT=$("$B" nats "127.0.0.1:$port" "${common[@]}"); echo "$NATS_OUT"
else
    echo "nats-server not installed (apt-get install -y nats-server)"
fi

# (c) Redis Streams
REDIS_OUT="not run"
if command -v "$REDIS" >/dev/null; then
    port=$(free_port)
    mkdir -p "$tmp/redis"
    "$REDIS" --bind 127.0.0.1 --port "$port" --dir "$tmp/redis" --appendonly yes --appendfsync always --save "" >"$tmp/redis.log" 2>&1 &
    pids+=($!)
    wait_port "$port"
    REDIS_OUT=$("$B" redis "127.0.0.1:$port" "${common[@]}"); echo "$REDIS_OUT"
else
    echo "redis-server not installed (apt-get install -y redis-server)"
fi

python3 - "$RT" "$NATS_OUT" "$REDIS_OUT" "$RT_BATCH" "$RT_RATE" <<'PY'
import sys
def parse(line):
    return dict(kv.split('=', 1) for kv in line.split() if '=' in kv) if '=' in line else None
rt, nats, redis, batch, rate = (parse(x) for x in sys.argv[1:])
print()
print(f"{'':28}{'msgs/s':>12}{'p50 us':>10}{'p99 us':>10}")
for name, r in [('qmesh rt (sync, fsync)', rt), ('NATS JetStream', nats), ('Redis Streams', redis),
                ('qmesh rt batching (async)', batch), ('qmesh rt at fixed rate', rate)]:
    if r:
        print(f"{name:28}{float(r['throughput_msgs_per_s']):>12.0f}{float(r['p50_us']):>10.1f}{float(r['p99_us']):>10.1f}")
    else:
        print(f"{name:28}{'not run':>12}")
for name, r in [('NATS JetStream', nats), ('Redis Streams', redis)]:
    if r:
        t = float(rt['throughput_msgs_per_s']) / float(r['throughput_msgs_per_s'])
        l = float(r['p99_us']) / float(rt['p99_us'])
        print(f"qmesh rt / {name}: throughput x{t:.2f}, p99 latency {name} / qmesh x{l:.2f}")
PY

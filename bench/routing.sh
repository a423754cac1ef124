#!/usr/bin/env bash
# Query routing benchmark: N concurrent clients sending trivial queries
#   (a) directly to the services,
#   (b) through the qmesh gateway (embedded load balancer, the whitepaper's
#       protocol; one round per instance concurrency),
#   (c) through HAProxy in TCP mode (leastconn) in front of the same services,
#   (d) through the qmesh gateway in mserve mode: the same services as its
#       static instances (the gateway's own links, sync requests), the
#       clients' plain "1+1" forwarded as sent (`qmesh mserve`).
# One run, same machine. Each measurement is repeated REPEAT times, the
# three paths interleaved, and the median is printed: throughput, p50/p99
# latency, CPU time per request (load generator + services + gateway or
# HAProxy: a figure that does not depend on what else the machine is
# doing), the ratios and the latency qmesh adds.
#
# usage: bench/routing.sh [CLIENTS...]      (default: 1 64)
# env:   SECONDS_PER_RUN (5), WARMUP (1), REPEAT (3), SERVICES (2), LOAD_THREADS (1),
#        GATEWAY_THREADS (2), HAPROXY (haproxy),
#        INSTANCE_CONCURRENCY ("1 16": one round per value; 1 is the whitepaper's
#        one query per free instance, more lets an instance queue short queries)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/qmesh-target}"
CLIENTS=("${@:-1 64}")
read -r -a CLIENTS <<<"${CLIENTS[*]}"
SECS="${SECONDS_PER_RUN:-5}"
WARMUP="${WARMUP:-1}"
REPEAT="${REPEAT:-3}"
NSVC="${SERVICES:-2}"
LOAD_THREADS="${LOAD_THREADS:-1}"
GATEWAY_THREADS="${GATEWAY_THREADS:-2}"
HAPROXY="${HAPROXY:-haproxy}"
read -r -a CONCURRENCY <<<"${INSTANCE_CONCURRENCY:-1 16}"

command -v "$HAPROXY" >/dev/null || { echo "haproxy not found (apt-get install -y haproxy)" >&2; exit 1; }
cargo build --release -q -p qmesh-routing --example routing_bench
B="$CARGO_TARGET_DIR/release/examples/routing_bench"

tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

# waits for "<kind> listening ipc ADDR" in a file; prints ADDR
listening() {
    local f=$1
    for _ in $(seq 1 300); do
        if grep -q "listening ipc" "$f" 2>/dev/null; then
            grep "listening ipc" "$f" | head -1 | awk '{print $NF}'
            return
        fi
        sleep 0.05
    done
    echo "no listening line in $f" >&2
    exit 1
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# One round: a gateway (embedded load balancer, instance concurrency $1),
# services registered with it, HAProxy in front of the same services.
round() {
    local k=$1
    local rtmp="$tmp/k$k"
    mkdir -p "$rtmp"
    "$B" gateway --threads "$GATEWAY_THREADS" --concurrency "$k" >"$rtmp/gw.out" 2>"$rtmp/gw.err" &
    local gwpid=$!
    pids+=($gwpid)
    local GW
    GW=$(listening "$rtmp/gw.out")
    local svcs=() svcpids=()
    for i in $(seq 1 "$NSVC"); do
        "$B" service --lb "$GW" --name BENCH >"$rtmp/s$i.out" 2>"$rtmp/s$i.err" &
        pids+=($!)
        svcpids+=($!)
        svcs+=("$(listening "$rtmp/s$i.out")")
    done
    local SVCS
    SVCS=$(IFS=,; echo "${svcs[*]}")
    local HAP_PORT
    HAP_PORT=$(free_port)
    {
        echo "global"
        echo "  maxconn 4096"
        echo "defaults"
        echo "  mode tcp"
        echo "  timeout connect 5s"
        echo "  timeout client 120s"
        echo "  timeout server 120s"
        echo "frontend fe"
        echo "  bind 127.0.0.1:$HAP_PORT"
        echo "  default_backend be"
        echo "backend be"
        echo "  balance leastconn"
        local i=0
        for s in "${svcs[@]}"; do
            i=$((i + 1))
            echo "  server s$i $s"
        done
    } >"$rtmp/haproxy.cfg"
    "$HAPROXY" -f "$rtmp/haproxy.cfg" -db >"$rtmp/haproxy.out" 2>&1 &
    local hap=$!
    pids+=($hap)
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$HAP_PORT") 2>/dev/null && break
        sleep 0.05
    done
    # the services must have registered with the gateway before routed runs
    "$B" load --targets "$GW" --mode routed --clients 1 --seconds 0.2 --warmup 0 >/dev/null

    # mserve mode: a second gateway whose static instances are the same services
    "$B" gateway --threads "$GATEWAY_THREADS" --concurrency "$k" --instances "$SVCS" --service BENCH \
        >"$rtmp/ms.out" 2>"$rtmp/ms.err" &
    local mspid=$!
    pids+=($mspid)
    local MS
    MS=$(listening "$rtmp/ms.out")
    # its links are up once a plain query is answered
    "$B" load --targets "$MS" --mode direct --clients 1 --seconds 0.2 --warmup 0 >/dev/null

    local SP
    SP=$(IFS=,; echo "${svcpids[*]}")

    echo
    echo "== instance concurrency $k (1 = the whitepaper's one query per free instance); median of $REPEAT"
    printf '%-8s %-8s %12s %10s %10s %14s\n' clients path qps p50_us p99_us cpu_us/req
    for n in "${CLIENTS[@]}"; do
        local runs="$rtmp/runs-$n"
        : >"$runs"
        for _ in $(seq 1 "$REPEAT"); do
            echo "direct $(run "$SVCS" direct "$n" "$SP")" >>"$runs"
            echo "qmesh $(run "$GW" routed "$n" "$SP,$gwpid")" >>"$runs"
            echo "haproxy $(run "127.0.0.1:$HAP_PORT" direct "$n" "$SP,$hap")" >>"$runs"
            echo "mserve $(run "$MS" direct "$n" "$SP,$mspid")" >>"$runs"
        done
        python3 - "$n" "$runs" <<'EOF2'
import json, statistics, sys
n, path = sys.argv[1], sys.argv[2]
runs = {}
for line in open(path):
    name, js = line.split(" ", 1)
    runs.setdefault(name, []).append(json.loads(js))
med = {name: {k: statistics.median(r[k] for r in rs) for k in ("qps", "p50_us", "p99_us", "cpu_us")}
       for name, rs in runs.items()}
for name in ("direct", "qmesh", "haproxy", "mserve"):
    m = med[name]
    print(f"{n:<8} {name:<8} {m['qps']:12.0f} {m['p50_us']:10.1f} {m['p99_us']:10.1f} {m['cpu_us']:14.1f}")
d, q, h = med["direct"], med["qmesh"], med["haproxy"]
print(f"         qmesh/direct throughput {q['qps']/d['qps']:.2f}  haproxy/direct {h['qps']/d['qps']:.2f}  qmesh/haproxy {q['qps']/h['qps']:.2f}")
print(f"         cpu per request: qmesh/haproxy {q['cpu_us']/h['cpu_us']:.2f}  qmesh/direct {q['cpu_us']/d['cpu_us']:.2f}")
print(f"         added by qmesh: p50 {q['p50_us']-d['p50_us']:+.1f} us  p99 {q['p99_us']-d['p99_us']:+.1f} us"
      f"   (haproxy adds p50 {h['p50_us']-d['p50_us']:+.1f} us, p99 {h['p99_us']-d['p99_us']:+.1f} us)")
m = med["mserve"]
print(f"         mserve mode: mserve/haproxy throughput {m['qps']/h['qps']:.2f}  mserve/qmesh {m['qps']/q['qps']:.2f}"
      f"  cpu per request mserve/haproxy {m['cpu_us']/h['cpu_us']:.2f}"
      f"  added p50 {m['p50_us']-d['p50_us']:+.1f} us  p99 {m['p99_us']-d['p99_us']:+.1f} us")
EOF2
    done
    # stop this round's processes
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pids=()
}

run() { "$B" load --targets "$1" --mode "$2" --clients "$3" --seconds "$SECS" --warmup "$WARMUP" --threads "$LOAD_THREADS" --watch "$4"; }

echo "machine: $(nproc) cores, $(uname -r); $NSVC services; gateway threads $GATEWAY_THREADS; load threads $LOAD_THREADS; ${SECS}s per run after ${WARMUP}s warm-up; median of $REPEAT"
for k in "${CONCURRENCY[@]}"; do
    round "$k"
done

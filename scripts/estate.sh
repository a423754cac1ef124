#!/usr/bin/env bash
# A small qmesh estate on this machine, until `qmesh up` exists: a load
# balancer, a gateway, and two instances of the query service
# EQUITY_MARKET_RDB holding the demo trade/quote tables. It builds qmesh,
# starts everything on loopback, runs one query through each door (kdb+ IPC
# straight to a service, HTTP through the gateway) and then keeps running
# until Ctrl-C, which stops every process.
#
# Ports: QMESH_ESTATE_BASE (default 5000): gateway = base, lb = base+1,
# services = base+2 and base+3; gateway HTTP = base+80.
set -euo pipefail
cd "$(dirname "$0")/.."

base=${QMESH_ESTATE_BASE:-5000}
gw=$base lb=$((base + 1)) s1=$((base + 2)) s2=$((base + 3)) http=$((base + 80))
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/qmesh-target}"

cargo build --release --quiet -p qmesh
qmesh="$CARGO_TARGET_DIR/release/qmesh"

pids=()
stop() {
    trap - INT TERM EXIT
    [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null
    wait 2>/dev/null
}
trap stop INT TERM EXIT

start() { "$qmesh" "$@" & pids+=($!); }

# Waits until something accepts connections on TCP port $1.
wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

start lb -p "$lb" --bind 127.0.0.1
wait_port "$lb"
for port in "$s1" "$s2"; do
    start service --name EQUITY_MARKET_RDB -p "$port" --bind 127.0.0.1 --lb "localhost:$lb" --demo
done
start gateway -p "$gw" --bind 127.0.0.1 --http "$http" --lb "localhost:$lb"
wait_port "$s1"; wait_port "$s2"; wait_port "$gw"; wait_port "$http"

echo
echo "== kdb+ IPC, straight to one instance: qmesh q localhost:$s1 \"…\""
"$qmesh" q "localhost:$s1" "select sym, avg(price) as price, sum(size) as size from trade group by sym order by sym"
echo
echo "== HTTP, through the gateway: POST localhost:$http/query"
for _ in $(seq 50); do
    if body=$(curl -sf -X POST "localhost:$http/query" -H 'content-type: application/json' \
        -d '{"service":"EQUITY_MARKET_RDB","query":"select count(*) as n from trade"}'); then
        echo "$body"
        break
    fi
    sleep 0.2
done
echo
echo "q clients: h:hopen \`::$gw; h(\`userQuery;(\`EQUITY_MARKET_RDB;\"select count(*) from quote\"))"
echo "Running; Ctrl-C stops the estate."
wait

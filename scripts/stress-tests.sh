#!/usr/bin/env bash
# Runs the whole test suite several times at once, to bring out tests that
# only fail on a loaded machine (as CI's can be): a test that waits for the
# wrong event, or a deadline that a slow run passes. Not part of CI.
#
# usage: scripts/stress-tests.sh [COPIES] [ROUNDS]   (default: 4 copies, 2 rounds)
# Each round starts COPIES passes over every test binary side by side; a
# failing binary's output is kept in $OUT (default /tmp/qmesh-stress).
# The Python interop tests need the venvs .ci/run builds (they skip without).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/qmesh-target}"
COPIES="${1:-4}"
ROUNDS="${2:-2}"
OUT="${OUT:-/tmp/qmesh-stress}"
mkdir -p "$OUT"
rm -f "$OUT"/*.log

# every test executable with the directory of its crate (tests read fixtures
# through CARGO_MANIFEST_DIR)
list="$OUT/binaries.txt"
cargo test --workspace --no-run --message-format=json 2>/dev/null | python3 -c '
import json, os, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(os.path.dirname(m["manifest_path"]), m["executable"])
' >"$list"
echo "$(wc -l <"$list") test binaries, $COPIES copies, $ROUNDS rounds"

pass() {
    while read -r dir exe; do
        log="$OUT/$1-$(basename "$exe").log"
        if ! (cd "$dir" && CARGO_MANIFEST_DIR="$dir" "$exe" >"$log" 2>&1); then
            echo "FAILED: $(basename "$exe") (copy $1): $log"
        else
            rm -f "$log"
        fi
    done <"$list"
}

for r in $(seq "$ROUNDS"); do
    for c in $(seq "$COPIES"); do pass "$r.$c" & done
    wait
done
failed=$(find "$OUT" -name '*.log' | wc -l)
echo "$failed failing runs"
[ "$failed" -eq 0 ]

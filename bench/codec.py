#!/usr/bin/env python3
"""qmesh-codec against KX's own serializer (libq through PyKX, unlicensed).

    PYKX_UNLICENSED=true ~/.cache/qmesh-venv/bin/python bench/codec.py [RUNS]

Runs `cargo run --release --example codec_bench -p qmesh-codec` (one JSON line
per case, best of RUNS), builds the same three objects in PyKX from numpy
arrays with the same values, times `kx.serialize` / `kx.deserialize` (KX's C
`b9` / `d9`) best of RUNS, checks that both sides produce messages of the same
size, and prints a table of ratios.

Caveats, printed with the table: PyKX's calls go through Python (about a
microsecond per call, which matters only for the 100,000 small messages), and
`kx.deserialize` of a Python `bytes` copies it into a q byte vector first;
`d9` interns every symbol, we do not.

qmesh's encode is timed twice: "fresh" (`encode_message`, a new Vec per
message; an 80 MB Vec is a fresh mmap, so that figure is mostly page faults)
and "reused" (`encode_message_into` a buffer cleared between messages and
already grown: a server's writer in the steady state). memcpy likewise, into
a fresh Vec and into a reused one, so enc/cpy compares like with like. libq's
`b9` allocates from q's own memory manager; which of the two regimes that is
cannot be chosen from unlicensed PyKX, so its single figure is compared with
both. Decode always builds a new value, i.e. fresh allocations, on both
sides. Every result is freed after the clock stops, on both sides.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pykx as kx

CASES = ["table_1m", "long_10m", "upd_100k"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 7

# the same values as crates/qmesh-codec/benches/objects.rs
T0 = 756_000_000_000_000_000  # ns since 2000.01.01
TABLE_ROWS = 1_000_000
LONG_LEN = 10_000_000
MESSAGES = 100_000
SYMS = 100
EPOCH_2000_NS = np.datetime64("2000-01-01T00:00:00", "ns").astype(np.int64)


def sym_names(idx):
    return np.array([f"SYM{k:02d}" for k in range(SYMS)], dtype=object)[(idx * 7919) % SYMS]


def trade_table():
    i = np.arange(TABLE_ROWS, dtype=np.int64)
    df = pd.DataFrame(
        {
            "time": (EPOCH_2000_NS + T0 + i * 1_000_000).astype("datetime64[ns]"),
            "sym": sym_names(i),
            "price": 100.0 + (i % 1000) * 0.01,
            "size": ((i % 100) + 1) * 100,
        }
    )
    return kx.toq(df)


def upd(i):
    row = [
        kx.toq(np.datetime64(int(EPOCH_2000_NS + T0 + i * 1_000_000), "ns")),
        kx.SymbolAtom(f"SYM{(i * 7919) % SYMS:02d}"),
        kx.FloatAtom(100.0 + (i % 1000) * 0.01),
        kx.LongAtom(((i % 100) + 1) * 100),
    ]
    return kx.toq([kx.SymbolAtom("upd"), kx.SymbolAtom("trade"), row])


def best(f):
    """Best of RUNS timings of f; its result is freed after the clock stops."""
    times = []
    for _ in range(RUNS):
        t = time.perf_counter_ns()
        r = f()
        times.append(time.perf_counter_ns() - t)
        del r
    return min(times)


def libq_single(k):
    wire = bytes(kx.serialize(k).copy())
    enc = best(lambda: kx.serialize(k))
    dec = best(lambda: kx.deserialize(wire))
    return enc, dec, len(wire)


def libq_messages(msgs):
    wires = [bytes(kx.serialize(m).copy()) for m in msgs]
    enc = best(lambda: [kx.serialize(m) for m in msgs])
    dec = best(lambda: [kx.deserialize(w) for w in wires])
    noop = best(lambda: [len(w) for w in wires])  # the Python loop alone
    return enc, dec, sum(map(len, wires)), noop


def main():
    env = dict(os.environ, CARGO_TARGET_DIR=os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/qmesh-target")))
    out = subprocess.run(
        ["cargo", "run", "--quiet", "--release", "--example", "codec_bench", "-p", "qmesh-codec", "--", str(RUNS)],
        cwd=ROOT, env=env, check=True, capture_output=True, text=True,
    ).stdout
    ours = {c["case"]: c for c in (json.loads(line) for line in out.splitlines() if line.strip())}

    libq = {}
    enc, dec, n = libq_single(trade_table())
    libq["table_1m"] = (enc, dec, n)
    enc, dec, n = libq_single(kx.toq(np.arange(LONG_LEN, dtype=np.int64)))
    libq["long_10m"] = (enc, dec, n)
    enc, dec, n, noop = libq_messages([upd(i) for i in range(MESSAGES)])
    libq["upd_100k"] = (enc, dec, n)

    ms = lambda ns: f"{ns / 1e6:8.2f}"  # noqa: E731
    print(f"best of {RUNS} runs; times in ms; fresh = new output allocation per message, "
          f"reused = one grown buffer cleared between messages")
    print(f"{'case':<9} {'bytes':>9} | {'enc fresh':>9} {'enc reuse':>9} {'enc libq':>8} | "
          f"{'dec qmesh':>9} {'dec libq':>8} | {'cpy fresh':>9} {'cpy reuse':>9}")
    for case in CASES:
        o = ours[case]
        le, ld, lb = libq[case]
        if lb != o["bytes"]:
            sys.exit(f"{case}: libq wrote {lb} bytes, qmesh {o['bytes']}: not the same object")
        print(f"{case:<9} {o['bytes']:>9} | {ms(o['encode_fresh_ns'])} {ms(o['encode_reused_ns'])} {ms(le)}  | "
              f"{ms(o['decode_ns'])} {ms(ld)} | {ms(o['memcpy_fresh_ns'])} {ms(o['memcpy_reused_ns'])}")

    print()
    print("ratios: qmesh / libq (below 1: qmesh faster); enc/cpy = encode time / memcpy time, same allocation regime")
    print(f"{'case':<9} | {'enc fresh/libq':>14} {'enc reuse/libq':>14} {'dec/libq':>8} | "
          f"{'enc/cpy fresh':>13} {'enc/cpy reuse':>13} {'dec/cpy fresh':>13}")
    for case in CASES:
        o = ours[case]
        le, ld, _ = libq[case]
        print(f"{case:<9} | {o['encode_fresh_ns'] / le:14.2f} {o['encode_reused_ns'] / le:14.2f} "
              f"{o['decode_ns'] / ld:8.2f} | {o['encode_fresh_ns'] / o['memcpy_fresh_ns']:13.2f} "
              f"{o['encode_reused_ns'] / o['memcpy_reused_ns']:13.2f} {o['decode_ns'] / o['memcpy_fresh_ns']:13.2f}")
    print(f"upd_100k: the Python loop alone costs {ms(noop).strip()} ms of libq's times "
          f"(libq minus loop: enc {ms(libq['upd_100k'][0] - noop).strip()}, dec {ms(libq['upd_100k'][1] - noop).strip()} ms)")

    print()
    print("targets (each judged on both encode regimes; decode is always fresh):")

    def verdict(ok):
        return "ok  " if ok else "MISS"

    t = ours["table_1m"]
    lt_e, lt_d, _ = libq["table_1m"]
    for label, ns, lns in [("encode fresh", t["encode_fresh_ns"], lt_e), ("encode reused", t["encode_reused_ns"], lt_e),
                           ("decode", t["decode_ns"], lt_d)]:
        print(f"  {verdict(lns / ns >= 1.5)} table_1m {label}: libq/qmesh = {lns / ns:.2f} (target >= 1.5)")
    for case in CASES:
        o = ours[case]
        le, ld, _ = libq[case]
        worst = max(o["encode_fresh_ns"] / le, o["encode_reused_ns"] / le, o["decode_ns"] / ld)
        print(f"  {verdict(worst <= 1.0)} {case}: slowest qmesh/libq = {worst:.2f} "
              f"(enc fresh {o['encode_fresh_ns'] / le:.2f}, enc reused {o['encode_reused_ns'] / le:.2f}, "
              f"dec {o['decode_ns'] / ld:.2f}; target <= 1.00)")
    v = ours["long_10m"]
    for label, enc, cpy in [("fresh", v["encode_fresh_ns"], v["memcpy_fresh_ns"]),
                            ("reused", v["encode_reused_ns"], v["memcpy_reused_ns"])]:
        print(f"  {verdict(cpy / enc >= 0.70)} long_10m encode {label}: {100 * cpy / enc:.0f} % of memcpy {label} "
              f"speed (target >= 70 %)")

if __name__ == "__main__":
    main()

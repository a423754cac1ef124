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
`d9` interns every symbol, we do not. memcpy is a copy into a fresh
allocation of the same size (allocation and page faults included).
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pykx as kx

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
    times = []
    for _ in range(RUNS):
        t = time.perf_counter_ns()
        f()
        times.append(time.perf_counter_ns() - t)
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

    ms = lambda ns: f"{ns / 1e6:9.2f}"  # noqa: E731
    print(f"best of {RUNS} runs; times in ms; ratio = qmesh / libq (below 1: qmesh faster)")
    print(f"{'case':<10} {'bytes':>10} | {'enc qmesh':>9} {'enc libq':>9} {'ratio':>6} | "
          f"{'dec qmesh':>9} {'dec libq':>9} {'ratio':>6} | {'memcpy':>9} {'enc/cpy':>7} {'dec/cpy':>7}")
    for case in ["table_1m", "long_10m", "upd_100k"]:
        o = ours[case]
        le, ld, lb = libq[case]
        if lb != o["bytes"]:
            sys.exit(f"{case}: libq wrote {lb} bytes, qmesh {o['bytes']}: not the same object")
        print(f"{case:<10} {o['bytes']:>10} | {ms(o['encode_ns'])} {ms(le)} {o['encode_ns'] / le:6.2f} | "
              f"{ms(o['decode_ns'])} {ms(ld)} {o['decode_ns'] / ld:6.2f} | {ms(o['memcpy_ns'])} "
              f"{o['encode_ns'] / o['memcpy_ns']:7.2f} {o['decode_ns'] / o['memcpy_ns']:7.2f}")
    print(f"upd_100k: the Python loop alone costs {ms(noop).strip()} ms of libq's times "
          f"(libq minus loop: enc {ms(libq['upd_100k'][0] - noop).strip()}, dec {ms(libq['upd_100k'][1] - noop).strip()} ms)")


if __name__ == "__main__":
    main()

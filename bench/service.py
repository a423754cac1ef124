#!/usr/bin/env python3
"""qmesh service: ingest rate over kdb+ IPC, and query latency against DuckDB.

    cargo build --release -p qmesh
    PYKX_UNLICENSED=true ~/.cache/qmesh-venv/bin/python bench/service.py [--rows 10000000]

One run does three things and prints a table (and, last, one JSON line):

1. **Ingest.** Starts `qmesh service` empty and sends it `upd` messages of
   `--batch` rows (1,000 by default) of the whitepaper's trade shape
   (`date sym time price size`), async, over one kdb+ IPC connection, as a
   tickerplant would, `--ingest-rows` in all; then one sync
   `select count(*)` that the service answers only after it has applied every
   earlier message on the connection. Rate = rows / (first send → answer).
   The messages are serialized before the clock starts (100 distinct
   batches, cycled), so the figure is the service's, not Python's.
2. **Data.** Generates `--rows` trades and as many quotes (100 symbols, one
   day 09:30–16:00 in time order, seeded), writes them to Parquet once, and
   loads the same files into `qmesh service --load` and into DuckDB (in
   memory, `SET threads` to the machine's cores, as the service uses).
3. **Queries.** Each query runs `--warmup` times, then `--runs` times; the
   median is reported. qmesh is timed from a PyKX client (sync IPC round
   trip, result conversion included); DuckDB through its Python API
   (`execute().fetchall()`). The two answers are checked to agree.

   * `groupby`: `select sym, avg(price), sum(size), count(*) from trade group by sym`
   * `asof`: the prevailing quote per symbol at 12:00 — the last bid and ask
     at or before 12:00:00. DataFusion has no `ASOF JOIN`; the point-in-time
     lookup is written with an ordered aggregate in each engine's dialect:
     `last_value(bid order by time)` for DataFusion, `arg_max(bid, time)`
     for DuckDB.
"""

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pykx as kx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/qmesh-target"))
SYMS = np.array([f"S{k:03d}" for k in range(100)], dtype=object)
OPEN_MS, DAY_MS = 9 * 3_600_000 + 30 * 60_000, 6 * 3_600_000 + 30 * 60_000
KDB_DATE = 8766  # 2024.01.01 (days since 2000.01.01)

QUERIES = {
    "groupby": (
        "select sym, avg(price) as avgpx, sum(size) as vol, count(*) as n from trade group by sym",
        "select sym, avg(price) as avgpx, sum(size) as vol, count(*) as n from trade group by sym",
    ),
    "asof": (
        "select sym, last_value(bid order by time) as bid, last_value(ask order by time) as ask "
        "from quote where time <= '12:00:00' group by sym",
        "select sym, arg_max(bid, time) as bid, arg_max(ask, time) as ask "
        "from quote where time <= TIME '12:00:00' group by sym",
    ),
}


def start_service(binary, extra):
    cmd = [binary, "service", "--name", "BENCH", "--bind", "127.0.0.1", "-p", "0", *extra]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in p.stdout:
        if " listening ipc " in line:
            host, port = line.split()[-1].rsplit(":", 1)
            return p, int(port)
    raise SystemExit(f"service did not start: {cmd}")


# --- raw kdb+ IPC, so the client does nothing but write prebuilt bytes ------

def kdb_connect(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"bench:\x03\x00")
    if len(s.recv(1)) != 1:
        raise SystemExit("handshake refused")
    return s


def message(body, msg_type):
    return bytes([1, msg_type, 0, 0]) + struct.pack("<I", 8 + len(body)) + body


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise SystemExit("connection closed")
        buf += chunk
    return bytes(buf)


def sync_body(s, text):
    s.sendall(message(bytes([10, 0]) + struct.pack("<I", len(text)) + text.encode(), 1))
    head = recv_exact(s, 8)
    return recv_exact(s, struct.unpack("<I", head[4:8])[0] - 8)


def vec(t, arr):
    return bytes([t, 0]) + struct.pack("<I", len(arr)) + arr.tobytes()


def sym_vec(names):
    return bytes([11, 0]) + struct.pack("<I", len(names)) + b"".join(n.encode() + b"\x00" for n in names)


def upd_message(rng, n, start):
    """(`upd;`trade;([] date; sym; time; price; size)) as an async message."""
    idx = rng.integers(0, len(SYMS), n)
    t = (OPEN_MS + (np.arange(start, start + n) % DAY_MS)).astype(np.int32)
    names = ["date", "sym", "time", "price", "size"]
    cols = [
        vec(14, np.full(n, KDB_DATE, dtype=np.int32)),
        sym_vec(list(SYMS[idx])),
        vec(19, t),
        vec(9, np.round(100 + rng.random(n) * 50, 2)),
        vec(7, (rng.integers(1, 10, n) * 100).astype(np.int64)),
    ]
    table = (bytes([98, 0, 99]) + sym_vec(names) + bytes([0, 0]) + struct.pack("<I", len(cols)) + b"".join(cols))
    body = bytes([0, 0]) + struct.pack("<I", 3) + b"\xf5upd\x00" + b"\xf5trade\x00" + table
    return message(body, 0)


def bench_ingest(binary, total, batch):
    rng = np.random.default_rng(1)
    msgs = [upd_message(rng, batch, i * batch) for i in range(100)]
    proc, port = start_service(binary, [])
    try:
        s = kdb_connect(port)
        n_msgs = total // batch
        t0 = time.perf_counter()
        for i in range(n_msgs):
            s.sendall(msgs[i % len(msgs)])
        body = sync_body(s, "select count(*) as n from trade")
        elapsed = time.perf_counter() - t0
        rows = struct.unpack("<q", body[-8:])[0]
        if rows != n_msgs * batch:
            raise SystemExit(f"ingest: service holds {rows} rows, sent {n_msgs * batch}")
        return {"rows": rows, "batch": batch, "seconds": elapsed, "rows_per_s": rows / elapsed}
    finally:
        proc.terminate()
        proc.wait()


# --- data ---------------------------------------------------------------------

def write_data(dirname, rows):
    rng = np.random.default_rng(7)
    time_ms = (OPEN_MS + (np.arange(rows, dtype=np.int64) * DAY_MS) // rows).astype(np.int32)
    date = pa.array(np.full(rows, KDB_DATE + 10957, dtype=np.int32), pa.date32())
    sym = lambda: pa.DictionaryArray.from_arrays(pa.array(rng.integers(0, len(SYMS), rows).astype(np.int32)),
                                                  pa.array(list(SYMS)))
    tm = pa.array(time_ms, pa.time32("ms"))
    trade = pa.table({
        "date": date, "sym": sym(), "time": tm,
        "price": pa.array(np.round(100 + rng.random(rows) * 50, 2)),
        "size": pa.array((rng.integers(1, 10, rows) * 100).astype(np.int64)),
    })
    bid = np.round(100 + rng.random(rows) * 50, 2)
    quote = pa.table({
        "date": date, "sym": sym(), "time": tm,
        "bid": pa.array(bid), "ask": pa.array(np.round(bid + 0.01 * rng.integers(1, 5, rows), 2)),
    })
    paths = {}
    for name, t in (("trade", trade), ("quote", quote)):
        paths[name] = os.path.join(dirname, f"{name}.parquet")
        pq.write_table(t, paths[name], row_group_size=1 << 20)
    return paths


def median_ms(fn, warmup, runs):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times)), times


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(TARGET, "release", "qmesh"))
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--ingest-rows", type=int, default=5_000_000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    if not os.path.exists(args.bin):
        raise SystemExit(f"no binary at {args.bin}: cargo build --release -p qmesh")
    cores = os.cpu_count() or 1
    report = {"cores": cores, "rows": args.rows}

    report["ingest"] = bench_ingest(args.bin, args.ingest_rows, args.batch)
    print(f"ingest: {report['ingest']['rows']:,} rows in {args.batch}-row upd messages: "
          f"{report['ingest']['rows_per_s'] / 1e6:.2f} M rows/s", flush=True)

    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        paths = write_data(d, args.rows)
        print(f"data: {args.rows:,} trades and quotes written in {time.perf_counter() - t0:.1f}s", flush=True)

        t0 = time.perf_counter()
        proc, port = start_service(args.bin, ["--load", f"trade={paths['trade']}", "--load", f"quote={paths['quote']}",
                                              "--query-threads", str(cores)])
        report["qmesh_load_s"] = time.perf_counter() - t0
        con = duckdb.connect()
        con.execute(f"SET threads TO {cores}")
        t0 = time.perf_counter()
        for name, path in paths.items():
            con.execute(f"CREATE TABLE {name} AS SELECT * FROM read_parquet('{path}')")
        report["duckdb_load_s"] = time.perf_counter() - t0
        try:
            q = kx.SyncQConnection("127.0.0.1", port, no_ctx=True)
            results = {}
            for name, (df_sql, duck_sql) in QUERIES.items():
                ours = q(df_sql).py()
                theirs = con.execute(duck_sql).fetchall()
                ours_rows = {k[0]: tuple(v.values()) for k, v in ours.items()}
                for row in theirs:
                    mine = ours_rows.get(row[0])
                    if mine is None or any(abs(a - b) > 1e-6 * max(1.0, abs(b)) for a, b in zip(mine, row[1:])):
                        raise SystemExit(f"{name}: answers differ for {row[0]}: qmesh {mine}, DuckDB {row[1:]}")
                if len(ours_rows) != len(theirs):
                    raise SystemExit(f"{name}: {len(ours_rows)} groups from qmesh, {len(theirs)} from DuckDB")
                qm, qm_all = median_ms(lambda: q(df_sql), args.warmup, args.runs)
                dk, dk_all = median_ms(lambda: con.execute(duck_sql).fetchall(), args.warmup, args.runs)
                results[name] = {"qmesh_ms": qm, "duckdb_ms": dk, "ratio": qm / dk,
                                 "qmesh_runs_ms": qm_all, "duckdb_runs_ms": dk_all}
            report["queries"] = results
            q.close()
        finally:
            proc.terminate()
            proc.wait()

    print(f"\n{'query':<10} {'qmesh ms':>10} {'DuckDB ms':>10} {'ratio':>7}   ({args.rows:,} rows, {cores} cores, "
          f"median of {args.runs})")
    for name, r in report["queries"].items():
        print(f"{name:<10} {r['qmesh_ms']:>10.1f} {r['duckdb_ms']:>10.1f} {r['ratio']:>7.2f}")
    print(f"load: qmesh {report['qmesh_load_s']:.1f}s (process start + Parquet), DuckDB {report['duckdb_load_s']:.1f}s")
    print(json.dumps(report))


if __name__ == "__main__":
    main()

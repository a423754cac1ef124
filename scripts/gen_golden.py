#!/usr/bin/env python3
"""Golden kdb+ IPC fixtures for qmesh-codec, produced by KX's own serializer.

Run (PyKX in unlicensed mode still runs KX's C `b9`/`d9`):

    PYKX_UNLICENSED=true ~/.cache/qmesh-venv/bin/python scripts/gen_golden.py

It writes crates/qmesh-codec/tests/fixtures/golden.json: case name -> hex of a
whole message (header included). Every case comes from one of three sources,
printed as the script runs:

* ``kx``     -- a PyKX value serialized by ``kx.serialize`` (KX ``b9``, mode 6);
* ``kx-rt``  -- bytes we wrote by hand (for what PyKX cannot build unlicensed:
  -inf of temporal types, datetimes, attributes, sorted dictionaries,
  primitives) that KX's ``d9`` accepted and KX's ``b9`` wrote back *identically*;
* ``doc``    -- a vector documented by KX (code.kx.com serialization page, the
  Java CTest golden) that KX's ``d9`` accepted but cannot write back unlicensed
  (lambdas become strings, an error object raises, compressed input is
  re-serialized uncompressed); what ``d9`` made of it is checked.

Cases whose names start with ``be_`` (big-endian) or ``longcount_`` (the
capability-6 8-byte vector count) are decode-only: KX reads them and writes the
canonical case named after the colon in DECODE_ONLY below.

The other direction -- KX reading what *our* encoder writes -- is
scripts/check_decode.py, run by crates/qmesh-codec/tests/kx_accepts.rs.
"""

import datetime
import json
import os
import struct
import sys
import uuid

import numpy as np
import pandas as pd
import pykx as kx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates", "qmesh-codec", "tests", "fixtures", "golden.json")

cases = {}
sources = {}


def ser(obj, wait=0):
    return bytes(kx.serialize(obj, mode=6, wait=wait).copy())


def msg(body, little=True, mtype=0):
    return bytes([1 if little else 0, mtype, 0, 0]) + struct.pack("<I" if little else ">I", len(body) + 8) + body


def add(name, data, source):
    assert name not in cases, name
    cases[name] = data.hex()
    sources[name] = source


def from_kx(name, obj, wait=0):
    add(name, ser(obj, wait), "kx")


def round_trip(name, body_hex):
    """Hand-written bytes that KX must read and write back unchanged."""
    m = msg(bytes.fromhex(body_hex))
    back = ser(kx.deserialize(m))
    if back != m:
        sys.exit(f"{name}: KX wrote back {back.hex()} for {m.hex()}")
    add(name, m, "kx-rt")


def documented(name, full_hex, check):
    """A documented vector; `check` asserts what KX's d9 made of it."""
    m = bytes.fromhex(full_hex)
    check(m)
    add(name, m, "doc")


# ---------------------------------------------------------------- atoms
from_kx("bool_true", kx.BooleanAtom(True))
from_kx("bool_false", kx.BooleanAtom(False))
from_kx("guid", kx.GUIDAtom(uuid.UUID("12345678-1234-5678-1234-567812345678")))
from_kx("guid_null", kx.GUIDAtom.null)
from_kx("byte", kx.ByteAtom(5))
from_kx("short", kx.ShortAtom(5))
from_kx("int", kx.IntAtom(5))
from_kx("long", kx.LongAtom(1))
from_kx("long_neg", kx.LongAtom(-2))
from_kx("real", kx.RealAtom(1.5))
from_kx("float", kx.FloatAtom(1.5))
from_kx("char", kx.CharAtom(b"a"))
from_kx("char_null", kx.CharAtom.null)
from_kx("symbol", kx.SymbolAtom("abc"))
from_kx("symbol_null", kx.SymbolAtom.null)
from_kx("timestamp", kx.TimestampAtom(datetime.datetime(2000, 1, 2)))
round_trip("month", "f301000000")  # 2000.02m
from_kx("date", kx.DateAtom(datetime.date(2000, 1, 2)))
round_trip("datetime", "f1000000000000f83f")  # 2000.01.02T12:00:00.000
from_kx("timespan", kx.TimespanAtom(datetime.timedelta(seconds=1)))
from_kx("minute", kx.toq(np.timedelta64(5, "m"), kx.MinuteAtom))
from_kx("second", kx.toq(np.timedelta64(5, "s"), kx.SecondAtom))
from_kx("time", kx.toq(np.timedelta64(5, "ms"), kx.TimeAtom))

# nulls and infinities of every type that has them
for name, cls, tb, width in [
    ("short", kx.ShortAtom, "fb", 2), ("int", kx.IntAtom, "fa", 4), ("long", kx.LongAtom, "f9", 8),
    ("timestamp", kx.TimestampAtom, "f4", 8), ("month", kx.MonthAtom, "f3", 4),
    ("date", kx.DateAtom, "f2", 4), ("timespan", kx.TimespanAtom, "f0", 8),
    ("minute", kx.MinuteAtom, "ef", 4), ("second", kx.SecondAtom, "ee", 4), ("time", kx.TimeAtom, "ed", 4),
]:
    from_kx(f"{name}_null", cls.null)
    from_kx(f"{name}_inf", cls.inf)
    neg_inf = (1).to_bytes(width, "little")[:-1] + b"\x80"  # 0x80..01, little-endian
    round_trip(f"{name}_neginf", tb + neg_inf.hex())
for name, cls, tb, neg in [
    ("real", kx.RealAtom, "f8", "000080ff"), ("float", kx.FloatAtom, "f7", "000000000000f0ff"),
    ("datetime", kx.DatetimeAtom, "f1", "000000000000f0ff"),
]:
    from_kx(f"{name}_null", cls.null)
    from_kx(f"{name}_inf", cls.inf)
    round_trip(f"{name}_neginf", tb + neg)

# ---------------------------------------------------------------- vectors
from_kx("bool_vec", kx.toq(np.array([True, False, True])))
from_kx("list_of_guids", kx.toq([uuid.UUID("12345678-1234-5678-1234-567812345678"), uuid.UUID(int=0)]))
round_trip("guid_vec", "020002000000" + "12345678123456781234567812345678" + "00" * 16)
from_kx("byte_vec", kx.toq(np.arange(5, dtype=np.uint8)))  # `byte$til 5
from_kx("short_vec", kx.toq(np.array([1, -32768, 32767, -32767], dtype=np.int16)))
from_kx("int_vec", kx.toq(np.array([1, -(2**31), 2**31 - 1, -(2**31) + 1], dtype=np.int32)))
from_kx("long_vec", kx.toq(np.array([1, 2, 3], dtype=np.int64)))
from_kx("long_vec_nulls", kx.toq(np.array([1, -(2**63), 2**63 - 1, -(2**63) + 1], dtype=np.int64)))
from_kx("long_vec_empty", kx.toq(np.array([], dtype=np.int64)))
from_kx("real_vec", kx.toq(np.array([1.5, np.nan, np.inf, -np.inf], dtype=np.float32)))
from_kx("float_vec", kx.toq(np.array([1.5, np.nan, np.inf, -np.inf], dtype=np.float64)))
from_kx("char_vec", kx.toq(b"ab"))
from_kx("char_vec_empty", kx.toq(b""))
from_kx("symbol_vec", kx.toq(np.array(["a", "b"], dtype=object), kx.SymbolVector))
from_kx("symbol_vec_nulls", kx.toq(np.array(["a", "", "bc"], dtype=object), kx.SymbolVector))
from_kx("symbol_vec_empty", kx.toq(np.array([], dtype=object), kx.SymbolVector))
from_kx("timestamp_vec", kx.toq(np.array(["2000-01-02", "2000-01-01T00:00:00.000000001"], dtype="datetime64[ns]")))
from_kx("date_vec", kx.toq(np.array(["2000-01-02", "1999-12-31"], dtype="datetime64[D]")))
from_kx("month_vec", kx.toq(np.array(["2000-02", "1999-12"], dtype="datetime64[M]")))
from_kx("timespan_vec", kx.toq(np.array([1, -1], dtype="timedelta64[ns]")))
for name, ty, width in [("month", "0d", 4), ("date", "0e", 4), ("minute", "11", 4), ("second", "12", 4),
                        ("time", "13", 4), ("timestamp", "0c", 8), ("timespan", "10", 8)]:
    vals = [0, 1, -(2 ** (8 * width - 1)), 2 ** (8 * width - 1) - 1, -(2 ** (8 * width - 1)) + 1]
    fmt = "<5i" if width == 4 else "<5q"
    round_trip(f"{name}_vec_nulls", ty + "0005000000" + struct.pack(fmt, *vals).hex())
round_trip("datetime_vec", "0f0003000000" + struct.pack("<3d", 1.5, float("inf"), float("-inf")).hex())

# attributes
LONGS_123 = struct.pack("<3q", 1, 2, 3).hex()
round_trip("attr_sorted_long_vec", "070103000000" + LONGS_123)
round_trip("attr_unique_long_vec", "070203000000" + LONGS_123)
round_trip("attr_parted_long_vec", "070303000000" + struct.pack("<3q", 1, 1, 3).hex())
round_trip("attr_grouped_long_vec", "070403000000" + struct.pack("<3q", 1, 2, 1).hex())
round_trip("attr_sorted_symbol_vec", "0b0102000000610062 00".replace(" ", ""))
round_trip("attr_unique_list", "000202000000" + "f90100000000000000" + "f90200000000000000")

# ---------------------------------------------------------------- lists
from_kx("list_mixed", kx.toq([1, "a", b"b"]))  # (1;`a;"b")
from_kx("list_empty", kx.toq([]))
from_kx("list_nested", kx.toq([[np.int64(1), np.int64(2)], [b"xy", "s"], []]))
round_trip("list_of_bytes", "0000010000000400050000000001020304")  # enlist`byte$til 5
from_kx("generic_null", kx.toq(None))

# ---------------------------------------------------------------- dictionaries and tables
from_kx("dict", kx.toq({"a": 1, "b": 2}))
round_trip("dict_ints", "630b0002000000610062000600020000000200000003000000")  # `a`b!2 3i
round_trip("sorted_dict", "7f0b0102000000610062000600020000000200000003000000")  # `s#`a`b!2 3i
round_trip("dict_of_lists", "630b0002000000610062000000020000000600010000000200000006000100000003000000")
round_trip("table_ints", "6200630b0002000000610062000000020000000600010000000200000006000100000003000000")
round_trip("table_sorted", "6201630b0002000000610062000000020000000603010000000200000006000100000003000000")
round_trip(
    "keyed_table_ints",
    "636200630b00010000006100000001000000060001000000020000006200630b0001000000620000000100000006000100000003000000",
)
round_trip(
    "keyed_table_sorted",
    "7f6201630b00010000006100000001000000060001000000020000006200630b0001000000620000000100000006000100000003000000",
)
from_kx("table", kx.toq(pd.DataFrame({"a": np.array([1, 2], dtype=np.int64), "b": ["x", "y"]})))
from_kx("keyed_table", kx.toq(pd.DataFrame({"a": np.array([1, 2]), "b": np.array([3, 4])}).set_index("a")))
trade = pd.DataFrame(
    {
        "time": np.array(["2000-01-01T00:00:00", "2000-01-01T00:00:00.000000001", "2000-01-01T00:00:01"],
                         dtype="datetime64[ns]"),
        "sym": ["AAPL", "MSFT", "AAPL"],
        "price": np.array([1.5, 2.25, np.nan]),
        "size": np.array([100, 200, 300], dtype=np.int64),
    }
)
from_kx("trade_table", kx.toq(trade))
from_kx("upd_message", kx.toq(["upd", "trade", kx.toq(trade)]))

# ---------------------------------------------------------------- errors and functions
def raises_type(m):
    try:
        kx.deserialize(m)
    except kx.QError as e:
        assert str(e) == "type", e
        return
    sys.exit("KX did not read the error object as an error")


documented("error", "010000000e000000807479706500", raises_type)  # 'type, as a response it is 0102…


def lambda_text(text):
    def check(m):
        r = kx.deserialize(m)  # unlicensed d9 gives the lambda's text
        assert bytes(r.py()) == text if isinstance(r.py(), bytes) else str(r.py()).encode() == text, r

    return check


documented("lambda", "010000001500000064000a00050000007b782b797d", lambda_text(b"{x+y}"))
documented("lambda_ctx", "01000000160000006464000a00050000007b782b797d", lambda_text(b"{x+y}"))
round_trip("unary_primitive", "6501")
round_trip("operator", "6601")
round_trip("iterator", "6700")
round_trip("composition", "690200000065016502")
round_trip("each_operator", "6a6601")
round_trip("over_operator", "6b6601")
round_trip("projection", "680200000066016500")  # +[;] style: operator then (::)

# ---------------------------------------------------------------- message types, big messages, compression
from_kx("sync_long", kx.LongAtom(1), wait=1)
from_kx("response_long", kx.LongAtom(1), wait=2)
from_kx("large_long_vec", kx.toq(np.arange(140_000, dtype=np.int64)))  # > 1 MB


def inflates_to(expected):
    def check(m):
        back = ser(kx.deserialize(m))
        assert back == expected, back.hex()

    return check


bools = ser(kx.toq(np.ones(2000, dtype=bool)))
documented(
    "compressed_bool_2000",  # Java CTest testCompressBoolList: 2000#1b
    "0100010026000000de070000000100d00700000101ff00ff00ff00ff00ff00ff00ff00ff00c5",
    inflates_to(bools),
)

# ---------------------------------------------------------------- decode-only cases
DECODE_ONLY = {}


def decode_only(name, data, canonical):
    back = ser(kx.deserialize(data))
    if back.hex() != cases[canonical]:
        sys.exit(f"{name}: KX wrote {back.hex()}, expected case {canonical}")
    add(name, data, f"kx-read:{canonical}")
    DECODE_ONLY[name] = canonical


decode_only("be_long_vec", msg(bytes.fromhex("0700") + struct.pack(">i3q", 3, 1, 2, 3), little=False), "long_vec")
decode_only(
    "be_list_mixed",
    msg(bytes.fromhex("0000") + struct.pack(">i", 3) + bytes.fromhex("f9") + struct.pack(">q", 1)
        + bytes.fromhex("f56100f662"), little=False),
    "list_mixed",
)
decode_only(
    "be_dict_ints",
    msg(bytes.fromhex("630b00") + struct.pack(">i", 2) + b"a\0b\0" + bytes.fromhex("0600")
        + struct.pack(">i2i", 2, 2, 3), little=False),
    "dict_ints",
)
decode_only(
    "be_float_vec",
    msg(bytes.fromhex("0900") + struct.pack(">i4d", 4, 1.5, float("nan"), float("inf"), float("-inf")), little=False),
    "float_vec",
)
decode_only("be_guid", msg(bytes.fromhex("fe12345678123456781234567812345678"), little=False), "guid")
decode_only("longcount_long_vec", msg(bytes.fromhex("0780") + struct.pack("<q3q", 3, 1, 2, 3)), "long_vec")

os.makedirs(os.path.dirname(OUT), exist_ok=True)
with open(OUT, "w") as f:
    json.dump(dict(sorted(cases.items())), f, indent=0, sort_keys=True)
    f.write("\n")
width = max(map(len, sources))
for name in sorted(sources):
    print(f"{name:<{width}}  {sources[name]}")
print(f"{len(cases)} cases -> {os.path.relpath(OUT, ROOT)}")

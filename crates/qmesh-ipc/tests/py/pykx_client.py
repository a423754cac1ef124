"""PyKX (KX's own C serializer) as a client of a qmesh echo server.

Usage: pykx_client.py PORT MODE
  MODE = sync      SyncQConnection with its default connect-time probes
         noctx     SyncQConnection(no_ctx=True)
         async     AsyncQConnection
         unix      SyncQConnection(unix=True, no_ctx=True)
         badpass   a wrong password must be refused

The server (crates/qmesh-ipc/tests/interop.rs) runs qmesh_ipc::echo::EchoHandler
with the user `user:pass`. Values go out, are decoded and re-encoded by the Rust
codec (`{x}`), and must come back identical: compared by KX's serialization
of each, so NaN payloads and attributes count too. Prints one line per check
and exits non-zero on the first failure.
"""
import asyncio
import datetime
import sys
import uuid

import numpy as np
import pandas as pd
import pykx as kx

PORT = int(sys.argv[1])
MODE = sys.argv[2]
USER, PASS = "user", "pass"


def from_body(hexbody):
    """A value from its little-endian wire body, through KX's deserializer."""
    body = bytes.fromhex(hexbody)
    msg = bytes([1, 0, 0, 0]) + (8 + len(body)).to_bytes(4, "little") + body
    return kx.deserialize(msg)


def values():
    g = uuid.UUID("12345678-1234-5678-1234-567812345678")
    df = pd.DataFrame({"a": np.array([1, 2, 3], dtype=np.int64), "b": ["x", "y", "z"], "c": [1.5, np.nan, 3.0]})
    v = {
        "boolean": kx.BooleanAtom(True),
        "guid": kx.GUIDAtom(g),
        "byte": kx.ByteAtom(7),
        "short": kx.ShortAtom(-3),
        "int": kx.IntAtom(5),
        "long": kx.LongAtom(1),
        "real": kx.RealAtom(1.5),
        "float": kx.FloatAtom(2.25),
        "char": kx.CharAtom(b"a"),
        "symbol": kx.SymbolAtom("abc"),
        "timestamp": kx.TimestampAtom(datetime.datetime(2024, 1, 2, 3, 4, 5, 123456)),
        "month": kx.MonthAtom(np.datetime64("2024-03", "M")),
        "date": kx.DateAtom(datetime.date(2024, 1, 2)),
        "datetime": from_body("f1000000000000f83f"),
        "datetime vector": from_body("0f0002000000000000000000f83f000000000000f8ff"),
        "timespan": kx.TimespanAtom(datetime.timedelta(seconds=3, microseconds=7)),
        "minute": kx.MinuteAtom(np.timedelta64(5, "m")),
        "second": kx.SecondAtom(np.timedelta64(5, "s")),
        "time": kx.TimeAtom(np.timedelta64(5, "ms")),
        "null long": from_body("f90000000000000080"),
        "inf long": from_body("f9ffffffffffffff7f"),
        "null int": from_body("fa00000080"),
        "null short": from_body("fb0080"),
        "null guid": from_body("fe00000000000000000000000000000000"),
        "generic null": from_body("6500"),
        "lambda": from_body("64000a00050000007b782b797d"),
        "sorted dict": from_body("7f0b0102000000610062000600020000000200000003000000"),
        "sorted table": from_body("6201630b0002000000610062000000020000000603010000000200000006000100000003000000"),
        "null float": kx.FloatAtom(float("nan")),
        "inf float": kx.FloatAtom(float("inf")),
        "-inf real": kx.RealAtom(float("-inf")),
        "null symbol": kx.SymbolAtom(""),
        "bool vector": kx.toq(np.array([True, False, True])),
        "guid vector": kx.toq([g, uuid.UUID(int=0)], kx.GUIDVector),
        "byte vector": kx.toq(np.array([0, 1, 255], dtype=np.uint8)),
        "short vector": kx.toq(np.array([1, -2, -(2**15)], dtype=np.int16)),
        "int vector": kx.toq(np.array([1, -2, -(2**31)], dtype=np.int32)),
        "long vector": kx.toq(np.arange(1000, dtype=np.int64)),
        "real vector": kx.toq(np.array([1.5, np.nan, np.inf], dtype=np.float32)),
        "float vector": kx.toq(np.array([1.5, np.nan, -np.inf])),
        "string": kx.CharVector("hello world"),
        "empty string": kx.CharVector(""),
        "symbol vector": kx.toq(["a", "bc", ""], kx.SymbolVector),
        "timestamp vector": kx.toq(np.array(["2024-01-02T03:04:05.123456789", "NaT"], dtype="datetime64[ns]")),
        "date vector": kx.toq(np.array(["2024-01-02", "2000-01-01"], dtype="datetime64[D]")),
        "timespan vector": kx.toq(np.array([1, 2, 3], dtype="timedelta64[ns]")),
        "general list": kx.toq([1, "a", b"b", 2.5], kx.List),
        "nested list": kx.toq([[1, 2], [3.5], []], kx.List),
        "empty list": kx.toq([], kx.List),
        "dict": kx.toq({"a": 1, "b": 2}),
        "table": kx.toq(df),
        "keyed table": kx.toq(df.set_index("a")),
        "big (compressible) vector": kx.toq(np.zeros(100000, dtype=np.int64)),
    }
    return v


def ser(x):
    return bytes(kx.serialize(x).copy())


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + (": " + detail if detail and not ok else ""), flush=True)
    if not ok:
        sys.exit(1)


def expect_error(name, fn, text):
    try:
        r = fn()
    except kx.QError as e:
        check(name, text in str(e), f"QError {e!r}, wanted {text!r}")
        return
    check(name, False, f"no error, got {r!r}")


def round_trips(call):
    for name, v in values().items():
        got = call("{x}", v)
        check(f"round trip {name}", ser(got) == ser(v), f"sent {ser(v).hex()[:120]} got {ser(got).hex()[:120]}")
        got = call("echo", v)
        check(f"forward {name}", ser(got) == ser(v), f"got {got!r}")


def semantics(call):
    check("1+1", call("1+1").py() == 2)
    check("deferred reply", call("defer", kx.LongAtom(42)).py() == 42)
    expect_error("q error", lambda: call("error", kx.CharVector("boom: detail")), "boom: detail")
    expect_error("dropped responder", lambda: call("drop"), "service error: no response")
    expect_error("unknown query", lambda: call("select from t"), "nyi")
    check("still usable after errors", call("1+1").py() == 2)


def sync_mode(no_ctx, unix=False):
    kw = dict(port=PORT, username=USER, password=PASS, no_ctx=no_ctx)
    if unix:
        kw["unix"] = True
    else:
        kw["host"] = "127.0.0.1"
    with kx.SyncQConnection(**kw) as q:
        check("connected", True)

        def call(query, *args):
            return q(query, *args)

        semantics(call)
        round_trips(call)


async def async_mode():
    async with kx.AsyncQConnection(host="127.0.0.1", port=PORT, username=USER, password=PASS, no_ctx=True) as q:
        check("connected", True)

        async def acall(query, *args):
            return await q(query, *args)

        check("1+1", (await acall("1+1")).py() == 2)
        check("deferred reply", (await acall("defer", kx.LongAtom(7))).py() == 7)
        try:
            await acall("error", kx.CharVector("async boom"))
            check("q error", False, "no error")
        except kx.QError as e:
            check("q error", "async boom" in str(e), repr(e))
        # several requests in flight at once
        futs = [q("defer", kx.LongAtom(i)) for i in range(20)]
        got = [(await f).py() for f in futs]
        check("pipelined deferred replies in order", got == list(range(20)), repr(got))
        for name, v in values().items():
            got = await acall("{x}", v)
            check(f"round trip {name}", ser(got) == ser(v))


def badpass():
    try:
        kx.SyncQConnection(host="127.0.0.1", port=PORT, username=USER, password="wrong", no_ctx=True)
    except Exception as e:  # PyKX raises on a refused handshake
        check("wrong password refused", True)
        print("     raised " + type(e).__name__ + ": " + str(e), flush=True)
        return
    check("wrong password refused", False, "connected")


if MODE == "sync":
    sync_mode(no_ctx=False)
elif MODE == "noctx":
    sync_mode(no_ctx=True)
elif MODE == "unix":
    sync_mode(no_ctx=True, unix=True)
elif MODE == "async":
    asyncio.run(async_mode())
elif MODE == "badpass":
    badpass()
else:
    sys.exit("unknown mode " + MODE)
print("done", flush=True)

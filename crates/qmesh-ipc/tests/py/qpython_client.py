"""qPython3 (an independent pure-Python codec, capability 6) as a client of a
qmesh echo server.

Usage: qpython_client.py PORT MODE
  MODE = roundtrip  every type out and back through the Rust codec (`{x}`),
                    deferred replies, errors
         badpass    a wrong password must be refused (qPython retries
                    without the capability byte, then gives up)

The server (crates/qmesh-ipc/tests/interop.rs) runs qmesh_ipc::echo::EchoHandler
with the user `user:pass`. A value is compared by qPython's own serialization
of what was sent and of what came back.
"""
import sys
import uuid

import numpy as np
from qpython import qconnection
from qpython.qcollection import QDictionary, qlist, qtable
from qpython.qtemporal import qtemporal
from qpython.qtype import (
    QBOOL_LIST, QBYTE_LIST, QDATE, QDATE_LIST, QDATETIME, QDOUBLE_LIST, QException, QFLOAT, QFLOAT_LIST, QGUID_LIST,
    QINT, QINT_LIST, QLONG_LIST, QMINUTE, QMONTH, QSECOND, QSHORT, QSHORT_LIST, QSYMBOL, QSYMBOL_LIST, QTIME,
    QTIMESPAN, QTIMESPAN_LIST, QTIMESTAMP, QTIMESTAMP_LIST, QLONG,
)
from qpython.qwriter import QWriter

PORT = int(sys.argv[1])
MODE = sys.argv[2]


def values():
    g = uuid.UUID("12345678-1234-5678-1234-567812345678")
    return {
        "boolean": np.bool_(True),
        "guid": g,
        "byte": np.byte(7),
        "short": np.int16(-3),
        "int": np.int32(5),
        "long": np.int64(1),
        "real": np.float32(1.5),
        "float": np.float64(2.25),
        "char": b"a",
        "symbol": np.bytes_(b"abc"),
        "timestamp": qtemporal(np.datetime64("2024-01-02T03:04:05.123456789", "ns"), qtype=QTIMESTAMP),
        "month": qtemporal(np.datetime64("2024-03", "M"), qtype=QMONTH),
        "date": qtemporal(np.datetime64("2024-01-02", "D"), qtype=QDATE),
        "datetime": qtemporal(np.datetime64("2024-01-02T03:04:05.123", "ms"), qtype=QDATETIME),
        "timespan": qtemporal(np.timedelta64(3000000007, "ns"), qtype=QTIMESPAN),
        "minute": qtemporal(np.timedelta64(5, "m"), qtype=QMINUTE),
        "second": qtemporal(np.timedelta64(5, "s"), qtype=QSECOND),
        "time": qtemporal(np.timedelta64(5, "ms"), qtype=QTIME),
        "null long": qlist([np.int64(-(2**63))], qtype=QLONG_LIST)[0],
        "null float": np.float64(np.nan),
        "bool vector": qlist(np.array([True, False, True]), qtype=QBOOL_LIST),
        "guid vector": qlist(np.array([g, uuid.UUID(int=0)]), qtype=QGUID_LIST),
        "byte vector": qlist(np.array([0, 1, 255], dtype=np.uint8), qtype=QBYTE_LIST),
        "short vector": qlist(np.array([1, -2, -(2**15)], dtype=np.int16), qtype=QSHORT_LIST),
        "int vector": qlist(np.array([1, -2, -(2**31)], dtype=np.int32), qtype=QINT_LIST),
        "long vector": qlist(np.arange(1000, dtype=np.int64), qtype=QLONG_LIST),
        "real vector": qlist(np.array([1.5, np.nan, np.inf], dtype=np.float32), qtype=QFLOAT_LIST),
        "float vector": qlist(np.array([1.5, np.nan, -np.inf]), qtype=QDOUBLE_LIST),
        "string": b"hello world",
        "symbol vector": qlist(np.array([b"a", b"bc", b""], dtype=object), qtype=QSYMBOL_LIST),
        "timestamp vector": qlist(np.array([1, 2], dtype=np.int64), qtype=QTIMESTAMP_LIST),
        "timespan vector": qlist(np.array([1, 2, 3], dtype=np.int64), qtype=QTIMESPAN_LIST),
        "general list": [np.int64(1), np.bytes_(b"a"), b"bc", np.float64(2.5)],
        "dict": QDictionary(qlist(np.array([b"a", b"b"], dtype=object), qtype=QSYMBOL_LIST),
                            qlist(np.array([1, 2], dtype=np.int64), qtype=QLONG_LIST)),
        "table": qtable(qlist(np.array([b"a", b"b"], dtype=object), qtype=QSYMBOL_LIST),
                        [qlist(np.array([1, 2, 3], dtype=np.int64), qtype=QLONG_LIST),
                         qlist(np.array([b"x", b"y", b"z"], dtype=object), qtype=QSYMBOL_LIST)]),
        "big (compressible) vector": qlist(np.zeros(100000, dtype=np.int64), qtype=QLONG_LIST),
    }


def ser(x):
    return QWriter(None, 6).write(x, 0)[8:]


def check(name, ok, detail=""):
    print(("ok   " if ok else "FAIL ") + name + (": " + detail if detail and not ok else ""), flush=True)
    if not ok:
        sys.exit(1)


def expect_error(name, fn, text):
    try:
        r = fn()
    except QException as e:
        msg = e.args[0].decode() if isinstance(e.args[0], bytes) else str(e.args[0])
        check(name, text in msg, f"QException {msg!r}, wanted {text!r}")
        return
    check(name, False, f"no error, got {r!r}")


def roundtrip():
    q = qconnection.QConnection(host="127.0.0.1", port=PORT, username="user", password="pass")
    q.open()
    check("connected at capability 6", q.protocol_version == 6, str(q.protocol_version))
    check("1+1", q.sendSync("1+1") == 2)
    check("deferred reply", q.sendSync("defer", np.int64(42)) == 42)
    expect_error("q error", lambda: q.sendSync("error", b"boom: detail"), "boom: detail")
    expect_error("dropped responder", lambda: q.sendSync("drop"), "service error: no response")
    check("still usable after errors", q.sendSync("1+1") == 2)
    for name, v in values().items():
        got = q.sendSync("{x}", v)
        check(f"round trip {name}", ser(got) == ser(v), f"sent {ser(v).hex()[:100]} got {ser(got).hex()[:100]}")
        raw = q.sendSync("{x}", v, raw=True)
        check(f"byte-exact {name}", bytes(raw) == ser(v), f"{bytes(raw).hex()[:100]}")
    q.close()


def badpass():
    q = qconnection.QConnection(host="127.0.0.1", port=PORT, username="user", password="wrong")
    try:
        q.open()
    except qconnection.QAuthenticationException:
        check("wrong password refused", True)
        return
    check("wrong password refused", False, "connected")


if MODE == "roundtrip":
    roundtrip()
elif MODE == "badpass":
    badpass()
else:
    sys.exit("unknown mode " + MODE)
print("done", flush=True)

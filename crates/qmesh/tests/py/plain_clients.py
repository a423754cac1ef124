"""Plain queries (no userQuery) through `qmesh mserve` with a real client
library, as an mserve.q user sends them; prints the outcomes as one JSON
line for crates/qmesh/tests/mserve.rs.

usage: plain_clients.py LIB PORT

LIB  pykx (SyncQConnection: sync string, function call),
     pykx-async (RawQConnection: the same, and deferred sync: async send,
     then the answer as an async message) or
     qpython (QConnection: sendSync, and sendAsync + receive)

Output: {"whoami": port, "add": 5, "error": "boom", "deferred": port}
"""

import json
import sys


def run_pykx(port):
    import pykx as kx

    q = kx.SyncQConnection("127.0.0.1", port)
    out = {"whoami": q("whoami").py(), "add": q("add", kx.LongAtom(2), kx.LongAtom(3)).py()}
    try:
        q("'boom")
        out["error"] = ""
    except kx.QError as e:
        out["error"] = str(e)
    # a sync client has no deferred form: ask again
    out["deferred"] = q("whoami").py()
    q.close()
    return out


async def run_pykx_async(port):
    import pykx as kx

    q = await kx.RawQConnection("127.0.0.1", port, no_ctx=True)

    async def ask(*args, wait=True):
        fut = q(*args, wait=wait)
        q.poll_send()
        return await fut

    out = {"whoami": (await ask("whoami")).py()}
    out["add"] = (await ask("add", kx.LongAtom(2), kx.LongAtom(3))).py()
    try:
        await ask("'boom")
        out["error"] = ""
    except kx.QError as e:
        out["error"] = str(e)
    out["deferred"] = (await ask("whoami", wait=False)).py()
    q.close()
    return out


def run_qpython(port):
    import numpy
    from qpython import qconnection
    from qpython.qtype import QException

    q = qconnection.QConnection(host="127.0.0.1", port=port)
    q.open()
    out = {"whoami": int(q.sendSync("whoami"))}
    out["add"] = int(q.sendSync("add", numpy.int64(2), numpy.int64(3)))
    try:
        q.sendSync("'boom")
        out["error"] = ""
    except QException as e:
        err = e.args[0] if e.args else str(e)
        out["error"] = err.decode() if isinstance(err, bytes) else str(err)
    q.sendAsync("whoami")
    out["deferred"] = int(q.receive(data_only=True))
    q.close()
    return out


def main():
    lib, port = sys.argv[1], int(sys.argv[2])
    if lib == "pykx":
        out = run_pykx(port)
    elif lib == "pykx-async":
        import asyncio

        out = asyncio.run(run_pykx_async(port))
    elif lib == "qpython":
        out = run_qpython(port)
    else:
        raise SystemExit(f"unknown client library {lib}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

"""Runs userQuery requests against a gateway with a real client library and
prints the outcomes as one JSON line, for the Rust integration tests.

usage: clients.py LIB PORT REQUESTS

LIB       pykx-sync (SyncQConnection), pykx-async (RawQConnection: async send,
          poll_send, await the reply) or qpython (QConnection: sendSync,
          sendAsync + receive)
REQUESTS  a JSON list of {"mode": "sync"|"deferred"|"callback",
          "service": "EQ" or ["EQ","FX"], "query": "til 3", "timeout": ms}

Each outcome is {"ok": value} or {"error": "text"}; tables are summarised
as {"table": rows}, symbols and strings are str, vectors lists.
"""

import json
import sys


def plain(x):
    """A JSON-friendly rendering of what a client library returned."""
    if isinstance(x, bytes):
        return x.decode("utf-8", "replace")
    if isinstance(x, dict):
        return {plain(k): plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    try:
        import numpy

        if isinstance(x, numpy.ndarray):
            if x.dtype.names:  # a table (qPython QTable)
                return {"table": len(x)}
            return [plain(v) for v in x.tolist()]
        if isinstance(x, numpy.generic):
            return plain(x.item())
    except ImportError:
        pass
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return repr(x)


def pykx_value(kx, r):
    if isinstance(r, kx.Table):
        return {"table": len(r)}
    if isinstance(r, kx.Identity):
        return None
    if isinstance(r, kx.List):
        return [pykx_value(kx, v) for v in r]
    if isinstance(r, kx.Dictionary):
        return {plain(k.py()): pykx_value(kx, v) for k, v in zip(r.keys(), r.values())}
    return plain(r.py())


def args_for(kx, req):
    svc = req["service"]
    service = kx.SymbolVector(svc) if isinstance(svc, list) else kx.SymbolAtom(svc)
    items = [service, kx.CharVector(req["query"])]
    if req.get("timeout") is not None:
        items.append(kx.LongAtom(req["timeout"]))
    return kx.toq(items)


def run_pykx_sync(port, reqs):
    import pykx as kx

    q = kx.SyncQConnection("127.0.0.1", port)
    out = []
    for req in reqs:
        assert req["mode"] == "sync", "SyncQConnection only makes sync calls"
        try:
            out.append({"ok": pykx_value(kx, q("userQuery", args_for(kx, req)))})
        except kx.QError as e:
            out.append({"error": str(e)})
    q.close()
    return out


async def run_pykx_async(port, reqs):
    import pykx as kx

    q = await kx.RawQConnection("127.0.0.1", port, no_ctx=True)
    out = []
    for req in reqs:
        try:
            if req["mode"] == "sync":
                fut = q("userQuery", args_for(kx, req))
            elif req["mode"] == "deferred":
                fut = q("userQuery", args_for(kx, req), wait=False)
            else:
                fut = q("userQuery", args_for(kx, req), kx.SymbolAtom("cb"), wait=False)
            q.poll_send()
            out.append({"ok": pykx_value(kx, await fut)})
        except kx.QError as e:
            out.append({"error": str(e)})
    q.close()
    return out


def run_qpython(port, reqs):
    import numpy
    from qpython import qconnection
    from qpython.qtype import QException

    q = qconnection.QConnection(host="127.0.0.1", port=port)
    q.open()
    out = []
    for req in reqs:
        svc = req["service"]
        service = (
            numpy.array([s.encode() for s in svc], dtype=numpy.bytes_)
            if isinstance(svc, list)
            else numpy.bytes_(svc.encode())
        )
        args = [service, req["query"]]
        if req.get("timeout") is not None:
            args.append(numpy.int64(req["timeout"]))
        try:
            if req["mode"] == "sync":
                r = q.sendSync("userQuery", args)
            elif req["mode"] == "deferred":
                q.sendAsync("userQuery", args)
                r = q.receive(data_only=True)
            else:
                q.sendAsync("userQuery", args, numpy.bytes_(b"cb"))
                r = q.receive(data_only=True)
                r = [plain(r[0]), {plain(k): plain(v) for k, v in zip(r[1].keys, r[1].values)}, plain(r[2])]
            out.append({"ok": plain(r)})
        except QException as e:
            out.append({"error": plain(e.args[0]) if e.args else str(e)})
    q.close()
    return out


def main():
    lib, port, reqs = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    if lib == "pykx-sync":
        out = run_pykx_sync(port, reqs)
    elif lib == "pykx-async":
        import asyncio

        out = asyncio.run(run_pykx_async(port, reqs))
    elif lib == "qpython":
        out = run_qpython(port, reqs)
    else:
        raise SystemExit(f"unknown client library {lib}")
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()

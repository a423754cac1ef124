"""A service that speaks the query-routing whitepaper's protocol exactly as
its service.q does, for testing qmesh's load balancer and gateway against the
published behaviour rather than only against qmesh's own service.

What it does, as service.q:

* on start, and from a timer after losing the load balancer, it connects to
  the load balancer and sends async (`registerResource;`NAME;`:host:port);
* a gateway connects to it and sends async (`queryService;(seq;query)); it
  evaluates the query (one at a time: evaluation blocks the event loop, as q
  is single-threaded), answers the gateway async (`returnRes;(seq;result)) —
  an error becomes its text as a string, like @[value;query;{x}] — and then
  tells the load balancer async (`returnService;`NAME);
* the query "stop" takes the whitepaper's errProj path: it sends the bare
  list (seq;`stop) to the gateway (no function name), then returnService;
* a sync request from the load balancer (its probe, q's h"" chaser) is
  evaluated like any other and answered once the query in progress (if any)
  has finished: q runs one thing at a time.

With --error-flag, errors are sent as (`returnRes;(seq;"text";1b)) instead
(the form qmesh's own service uses).

q is not available here, so queries are a small fixed language:

  egTrade / egQuote      the whitepaper's example tables (10 rows)
  empty                  an empty table with egTrade's columns
  null | ::              the generic null
  til N                  0 1 2 ... N-1 (longs)
  bytes N                N bytes (sent without building Python objects)
  sleep MS               sleeps MS milliseconds (blocking), returns MS
  hold PATH              blocks until the file PATH exists (at most 120 s), returns 0
  whoami                 this instance's address, as a symbol
  pid                    this process's id
  error TEXT             signals TEXT
  die                    exits at once (a crash mid-query)
  stop                   errProj, as for a \\T timeout
  A+B                    integer addition (so "1+1" works)

Direct sync queries (a client connected to the service itself) evaluate the
same language; errors are q errors.

It listens on 127.0.0.1 only and prints "service listening ipc 127.0.0.1:PORT",
then "service registered NAME ADDRESS" on each registration with the load
balancer and "service running QUERY" when a gateway's query starts.
"""

import argparse
import asyncio
import logging
import os
import struct
import sys
import time
from functools import partial

from aiokdb import (
    KObj,
    MessageType,
    TypeEnum,
    b9,
    cv,
    kb,
    kj,
    kk,
    kNil,
    krr,
    ks,
    ktn,
    xd,
    xt,
)
from aiokdb.client import open_qipc_connection
from aiokdb.server import ServerContext, handle_connection


# Longest a `hold` query blocks if its test never releases it (a test that
# died): a bound, so a stray service never spins forever.
HOLD_MAX_SECONDS = 120.0


class Raw(KObj):
    """An object whose encoding is given as bytes (for very large results)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(TypeEnum.K)
        self._raw = data

    def _paysz(self) -> int:
        return len(self._raw)

    def _databytes(self) -> bytes:
        return self._raw


class QError(Exception):
    pass


class Stop(Exception):
    pass


def eg_trade(n: int = 10) -> KObj:
    sym = ktn(TypeEnum.KS)
    sym.appendS(*(["FDP"] * n))
    price = ktn(TypeEnum.KF)
    price.kF().extend(100.0 + 0.01 * i for i in range(n))
    size = ktn(TypeEnum.KJ)
    size.kJ().extend([100] * n)
    t = ktn(TypeEnum.KT)
    t.kI().extend(34_200_000 + 1_800_000 * i for i in range(n))
    names = ktn(TypeEnum.KS)
    names.appendS("sym", "time", "price", "size")
    return xt(xd(names, kk(sym, t, price, size)))


def eg_quote(n: int = 10) -> KObj:
    sym = ktn(TypeEnum.KS)
    sym.appendS(*(["FDP"] * n))
    bid = ktn(TypeEnum.KF)
    bid.kF().extend(100.0 + 0.01 * i for i in range(n))
    ask = ktn(TypeEnum.KF)
    ask.kF().extend(101.0 + 0.01 * i for i in range(n))
    names = ktn(TypeEnum.KS)
    names.appendS("sym", "bid", "ask")
    return xt(xd(names, kk(sym, bid, ask)))


def text_of(k: KObj) -> str:
    if k.t == TypeEnum.KC:
        return k.kC().tounicode()
    if k.t == -TypeEnum.KS:
        return k.aS()
    raise QError("type")


class Service(ServerContext):
    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__()
        self.args = args
        self.name = args.name
        self.address = ""
        self.lb_writer = None

    def evaluate(self, query: str) -> KObj:
        q = query.strip()
        if q in ("egTrade", "select from egTrade"):
            return eg_trade()
        if q in ("egQuote", "select from egQuote"):
            return eg_quote()
        if q == "empty":
            return eg_trade(0)
        if q in ("null", "::", ""):
            return kNil
        if q == "whoami":
            return ks(self.address)
        if q == "pid":
            return kj(os.getpid())
        if q == "die":
            os._exit(3)
        if q == "stop":
            raise Stop()
        word, _, rest = q.partition(" ")
        if word == "til":
            v = ktn(TypeEnum.KJ)
            v.kJ().extend(range(int(rest)))
            return v
        if word == "bytes":
            n = int(rest)
            return Raw(struct.pack("<bBI", TypeEnum.KG, 0, n) + bytes(n))
        if word == "sleep":
            ms = int(rest)
            time.sleep(ms / 1000.0)
            return kj(ms)
        if word == "hold":
            # blocks (as a long q query does) until the file `rest` exists,
            # so a test decides when the query ends instead of racing a clock
            deadline = time.monotonic() + HOLD_MAX_SECONDS
            while not os.path.exists(rest) and time.monotonic() < deadline:
                time.sleep(0.01)
            return kj(0)
        if word == "error":
            raise QError(rest or "error")
        if "+" in q:
            a, _, b = q.partition("+")
            try:
                return kj(int(a) + int(b))
            except ValueError:
                raise QError("type")
        raise QError(q.split(" ")[0] or "nyi")

    async def on_sync_request(self, cmd: KObj, dotzw) -> KObj:
        # a client talking to the service directly: errors are q errors
        try:
            return self.evaluate(text_of(cmd))
        except Stop:
            raise Exception("stop")
        except QError as e:
            raise Exception(str(e))

    async def on_async_message(self, cmd: KObj, dotzw) -> None:
        if cmd.t != TypeEnum.K or len(cmd) != 2:
            return
        items = cmd.kK()
        if items[0].t != -TypeEnum.KS or items[0].aS() != "queryService":
            return
        rq = items[1].kK()
        seq, query = rq[0], rq[1]
        # execRequest: nh(`returnRes;(rq 0;@[value;rq 1;{x}])); nh[]
        try:
            text = text_of(query)
            # for tests that must know the query reached the service (not
            # only that the load balancer allocated it) before they kill its
            # gateway
            print(f"service running {text}", flush=True)
            result = self.evaluate(text)
            reply = kk(ks("returnRes"), kk(seq, result))
        except Stop:
            # errProj: nh(sq;`$er) — no function name (the paper's bug)
            reply = kk(seq, ks("stop"))
        except QError as e:
            if self.args.error_flag:
                reply = kk(ks("returnRes"), kk(seq, cv(str(e)), kb(True)))
            else:
                reply = kk(ks("returnRes"), kk(seq, cv(str(e))))
        try:
            dotzw.write(reply, MessageType.ASYNC)
        except Exception:  # noqa: BLE001 - the gateway died while we ran its query
            # service.q would signal here and skip returnService, leaving the
            # instance to the load balancer's stuck grace; report back instead,
            # so tests of a dead gateway see the instance freed when the query ends.
            pass
        # NLB(`returnService;serviceName)
        if self.lb_writer is not None and not self.lb_writer.writer.is_closing():
            self.lb_writer.write(kk(ks("returnService"), ks(self.name)), MessageType.ASYNC)

    async def maintain_lb(self) -> None:
        """manageConn and the .z.ts / .z.pc reconnect timer of service.q."""
        host, _, port = self.args.lb.rpartition(":")
        while True:
            try:
                reader, writer = await open_qipc_connection(host=host or "127.0.0.1", port=int(port))
            except Exception as e:  # noqa: BLE001 - as service.q: show and retry
                logging.info("cannot connect to the load balancer: %s", e)
                await asyncio.sleep(self.args.retry)
                continue
            self.lb_writer = writer
            writer.write(kk(ks("registerResource"), ks(self.name), ks(self.address)), MessageType.ASYNC)
            print(f"service registered {self.name} {self.address}", flush=True)
            try:
                # q answers a sync request on any handle, the load
                # balancer's too (its probe, q's h"" chaser), by evaluating
                # it; since a query blocks the event loop, the answer leaves
                # only once the query in progress has finished, after its
                # returnService, as with q
                while True:
                    mtype, cmd = await reader._read()
                    if mtype == MessageType.SYNC:
                        try:
                            answer = self.evaluate(text_of(cmd))
                        except (QError, Stop) as e:
                            answer = krr(str(e) or "stop")
                        writer.write(answer, MessageType.RESPONSE)
            except Exception:  # noqa: BLE001 - the connection is gone
                pass
            self.lb_writer = None
            writer.writer.close()
            print("service lost the load balancer", flush=True)
            await asyncio.sleep(self.args.retry)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--name", default="EQUITY_MARKET_RDB")
    ap.add_argument("--lb", help="host:port of the load balancer (or of a gateway with an embedded one)")
    ap.add_argument("--retry", type=float, default=10.0, help="seconds between reconnection attempts (service.q: 10)")
    ap.add_argument("--error-flag", action="store_true", help="send errors as (seq;text;1b)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    svc = Service(args)
    server = await asyncio.start_server(partial(handle_connection, svc), "127.0.0.1", args.port)
    port = server.sockets[0].getsockname()[1]
    svc.address = f":127.0.0.1:{port}"
    print(f"service listening ipc 127.0.0.1:{port}", flush=True)
    if args.lb:
        asyncio.get_running_loop().create_task(svc.maintain_lb())
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())

"""A sync publisher for the rt crash test: sends N messages to a `qmesh rt`
node as kdb+ sync requests, pipelined (up to WINDOW unanswered), each
(`.rt.pub;`STREAM;(`KEY;i);`id`dedup!(i;`KEY)), and keeps going while the node
is killed and restarted: on a lost connection it reconnects and resends
everything not yet answered. A resent message the node had already made
durable is answered 'duplicate (its dedup watermark came back from the log),
which counts as acknowledged. Prints `acked N` at the end.

The message bytes come from PyKX's own serializer (one template, the id
patched in place), so the node parses what KX writes.

usage: rt_crash_publisher.py PORT STREAM KEY N WINDOW
"""
import socket
import struct
import sys
import time

import pykx as kx

PORT, STREAM, KEY, N, WINDOW = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
SENTINEL = 0x0123456789ABCDEF

def template():
    m = kx.toq([kx.SymbolAtom('.rt.pub'), kx.SymbolAtom(STREAM),
                kx.toq([kx.SymbolAtom(KEY), kx.LongAtom(SENTINEL)]),
                kx.toq({'id': kx.LongAtom(SENTINEL), 'dedup': kx.SymbolAtom(KEY)})])
    b = bytearray(kx.serialize(m).copy())
    b[1] = 1  # sync
    s = struct.pack('<q', SENTINEL)
    offs = [i for i in range(len(b) - 7) if bytes(b[i:i + 8]) == s]
    assert len(offs) == 2, offs
    return b, offs

TEMPLATE, OFFS = template()

def message(i):
    b = bytearray(TEMPLATE)
    for o in OFFS:
        b[o:o + 8] = struct.pack('<q', i)
    return bytes(b)

def connect(deadline):
    while True:
        try:
            s = socket.create_connection(('127.0.0.1', PORT), timeout=5)
            s.sendall(b'crash:\x03\x00')
            if s.recv(1) == b'':
                raise OSError('refused')
            s.settimeout(60)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)

def read_exact(s, n, buf):
    while len(buf) < n:
        chunk = s.recv(1 << 20)
        if not chunk:
            raise OSError('closed')
        buf += chunk
    return buf

acked = 0          # ids 1..acked are answered
sent = 0           # ids 1..sent are written on this connection
reconnects = 0
while acked < N:
    s = connect(time.time() + 120)
    sent = acked
    buf = bytearray()
    try:
        while acked < N:
            out = []
            while sent < N and sent - acked < WINDOW:
                sent += 1
                out.append(message(sent))
            if out:
                s.sendall(b''.join(out))
            # read at least one answer, then all that are already here
            buf = read_exact(s, 8, buf)
            while len(buf) >= 8:
                n = struct.unpack('<I', buf[4:8])[0]
                if len(buf) < n:
                    buf = read_exact(s, n, buf)
                body = bytes(buf[8:n])
                del buf[:n]
                if body[0] == 0xF9:           # a long: the position
                    pass
                elif body[0] == 0x80 and body[1:].startswith(b'duplicate'):
                    pass                      # made durable before the crash
                else:
                    print('unexpected answer', body[:80], flush=True)
                    sys.exit(1)
                acked += 1
                if len(buf) < 8:
                    break
    except OSError:
        reconnects += 1
        try:
            s.close()
        except OSError:
            pass
        continue
    s.close()
print(f'acked {acked} reconnects {reconnects}', flush=True)

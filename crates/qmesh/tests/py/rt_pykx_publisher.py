"""PyKX against `qmesh rt`: sync and async `.rt.pub`, a header dictionary,
kdb+tick's `.u.upd`, `.rt.get_latest_position`, and the error words.
Prints one `ok …` line per check; exits 1 on the first failure.

usage: rt_pykx_publisher.py PORT STREAM
"""
import struct
import sys

import pykx as kx

PORT, STREAM = int(sys.argv[1]), sys.argv[2]

def check(name, ok, detail=''):
    print(('ok   ' if ok else 'FAIL ') + name + ((': ' + str(detail)) if not ok else ''), flush=True)
    if not ok:
        sys.exit(1)

# ([]sym:`a`b;px:1.5 2.5), from its wire bytes (KX's deserializer makes the table)
body = (bytes([98, 0, 99, 11, 0]) + struct.pack('<I', 2) + b'sym\x00px\x00' + bytes([0, 0]) + struct.pack('<I', 2)
        + bytes([11, 0]) + struct.pack('<I', 2) + b'a\x00b\x00' + bytes([9, 0]) + struct.pack('<I', 2)
        + struct.pack('<dd', 1.5, 2.5))
trade = kx.deserialize(bytes([1, 0, 0, 0]) + struct.pack('<I', 8 + len(body)) + body)
with kx.SyncQConnection(host='127.0.0.1', port=PORT) as q:
    s = kx.SymbolAtom(STREAM)
    p1 = q('.rt.pub', s, kx.toq([kx.SymbolAtom('upd'), kx.SymbolAtom('trade'), trade]))
    check('sync .rt.pub answers a long position', isinstance(p1, kx.LongAtom), type(p1))
    q('.rt.pub', s, kx.toq([kx.SymbolAtom('upd'), kx.SymbolAtom('quote'), kx.LongAtom(7)]), wait=False)
    q('.u.upd', kx.SymbolAtom('trade'), trade, wait=False)
    hdr = kx.toq({'on': kx.SymbolAtom('pykx'), 'id': kx.LongAtom(1), 'dedup': kx.SymbolAtom('k')})
    p2 = q('.rt.pub', s, kx.LongAtom(42), hdr)
    check('later positions are larger', p2.py() > p1.py(), (p1, p2))
    latest = q('.rt.get_latest_position', s)
    check('latest position is past the last message', latest.py() > p2.py(), (latest, p2))
    try:
        q('.rt.pub', s, kx.LongAtom(42), hdr)
        check('a duplicate is refused', False)
    except kx.QError as e:
        check('a duplicate is refused', str(e).startswith('duplicate'), e)
    try:
        q('.rt.pub', kx.SymbolAtom('nosuch'), kx.LongAtom(1))
        check('an unknown stream is refused', False)
    except kx.QError as e:
        check('an unknown stream is refused', str(e).startswith('unknown stream'), e)
    print('done', flush=True)

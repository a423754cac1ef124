//! The `qmesh service` process with KX's own serializer on the other end:
//! PyKX sends a table with every kdb+ column type (nulls and infinities
//! included) by `upd`, reads it back with `select *`, and the two must be the
//! same bytes under `kx.serialize`. Also: a bad `upd` from PyKX is a q error
//! and changes nothing; SQL answers arrive as PyKX tables.

use qmesh_testkit::{Process, python, python_command};

/// Builds every column from its wire bytes (so the values are exactly the
/// kdb+ ones, in the kdb+ epoch), lets KX's deserializer make the table, and
/// compares what comes back with KX's serializer.
const ROUND_TRIP: &str = r#"
import struct, sys, uuid
import pykx as kx

PORT = int(sys.argv[1])
NJ, WJ = -2**63, 2**63 - 1
NI, WI = -2**31, 2**31 - 1
NH, WH = -2**15, 2**15 - 1
QNAN = struct.unpack('<d', bytes.fromhex('000000000000f8ff'))[0]   # q's 0n
PYNAN = float('nan')                                                 # another NaN payload

def vec(t, fmt, vals):
    return bytes([t, 0]) + struct.pack('<I', len(vals)) + struct.pack('<' + fmt * len(vals), *vals)

def strings(items):
    return bytes([0, 0]) + struct.pack('<I', len(items)) + b''.join(
        bytes([10, 0]) + struct.pack('<I', len(s)) + s for s in items)

g1 = uuid.UUID('12345678-1234-5678-1234-567812345678').bytes
g2 = uuid.UUID('fedcba98-7654-3210-fedc-ba9876543210').bytes
cols = {
    'b': vec(1, 'B', [1, 0, 1]),
    'g': bytes([2, 0]) + struct.pack('<I', 3) + g1 + bytes(16) + g2,
    'x': vec(4, 'B', [0, 1, 255]),
    'h': vec(5, 'h', [1, NH, WH]),
    'i': vec(6, 'i', [1, NI, -WI]),
    'j': vec(7, 'q', [1, NJ, -WJ]),
    'e': vec(8, 'f', [1.5, PYNAN, float('inf')]),
    'f': vec(9, 'd', [1.5, QNAN, float('-inf')]),
    'f2': vec(9, 'd', [PYNAN, -0.0, 1e300]),
    'c': bytes([10, 0]) + struct.pack('<I', 3) + b'a \xff',
    's': bytes([11, 0]) + struct.pack('<I', 3) + b'AAPL\x00\x00caf\xc3\xa9\x00',
    'p': vec(12, 'q', [757_479_845_123_456_789, NJ, WJ]),
    'p2': vec(12, 'q', [-WJ, 0, -1]),
    'm': vec(13, 'i', [290, NI, -1]),
    'm2': vec(13, 'i', [WI, -WI, 0]),
    'd': vec(14, 'i', [8767, NI, -1]),
    'd2': vec(14, 'i', [WI, -WI, 0]),
    'z': vec(15, 'd', [8767.5, QNAN, 1.0 / 86400000]),
    'z2': vec(15, 'd', [float('inf'), float('-inf'), -3652.125]),
    'n': vec(16, 'q', [1, NJ, WJ]),
    'u': vec(17, 'i', [570, NI, 1439]),
    'u2': vec(17, 'i', [WI, -WI, -5]),
    'v': vec(18, 'i', [34201, NI, 0]),
    't': vec(19, 'i', [34200123, NI, 86399999]),
    'str': strings([b'hello', b'', 'caf\u00e9'.encode()]),
}
names = list(cols)
body = (bytes([98, 0, 99, 11, 0]) + struct.pack('<I', len(names)) + b''.join(n.encode() + b'\x00' for n in names)
        + bytes([0, 0]) + struct.pack('<I', len(names)) + b''.join(cols.values()))
sent = kx.deserialize(bytes([1, 0, 0, 0]) + struct.pack('<I', 8 + len(body)) + body)

def ser(x):
    return bytes(kx.serialize(x).copy())

def check(name, ok, detail=''):
    print(('ok   ' if ok else 'FAIL ') + name + ((': ' + detail) if detail and not ok else ''), flush=True)
    if not ok:
        sys.exit(1)

with kx.SyncQConnection(host='127.0.0.1', port=PORT) as q:
    q('upd', kx.SymbolAtom('alltypes'), sent)
    got = q('select * from alltypes')
    a, b = ser(sent), ser(got)
    first = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), None)
    check('every column type round-trips byte for byte', a == b,
          f'first difference at byte {first}: sent ...{a[max(0, (first or 0) - 16):(first or 0) + 32].hex()} '
          f'got ...{b[max(0, (first or 0) - 16):(first or 0) + 32].hex()}')

    # the same data as a tickerplant sends it: a list of column vectors, async
    cols_only = kx.deserialize(bytes([1, 0, 0, 0]) + struct.pack('<I', 8 + 6 + len(b''.join(cols.values())))
                               + bytes([0, 0]) + struct.pack('<I', len(names)) + b''.join(cols.values()))
    q('upd', kx.SymbolAtom('alltypes'), cols_only, wait=False)
    n = q('select count(*) as n from alltypes')
    check('list of columns appended', ser(n) == ser(q('select 6 as n')), repr(n))

    # a bad upd: price as longs into a float column; the table is unchanged
    q('upd', kx.SymbolAtom('trade'), kx.toq(__import__('pandas').DataFrame({'sym': ['a'], 'price': [1.5]})))
    before = ser(q('select * from trade'))
    try:
        q('upd', kx.SymbolAtom('trade'), kx.toq(__import__('pandas').DataFrame({'sym': ['b'], 'price': [2]})))
        check('bad upd refused', False, 'no error')
    except kx.QError as e:
        check('bad upd refused', 'mismatch' in str(e) and 'price' in str(e), str(e))
    check('table unchanged', ser(q('select * from trade')) == before)

    # SQL answers are kdb+ tables; a group-by is keyed
    r = q('select s, count(*) as n from alltypes group by s order by s')
    check('group-by answer is a keyed table', isinstance(r, kx.KeyedTable), type(r).__name__)
    try:
        q('select nope from alltypes')
        check('SQL error is a q error', False, 'no error')
    except kx.QError as e:
        check('SQL error is a q error', str(e).startswith('bad request: ') and 'nope' in str(e), str(e))
print('done', flush=True)
"#;

#[test]
fn every_column_type_round_trips_through_pykx() {
    let Some(py) = python() else { return };
    let svc = Process::qmesh(
        env!("CARGO_BIN_EXE_qmesh"),
        &["service", "--name", "EQUITY_MARKET_RDB", "--bind", "127.0.0.1", "-p", "0"],
        &["ipc"],
    );
    let out = python_command(&py)
        .arg("-c")
        .arg(ROUND_TRIP)
        .arg(svc.port("ipc").to_string())
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(out.status.success(), "PyKX checks failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("done"), "{stdout}");
}

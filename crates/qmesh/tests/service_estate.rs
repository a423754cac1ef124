//! A whole estate with no kdb+ licence: `qmesh lb`, `qmesh gateway` and a
//! pool of two `qmesh service` instances registered with the load balancer
//! by the whitepaper's protocol. A PyKX client asks the gateway
//! (`userQuery`) and gets SQL answers as kdb+ tables; errors come back as q
//! errors; when one instance dies the other keeps answering.

use qmesh_testkit::{Process, python, python_command};

const NAME: &str = "EQUITY_MARKET_RDB";

/// Asks the gateway until the pool answers (the services register with the
/// load balancer asynchronously), then checks answers.
const CLIENT: &str = r#"
import sys, time
import pykx as kx

PORT, STAGE = int(sys.argv[1]), sys.argv[2]
q = kx.SyncQConnection('127.0.0.1', PORT)

def ask(sql):
    return q('userQuery', kx.toq([kx.SymbolAtom('EQUITY_MARKET_RDB'), kx.CharVector(sql)]))

def check(name, ok, detail=''):
    print(('ok   ' if ok else 'FAIL ') + name + ((': ' + detail) if detail and not ok else ''), flush=True)
    if not ok:
        sys.exit(1)

deadline = time.time() + 30
while True:
    try:
        r = ask('select count(*) as n from trade')
        break
    except kx.QError as e:
        if time.time() > deadline:
            check('the pool answers', False, str(e))
        time.sleep(0.1)
check('count through the gateway', r.py() == {'n': [5000]}, repr(r.py()))

r = ask('select sym, sum(size) as vol from trade group by sym order by sym')
check('group-by is a keyed table', isinstance(r, kx.KeyedTable), type(r).__name__)
total = sum(v['vol'] for v in r.py().values())
check('volumes add up', total == ask('select sum(size) as v from trade').py()['v'][0], repr(total))

try:
    ask('select nope from trade')
    check('SQL error reaches the client', False, 'no error')
except kx.QError as e:
    check('SQL error reaches the client', 'bad request: ' in str(e) and 'nope' in str(e), str(e))

for i in range(20):
    r = ask(f'select count(*) as n from trade where size >= {100 * (i % 10)}')
check('many queries through the pool', isinstance(r, kx.Table))
print('done', flush=True)
"#;

fn client(py: &std::path::Path, port: u16, stage: &str) {
    let out = python_command(&py.to_path_buf())
        .arg("-c")
        .arg(CLIENT)
        .args([port.to_string(), stage.to_string()])
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stage}:\n{stdout}");
    assert!(out.status.success(), "{stage}: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("done"), "{stdout}");
}

#[test]
fn an_estate_of_qmesh_processes_answers_through_the_gateway() {
    let Some(py) = python() else { return };
    let bin = env!("CARGO_BIN_EXE_qmesh");
    let lb = Process::qmesh(bin, &["lb", "--bind", "127.0.0.1", "-p", "0"], &["ipc"]);
    let lb_addr = lb.addr("ipc").to_string();
    let service = |seed: &str| {
        Process::qmesh(
            bin,
            &[
                "service",
                "--name",
                NAME,
                "--bind",
                "127.0.0.1",
                "-p",
                "0",
                "--lb",
                &lb_addr,
                "--demo",
                "--demo-rows",
                "5000",
                "--demo-seed",
                seed,
            ],
            &["ipc"],
        )
    };
    // Same seed: the instances of one pool hold the same data.
    let mut first = service("7");
    let _second = service("7");
    let gw = Process::qmesh(bin, &["gateway", "--bind", "127.0.0.1", "-p", "0", "--lb", &lb_addr], &["ipc"]);
    client(&py, gw.port("ipc"), "two instances");
    first.kill();
    client(&py, gw.port("ipc"), "one instance left");
}

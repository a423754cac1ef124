//! TLS on every port by flag (q's `-E` modes), reloaded on SIGHUP, and
//! outbound TLS to `:tcps://` addresses, with real `qmesh` processes.
//!
//! Certificates are made for each test with `openssl` (a CA, server
//! certificates for `localhost` and `127.0.0.1`). The TLS kdb+ client is
//! Python's `ssl` with a hand-written kdb+ handshake
//! (`py/tls_kdb_client.py`; PyKX unlicensed does not do TLS) and, for
//! `:tcps://`, qmesh's own client; HTTPS is `curl --cacert`. The links
//! processes open themselves go over `:tcps://` too: gateway → load
//! balancer and instances, service → load balancer, stream node →
//! discovery, publisher (`qmesh feed`) → stream node.
//!
//! Waiting is for states (a query answered, a log line written), never for
//! a time.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qmesh_codec::K;
use qmesh_ipc::{Address, ClientOptions, ClientTls, Connection};
use qmesh_testkit::Process;
use qmesh_testkit::tls::{CertFiles, make_ca, make_server_cert};
use serde_json::Value;

/// Longest wait for a state (a query answered, a log line), never a timing
/// assertion.
const SETTLE: Duration = Duration::from_secs(40);
const QUERY: &str = "select count(*) as n from trade";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_qmesh")
}

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("qmesh-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A CA and a server certificate it signed, in `dir`.
struct Pki {
    ca: CertFiles,
    server: CertFiles,
}

fn pki(dir: &Dir) -> Pki {
    let ca = make_ca(&dir.0, "ca");
    let server = make_server_cert(&dir.0, &ca, "server");
    Pki { ca, server }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A `qmesh` process with `args`, its log (stderr) in `log`.
fn logged(args: &[&str], protos: &[&str], log: &Path) -> Process {
    let mut cmd = Command::new(bin());
    cmd.args(args).stderr(std::fs::File::create(log).unwrap());
    Process::start(cmd, protos)
}

/// Waits until the log at `path` holds `needle`; returns the log.
fn wait_log(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + SETTLE;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            eprintln!("{}: {line}", path.display());
            return text;
        }
        assert!(Instant::now() < deadline, "the log never said {needle:?}:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The TLS kdb+ client (`py/tls_kdb_client.py`): its JSON line, or `None`
/// when there is no interpreter (`qmesh_testkit::python`).
fn py_tls_query(port: u16, ca: &Path, query: &str) -> Option<Value> {
    let python = qmesh_testkit::python()?;
    let script = qmesh_testkit::manifest_dir().join("tests/py/tls_kdb_client.py");
    let out = Command::new(python).arg(script).arg(port.to_string()).arg(ca).arg(query).output().unwrap();
    assert!(out.status.success(), "tls_kdb_client.py: {}", String::from_utf8_lossy(&out.stderr));
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// `curl` of `url` with `--cacert ca` (if any); (status, body) — status 0
/// when curl could not get an answer.
fn curl(url: &str, ca: Option<&Path>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "30", "-w", "\n%{http_code}", url]).stdin(Stdio::null());
    if let Some(ca) = ca {
        cmd.arg("--cacert").arg(ca);
    }
    let out = cmd.output().expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// `curl` until `url` answers 200 (the process is ready); the body.
fn curl_ready(url: &str, ca: Option<&Path>) -> String {
    let deadline = Instant::now() + SETTLE;
    loop {
        let (status, body) = curl(url, ca);
        if status == 200 {
            return body;
        }
        assert!(Instant::now() < deadline, "{url} never answered 200 (last: {status} {body})");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The SHA-256 of `cert`'s DER, lowercase hex, as `openssl` computes it.
fn fingerprint(cert: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.trim().rsplit('=').next().unwrap().replace(':', "").to_ascii_lowercase()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// One sync call on a new connection to `addr`: the answer or the error.
async fn call(addr: &str, tls: Option<&Path>, query: &str) -> Result<K, String> {
    let opts = ClientOptions {
        tls: tls.map(|ca| std::sync::Arc::new(ClientTls::with_ca_file(ca).unwrap())),
        ..ClientOptions::default()
    };
    let addr = Address::parse(addr).unwrap();
    let c = Connection::connect(&addr, opts).await.map_err(|e| e.to_string())?;
    let r = c.call(&K::string(query)).await.map_err(|e| e.to_string())?;
    r.decode().map_err(|e| e.to_string())
}

/// `call` until it answers (the process may still be loading).
async fn call_until_answered(addr: &str, tls: Option<&Path>, query: &str) -> K {
    let deadline = tokio::time::Instant::now() + SETTLE;
    loop {
        match call(addr, tls, query).await {
            Ok(k) => return k,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{addr} never answered {query:?}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn tls_service(pki: &Pki, mode: &str, extra: &[&str], log: &Path) -> Process {
    let mut args = vec![
        "service",
        "--name",
        "SQL",
        "--bind",
        "127.0.0.1",
        "-p",
        "0",
        "--http",
        "0",
        "--demo",
        "--demo-rows",
        "100",
        "--tls",
        mode,
        "--tls-cert",
        pki.server.cert_str(),
        "--tls-key",
        pki.server.key_str(),
    ];
    args.extend_from_slice(extra);
    logged(&args, &["ipc", "http"], log)
}

#[test]
fn a_tls_only_service_answers_tls_clients_and_refuses_plain_ones_with_a_log_line() {
    let dir = Dir::new("only");
    let pki = pki(&dir);
    let log = dir.path("service.log");
    let svc = tls_service(&pki, "only", &[], &log);
    let (ipc, http) = (svc.port("ipc"), svc.port("http"));

    // HTTPS with the CA: /healthz, and the identity advertises tcps
    let body = curl_ready(&format!("https://127.0.0.1:{http}/healthz"), Some(&pki.ca.cert));
    assert_eq!(body.trim(), "ok");
    let (status, id) = curl(&format!("https://localhost:{http}/api/identity"), Some(&pki.ca.cert));
    assert_eq!(status, 200, "{id}");
    assert!(id.contains(&format!(":tcps://127.0.0.1:{ipc}")), "a TLS-only process advertises tcps: {id}");

    // a kdb+ client over TLS: handshake, a query, a table back
    if let Some(out) = py_tls_query(ipc, &pki.ca.cert, QUERY) {
        assert_eq!(out["capability"], 3, "{out}");
        assert_eq!(out["msg_type"], 2, "a response: {out}");
        assert_eq!(out["type"], 98, "a table: {out}");
        assert_eq!(out["cert_sha256"], fingerprint(&pki.server.cert).as_str(), "{out}");
    }
    // qmesh's own client through :tcps://
    let rt = runtime();
    let k = rt.block_on(call_until_answered(&format!(":tcps://127.0.0.1:{ipc}"), Some(&pki.ca.cert), QUERY));
    assert!(matches!(k, K::Table(_)), "{k:?}");

    // a plain kdb+ client is refused, and the log says who
    let plain = rt.block_on(call(&format!("127.0.0.1:{ipc}"), None, QUERY));
    assert!(plain.is_err(), "a plain client on a TLS-only port: {plain:?}");
    let text = wait_log(&log, "refusing plain kdb+ connection");
    let line = text.lines().find(|l| l.contains("refusing plain kdb+ connection")).unwrap();
    assert!(line.contains("127.0.0.1:") && line.contains("TLS only"), "{line}");
    // plain HTTP too
    let (status, _) = curl(&format!("http://127.0.0.1:{http}/healthz"), None);
    assert_eq!(status, 0, "plain HTTP on a TLS-only port gets no answer");
    wait_log(&log, "refusing plain http connection");
}

#[test]
fn tls_on_serves_plain_and_tls_clients_on_one_port() {
    let dir = Dir::new("on");
    let pki = pki(&dir);
    let log = dir.path("discovery.log");
    // the discovery registry, on the same shell as every kind
    let d = logged(
        &[
            "discovery",
            "--bind",
            "127.0.0.1",
            "-p",
            "0",
            "--http",
            "0",
            "--tls",
            "on",
            "--tls-cert",
            pki.server.cert_str(),
            "--tls-key",
            pki.server.key_str(),
        ],
        &["ipc", "http"],
        &log,
    );
    let (ipc, http) = (d.port("ipc"), d.port("http"));
    assert_eq!(curl_ready(&format!("http://127.0.0.1:{http}/healthz"), None).trim(), "ok");
    assert_eq!(curl_ready(&format!("https://127.0.0.1:{http}/healthz"), Some(&pki.ca.cert)).trim(), "ok");

    // `h""` is answered by every server: generic null, plain and over TLS
    let rt = runtime();
    let plain = rt.block_on(call_until_answered(&format!("127.0.0.1:{ipc}"), None, ""));
    assert_eq!(plain, K::GenericNull);
    let tls = rt.block_on(call_until_answered(&format!(":tcps://localhost:{ipc}"), Some(&pki.ca.cert), ""));
    assert_eq!(tls, K::GenericNull);
    if let Some(out) = py_tls_query(ipc, &pki.ca.cert, "") {
        assert_eq!((out["msg_type"].as_i64(), out["type"].as_i64()), (Some(2), Some(101)), "{out}");
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("refusing plain"), "{text}");
}

#[test]
fn sighup_reloads_the_certificate_for_new_clients_and_a_bad_file_keeps_the_old_one() {
    let dir = Dir::new("reload");
    let pki = pki(&dir);
    // the served files, replaced in place as an operator would
    let (cert, key) = (dir.path("live.pem"), dir.path("live.key"));
    std::fs::copy(&pki.server.cert, &cert).unwrap();
    std::fs::copy(&pki.server.key, &key).unwrap();
    let log = dir.path("lb.log");
    let lb = logged(
        &[
            "lb",
            "--bind",
            "127.0.0.1",
            "-p",
            "0",
            "--http",
            "0",
            "--tls",
            "only",
            "--tls-cert",
            s(&cert),
            "--tls-key",
            s(&key),
        ],
        &["ipc", "http"],
        &log,
    );
    let (ipc, http) = (lb.port("ipc"), lb.port("http"));
    let first = fingerprint(&pki.server.cert);
    curl_ready(&format!("https://127.0.0.1:{http}/healthz"), Some(&pki.ca.cert));
    let served = |port: u16| -> Option<String> {
        py_tls_query(port, &pki.ca.cert, "").map(|o| o["cert_sha256"].as_str().unwrap().to_owned())
    };
    if let Some(fp) = served(ipc) {
        assert_eq!(fp, first);
    }

    // a new certificate, SIGHUP: new clients get it, on both ports
    let next = make_server_cert(&dir.0, &pki.ca, "next");
    let second = fingerprint(&next.cert);
    assert_ne!(first, second);
    std::fs::copy(&next.cert, &cert).unwrap();
    std::fs::copy(&next.key, &key).unwrap();
    let hup = || {
        let ok = Command::new("kill").args(["-HUP", &lb.pid().to_string()]).status().unwrap();
        assert!(ok.success());
    };
    hup();
    wait_log(&log, "TLS certificate reloaded");
    if let Some(fp) = served(ipc) {
        assert_eq!(fp, second, "a new client sees the new certificate");
    }
    let https = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{http}"), "-CAfile", s(&pki.ca.cert)])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&https.stdout);
    assert!(shown.contains("CN = next") || shown.contains("CN=next"), "HTTPS serves the new one: {shown}");

    // a broken file and SIGHUP: the log says why, the old certificate stays
    std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n")
        .unwrap();
    hup();
    let text = wait_log(&log, "TLS certificate not reloaded");
    let line = text.lines().find(|l| l.contains("not reloaded")).unwrap();
    assert!(line.contains(s(&cert)), "the reason names the file: {line}");
    if let Some(fp) = served(ipc) {
        assert_eq!(fp, second, "the previous certificate is still served");
    }
    assert_eq!(curl(&format!("https://127.0.0.1:{http}/healthz"), Some(&pki.ca.cert)).0, 200);
}

#[test]
fn a_gateway_reaches_tls_only_processes_through_tcps_addresses() {
    let dir = Dir::new("e2e");
    let pki = pki(&dir);
    let ca = pki.ca.cert_str();
    let tls = ["--tls", "only", "--tls-cert", pki.server.cert_str(), "--tls-key", pki.server.key_str()];
    // a TLS-only load balancer; a TLS-only service registers with it over
    // TLS and advertises :tcps://; the gateway reaches both over TLS
    let mut args = vec!["lb", "--bind", "127.0.0.1", "-p", "0"];
    args.extend_from_slice(&tls);
    let lb = logged(&args, &["ipc"], &dir.path("lb.log"));
    let lb_addr = format!(":tcps://127.0.0.1:{}", lb.port("ipc"));
    let svc = tls_service(&pki, "only", &["--tls-ca", ca, "--lb", &lb_addr], &dir.path("svc.log"));
    let gw = logged(
        &["--tls-ca", ca, "gateway", "--bind", "127.0.0.1", "-p", "0", "--lb", &lb_addr],
        &["ipc"],
        &dir.path("gw.log"),
    );
    let user_query = K::list(vec![K::sym("userQuery"), K::list(vec![K::sym("SQL"), K::string(QUERY)])]);
    let rt = runtime();
    let answer = rt.block_on(async {
        let addr = Address::parse(&format!("127.0.0.1:{}", gw.port("ipc"))).unwrap();
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let c = Connection::connect(&addr, ClientOptions::default()).await.unwrap();
            match c.call(&user_query).await {
                Ok(m) => return m.decode().unwrap(),
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "no answer through the gateway: {e}")
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert!(matches!(answer, K::Table(_)), "{answer:?}");
    drop(svc);

    // mserve's form: a static instance written :tcps://
    let svc = tls_service(&pki, "only", &[], &dir.path("svc2.log"));
    let inst = format!("SQL=:tcps://127.0.0.1:{}", svc.port("ipc"));
    let g = logged(
        &[
            "--tls-ca",
            ca,
            "gateway",
            "--bind",
            "127.0.0.1",
            "-p",
            "0",
            "--instances",
            &inst,
            "--default-service",
            "SQL",
        ],
        &["ipc"],
        &dir.path("gw2.log"),
    );
    let k = rt.block_on(call_until_answered(&format!("127.0.0.1:{}", g.port("ipc")), None, QUERY));
    assert!(matches!(k, K::Table(_)), "{k:?}");
}

#[test]
fn a_wrong_ca_fails_with_a_clear_error() {
    let dir = Dir::new("wrongca");
    let pki = pki(&dir);
    let other = make_ca(&dir.0, "other-ca");
    let svc = tls_service(&pki, "only", &[], &dir.path("svc.log"));
    let ipc = svc.port("ipc");
    let target = format!(":tcps://127.0.0.1:{ipc}");

    // qmesh q: the right CA answers, another CA is refused with the reason
    let q = |ca: &str| {
        Command::new(bin()).args(["--tls-ca", ca, "q", &target, QUERY]).stdin(Stdio::null()).output().unwrap()
    };
    let deadline = Instant::now() + SETTLE;
    loop {
        let ok = q(pki.ca.cert_str());
        if ok.status.success() {
            assert!(String::from_utf8_lossy(&ok.stdout).contains('n'), "{ok:?}");
            break;
        }
        assert!(Instant::now() < deadline, "qmesh q never answered: {ok:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let bad = q(other.cert_str());
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("TLS handshake") && err.contains("UnknownIssuer"), "{err}");
    // tcps with no CA file at all
    let none = Command::new(bin()).args(["q", &target, QUERY]).stdin(Stdio::null()).output().unwrap();
    assert!(String::from_utf8_lossy(&none.stderr).contains("--tls-ca"), "{none:?}");

    // a gateway with the wrong CA logs why it cannot reach the instance
    let inst = format!("SQL={target}");
    let log = dir.path("gw.log");
    let _gw = logged(
        &["--tls-ca", other.cert_str(), "gateway", "--bind", "127.0.0.1", "-p", "0", "--instances", &inst],
        &["ipc"],
        &log,
    );
    let text = wait_log(&log, "UnknownIssuer");
    let line = text.lines().find(|l| l.contains("UnknownIssuer")).unwrap();
    assert!(line.contains(&format!("127.0.0.1:{ipc}")), "{line}");

    // and Python's ssl refuses the server under the other CA
    if let Some(out) = py_tls_query(ipc, &other.cert, QUERY) {
        assert!(out["tls_error"].as_str().is_some_and(|e| e.contains("certificate verify failed")), "{out}");
    }
}

#[test]
fn tls_flags_come_from_the_config_file_and_the_environment_too() {
    let dir = Dir::new("config");
    let pki = pki(&dir);
    // the server's mode and files from its table in qmesh.toml
    let config = dir.path("qmesh.toml");
    std::fs::write(
        &config,
        format!(
            "[lb]\ntls = \"only\"\ntls-cert = \"{}\"\ntls-key = \"{}\"\n",
            pki.server.cert_str(),
            pki.server.key_str()
        ),
    )
    .unwrap();
    let lb = logged(
        &["--config", s(&config), "lb", "--bind", "127.0.0.1", "-p", "0", "--http", "0"],
        &["ipc", "http"],
        &dir.path("lb.log"),
    );
    let http = lb.port("http");
    assert_eq!(curl_ready(&format!("https://127.0.0.1:{http}/healthz"), Some(&pki.ca.cert)).trim(), "ok");
    assert_eq!(curl(&format!("http://127.0.0.1:{http}/healthz"), None).0, 0, "plain is refused");
    // the client's CA file from QMESH_TLS_CA: the load balancer answers
    // (its q error for a query it does not run) over TLS
    let target = format!(":tcps://127.0.0.1:{}", lb.port("ipc"));
    let out = Command::new(bin())
        .args(["q", &target, "1+1"])
        .env("QMESH_TLS_CA", &pki.ca.cert)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("'bad request"), "{out:?}");
}

#[test]
fn heartbeats_and_publishing_go_over_tcps_too() {
    let dir = Dir::new("stream");
    let pki = pki(&dir);
    let ca = pki.ca.cert_str();
    let tls = ["--tls", "only", "--tls-cert", pki.server.cert_str(), "--tls-key", pki.server.key_str()];
    // a TLS-only discovery registry and stream node; the node heartbeats over TLS
    let mut args = vec!["discovery", "--bind", "127.0.0.1", "-p", "0", "--http", "0"];
    args.extend_from_slice(&tls);
    let disc = logged(&args, &["ipc", "http"], &dir.path("discovery.log"));
    let disc_addr = format!(":tcps://127.0.0.1:{}", disc.port("ipc"));
    let data = dir.path("rt");
    let mut args =
        vec!["--tls-ca", ca, "rt", "--bind", "127.0.0.1", "-p", "0", "--http", "0", "--data", s(&data)];
    args.extend_from_slice(&["--stream", "trades", "--discovery", &disc_addr]);
    args.extend_from_slice(&tls);
    let rt = logged(&args, &["ipc", "http"], &dir.path("rt.log"));
    let listed = format!("https://127.0.0.1:{}/api/processes", disc.port("http"));
    let deadline = Instant::now() + SETTLE;
    loop {
        let (_, body) = curl(&listed, Some(&pki.ca.cert));
        if body.contains(r#""kind":"rt""#) {
            break;
        }
        assert!(Instant::now() < deadline, "the stream node never heartbeat over TLS: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // a publisher (`qmesh feed`: sync .rt.pub, acknowledged after the node's sync) over TLS
    let node = format!(":tcps://127.0.0.1:{}", rt.port("ipc"));
    let out = Command::new(bin())
        .args([
            "--tls-ca", ca, "feed", "--rt", &node, "--stream", "trades", "--count", "50", "--rate", "10000",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "feed over TLS: {}", String::from_utf8_lossy(&out.stderr));
    let (status, streams) =
        curl(&format!("https://127.0.0.1:{}/api/streams", rt.port("http")), Some(&pki.ca.cert));
    assert_eq!(status, 200, "{streams}");
    let v: Value = serde_json::from_str(&streams).unwrap();
    let publishers = v["streams"]["trades"]["publishers"].as_object();
    assert!(publishers.is_some_and(|p| !p.is_empty()), "the node saw the publisher: {v:#}");
}

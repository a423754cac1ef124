//! The console against a real kdb+ IPC server over a socket.
#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::time::Duration;

use qmesh_codec::{K, Message, Vector};
use qmesh_console::{CALLBACK_REFUSED, ConsoleError, ConsoleOptions, Session};
use qmesh_ipc::{Handler, IpcError, Peer, Responder, Server, ServerConfig};

/// A guard against a hang (the fault these tests cover), far above any run.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// Answers `"til 3"` with `0 1 2`, `"t"` with a table, `"::"` with the
/// generic null, `"callback"` by first asking the caller `"2+2"` (as a q
/// server's `.z.pg` does with `.z.w"2+2"`) and answering with what came
/// back, `"bytes N"` with a byte vector of N bytes, and anything else with
/// the error `'type`.
struct Fake;

impl Handler for Fake {
    async fn on_sync(&self, peer: &Peer, msg: Message, responder: Responder) {
        let value = msg.decode().unwrap();
        if value.as_text() == Some(b"callback") {
            // Off the read loop: the caller's answer arrives on it.
            let peer = peer.clone();
            tokio::spawn(async move {
                let back = match peer.call(&K::string("2+2")).await {
                    Ok(m) => format!("answered {:?}", m.decode()),
                    Err(IpcError::Remote(text)) => format!("refused: {text}"),
                    Err(e) => format!("failed: {e}"),
                };
                let _ = responder.reply(K::string(back));
            });
            return;
        }
        if let Some(n) = value.as_text().and_then(|t| t.strip_prefix(b"bytes ")) {
            let n: usize = std::str::from_utf8(n).unwrap().parse().unwrap();
            let _ = responder.reply(K::Vector(Default::default(), Vector::Byte(vec![7; n])));
            return;
        }
        let reply = match value.as_text() {
            Some(b"til 3") => Ok(K::Vector(Default::default(), qmesh_codec::Vector::Long(vec![0, 1, 2]))),
            Some(b"t") => Ok(K::Table(qmesh_codec::Table {
                attr: Default::default(),
                names: ["sym", "price"].into_iter().collect(),
                columns: vec![K::syms(["a", "bb"]), qmesh_codec::Vector::Float(vec![1.5, 2.0]).into()],
            })),
            Some(b"::") => Ok(K::GenericNull),
            _ => Err("type"),
        };
        let _ = match reply {
            Ok(k) => responder.reply(k),
            Err(e) => responder.error(e),
        };
    }
}

async fn server() -> std::net::SocketAddr {
    let server = Server::bind(ServerConfig::loopback()).await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run(Fake, std::future::pending::<()>()));
    addr
}

async fn eval(session: &Session, q: &str) -> (bool, String) {
    let mut out = Vec::new();
    let ok = session.eval(q, &mut out).await.unwrap();
    (ok, String::from_utf8(out).unwrap())
}

#[tokio::test]
async fn prints_results_and_errors_as_q_does() {
    let addr = server().await;
    let session = Session::connect(&format!("localhost:{}", addr.port())).await.unwrap();
    assert_eq!(eval(&session, "til 3").await, (true, "0 1 2\n".to_owned()));
    assert_eq!(eval(&session, "t").await, (true, "sym price\n---------\na   1.5  \nbb  2    \n".to_owned()));
    assert_eq!(eval(&session, "::").await, (true, String::new()));
    assert_eq!(eval(&session, "bad").await, (false, "'type\n".to_owned()));
}

#[tokio::test]
async fn refused_connection_is_an_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    assert!(Session::connect(&format!(":127.0.0.1:{port}")).await.is_err());
}

/// A server that calls back into the console while answering gets an error
/// at once, and the console prints the server's result.
#[tokio::test]
async fn a_request_from_the_server_is_refused_and_the_result_printed() {
    let addr = server().await;
    let session = Session::connect(&format!("localhost:{}", addr.port())).await.unwrap();
    let (ok, out) = tokio::time::timeout(HANG_GUARD, eval(&session, "callback")).await.expect("no hang");
    assert!(ok, "{out}");
    // (the console is 80 columns wide: the string is cut as q cuts it)
    let want = format!("\"refused: bad request: {CALLBACK_REFUSED}\"");
    assert!(out.starts_with(&want[..60]), "{out}");
    // and the session goes on
    assert_eq!(eval(&session, "til 3").await, (true, "0 1 2\n".to_owned()));
}

/// The bound on results is the user's (`--max-result-bytes`): a larger
/// result closes the connection before it is read (the session ends with an
/// error, nothing is allocated for it), and the same result prints with the
/// default bound.
#[tokio::test]
async fn results_are_bounded_by_the_option_only() {
    let addr = server().await;
    let small = ConsoleOptions { max_result_bytes: 1 << 20 };
    let session = Session::connect_with(&format!("localhost:{}", addr.port()), small).await.unwrap();
    let mut out = Vec::new();
    let refused = session.eval("bytes 2000000", &mut out).await;
    assert!(matches!(refused, Err(ConsoleError::Connect(IpcError::Closed))), "{refused:?}");
    let session = Session::connect(&format!("localhost:{}", addr.port())).await.unwrap();
    let (ok, out) = eval(&session, "bytes 2000000").await;
    assert!(ok && out.starts_with("0x0707"), "{}", &out[..out.len().min(100)]);
}

/// A result above 1 GiB (the codec's default bound, which the console used
/// to apply) prints. Heavy (about 3 GiB of memory for a few seconds), so
/// not in the default run: `cargo test -p qmesh-console -- --ignored`.
#[tokio::test]
#[ignore = "needs ~3 GiB of memory"]
async fn a_result_above_one_gib_prints() {
    let addr = server().await;
    let session = Session::connect(&format!("localhost:{}", addr.port())).await.unwrap();
    let n = (1usize << 30) + (1 << 20);
    let (ok, out) = eval(&session, &format!("bytes {n}")).await;
    assert!(ok && out.starts_with("0x0707"), "{}", &out[..out.len().min(100)]);
}

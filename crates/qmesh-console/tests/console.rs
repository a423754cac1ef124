//! The console against a real kdb+ IPC server over a socket.

use qmesh_codec::{K, Message};
use qmesh_console::Session;
use qmesh_ipc::{Handler, Peer, Responder, Server, ServerConfig};

/// Answers `"til 3"` with `0 1 2`, `"t"` with a table, `"::"` with the
/// generic null, and anything else with the error `'type`.
struct Fake;

impl Handler for Fake {
    async fn on_sync(&self, _peer: &Peer, msg: Message, responder: Responder) {
        let value = msg.decode().unwrap();
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

//! The reconnecting session over real sockets: a hello on every connect, up
//! and down reported, the connection re-established to a restarted server.

mod common;

use std::time::Duration;

use common::{PATIENCE, TestServer};
use qmesh_codec::{K, Message};
use qmesh_ipc::session::{Down, Hello, Session, SessionEnd, SessionHooks, Up};
use qmesh_ipc::{Backoff, ClientOptions, Handler, Peer, Responder, Sender, ServerConfig};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A server that reports every async message it reads, and answers sync
/// requests with their own value.
#[derive(Clone)]
struct Recorder(mpsc::UnboundedSender<K>);

impl Handler for Recorder {
    async fn on_sync(&self, _peer: &Peer, msg: Message, responder: Responder) {
        let k = msg.decode().expect("decodes");
        let _ = responder.reply(K::list(vec![K::sym("answer"), k]));
    }
    async fn on_async(&self, _peer: &Peer, msg: Message) {
        let _ = self.0.send(msg.decode().expect("decodes"));
    }
}

#[derive(Debug, PartialEq)]
enum Event {
    Up(Option<K>),
    Unreachable,
    Lost,
}

struct Hooks {
    hello: Hello,
    events: mpsc::UnboundedSender<Event>,
}

struct Quiet;
impl Handler for Quiet {
    async fn on_sync(&self, _peer: &Peer, _msg: Message, responder: Responder) {
        let _ = responder.error("nyi");
    }
}

impl SessionHooks for Hooks {
    type Handler = Quiet;
    fn handler(&self) -> Quiet {
        Quiet
    }
    fn hello(&self) -> Hello {
        self.hello.clone()
    }
    fn up(&self, _sender: &Sender, answer: Option<Message>) -> Up {
        let _ = self.events.send(Event::Up(answer.map(|m| m.decode().expect("decodes"))));
        Up::Keep
    }
    fn down(&self, why: Down<'_>) {
        let _ = self.events.send(match why {
            Down::Lost => Event::Lost,
            _ => Event::Unreachable,
        });
    }
}

const FAST: Backoff = Backoff {
    initial: Duration::from_millis(10),
    max: Duration::from_millis(50),
    factor: 2.0,
    max_attempts: None,
};

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(PATIENCE, rx.recv()).await.expect("in time").expect("open")
}

/// The next event that is not a failed attempt.
async fn next_change(rx: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    loop {
        match next(rx).await {
            Event::Unreachable => continue,
            e => return e,
        }
    }
}

#[tokio::test]
async fn session_reconnects_to_a_restarted_server_and_says_hello_each_time() {
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let server = TestServer::start(ServerConfig::loopback(), Recorder(seen_tx.clone())).await;
    let addr = server.addr;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let hello = K::list(vec![K::sym("registerResource"), K::sym("EQ"), K::sym(":127.0.0.1:5002")]);
    let hooks = Hooks { hello: Hello::Async(hello.clone()), events: events_tx };
    let session = Session::new(server.address(), ClientOptions::default(), FAST);
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { session.run(hooks, stop).await }
    });

    assert_eq!(next_change(&mut events).await, Event::Up(None));
    assert_eq!(next(&mut seen).await, hello);

    // the server goes away: the session reports the loss and keeps trying
    server.stop().await;
    assert_eq!(next_change(&mut events).await, Event::Lost);

    // a new server on the same port gets the hello again
    let server = TestServer::start(ServerConfig::tcp(addr), Recorder(seen_tx)).await;
    assert_eq!(next_change(&mut events).await, Event::Up(None));
    assert_eq!(next(&mut seen).await, hello);

    stop.cancel();
    assert_eq!(
        tokio::time::timeout(PATIENCE, task).await.expect("stops").expect("join"),
        SessionEnd::Stopped
    );
    server.stop().await;
}

#[tokio::test]
async fn a_call_hello_hands_its_answer_to_up() {
    let (seen_tx, _seen) = mpsc::unbounded_channel();
    let server = TestServer::start(ServerConfig::loopback(), Recorder(seen_tx)).await;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let hooks = Hooks { hello: Hello::Call(K::sym("registerGW")), events: events_tx };
    let session = Session::new(server.address(), ClientOptions::default(), FAST);
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move { session.run(hooks, stop).await }
    });
    assert_eq!(
        next_change(&mut events).await,
        Event::Up(Some(K::list(vec![K::sym("answer"), K::sym("registerGW")])))
    );
    stop.cancel();
    assert_eq!(
        tokio::time::timeout(PATIENCE, task).await.expect("stops").expect("join"),
        SessionEnd::Stopped
    );
    server.stop().await;
}

#[tokio::test]
async fn a_session_gives_up_after_max_attempts() {
    // a port nobody listens on: bind one, note it, close it
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let hooks = Hooks { hello: Hello::None, events: events_tx };
    let backoff = Backoff { max_attempts: Some(3), ..FAST };
    let session = Session::new(qmesh_ipc::Address::tcp("127.0.0.1", port), ClientOptions::default(), backoff);
    let end =
        tokio::time::timeout(PATIENCE, session.run(hooks, CancellationToken::new())).await.expect("ends");
    assert_eq!(end, SessionEnd::GaveUp);
    for _ in 0..3 {
        assert_eq!(next(&mut events).await, Event::Unreachable);
    }
}

//! A subscriber over plain IPC, as `qmesh rt tail` uses it: subscribe, then
//! read the node's pushes as [`Delivery`] values.
//!
//! ```no_run
//! # async fn demo() -> Result<(), qmesh_rt::client::ClientError> {
//! use qmesh_rt::{From, client::{Delivery, Subscriber}};
//! let mut sub = Subscriber::connect(":localhost:5010", "trades", From::Start).await?;
//! while let Some(d) = sub.next().await? {
//!     match d {
//!         Delivery::Message { value, pos, .. } => { /* resubscribe from pos to continue after this */ }
//!         Delivery::Event { event, p1, p2, .. } => {}
//!     }
//! }
//! # Ok(()) }
//! ```

use qmesh_codec::{Atom, K, Vector};
use qmesh_ipc::{Address, ClientOptions, Connection, Incoming, Receiver, Sender};

use crate::request::From;

/// Errors of a [`Subscriber`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{0}")]
    Ipc(#[from] qmesh_ipc::IpcError),
    #[error("address: {0}")]
    Address(#[from] qmesh_ipc::AddressError),
    #[error("the node sent something that is not a stream message: {0}")]
    Unexpected(String),
}

/// One thing the node pushed.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// `` (`.rt.msg;`stream;msg;pos) ``: `pos` is the position after it.
    Message { stream: String, value: K, pos: i64 },
    /// `` (`.rt.event;`stream;`event;(p1;p2)) ``.
    Event { stream: String, event: String, p1: i64, p2: i64 },
}

/// A connection subscribed to one stream.
#[derive(Debug)]
pub struct Subscriber {
    sender: Sender,
    receiver: Receiver,
    start: i64,
}

fn from_k(from: From) -> K {
    match from {
        From::Start => K::GenericNull,
        From::Latest => K::sym("latest"),
        From::Position(p) => K::long(p),
    }
}

impl Subscriber {
    /// Connects to `addr` and subscribes to `stream` from `from`.
    pub async fn connect(addr: &str, stream: &str, from: From) -> Result<Subscriber, ClientError> {
        Subscriber::connect_with(addr, stream, from, K::dict(K::list(vec![]), K::list(vec![]))).await
    }

    /// As [`connect`](Subscriber::connect) with `.rt.sub`'s options
    /// dictionary (`` `msg`event`filter ``).
    pub async fn connect_with(
        addr: &str,
        stream: &str,
        from: From,
        opts: K,
    ) -> Result<Subscriber, ClientError> {
        let addr = Address::parse(addr)?;
        let conn = Connection::connect(&addr, ClientOptions::default()).await?;
        let (sender, receiver) = conn.split();
        let answer =
            sender.call(&K::list(vec![K::sym(".rt.sub"), K::sym(stream), from_k(from), opts])).await?;
        let start = match answer.decode().map_err(|e| ClientError::Unexpected(e.to_string()))? {
            K::Atom(Atom::Long(p)) => p,
            other => return Err(ClientError::Unexpected(format!("{other:?}"))),
        };
        Ok(Subscriber { sender, receiver, start })
    }

    /// The position the subscription started from (`.rt.sub`'s answer).
    pub fn start(&self) -> i64 {
        self.start
    }

    /// The connection, to send further requests (`.rt.pause` …).
    pub fn sender(&self) -> &Sender {
        &self.sender
    }

    /// The next message or event; `None` when the connection closed.
    pub async fn next(&mut self) -> Result<Option<Delivery>, ClientError> {
        loop {
            let msg = match self.receiver.recv().await {
                None => return Ok(None),
                Some(Incoming::Async(m)) => m,
                Some(Incoming::Sync(_, r)) => {
                    let _ = r.error("bad request: a subscriber answers no requests");
                    continue;
                }
            };
            let k = msg.decode().map_err(|e| ClientError::Unexpected(e.to_string()))?;
            return parse_delivery(k).map(Some);
        }
    }
}

fn text(k: &K) -> Option<String> {
    k.as_text().map(|t| String::from_utf8_lossy(t).into_owned())
}

/// Reads a pushed message (any callback names).
pub fn parse_delivery(k: K) -> Result<Delivery, ClientError> {
    let unexpected = |k: &K| ClientError::Unexpected(format!("{k:?}"));
    let K::List(_, items) = &k else { return Err(unexpected(&k)) };
    if items.len() != 4 {
        return Err(unexpected(&k));
    }
    let stream = text(&items[1]).ok_or_else(|| unexpected(&k))?;
    match (&items[2], &items[3]) {
        (K::Atom(Atom::Symbol(ev)), K::Vector(_, Vector::Long(p))) if p.len() == 2 => Ok(Delivery::Event {
            stream,
            event: String::from_utf8_lossy(ev).into_owned(),
            p1: p[0],
            p2: p[1],
        }),
        (value, K::Atom(Atom::Long(pos))) => {
            Ok(Delivery::Message { stream, value: value.clone(), pos: *pos })
        }
        _ => Err(unexpected(&k)),
    }
}

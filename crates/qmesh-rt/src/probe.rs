//! Whether the node hosts the stream a publisher or a subscriber was configured with.
//!
//! A [`crate::publisher::Publisher`] and a [`crate::subscriber::Subscriber`] keep working while the node is down
//! (that is what their local log and local copy are for), so they retry the node forever. A stream the node does
//! not host is different: a configuration error that no retry cures. A process built on them asks once at start
//! ([`ask_once`]) and, when no node could be reached, keeps asking in the background ([`until_answered`]) until
//! one answers; only a definite `'unknown stream` answer ([`qmesh_process::ErrorKind::UnknownStream`]) is
//! fatal. Any other answer — a position, `'access` — means the node knows the stream or will say why on the real
//! connection.
//!
//! The question is the one the real connection asks first, with the same permission: a publisher's log-shipping
//! handshake (`.rt.ship.hello`, which only reads the publisher's mark) or a subscriber's
//! `.rt.get_latest_position`.

use std::time::Duration;

use qmesh_codec::K;
use qmesh_ipc::{Address, ClientOptions, Connection, IpcError};
use qmesh_process::ErrorKind;

use crate::publisher::{RECONNECT_MAX, RECONNECT_MIN};
use crate::ship::ShipRequest;

/// Longest one question to one node may take, connecting included: a node that does not answer within it counts
/// as unreachable for this round (the process goes on, and asks again in the background). Seconds.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Who asks, which decides the question (and the permission the node checks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// A publisher whose key on the node (its local log's directory name) is `key`.
    Publisher {
        /// [`crate::publisher::PublisherConfig::dir_name`].
        key: String,
    },
    /// A subscriber.
    Subscriber,
}

/// A node answered that it does not host the stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the stream node {node} has no stream `{stream}` (it answered '{answer}): check the stream name and the node's streams"
)]
pub struct UnknownStream {
    /// The node's address as configured.
    pub node: String,
    /// The stream asked for.
    pub stream: String,
    /// The node's q error text.
    pub answer: String,
}

/// What one round of questions found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A node answered something other than `'unknown stream`.
    Answered,
    /// A node answered `'unknown stream`.
    Unknown(UnknownStream),
    /// No node answered; the text says why (the last node's error).
    Unreachable(String),
}

fn question(stream: &str, role: &Role) -> K {
    match role {
        Role::Publisher { key } => {
            ShipRequest::Hello { stream: stream.to_string(), key: key.clone(), session: None }.to_k()
        }
        Role::Subscriber => K::list(vec![K::sym(".rt.get_latest_position"), K::sym(stream)]),
    }
}

/// Asks `node` `q`: the outer error when it could not be asked, the inner one the node's q error text.
async fn ask(node: &str, q: &K) -> Result<Result<(), String>, String> {
    let addr = Address::parse(node).map_err(|e| format!("address: {e}"))?;
    let c = Connection::connect(&addr, ClientOptions::default()).await.map_err(|e| e.to_string())?;
    match c.call(q).await {
        Ok(_) => Ok(Ok(())),
        Err(IpcError::Remote(text)) => Ok(Err(text)),
        Err(e) => Err(e.to_string()),
    }
}

/// Asks each node of `cluster` in turn, once, each within [`PROBE_TIMEOUT`], until one answers.
pub async fn ask_once(cluster: &[String], stream: &str, role: &Role) -> Answer {
    let q = question(stream, role);
    let mut why = String::from("no node given");
    for node in cluster {
        match tokio::time::timeout(PROBE_TIMEOUT, ask(node, &q)).await {
            Ok(Ok(Ok(()))) => return Answer::Answered,
            Ok(Ok(Err(text))) if ErrorKind::from_word(&text) == Some(ErrorKind::UnknownStream) => {
                return Answer::Unknown(UnknownStream {
                    node: node.clone(),
                    stream: stream.to_string(),
                    answer: text,
                });
            }
            // any other error the node raised is an answer: the real connection reports it
            Ok(Ok(Err(_))) => return Answer::Answered,
            Ok(Err(e)) => why = format!("{node}: {e}"),
            Err(_) => why = format!("{node}: no answer within {PROBE_TIMEOUT:?}"),
        }
    }
    Answer::Unreachable(why)
}

/// Asks round after round ([`ask_once`]), waiting [`RECONNECT_MIN`] doubling up to [`RECONNECT_MAX`] between
/// rounds, until a node answers: `Ok` for any answer but `'unknown stream`, which is the error. Never returns
/// while no node is reachable; drop the future to stop asking.
pub async fn until_answered(cluster: &[String], stream: &str, role: &Role) -> Result<(), UnknownStream> {
    let mut failures = 0u32;
    loop {
        match ask_once(cluster, stream, role).await {
            Answer::Answered => return Ok(()),
            Answer::Unknown(e) => return Err(e),
            Answer::Unreachable(_) => {
                failures = failures.saturating_add(1);
                let delay = RECONNECT_MIN.saturating_mul(1 << failures.min(6)).min(RECONNECT_MAX);
                tokio::time::sleep(delay).await;
            }
        }
    }
}

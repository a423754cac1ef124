//! An echo server handler: the stand-in backend of tests and benchmarks
//! (`examples/echo_server.rs` serves it).
//!
//! Sync requests (`h x`):
//!
//! | request | answer |
//! |---|---|
//! | `("echo"; x)` | `x`, its bytes forwarded without decoding |
//! | `("{x}"; x)` | `x`, decoded and encoded again (what q's `{x}` does) |
//! | `("defer"; x)` | `x`, answered later from another task (a deferred response) |
//! | `("error"; "text")` | the q error `'text` (text as string or symbol) |
//! | `("push"; x)` | sends `x` back as an async message, then answers `x` |
//! | `"drop"` / `("drop"; …)` | nothing: the responder is dropped, the client gets `'service error: no response` |
//! | `""` | `(::)`, the answer to q's `h""` chaser |
//! | `"1+1"` | `2` |
//! | any other string | the q error `'nyi` |
//! | anything else | itself, forwarded without decoding |
//!
//! PyKX's connect-time probes are answered first ([`crate::pykx`]).
//! Async messages: `("push"; x)` sends `x` back as an async message; other
//! async messages are ignored.

use qmesh_codec::{K, Message, RawObject, types};
use tracing::debug;

use crate::link::{Peer, Responder};
use crate::server::Handler;

/// The echo handler.
#[derive(Debug, Default, Clone, Copy)]
pub struct EchoHandler;

/// A request split into its command word and argument (without decoding
/// the argument).
enum Request {
    Command(Vec<u8>, Option<RawObject>),
    Text(Vec<u8>),
    Other,
}

fn parse(msg: &Message) -> Request {
    match msg.body().first().map(|&b| b as i8) {
        Some(types::CHAR) => match msg.decode() {
            Ok(k) => Request::Text(k.as_text().map(<[u8]>::to_vec).unwrap_or_default()),
            Err(_) => Request::Other,
        },
        Some(types::LIST) => {
            let Ok(items) = msg.list_items() else { return Request::Other };
            let mut items = items.into_iter();
            let Some(head) = items.next() else { return Request::Other };
            if head.ty() != i16::from(types::CHAR) && head.ty() != -i16::from(types::SYMBOL) {
                return Request::Other;
            }
            let Ok(head) = head.decode() else { return Request::Other };
            let word = head.as_text().map(<[u8]>::to_vec).unwrap_or_default();
            let arg = items.next();
            if items.next().is_some() {
                return Request::Other;
            }
            Request::Command(word, arg)
        }
        _ => Request::Other,
    }
}

impl Handler for EchoHandler {
    async fn on_sync(&self, peer: &Peer, msg: Message, responder: Responder) {
        let result = match parse(&msg) {
            Request::Command(word, Some(arg)) => match &word[..] {
                b"echo" => responder.reply_raw(arg),
                b"{x}" => match arg.decode() {
                    Ok(k) => responder.reply(k),
                    Err(e) => responder.error(format!("type: {e}")),
                },
                b"defer" => {
                    tokio::spawn(async move {
                        tokio::task::yield_now().await;
                        let _ = responder.reply_raw(arg);
                    });
                    Ok(())
                }
                b"error" => {
                    let text =
                        arg.decode().ok().and_then(|k| k.as_text().map(<[u8]>::to_vec)).unwrap_or_default();
                    responder.error(text)
                }
                b"push" => match peer.send_raw(qmesh_codec::MsgType::Async, arg.clone()) {
                    Ok(()) => responder.reply_raw(arg),
                    Err(e) => Err(e),
                },
                b"drop" => {
                    drop(responder);
                    Ok(())
                }
                _ => responder.forward(&msg),
            },
            Request::Command(word, None) if word == b"drop" => {
                drop(responder);
                Ok(())
            }
            Request::Text(t) => match &t[..] {
                b"" => responder.reply(K::GenericNull),
                b"1+1" => responder.reply(K::long(2)),
                b"drop" => {
                    drop(responder);
                    Ok(())
                }
                _ => responder.error("nyi"),
            },
            Request::Command(..) | Request::Other => responder.forward(&msg),
        };
        if let Err(e) = result {
            debug!(conn = %peer.id(), error = %e, "echo: could not answer");
        }
    }

    async fn on_async(&self, peer: &Peer, msg: Message) {
        if let Request::Command(word, Some(arg)) = parse(&msg)
            && word == b"push"
            && let Err(e) = peer.send_raw(qmesh_codec::MsgType::Async, arg)
        {
            debug!(conn = %peer.id(), error = %e, "echo: could not push");
        }
    }
}

//! WebSockets on a process's HTTP side: size limits, strict JSON commands,
//! JSON replies in the catalog's words.
//!
//! A browser speaks to a qmesh process only in commands from a documented
//! set, each a JSON object; nothing it sends is evaluated. Text that is not
//! JSON, a binary frame, or a command outside the set gets an error reply
//! (`{"type":"error","error":"bad request","detail":…}`) and the socket
//! stays open; a message over [`MAX_WS_MESSAGE_BYTES`] closes it.
//!
//! A WebSocket upgrade carrying an `Origin` header is accepted only from the
//! page's own origin ([`check_origin`]): a browser sends `Origin` on every
//! WebSocket handshake and, unlike `fetch`, the handshake is not subject to
//! CORS, so without the check any web page the user visits could open the
//! feed (cross-site WebSocket hijacking). Clients that send no `Origin`
//! (scripts, `websocat`, Python) are not browsers and are let through.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;

use crate::{ErrorKind, WireError};

/// Largest message a browser may send, in bytes. Commands are a few hundred
/// bytes; a subscription naming many processes stays well under this.
pub const MAX_WS_MESSAGE_BYTES: usize = 64 * 1024;

/// `upgrade` with this module's size limits on incoming frames and messages.
pub fn limited(upgrade: WebSocketUpgrade) -> WebSocketUpgrade {
    upgrade.max_message_size(MAX_WS_MESSAGE_BYTES).max_frame_size(MAX_WS_MESSAGE_BYTES)
}

/// Whether a WebSocket handshake with these `headers` comes from the
/// server's own origin: no `Origin` header (not a browser), or an `Origin`
/// whose `host[:port]` equals the request's `Host`. Anything else is refused
/// with `access` (403) naming the origin.
pub fn check_origin(headers: &HeaderMap) -> Result<(), WireError> {
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    let refuse = || {
        WireError::with_detail(
            ErrorKind::Access,
            format!(
                "websocket from origin {} (only this server's own pages may connect)",
                String::from_utf8_lossy(origin.as_bytes())
            ),
        )
    };
    let origin = origin.to_str().map_err(|_| refuse())?;
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).ok_or_else(refuse)?;
    let authority =
        origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")).ok_or_else(refuse)?;
    if authority.eq_ignore_ascii_case(host) { Ok(()) } else { Err(refuse()) }
}

/// What a received WebSocket message means to a command loop.
#[derive(Debug)]
pub enum Received<C> {
    /// A well-formed command.
    Command(C),
    /// Not a command: reply with this error and go on.
    Invalid(WireError),
    /// A control frame (ping, pong): nothing to do.
    Control,
    /// The peer closed.
    Close,
}

/// Reads `msg` as a command of type `C` (a serde type that denies unknown
/// fields, usually an enum tagged by `"op"` whose variants are all struct
/// variants — `Ping {}`, not `Ping` — since serde checks unknown fields
/// only on those).
pub fn parse_command<C: DeserializeOwned>(msg: Message) -> Received<C> {
    match msg {
        Message::Text(text) => match serde_json::from_str::<C>(text.as_str()) {
            Ok(c) => Received::Command(c),
            Err(e) => Received::Invalid(WireError::with_detail(ErrorKind::BadRequest, e.to_string())),
        },
        Message::Binary(_) => Received::Invalid(WireError::with_detail(
            ErrorKind::BadRequest,
            "binary frames are not commands; send JSON text",
        )),
        Message::Ping(_) | Message::Pong(_) => Received::Control,
        Message::Close(_) => Received::Close,
    }
}

/// The JSON reply for an error: `{"type":"error","error":word,"detail":…}`.
pub fn error_json(e: &WireError) -> serde_json::Value {
    serde_json::json!({ "type": "error", "error": e.kind.word(), "detail": e.detail })
}

/// Longest one WebSocket write may wait for the client to take it, in
/// seconds: a client that keeps its connection open but stops reading
/// fills the socket's buffers, and without a bound the write — and the
/// task, the socket and the subscription behind it — would wait forever.
/// Ten seconds is far beyond any live browser's pause.
pub const WS_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Why [`send_json`] did not send.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The client took nothing for [`WS_SEND_TIMEOUT`]: treat it as gone.
    #[error("the client stopped reading (nothing taken for {0:?})")]
    Slow(std::time::Duration),
    /// The connection failed or closed.
    #[error("{0}")]
    Closed(axum::Error),
}

/// Sends `value` as one text message, waiting at most [`WS_SEND_TIMEOUT`]
/// for the client to take it.
pub async fn send_json(socket: &mut WebSocket, value: &serde_json::Value) -> Result<(), SendError> {
    match tokio::time::timeout(WS_SEND_TIMEOUT, socket.send(Message::Text(value.to_string().into()))).await {
        Ok(sent) => sent.map_err(SendError::Closed),
        Err(_) => Err(SendError::Slow(WS_SEND_TIMEOUT)),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_the_servers_own_origin_or_no_origin_may_open_a_websocket() {
        use axum::http::{HeaderMap, HeaderValue, header};
        let with = |origin: Option<&'static str>, host: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_static(host));
            if let Some(o) = origin {
                h.insert(header::ORIGIN, HeaderValue::from_static(o));
            }
            super::check_origin(&h)
        };
        assert!(with(None, "localhost:5081").is_ok());
        assert!(with(Some("http://localhost:5081"), "localhost:5081").is_ok());
        assert!(with(Some("https://LOCALHOST:5081"), "localhost:5081").is_ok());
        assert!(with(Some("http://evil.example"), "localhost:5081").is_err());
        assert!(with(Some("http://localhost:5082"), "localhost:5081").is_err());
        assert!(with(Some("null"), "localhost:5081").is_err());
        let e = with(Some("http://evil.example"), "localhost:5081").unwrap_err();
        assert_eq!(e.http_status(), 403);
    }

    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
    enum Cmd {
        // `{}`, not a unit variant: serde checks unknown fields only on
        // struct variants of an internally tagged enum.
        Ping {},
        Subscribe { after: Option<u64> },
    }

    #[test]
    fn only_commands_of_the_set_are_accepted() {
        let ok = parse_command::<Cmd>(Message::Text(r#"{"op":"subscribe","after":3}"#.into()));
        assert!(matches!(ok, Received::Command(Cmd::Subscribe { after: Some(3) })));
        for bad in
            [r#"{"op":"eval","q":"system \"rm -rf /\""}"#, "value \"1+1\"", r#"{"op":"ping","x":1}"#, ""]
        {
            match parse_command::<Cmd>(Message::Text(bad.into())) {
                Received::Invalid(e) => assert_eq!(e.kind, ErrorKind::BadRequest, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(matches!(parse_command::<Cmd>(Message::Binary(vec![1u8].into())), Received::Invalid(_)));
        let e = WireError::with_detail(ErrorKind::BadRequest, "unknown op");
        assert_eq!(
            error_json(&e),
            serde_json::json!({"type":"error","error":"bad request","detail":"unknown op"})
        );
    }
}

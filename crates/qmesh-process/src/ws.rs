//! WebSockets on a process's HTTP side: size limits, strict JSON commands,
//! JSON replies in the catalog's words.
//!
//! A browser speaks to a qmesh process only in commands from a documented
//! set, each a JSON object; nothing it sends is evaluated. Text that is not
//! JSON, a binary frame, or a command outside the set gets an error reply
//! (`{"type":"error","error":"bad request","detail":…}`) and the socket
//! stays open; a message over [`MAX_WS_MESSAGE_BYTES`] closes it.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use serde::de::DeserializeOwned;

use crate::{ErrorKind, WireError};

/// Largest message a browser may send, in bytes. Commands are a few hundred
/// bytes; a subscription naming many processes stays well under this.
pub const MAX_WS_MESSAGE_BYTES: usize = 64 * 1024;

/// `upgrade` with this module's size limits on incoming frames and messages.
pub fn limited(upgrade: WebSocketUpgrade) -> WebSocketUpgrade {
    upgrade.max_message_size(MAX_WS_MESSAGE_BYTES).max_frame_size(MAX_WS_MESSAGE_BYTES)
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

/// Sends `value` as one text message.
pub async fn send_json(socket: &mut WebSocket, value: &serde_json::Value) -> Result<(), axum::Error> {
    socket.send(Message::Text(value.to_string().into())).await
}

#[cfg(test)]
mod tests {
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

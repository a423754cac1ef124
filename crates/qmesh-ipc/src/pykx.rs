//! Answers to the queries PyKX sends when it connects, so that a default
//! `pykx.SyncQConnection` (without `no_ctx=True`) works against a server
//! that does not run q.
//!
//! PyKX 4.x builds its context interface at connect by asking (sync, each
//! possibly more than once):
//!
//! 1. `("k){x:. x;$[99h<@x;…]x}"; `.q)`, which must return the symbol
//!    `` `_pykx_ctx_marker `` or the constructor fails;
//! 2. `("key"; `.q)`, whose result it iterates as names (we answer an empty
//!    symbol list);
//! 3. `"@[{2<count .s};(::);{0b}]"` (is the SQL interface loaded?), answered
//!    `0b`.
//!
//! q's own client sends one probe too: `h""` (an empty string, sync), which
//! q answers with `::`; PyKX and q use it to wait for async messages sent
//! before it to have been read.
//!
//! A [`crate::Server`] answers all of these itself before the handler sees
//! them ([`crate::ServerConfig::answer_client_probes`], on by default), so a
//! handler need not call anything. [`try_answer`] remains for handlers run
//! elsewhere. A request is recognised by its length, then by comparing its
//! bytes with the probe's encoding: other requests cost one or two length
//! comparisons.

use std::sync::LazyLock;

use qmesh_codec::{Atom, K, Message, encode_body_into};

use crate::link::Responder;

/// The q text of PyKX's context probe.
pub const CTX_PROBE: &str =
    "k){x:. x;$[99h<@x;:`$\"_pykx_fn_marker\";99h~@x;if[` in!x;if[(::)~x`;:`$\"_pykx_ctx_marker\"]]]x}";

/// The q text of PyKX's SQL-interface probe.
pub const SQL_PROBE: &str = "@[{2<count .s};(::);{0b}]";

/// The symbol PyKX expects for a context.
pub const CTX_MARKER: &str = "_pykx_ctx_marker";

struct Probe {
    body: Vec<u8>,
    answer: fn() -> K,
}

fn body(k: &K) -> Vec<u8> {
    let mut v = Vec::new();
    encode_body_into(k, &mut v);
    v
}

static PROBES: LazyLock<[Probe; 3]> = LazyLock::new(|| {
    [
        Probe {
            body: body(&K::list(vec![K::string(CTX_PROBE), K::sym(".q")])),
            answer: || K::sym(CTX_MARKER),
        },
        Probe {
            body: body(&K::list(vec![K::string("key"), K::sym(".q")])),
            answer: || K::syms(std::iter::empty::<&str>()),
        },
        Probe { body: body(&K::string(SQL_PROBE)), answer: || K::Atom(Atom::Boolean(false)) },
    ]
});

/// The answer q would give (as far as PyKX cares) if `msg` is one of PyKX's
/// connect-time probes.
pub fn answer_probe(msg: &Message) -> Option<K> {
    let b = msg.body();
    if !msg.header.little_endian {
        return None;
    }
    PROBES.iter().find(|p| p.body.len() == b.len() && p.body[..] == b[..]).map(|p| (p.answer)())
}

/// The body of q's `h""`: an empty char vector (type 10, attribute, length 0).
const EMPTY_STRING_LEN: usize = 6;

/// The answer q would give if `msg` is a connect-time probe of a client:
/// one of PyKX's ([`answer_probe`]) or q's `h""` chaser (answered `::`).
pub fn answer_client_probe(msg: &Message) -> Option<K> {
    let b = msg.body();
    if b.len() == EMPTY_STRING_LEN && b[0] == 10 && b[2..] == [0, 0, 0, 0] {
        return Some(K::GenericNull);
    }
    answer_probe(msg)
}

/// Answers `msg` if it is a client probe ([`answer_client_probe`]) and returns `None`; otherwise hands
/// the responder back.
///
/// ```ignore
/// async fn on_sync(&self, peer: &Peer, msg: Message, responder: Responder) {
///     let Some(responder) = qmesh_ipc::pykx::try_answer(&msg, responder) else { return };
///     // … the handler's own work
/// }
/// ```
pub fn try_answer(msg: &Message, responder: Responder) -> Option<Responder> {
    match answer_client_probe(msg) {
        Some(k) => {
            // A closed connection cannot be answered; nothing else to do.
            let _ = responder.reply(k);
            None
        }
        None => Some(responder),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qmesh_codec::{EncodeOptions, MsgType};

    fn sync(k: &K) -> Message {
        Message::from_frame(Message::encode(MsgType::Sync, k, EncodeOptions::default()).unwrap(), 1 << 20)
            .unwrap()
    }

    #[test]
    fn probes_are_recognised() {
        let m = sync(&K::list(vec![K::string(CTX_PROBE), K::sym(".q")]));
        assert_eq!(answer_probe(&m), Some(K::sym("_pykx_ctx_marker")));
        let m = sync(&K::list(vec![K::string("key"), K::sym(".q")]));
        assert_eq!(answer_probe(&m).map(|k| k.ty()), Some(11));
        let m = sync(&K::string(SQL_PROBE));
        assert_eq!(answer_probe(&m), Some(K::Atom(Atom::Boolean(false))));
    }

    #[test]
    fn q_empty_string_chaser_is_answered_with_generic_null() {
        assert_eq!(answer_client_probe(&sync(&K::string(""))), Some(K::GenericNull));
        assert_eq!(answer_client_probe(&sync(&K::string(" "))), None);
        assert_eq!(answer_client_probe(&sync(&K::long(0))), None);
    }

    #[test]
    fn other_queries_are_not() {
        for k in [
            K::string("1+1"),
            K::list(vec![K::string(CTX_PROBE), K::sym(".myctx")]),
            K::list(vec![K::string("key"), K::sym(".z")]),
            K::string("@[{2<count .s};(::);{1b}]"),
        ] {
            assert_eq!(answer_probe(&sync(&k)), None, "{k:?}");
        }
    }

    #[test]
    fn probe_bytes_match_what_pykx_sends() {
        // As observed from PyKX 4.2: `("key"; `.q)`.
        let want = [
            0u8, 0, 2, 0, 0, 0, // general list of 2
            10, 0, 3, 0, 0, 0, b'k', b'e', b'y', // "key"
            0xf5, b'.', b'q', 0, // `.q
        ];
        assert_eq!(PROBES[1].body, want);
    }
}

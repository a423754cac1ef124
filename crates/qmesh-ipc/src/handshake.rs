//! The kdb+ IPC handshake, without I/O.
//!
//! The client sends `user:password`, one capability byte and a NUL
//! (`"me:pw\x06\x00"`), or — the legacy form older clients retry with after a
//! refusal — `user:password` and a NUL with no capability byte. The server
//! accepts by writing exactly one byte, the common capability
//! `min(client, ours)`, and refuses by closing without writing anything.
//!
//! The byte before the NUL is the capability when it is a control character
//! (`< 0x20`): a printable byte belongs to the credentials. A capability
//! above ours (7..=31) is answered with ours.
//!
//! Capability 0 is itself a NUL: `creds\0\0`. A client writes nothing after
//! its hello until it has our reply, so a second NUL already received right
//! after the first can only be this form; a lone NUL is the legacy form. (A
//! cap-0 client whose two NULs arrive in separate reads is taken for a legacy
//! client; both negotiate capability 0, so only that stray NUL differs.)

/// Longest client hello accepted (credentials, capability byte and NUL), in
/// bytes. q documents no limit; 8 KiB holds any user name and password, or a
/// bearer token used as the password, while bounding what an unauthenticated
/// peer can make the server buffer.
pub const MAX_HELLO_LEN: usize = 8 * 1024;

/// The highest capability this implementation speaks: 6 (messages above
/// 2 GB, vectors longer than 2 billion, as kdb+ 3.4+).
pub const MAX_CAPABILITY: u8 = 6;

/// Bytes at or above this value before the NUL are credentials, not a
/// capability byte.
const FIRST_PRINTABLE: u8 = 0x20;

/// What a client sent to open a connection.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The user name (the text before the first `:`), lossily decoded.
    pub user: String,
    /// The password bytes (after the first `:`; empty when there is none).
    pub password: Vec<u8>,
    /// The client's capability byte (0 for the legacy form).
    pub capability: u8,
    /// Whether the client sent a capability byte at all.
    pub has_capability_byte: bool,
}

impl std::fmt::Debug for ClientHello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHello")
            .field("user", &self.user)
            .field("password", &"********")
            .field("capability", &self.capability)
            .field("has_capability_byte", &self.has_capability_byte)
            .finish()
    }
}

/// Why a handshake failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The client sent more than [`MAX_HELLO_LEN`] bytes without a NUL.
    #[error("client hello longer than {max} bytes")]
    TooLong {
        /// The limit in force.
        max: usize,
    },
    /// The peer closed before finishing the handshake.
    #[error("peer closed during the handshake")]
    Eof,
    /// Credentials containing a NUL, which would end the hello early.
    #[error("credentials contain a NUL byte")]
    NulInCredentials,
    /// The server replied with a capability above the one we asked for.
    #[error("server replied capability {got}, above the {asked} we asked for")]
    BadReply {
        /// The byte the server sent.
        got: u8,
        /// The capability we sent.
        asked: u8,
    },
}

/// Looks for a complete client hello at the start of `buf`.
///
/// Returns `Ok(None)` while the NUL has not arrived (read more and call
/// again with the longer buffer), `Ok(Some((hello, consumed)))` once it has;
/// bytes after `consumed` already belong to the first message. `max` bounds
/// the hello (use [`MAX_HELLO_LEN`]).
pub fn parse_client_hello(buf: &[u8], max: usize) -> Result<Option<(ClientHello, usize)>, HandshakeError> {
    let window = &buf[..buf.len().min(max)];
    let Some(nul) = window.iter().position(|&b| b == 0) else {
        if buf.len() >= max {
            return Err(HandshakeError::TooLong { max });
        }
        return Ok(None);
    };
    if buf.get(nul + 1) == Some(&0) {
        let (user, password) = split_credentials(&buf[..nul]);
        let hello = ClientHello { user, password, capability: 0, has_capability_byte: true };
        return Ok(Some((hello, nul + 2)));
    }
    let before = &buf[..nul];
    let (creds, capability, has_capability_byte) = match before.split_last() {
        Some((&last, creds)) if last < FIRST_PRINTABLE => (creds, last, true),
        _ => (before, 0, false),
    };
    let (user, password) = split_credentials(creds);
    let hello = ClientHello { user, password, capability, has_capability_byte };
    Ok(Some((hello, nul + 1)))
}

fn split_credentials(creds: &[u8]) -> (String, Vec<u8>) {
    let (user, password) = match creds.iter().position(|&b| b == b':') {
        Some(i) => (&creds[..i], &creds[i + 1..]),
        None => (creds, &[][..]),
    };
    (String::from_utf8_lossy(user).into_owned(), password.to_vec())
}

/// The byte the server answers with: the common capability.
pub fn reply_capability(client: u8, ours: u8) -> u8 {
    client.min(ours)
}

/// The bytes a client sends: `credentials`, the capability byte and NUL.
pub fn client_hello(credentials: &str, capability: u8) -> Result<Vec<u8>, HandshakeError> {
    if credentials.as_bytes().contains(&0) {
        return Err(HandshakeError::NulInCredentials);
    }
    if credentials.len() + 2 > MAX_HELLO_LEN {
        return Err(HandshakeError::TooLong { max: MAX_HELLO_LEN });
    }
    let mut out = Vec::with_capacity(credentials.len() + 2);
    out.extend_from_slice(credentials.as_bytes());
    out.push(capability);
    out.push(0);
    Ok(out)
}

/// Checks the server's one-byte reply to a hello that asked for `asked`,
/// and returns the negotiated capability.
pub fn parse_server_reply(byte: u8, asked: u8) -> Result<u8, HandshakeError> {
    if byte > asked {
        return Err(HandshakeError::BadReply { got: byte, asked });
    }
    Ok(byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(b: &[u8]) -> (ClientHello, usize) {
        parse_client_hello(b, MAX_HELLO_LEN).unwrap().unwrap()
    }

    #[test]
    fn capability_forms() {
        for cap in [0u8, 1, 3, 5, 6] {
            let mut b = b"user:pw".to_vec();
            b.extend([cap, 0]);
            let (h, n) = parse(&b);
            assert_eq!(n, b.len());
            assert_eq!((h.user.as_str(), &h.password[..]), ("user", &b"pw"[..]));
            assert_eq!((h.capability, h.has_capability_byte), (cap, true));
            assert_eq!(reply_capability(h.capability, MAX_CAPABILITY), cap);
        }
    }

    #[test]
    fn capability_above_ours_gets_ours() {
        let (h, _) = parse(b"u:p\x1f\x00");
        assert_eq!(h.capability, 31);
        assert_eq!(reply_capability(h.capability, MAX_CAPABILITY), 6);
        assert_eq!(reply_capability(6, 3), 3);
    }

    #[test]
    fn legacy_form_without_capability() {
        let (h, n) = parse(b"user:pw\x00");
        assert_eq!(n, 8);
        assert_eq!((h.user.as_str(), &h.password[..]), ("user", &b"pw"[..]));
        assert_eq!((h.capability, h.has_capability_byte), (0, false));
    }

    #[test]
    fn empty_credentials() {
        let (h, n) = parse(b"\x06\x00");
        assert_eq!((h.user.as_str(), h.password.len(), h.capability, n), ("", 0, 6, 2));
        let (h, _) = parse(b":\x06\x00");
        assert_eq!((h.user.as_str(), h.password.len(), h.capability), ("", 0, 6));
        let (h, n) = parse(b"\x00");
        assert_eq!((h.user.as_str(), h.capability, h.has_capability_byte, n), ("", 0, false, 1));
        let (h, n) = parse(b"\x00\x00");
        assert_eq!((h.user.as_str(), h.capability, h.has_capability_byte, n), ("", 0, true, 2));
        let (h, _) = parse(b"\x03\x00");
        assert_eq!(h.capability, 3);
    }

    #[test]
    fn user_without_password_and_colons_in_password() {
        let (h, _) = parse(b"alice\x03\x00");
        assert_eq!((h.user.as_str(), h.password.len()), ("alice", 0));
        let (h, _) = parse(b"alice:a:b:c\x06\x00");
        assert_eq!(&h.password[..], b"a:b:c");
    }

    #[test]
    fn incomplete_then_complete_and_leftover() {
        assert_eq!(parse_client_hello(b"", MAX_HELLO_LEN).unwrap(), None);
        assert_eq!(parse_client_hello(b"user:p", MAX_HELLO_LEN).unwrap(), None);
        assert_eq!(parse_client_hello(b"user:pw\x06", MAX_HELLO_LEN).unwrap(), None);
        let (h, n) = parse(b"u:p\x06\x00\x01\x01\x00\x00");
        assert_eq!((h.capability, n), (6, 5));
    }

    #[test]
    fn long_credentials() {
        // Exactly at the limit: accepted.
        let mut b = vec![b'a'; MAX_HELLO_LEN - 2];
        b.extend([6, 0]);
        let (h, n) = parse(&b);
        assert_eq!((h.user.len(), n), (MAX_HELLO_LEN - 2, MAX_HELLO_LEN));
        // One more: refused, whether the NUL arrived or not.
        let mut b = vec![b'a'; MAX_HELLO_LEN - 1];
        b.extend([6, 0]);
        assert_eq!(
            parse_client_hello(&b, MAX_HELLO_LEN),
            Err(HandshakeError::TooLong { max: MAX_HELLO_LEN })
        );
        let b = vec![b'a'; MAX_HELLO_LEN];
        assert_eq!(
            parse_client_hello(&b, MAX_HELLO_LEN),
            Err(HandshakeError::TooLong { max: MAX_HELLO_LEN })
        );
        // Under the limit, still waiting.
        let b = vec![b'a'; MAX_HELLO_LEN - 1];
        assert_eq!(parse_client_hello(&b, MAX_HELLO_LEN), Ok(None));
    }

    #[test]
    fn non_utf8_user_is_lossy_password_is_kept() {
        let (h, _) = parse(b"\xffu:\xfe\x06\x00");
        assert_eq!(h.user, "\u{fffd}u");
        assert_eq!(h.password, vec![0xfe]);
    }

    #[test]
    fn client_side() {
        assert_eq!(client_hello("u:p", 6).unwrap(), b"u:p\x06\x00");
        assert_eq!(client_hello("", 3).unwrap(), b"\x03\x00");
        assert_eq!(client_hello("u\0", 3), Err(HandshakeError::NulInCredentials));
        assert!(client_hello(&"x".repeat(MAX_HELLO_LEN), 3).is_err());
        assert_eq!(parse_server_reply(3, 6), Ok(3));
        assert_eq!(parse_server_reply(6, 6), Ok(6));
        assert_eq!(parse_server_reply(6, 3), Err(HandshakeError::BadReply { got: 6, asked: 3 }));
        // Our hello parses back to what we sent.
        let (h, _) = parse(&client_hello("me:secret", 6).unwrap());
        assert_eq!((h.user.as_str(), &h.password[..], h.capability), ("me", &b"secret"[..], 6));
    }

    #[test]
    fn debug_hides_password() {
        let (h, _) = parse(b"u:topsecret\x06\x00");
        assert!(!format!("{h:?}").contains("topsecret"));
    }
}

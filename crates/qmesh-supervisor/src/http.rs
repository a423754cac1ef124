//! The little HTTP the supervisor speaks: `GET` a path from a local process
//! (`/healthz`, discovery's `/api/processes`). HTTP/1.0, so the answer is
//! never chunked and ends when the server closes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Most bytes of an answer read (headers and body): `/api/processes` of a
/// large estate is well under a megabyte.
pub const MAX_RESPONSE_BYTES: u64 = 16 << 20;

/// Connect, write and read timeout of one request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET path` from `addr`: the status code and the body.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect_timeout(&addr, REQUEST_TIMEOUT)?;
    s.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    s.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: application/json\r\n\r\n")?;
    let mut raw = Vec::new();
    s.take(MAX_RESPONSE_BYTES + 1).read_to_end(&mut raw)?;
    if raw.len() as u64 > MAX_RESPONSE_BYTES {
        return Err(std::io::Error::other(format!("answer of GET {path} over {MAX_RESPONSE_BYTES} bytes")));
    }
    parse(&raw).ok_or_else(|| std::io::Error::other(format!("GET {path}: not an HTTP answer")))
}

/// Status and body of a whole HTTP/1.x answer.
fn parse(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let status_line = head.lines().next()?;
    let mut words = status_line.split_whitespace();
    if !words.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = words.next()?.parse().ok()?;
    Some((code, raw[end + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_answers() {
        assert_eq!(parse(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"), Some((200, b"ok".to_vec())));
        assert_eq!(parse(b"HTTP/1.1 503 Service Unavailable\r\n\r\n"), Some((503, vec![])));
        assert_eq!(parse(b"SSH-2.0\r\n\r\n"), None);
        assert_eq!(parse(b"HTTP/1.0 200 OK\r\n"), None);
    }
}

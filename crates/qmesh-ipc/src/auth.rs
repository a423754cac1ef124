//! Authentication of incoming connections: the `-u`/`-U` password file.
//!
//! q checks the password file first, then `.z.pw`
//! ([`crate::server::Handler::authenticate`]). A server configured with an
//! [`Authenticator`] refuses (closes, no byte) any hello it rejects before the
//! handler sees it.
//!
//! # The password file
//!
//! As q's `-U file`: one `user:password` per line. Per KX's command-line
//! reference, the password can be
//!
//! * plain text,
//! * the MD5 hash of the password, as 32 hex digits (``raze string md5 "pw"``),
//! * the SHA-1 hash of the password, as 40 hex digits (``raze string -33!"pw"``,
//!   since kdb+ 4.0).
//!
//! The hash is of the password alone, not of `user:password`. An entry of 32
//! or 40 hex digits also matches a client that sends those digits as its
//! password (a plain-text password that happens to look like a hash).
//! Blank lines and a trailing `\r` are ignored; a line without `:`, an empty
//! user name or a user listed twice is an error naming the line.

use std::collections::HashMap;
use std::path::Path;

/// Largest password file read, in bytes: checked from the file's metadata
/// before reading. A million users fit in far less.
pub const MAX_PASSWORD_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Decides whether a user and password may connect (the `-u` file check).
///
/// Runs on the connection's task during the handshake: keep it fast and
/// non-blocking. Any `Fn(&str, &[u8]) -> bool` is one.
pub trait Authenticator: Send + Sync + 'static {
    /// `true` to accept `user` with `password`.
    fn check(&self, user: &str, password: &[u8]) -> bool;
}

impl<F> Authenticator for F
where
    F: Fn(&str, &[u8]) -> bool + Send + Sync + 'static,
{
    fn check(&self, user: &str, password: &[u8]) -> bool {
        self(user, password)
    }
}

/// Why a password file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The file could not be read.
    #[error("cannot read password file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Larger than [`MAX_PASSWORD_FILE_BYTES`].
    #[error("password file {path} is {len} bytes, above the limit of {MAX_PASSWORD_FILE_BYTES}")]
    TooLarge {
        /// The file.
        path: String,
        /// Its size.
        len: u64,
    },
    /// A line that is not `user:password`.
    #[error("password file line {line}: {reason}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: &'static str,
    },
}

/// A password file's entries.
#[derive(Clone, Default)]
pub struct PasswordFile {
    users: HashMap<String, Entry>,
}

#[derive(Clone)]
struct Entry {
    /// The text after the first `:`, as written.
    stored: Vec<u8>,
    /// Which hash the stored text can be, from its shape.
    hash: HashKind,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum HashKind {
    None,
    Md5,
    Sha1,
}

impl std::fmt::Debug for PasswordFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut users: Vec<&str> = self.users.keys().map(String::as_str).collect();
        users.sort_unstable();
        f.debug_struct("PasswordFile").field("users", &users).finish()
    }
}

impl PasswordFile {
    /// Reads and parses a password file.
    pub fn load(path: impl AsRef<Path>) -> Result<PasswordFile, AuthError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let io = |source| AuthError::Io { path: shown.clone(), source };
        let len = std::fs::metadata(path).map_err(io)?.len();
        if len > MAX_PASSWORD_FILE_BYTES {
            return Err(AuthError::TooLarge { path: shown, len });
        }
        let bytes = std::fs::read(path).map_err(io)?;
        PasswordFile::parse(&bytes)
    }

    /// Parses the text of a password file.
    pub fn parse(text: &[u8]) -> Result<PasswordFile, AuthError> {
        let mut users = HashMap::new();
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let bad = |reason| AuthError::BadLine { line: i + 1, reason };
            let colon = line
                .iter()
                .position(|&b| b == b':')
                .ok_or_else(|| bad("no ':' between user and password"))?;
            let (user, stored) = (&line[..colon], &line[colon + 1..]);
            if user.is_empty() {
                return Err(bad("empty user name"));
            }
            let user = std::str::from_utf8(user).map_err(|_| bad("user name is not UTF-8"))?.to_owned();
            let hash = match stored.len() {
                32 if stored.iter().all(u8::is_ascii_hexdigit) => HashKind::Md5,
                40 if stored.iter().all(u8::is_ascii_hexdigit) => HashKind::Sha1,
                _ => HashKind::None,
            };
            if users.insert(user, Entry { stored: stored.to_vec(), hash }).is_some() {
                return Err(bad("user listed twice"));
            }
        }
        Ok(PasswordFile { users })
    }

    /// How many users the file lists.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file lists no user (then nobody can connect).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `user` with `password` matches its entry.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        let Some(e) = self.users.get(user) else {
            return false;
        };
        let plain = constant_time_eq(&e.stored, password);
        let hashed = match e.hash {
            HashKind::None => false,
            HashKind::Md5 => constant_time_eq_ignore_case(&e.stored, md5_hex(password).as_bytes()),
            HashKind::Sha1 => constant_time_eq_ignore_case(&e.stored, sha1_hex(password).as_bytes()),
        };
        plain | hashed
    }
}

impl Authenticator for PasswordFile {
    fn check(&self, user: &str, password: &[u8]) -> bool {
        self.verify(user, password)
    }
}

/// The lowercase hex MD5 of `password`, as q's ``raze string md5 x``.
pub fn md5_hex(password: &[u8]) -> String {
    format!("{:x}", md5::compute(password))
}

/// The lowercase hex SHA-1 of `password`, as q's ``raze string -33!x``.
pub fn sha1_hex(password: &[u8]) -> String {
    sha1_smol::Sha1::from(password).digest().to_string()
}

/// Equality whose time does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn constant_time_eq_ignore_case(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x.to_ascii_lowercase() ^ y.to_ascii_lowercase())) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kx_documented_hashes() {
        // The examples from KX's command-line reference for -U.
        assert_eq!(md5_hex(b"this is my password"), "210d53992dff432ec1b1a9698af9da16");
        assert_eq!(sha1_hex(b"mypassword"), "91dfd9ddb4198affc5c194cd8ce6d338fde470e2");
    }

    #[test]
    fn plain_md5_and_sha1_entries() {
        let f = PasswordFile::parse(
            b"plain:secret\nmd5user:210d53992dff432ec1b1a9698af9da16\nsha:91DFD9DDB4198AFFC5C194CD8CE6D338FDE470E2\n",
        )
        .unwrap();
        assert_eq!(f.len(), 3);
        assert!(f.verify("plain", b"secret"));
        assert!(!f.verify("plain", b"secret2"));
        assert!(!f.verify("plain", b""));
        assert!(f.verify("md5user", b"this is my password"));
        assert!(!f.verify("md5user", b"this is not my password"));
        // the stored digits themselves also pass, as plain text
        assert!(f.verify("md5user", b"210d53992dff432ec1b1a9698af9da16"));
        assert!(f.verify("sha", b"mypassword"));
        assert!(!f.verify("sha", b"yourpassword"));
        assert!(!f.verify("nobody", b"secret"));
        assert!(f.check("plain", b"secret"));
    }

    #[test]
    fn hash_of_password_not_of_user_colon_password() {
        let f = PasswordFile::parse(format!("u:{}", md5_hex(b"u:pw")).as_bytes()).unwrap();
        assert!(!f.verify("u", b"pw"));
    }

    #[test]
    fn tolerant_layout() {
        let f = PasswordFile::parse(b"\r\na:1\r\n\n  \nb:pass:with:colons\nc:\n").unwrap();
        assert!(f.verify("a", b"1"));
        assert!(f.verify("b", b"pass:with:colons"));
        assert!(f.verify("c", b""));
        assert!(!f.verify("c", b"x"));
        assert!(PasswordFile::parse(b"").unwrap().is_empty());
    }

    #[test]
    fn bad_lines_are_named() {
        assert!(matches!(PasswordFile::parse(b"a:1\nnocolon\n"), Err(AuthError::BadLine { line: 2, .. })));
        assert!(matches!(PasswordFile::parse(b":pw"), Err(AuthError::BadLine { line: 1, .. })));
        assert!(matches!(PasswordFile::parse(b"a:1\na:2"), Err(AuthError::BadLine { line: 2, .. })));
        assert!(matches!(PasswordFile::parse(b"\xff:1"), Err(AuthError::BadLine { line: 1, .. })));
    }

    #[test]
    fn load_from_file_and_missing_file() {
        let dir = std::env::temp_dir().join(format!("qmesh-ipc-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("users.txt");
        std::fs::write(&p, "u:p\n").unwrap();
        assert!(PasswordFile::load(&p).unwrap().verify("u", b"p"));
        assert!(matches!(PasswordFile::load(dir.join("missing")), Err(AuthError::Io { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn closures_are_authenticators() {
        let a: Box<dyn Authenticator> = Box::new(|u: &str, p: &[u8]| u == "x" && p == b"y");
        assert!(a.check("x", b"y"));
        assert!(!a.check("x", b"z"));
    }

    #[test]
    fn debug_lists_users_only() {
        let f = PasswordFile::parse(b"b:secret\na:hidden").unwrap();
        let d = format!("{f:?}");
        assert!(d.contains("\"a\", \"b\"") && !d.contains("secret") && !d.contains("hidden"));
    }
}

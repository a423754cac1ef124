//! Who may do what: the permissions file (`--permissions FILE`), the
//! "Permissions with kdb+" layer the routing whitepaper leaves out.
//!
//! `-u` says who a connection is; this file says what that user may do. One
//! grant per line, `USER ACTION NAMES`, words separated by spaces or tabs:
//!
//! ```text
//! # user   action     names (comma-separated; * = every one)
//! alice    query      EQUITY_MARKET_RDB,FX
//! *        query      PUBLIC
//! feed     publish    trades,quotes
//! bob      subscribe  *
//! estate   heartbeat  *
//! ```
//!
//! | action | names are | checked by |
//! |---|---|---|
//! | `query` | services | the gateway, for `userQuery` over IPC and `POST /query` over HTTP: every service a request names |
//! | `publish` | streams | the stream node, for `.rt.pub` / `.u.upd` and a `Publisher`'s shipped log (`.rt.ship.hello`, `.rt.ship.recs`) |
//! | `subscribe` | streams | the stream node, for `.rt.sub`, `.rt.get_latest_position`, a lead subscriber's `.rt.prune` and a `Subscriber`'s copy (`.rt.ship.pull`) |
//! | `heartbeat` | process names | discovery, for `.master.storeHb` |
//!
//! `*` as the user means every user; `*` among the names means every name.
//! Grants only add: without a grant, an action is refused with the
//! catalog's `access` error (`'access: alice may not query FX`, HTTP 403).
//! Without a permissions file nothing is checked. Blank lines and `#`
//! comments are ignored; any other line that is not a grant is an error
//! naming the line (at start: the process does not start; on reload: the
//! previous rules stay and the error is logged).
//!
//! The user is the one `-u` authenticated (the IPC handshake, HTTP Basic);
//! without `-u`, a client's user name is whatever it says, so use the file
//! with `-u`.
//!
//! **Reload without a restart**: every check at least
//! [`RELOAD_CHECK_INTERVAL`] after the last one looks at the file's
//! modification time and size, and reads it again when either changed.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tracing::{info, warn};

use crate::{ErrorKind, WireError};

/// How often, at most, a check looks at the file for changes: a change is
/// in force within a second, and a busy gateway stats the file once a
/// second rather than once per query.
pub const RELOAD_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Largest permissions file read, in bytes (checked from its metadata).
pub const MAX_PERMISSIONS_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// What a grant allows; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Query a service through the gateway.
    Query,
    /// Publish to a stream.
    Publish,
    /// Subscribe to a stream.
    Subscribe,
    /// Heartbeat to discovery as a process name.
    Heartbeat,
}

impl Action {
    /// The word in the file.
    pub fn word(self) -> &'static str {
        match self {
            Action::Query => "query",
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::Heartbeat => "heartbeat",
        }
    }

    fn parse(w: &str) -> Option<Action> {
        [Action::Query, Action::Publish, Action::Subscribe, Action::Heartbeat]
            .into_iter()
            .find(|a| a.word() == w)
    }
}

/// Why a permissions file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PermissionsError {
    /// The file could not be read.
    #[error("cannot read permissions file {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Larger than [`MAX_PERMISSIONS_FILE_BYTES`].
    #[error("permissions file {path} is {len} bytes, above the limit of {MAX_PERMISSIONS_FILE_BYTES}")]
    TooLarge {
        /// The file.
        path: String,
        /// Its size.
        len: u64,
    },
    /// A line that is not a grant.
    #[error("permissions file line {line}: {reason}")]
    BadLine {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

#[derive(Debug, Clone)]
struct Grant {
    /// `None`: every user.
    user: Option<String>,
    action: Action,
    /// `None`: every name.
    names: Option<Vec<String>>,
}

/// The grants of a permissions file.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    grants: Vec<Grant>,
}

impl Rules {
    /// Parses the text of a permissions file.
    pub fn parse(text: &str) -> Result<Rules, PermissionsError> {
        let mut grants = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: String| PermissionsError::BadLine { line: i + 1, reason };
            let words: Vec<&str> = line.split_whitespace().collect();
            let [user, action, names] = words[..] else {
                return Err(bad("expected USER ACTION NAMES (three words)".into()));
            };
            let action = Action::parse(action).ok_or_else(|| {
                bad(format!("unknown action {action:?} (query, publish, subscribe, heartbeat)"))
            })?;
            let names: Vec<&str> = names.split(',').map(str::trim).collect();
            if names.iter().any(|n| n.is_empty()) {
                return Err(bad("an empty name in the list".into()));
            }
            grants.push(Grant {
                user: (user != "*").then(|| user.to_owned()),
                action,
                names: (!names.contains(&"*")).then(|| names.iter().map(|n| (*n).to_owned()).collect()),
            });
        }
        Ok(Rules { grants })
    }

    /// Whether `user` may do `action` on `name`.
    pub fn allows(&self, user: &str, action: Action, name: &str) -> bool {
        self.grants.iter().any(|g| {
            g.action == action
                && g.user.as_deref().is_none_or(|u| u == user)
                && g.names.as_ref().is_none_or(|ns| ns.iter().any(|n| n == name))
        })
    }
}

/// A permissions file, reloaded when it changes (see the module docs).
/// Cheap to clone; every clone sees the same reloads.
#[derive(Debug, Clone)]
pub struct Permissions {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    rules: Arc<Rules>,
    /// (modification time, size) of the file the rules came from.
    stamp: Option<(SystemTime, u64)>,
    checked: Instant,
}

fn read(path: &Path) -> Result<(Rules, (SystemTime, u64)), PermissionsError> {
    let shown = || path.display().to_string();
    let io = |source| PermissionsError::Io { path: shown(), source };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > MAX_PERMISSIONS_FILE_BYTES {
        return Err(PermissionsError::TooLarge { path: shown(), len: meta.len() });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    let stamp = (meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len());
    Ok((Rules::parse(&text)?, stamp))
}

fn stamp_of(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len()))
}

impl Permissions {
    /// Reads the file; an unreadable or malformed one is an error.
    pub fn load(path: impl Into<PathBuf>) -> Result<Permissions, PermissionsError> {
        let path = path.into();
        let (rules, stamp) = read(&path)?;
        let state = State { rules: Arc::new(rules), stamp: Some(stamp), checked: Instant::now() };
        Ok(Permissions { inner: Arc::new(Inner { path, state: Mutex::new(state) }) })
    }

    /// Whether `user` may do `action` on `name`, reloading the file first if
    /// it changed (looked at most once per [`RELOAD_CHECK_INTERVAL`]).
    pub fn allows(&self, user: &str, action: Action, name: &str) -> bool {
        self.rules_at(Instant::now()).allows(user, action, name)
    }

    /// `Ok` when `user` may do `action` on every one of `names`; otherwise
    /// the catalog's `access` error naming the first refused one
    /// (`access: alice may not query FX`), logged.
    pub fn check<'a>(
        &self,
        user: &str,
        action: Action,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), WireError> {
        let rules = self.rules_at(Instant::now());
        for name in names {
            if !rules.allows(user, action, name) {
                warn!(user = ?user, action = action.word(), name = ?name, "refused by the permissions file");
                let who = if user.is_empty() { "an anonymous user" } else { user };
                return Err(WireError::with_detail(
                    ErrorKind::Access,
                    format!("{who} may not {} {name}", action.word()),
                ));
            }
        }
        Ok(())
    }

    /// The rules in force at `now` (injected for tests): reloaded first if
    /// the last look at the file is [`RELOAD_CHECK_INTERVAL`] old and the
    /// file's modification time or size changed. A file that cannot be
    /// read or parsed leaves the previous rules in force (logged).
    pub fn rules_at(&self, now: Instant) -> Arc<Rules> {
        let mut st = self.inner.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if now.saturating_duration_since(st.checked) >= RELOAD_CHECK_INTERVAL {
            st.checked = now;
            let stamp = stamp_of(&self.inner.path);
            if stamp.is_some() && stamp != st.stamp {
                match read(&self.inner.path) {
                    Ok((rules, stamp)) => {
                        info!(path = %self.inner.path.display(), grants = rules.grants.len(), "permissions reloaded");
                        st.rules = Arc::new(rules);
                        st.stamp = Some(stamp);
                    }
                    Err(e) => {
                        warn!(error = %e, "permissions file not reloaded; the previous rules stay");
                        // do not read the same broken file again until it changes
                        st.stamp = stamp;
                    }
                }
            }
        }
        st.rules.clone()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const EXAMPLE: &str = "# who may do what\nalice query EQUITY,FX\n*\tquery PUBLIC\nfeed publish trades,quotes\nbob subscribe *\nestate heartbeat *\n";

    #[test]
    fn grants_only_add() {
        let r = Rules::parse(EXAMPLE).unwrap();
        assert!(r.allows("alice", Action::Query, "FX"));
        assert!(r.allows("alice", Action::Query, "PUBLIC"));
        assert!(r.allows("bob", Action::Query, "PUBLIC"));
        assert!(!r.allows("bob", Action::Query, "FX"));
        assert!(!r.allows("alice", Action::Publish, "trades"));
        assert!(r.allows("feed", Action::Publish, "quotes"));
        assert!(!r.allows("feed", Action::Subscribe, "quotes"));
        assert!(r.allows("bob", Action::Subscribe, "anything"));
        assert!(r.allows("estate", Action::Heartbeat, "gw1"));
        assert!(!r.allows("alice", Action::Heartbeat, "gw1"));
        assert!(!Rules::default().allows("alice", Action::Query, "FX"));
    }

    #[test]
    fn bad_lines_are_named() {
        let line = |t: &str| match Rules::parse(t) {
            Err(PermissionsError::BadLine { line, .. }) => line,
            other => panic!("{t:?}: {other:?}"),
        };
        assert_eq!(line("alice query FX\nalice query"), 2);
        assert_eq!(line("alice read FX"), 1);
        assert_eq!(line("alice query FX,,EQ"), 1);
        assert_eq!(line("alice query FX extra"), 1);
    }

    #[test]
    fn check_gives_the_access_word() {
        let dir = std::env::temp_dir().join(format!("qmesh-perms-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("perms");
        std::fs::write(&p, EXAMPLE).unwrap();
        let perms = Permissions::load(&p).unwrap();
        assert!(perms.check("alice", Action::Query, ["EQUITY", "FX"]).is_ok());
        let e = perms.check("alice", Action::Query, ["EQUITY", "RATES"]).unwrap_err();
        assert_eq!(e.to_q_text(), "access: alice may not query RATES");
        assert_eq!(e.http_status(), 403);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_changed_file_is_reloaded_and_a_broken_one_keeps_the_rules() {
        let dir = std::env::temp_dir().join(format!("qmesh-perms-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("perms");
        std::fs::write(&p, "alice query EQUITY\n").unwrap();
        let perms = Permissions::load(&p).unwrap();
        let t0 = Instant::now();
        assert!(!perms.rules_at(t0).allows("alice", Action::Query, "FX"));

        std::fs::write(&p, "alice query EQUITY,FX\n").unwrap();
        // within the interval the file is not looked at
        assert!(!perms.rules_at(t0).allows("alice", Action::Query, "FX"));
        let t1 = t0 + RELOAD_CHECK_INTERVAL;
        assert!(perms.rules_at(t1).allows("alice", Action::Query, "FX"), "reloaded");

        std::fs::write(&p, "alice query EQUITY,FX\nthis is not a grant\n").unwrap();
        let t2 = t1 + RELOAD_CHECK_INTERVAL;
        assert!(perms.rules_at(t2).allows("alice", Action::Query, "FX"), "a broken file keeps the rules");

        std::fs::remove_file(&p).unwrap();
        let t3 = t2 + RELOAD_CHECK_INTERVAL + Duration::from_millis(1);
        assert!(perms.rules_at(t3).allows("alice", Action::Query, "FX"), "a missing file keeps the rules");

        std::fs::write(&p, "bob query FX\n").unwrap();
        let t4 = t3 + RELOAD_CHECK_INTERVAL;
        let r = perms.rules_at(t4);
        assert!(!r.allows("alice", Action::Query, "FX") && r.allows("bob", Action::Query, "FX"));
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(matches!(Permissions::load(dir.join("none")), Err(PermissionsError::Io { .. })));
    }
}

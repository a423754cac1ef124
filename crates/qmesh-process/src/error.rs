//! The error catalog every qmesh component uses on the wire.
//!
//! kdb+ clients get a q error (type -128) whose text is a short lowercase
//! word, then, when there is more to say, a colon and the detail:
//! `timeout`, `queue full: EQUITY_MARKET_RDB`, `unknown service: FX`.
//! HTTP clients get the same word and detail as JSON
//! (`{"error":"queue full","detail":"EQUITY_MARKET_RDB"}`) with the status
//! [`ErrorKind::http_status`] gives.
//!
//! A component answers every error a client can see, over IPC or HTTP, with
//! a word of this catalog, and a word means the same on both sides: the q
//! error `'unknown table: quote` and the HTTP answer
//! `404 {"error":"unknown table","detail":"quote"}` are one error. The words
//! avoid q's own error names (`type`, `length`, `mismatch` …), so an error a
//! real q process raises is never mistaken for one of these.
//!
//! | word | meaning | HTTP |
//! |---|---|---|
//! | `timeout` | the request's deadline passed | 504 |
//! | `queue full` | a bounded queue is full | 429 |
//! | `unknown service` | no service of that name is known | 404 |
//! | `no instance` | the service has no instance registered | 404 |
//! | `service error` | the service ran the query and it failed | 422 |
//! | `service disconnected` | the instance running the query went away | 502 |
//! | `lb unavailable` | the load balancer cannot be reached | 503 |
//! | `access` | bad credentials or not permitted | 403 |
//! | `message too large` | a message above the size limit was refused | 413 |
//! | `limit` | a configured limit (memory, result size, store size) was hit | 507 |
//! | `bad request` | malformed request, SQL that does not plan, a bad or too-long name | 400 |
//! | `unknown table` | the request names a table that is not held | 404 |
//! | `schema mismatch` | data does not fit its table; nothing changed | 409 |
//! | `unsupported type` | a type with no exact mapping on the other side | 422 |
//! | `shutting down` | the component is stopping | 503 |
//! | `internal` | anything else (a bug); the detail says what | 500 |
//! | `not found` | no such HTTP route (a resource of a known kind has its own word: `unknown table` …) | 404 |

use std::fmt;

/// One entry of the catalog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The request's deadline passed.
    Timeout,
    /// A bounded queue is full.
    QueueFull,
    /// No service of that name is known.
    UnknownService,
    /// The service is known but has no instance registered.
    NoInstance,
    /// The service ran the query and it failed; the detail is its error.
    ServiceError,
    /// The instance running the query went away.
    ServiceDisconnected,
    /// The load balancer cannot be reached.
    LbUnavailable,
    /// Bad credentials or not permitted.
    Access,
    /// A message larger than the limit was refused.
    MessageTooLarge,
    /// A configured limit (memory, result size, …) was hit.
    Limit,
    /// The request is not of a form the component understands: a malformed
    /// message or JSON body, SQL that does not parse or plan, a statement
    /// that is not a query, a name that cannot be one (empty, bad
    /// characters, or longer than the component's bound).
    BadRequest,
    /// The request names a table the component does not hold (a query's
    /// `from`, or a list of columns sent with `upd` to a table that does not
    /// exist yet). The detail is the table name.
    UnknownTable,
    /// Data does not fit the table it is sent to (other column names, a
    /// column of another type); nothing was changed. The detail names the
    /// table and the column.
    SchemaMismatch,
    /// A value whose type has no exact mapping on the other side (a kdb+
    /// column type with no Arrow form, a SQL result column with no kdb+ type,
    /// a temporal outside Arrow's range). The detail names the column.
    UnsupportedType,
    /// The component is stopping.
    ShuttingDown,
    /// Anything else; the detail says what.
    Internal,
    /// No stream of that name is hosted (the reliable-transport node).
    UnknownStream,
    /// A deduplicated message at or below its key's watermark was dropped.
    Duplicate,
    /// No such HTTP route. A missing thing of a known kind has its own word
    /// (`unknown table`, `unknown service`, `unknown stream`).
    NotFound,
}

impl ErrorKind {
    /// Every kind, for metrics labels and documentation.
    pub const ALL: [ErrorKind; 19] = [
        ErrorKind::Timeout,
        ErrorKind::QueueFull,
        ErrorKind::UnknownService,
        ErrorKind::NoInstance,
        ErrorKind::ServiceError,
        ErrorKind::ServiceDisconnected,
        ErrorKind::LbUnavailable,
        ErrorKind::Access,
        ErrorKind::MessageTooLarge,
        ErrorKind::Limit,
        ErrorKind::BadRequest,
        ErrorKind::UnknownTable,
        ErrorKind::SchemaMismatch,
        ErrorKind::UnsupportedType,
        ErrorKind::ShuttingDown,
        ErrorKind::Internal,
        ErrorKind::UnknownStream,
        ErrorKind::Duplicate,
        ErrorKind::NotFound,
    ];

    /// The word that starts the q error text.
    pub fn word(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::QueueFull => "queue full",
            ErrorKind::UnknownService => "unknown service",
            ErrorKind::NoInstance => "no instance",
            ErrorKind::ServiceError => "service error",
            ErrorKind::ServiceDisconnected => "service disconnected",
            ErrorKind::LbUnavailable => "lb unavailable",
            ErrorKind::Access => "access",
            ErrorKind::MessageTooLarge => "message too large",
            ErrorKind::Limit => "limit",
            ErrorKind::BadRequest => "bad request",
            ErrorKind::UnknownTable => "unknown table",
            ErrorKind::SchemaMismatch => "schema mismatch",
            ErrorKind::UnsupportedType => "unsupported type",
            ErrorKind::ShuttingDown => "shutting down",
            ErrorKind::Internal => "internal",
            ErrorKind::UnknownStream => "unknown stream",
            ErrorKind::Duplicate => "duplicate",
            ErrorKind::NotFound => "not found",
        }
    }

    /// The kind whose word starts `text` (the inverse of [`WireError::to_q_text`]).
    pub fn from_word(text: &str) -> Option<ErrorKind> {
        let word = text.split(':').next().unwrap_or(text).trim();
        ErrorKind::ALL.into_iter().find(|k| k.word() == word)
    }

    /// The HTTP status for this kind.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorKind::Timeout => 504,
            ErrorKind::QueueFull => 429,
            ErrorKind::UnknownService
            | ErrorKind::NoInstance
            | ErrorKind::UnknownTable
            | ErrorKind::UnknownStream
            | ErrorKind::NotFound => 404,
            ErrorKind::Duplicate => 409,
            ErrorKind::ServiceError => 422,
            ErrorKind::ServiceDisconnected => 502,
            ErrorKind::LbUnavailable | ErrorKind::ShuttingDown => 503,
            ErrorKind::Access => 403,
            ErrorKind::MessageTooLarge => 413,
            ErrorKind::Limit => 507,
            ErrorKind::BadRequest => 400,
            ErrorKind::SchemaMismatch => 409,
            ErrorKind::UnsupportedType => 422,
            ErrorKind::Internal => 500,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// An error as it crosses a process boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.to_q_text())]
pub struct WireError {
    pub kind: ErrorKind,
    pub detail: Option<String>,
}

impl WireError {
    pub fn new(kind: ErrorKind) -> WireError {
        WireError { kind, detail: None }
    }

    pub fn with_detail(kind: ErrorKind, detail: impl Into<String>) -> WireError {
        WireError { kind, detail: Some(detail.into()) }
    }

    /// The text of the q error: `word` or `word: detail`.
    pub fn to_q_text(&self) -> String {
        match &self.detail {
            Some(d) => format!("{}: {}", self.kind.word(), d),
            None => self.kind.word().to_owned(),
        }
    }

    /// Reads a q error text back into the catalog; text that names no kind
    /// becomes [`ErrorKind::ServiceError`] with the whole text as detail
    /// (it came from a service, not from qmesh).
    pub fn from_q_text(text: &str) -> WireError {
        match ErrorKind::from_word(text) {
            Some(kind) => {
                let detail = text.split_once(':').map(|(_, d)| d.trim().to_owned()).filter(|d| !d.is_empty());
                WireError { kind, detail }
            }
            None => WireError::with_detail(ErrorKind::ServiceError, text),
        }
    }

    pub fn http_status(&self) -> u16 {
        self.kind.http_status()
    }

    /// `{"error":"queue full","detail":"EQUITY"}` (`detail` is null when absent).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.kind.word(), "detail": self.detail })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q_text_has_the_word_first() {
        assert_eq!(WireError::new(ErrorKind::Timeout).to_q_text(), "timeout");
        assert_eq!(WireError::with_detail(ErrorKind::QueueFull, "EQUITY").to_q_text(), "queue full: EQUITY");
    }

    #[test]
    fn q_text_round_trips_through_the_catalog() {
        for kind in ErrorKind::ALL {
            let e = WireError::with_detail(kind, "x: y");
            assert_eq!(WireError::from_q_text(&e.to_q_text()), e);
            assert_eq!(WireError::from_q_text(kind.word()), WireError::new(kind));
        }
    }

    /// The words the service used to answer outside the catalog, and q's
    /// own error names, are not catalog words: such an error from a real q
    /// process stays the service's.
    #[test]
    fn q_error_names_are_not_catalog_words() {
        for q in ["type", "length", "mismatch", "rank", "domain", "nyi", "sql", "table", "name", "arrow"] {
            assert_eq!(ErrorKind::from_word(q), None, "{q}");
            assert_eq!(ErrorKind::from_word(&format!("{q}: x")), None, "{q}");
        }
        assert_eq!(ErrorKind::from_word("unknown table: quote"), Some(ErrorKind::UnknownTable));
        assert_eq!(ErrorKind::from_word("schema mismatch: `t`: x"), Some(ErrorKind::SchemaMismatch));
        assert_eq!(ErrorKind::from_word("unsupported type: column `c`"), Some(ErrorKind::UnsupportedType));
    }

    #[test]
    fn foreign_errors_are_service_errors() {
        let e = WireError::from_q_text("type");
        assert_eq!(e.kind, ErrorKind::ServiceError);
        assert_eq!(e.detail.as_deref(), Some("type"));
    }

    #[test]
    fn json_names_word_and_detail() {
        let e = WireError::with_detail(ErrorKind::UnknownService, "FX");
        assert_eq!(e.to_json(), serde_json::json!({"error":"unknown service","detail":"FX"}));
        assert_eq!(e.http_status(), 404);
    }
}

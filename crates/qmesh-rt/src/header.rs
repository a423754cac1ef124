//! The message header a publisher may give as `.rt.pub`'s fourth argument:
//! a dictionary with any of `` `on`ts`id`dedup `` (rt.qpk sets the same
//! fields from `.rt.on`, `.rt.ts`, `.rt.id` and the `dedup_id` of
//! `.rt.pub`).
//!
//! ```q
//! h(`.rt.pub;`trades;(`upd;`trade;t);`on`ts`id`dedup!(`feedA;0Np;42;`trade))
//! ```
//!
//! * `on`: the origin, a symbol (or string); defaults to the connection's
//!   user name, or its host when the user name is empty.
//! * `ts`: a timestamp; `0Np` (or absent) means now.
//! * `id`: a long (or int); the message identifier, whose distance from zero
//!   increases by one per message ([`crate::dedup`]).
//! * `dedup`: a symbol (or string); messages naming the same key are merged
//!   with one high watermark of `id`.
//!
//! The reserved `to` field of rt.qpk is accepted and ignored.

use qmesh_codec::{Atom, K, Vector, nulls};

use crate::limits::MAX_HEADER_SYM_BYTES;

/// A publisher's header, parsed; absent fields are `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PubHeader {
    /// The origin (`on`).
    pub on: Option<String>,
    /// The timestamp (`ts`), nanoseconds since 2000.01.01 (kdb+'s
    /// timestamp); `None` for absent or `0Np` (the node uses now).
    pub ts: Option<i64>,
    /// The message id (`id`).
    pub id: Option<i64>,
    /// The dedup key (`dedup`).
    pub dedup: Option<String>,
}

/// Why a header dictionary was refused (sent to the client as
/// `'bad request: header: …`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("the header is a dictionary with symbol keys (`on`ts`id`dedup), got type {0}")]
    NotADict(i16),
    #[error("unknown header field `{0}` (fields: on ts id dedup to)")]
    UnknownField(String),
    #[error("header field `{field}`: {expected}, got type {got}")]
    Type { field: &'static str, expected: &'static str, got: i16 },
    #[error("header field `{0}` is longer than {MAX_HEADER_SYM_BYTES} bytes")]
    TooLong(&'static str),
    #[error("header field `id` is null; a deduplicated message needs an id")]
    NullId,
    #[error("header field `dedup` names a key but `id` is missing")]
    DedupWithoutId,
    #[error("header field `dedup` is empty; name a key, or leave the field out to publish without dedup")]
    EmptyDedup,
}

impl PubHeader {
    /// Parses the header dictionary. `::` (generic null) and `()!()` are an
    /// empty header.
    pub fn parse(k: &K) -> Result<PubHeader, HeaderError> {
        let mut h = PubHeader::default();
        let d = match k {
            K::GenericNull => return Ok(h),
            K::Dict(d) => d,
            other => return Err(HeaderError::NotADict(other.ty())),
        };
        let keys: Vec<String> = match &d.keys {
            K::Vector(_, Vector::Symbol(s)) => {
                s.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect()
            }
            K::List(_, items) if items.is_empty() => Vec::new(),
            other => return Err(HeaderError::NotADict(other.ty())),
        };
        for (i, key) in keys.iter().enumerate() {
            let v = item(&d.values, i).ok_or(HeaderError::NotADict(d.values.ty()))?;
            match key.as_str() {
                "on" => h.on = text("on", &v)?,
                "dedup" => {
                    // An id with an empty key would silently publish without
                    // dedup: the caller meant a key, so say so.
                    h.dedup = text("dedup", &v)?;
                    if h.dedup.is_none() && !matches!(v, K::GenericNull) {
                        return Err(HeaderError::EmptyDedup);
                    }
                }
                "ts" => {
                    h.ts = match v {
                        K::Atom(Atom::Timestamp(t)) if t == nulls::LONG_NULL => None,
                        K::Atom(Atom::Timestamp(t)) => Some(t),
                        K::GenericNull => None,
                        other => {
                            return Err(HeaderError::Type {
                                field: "ts",
                                expected: "a timestamp",
                                got: other.ty(),
                            });
                        }
                    }
                }
                "id" => {
                    h.id = match v {
                        K::Atom(Atom::Long(j)) if j == nulls::LONG_NULL => return Err(HeaderError::NullId),
                        K::Atom(Atom::Long(j)) => Some(j),
                        K::Atom(Atom::Int(i)) if i == nulls::INT_NULL => return Err(HeaderError::NullId),
                        K::Atom(Atom::Int(i)) => Some(i64::from(i)),
                        other => {
                            return Err(HeaderError::Type {
                                field: "id",
                                expected: "a long",
                                got: other.ty(),
                            });
                        }
                    }
                }
                "to" => {}
                other => return Err(HeaderError::UnknownField(other.to_string())),
            }
        }
        if h.dedup.is_some() && h.id.is_none() {
            return Err(HeaderError::DedupWithoutId);
        }
        Ok(h)
    }
}

/// Item `i` of a dictionary's values (a general list or a vector).
pub(crate) fn item(values: &K, i: usize) -> Option<K> {
    match values {
        K::List(_, items) => items.get(i).cloned(),
        K::Vector(_, v) => v.get(i).map(K::Atom),
        _ => None,
    }
}

fn text(field: &'static str, v: &K) -> Result<Option<String>, HeaderError> {
    let bytes = match v {
        K::Atom(Atom::Symbol(s)) => s.as_ref(),
        K::Vector(_, Vector::Char(c)) => c.as_slice(),
        K::GenericNull => return Ok(None),
        other => return Err(HeaderError::Type { field, expected: "a symbol", got: other.ty() }),
    };
    if bytes.len() > MAX_HEADER_SYM_BYTES {
        return Err(HeaderError::TooLong(field));
    }
    if bytes.is_empty() {
        return Ok(None);
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use qmesh_codec::Attr;

    #[test]
    fn an_empty_dedup_key_is_refused_not_taken_for_no_dedup() {
        let h = dict(&["id", "dedup"], vec![K::long(1), K::sym("")]);
        assert_eq!(PubHeader::parse(&h), Err(HeaderError::EmptyDedup));
        let h = dict(&["id", "dedup"], vec![K::long(1), K::string("")]);
        assert_eq!(PubHeader::parse(&h), Err(HeaderError::EmptyDedup));
    }

    fn dict(keys: &[&str], values: Vec<K>) -> K {
        K::dict(K::syms(keys.iter().copied()), K::List(Attr::None, values))
    }

    #[test]
    fn parses_every_field() {
        let k = dict(
            &["on", "ts", "id", "dedup", "to"],
            vec![
                K::sym("feedA"),
                K::Atom(Atom::Timestamp(5)),
                K::long(-3),
                K::sym("trade"),
                K::Atom(Atom::Int(0)),
            ],
        );
        let h = PubHeader::parse(&k).expect("header");
        assert_eq!(
            h,
            PubHeader { on: Some("feedA".into()), ts: Some(5), id: Some(-3), dedup: Some("trade".into()) }
        );
    }

    #[test]
    fn null_ts_is_now_and_empty_dict_is_empty() {
        let k = dict(&["ts"], vec![K::Atom(Atom::Timestamp(nulls::LONG_NULL))]);
        assert_eq!(PubHeader::parse(&k).expect("h").ts, None);
        assert_eq!(PubHeader::parse(&K::GenericNull).expect("h"), PubHeader::default());
        let empty = K::dict(K::list(vec![]), K::list(vec![]));
        assert_eq!(PubHeader::parse(&empty).expect("h"), PubHeader::default());
    }

    #[test]
    fn typed_value_vector_works() {
        let k = K::dict(K::syms(["id"]), K::Vector(Attr::None, Vector::Long(vec![7])));
        assert_eq!(PubHeader::parse(&k).expect("h").id, Some(7));
    }

    #[test]
    fn refuses_bad_headers() {
        assert!(matches!(PubHeader::parse(&K::long(1)), Err(HeaderError::NotADict(-7))));
        assert!(matches!(
            PubHeader::parse(&dict(&["xx"], vec![K::long(1)])),
            Err(HeaderError::UnknownField(_))
        ));
        assert!(matches!(
            PubHeader::parse(&dict(&["id"], vec![K::long(nulls::LONG_NULL)])),
            Err(HeaderError::NullId)
        ));
        assert!(matches!(
            PubHeader::parse(&dict(&["dedup"], vec![K::sym("t")])),
            Err(HeaderError::DedupWithoutId)
        ));
        assert!(matches!(
            PubHeader::parse(&dict(&["on"], vec![K::sym("x".repeat(300))])),
            Err(HeaderError::TooLong("on"))
        ));
    }
}

//! What the service understands over kdb+ IPC, and what it sends, without
//! sockets.
//!
//! Incoming (sync or async):
//!
//! | message | meaning |
//! |---|---|
//! | `"select …"` (a string) | a SQL query; sync gets the result table |
//! | `` (`upd;`trade;data) `` / `` (`.u.upd;…) `` | append `data` (a table, a list of columns, or one row) to `trade` |
//! | `` (`queryService;(seq;"select …")) `` | the whitepaper's request from a gateway |
//! | `` (`tables;::) `` | the table names (a symbol vector) |
//!
//! A function name may also be sent as a string (`("upd";`trade;data)`), as
//! some client libraries do.
//!
//! The whitepaper's messages — `queryService` read here, and what the
//! service sends as `service.q` does (`registerResource` on connecting to the
//! load balancer, `returnRes` to the gateway, `returnService` after each
//! query) — are parsed and built by the `qmesh-whitepaper` crate, the one
//! place both ends of the protocol live.

use qmesh_codec::{Atom, K, Vector};
/// Longest service, table or function name accepted, in bytes: the one
/// bound of the whole estate ([`qmesh_whitepaper::MAX_NAME_BYTES`]).
pub use qmesh_whitepaper::MAX_NAME_BYTES;

/// A request the service can act on.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// A SQL query.
    Sql(String),
    /// Append `data` to `table`.
    Upd { table: String, data: K },
    /// The whitepaper's `queryService (seq;query)`. `query` is the SQL, or
    /// the error to send back when the query is not a string.
    QueryService { seq: K, query: Result<String, String> },
    /// The table names.
    Tables,
}

fn text(k: &K) -> Option<String> {
    match k {
        K::Vector(_, Vector::Char(c)) => String::from_utf8(c.clone()).ok(),
        K::Atom(Atom::Symbol(s)) => std::str::from_utf8(s).ok().map(str::to_string),
        K::Atom(Atom::Char(c)) => Some(char::from(*c).to_string()),
        _ => None,
    }
}

fn name(k: &K) -> Option<String> {
    text(k).filter(|n| n.len() <= MAX_NAME_BYTES)
}

/// Reads a message into a request; the error is the q error text to answer.
pub fn parse(msg: K) -> Result<Request, String> {
    match msg {
        K::Vector(_, Vector::Char(c)) => {
            let sql = String::from_utf8(c).map_err(|_| "bad request: SQL text is not UTF-8".to_string())?;
            // q's own ways of asking for the table names
            if matches!(sql.trim(), "tables[]" | "tables`" | "tables`." | "\\a") {
                return Ok(Request::Tables);
            }
            Ok(Request::Sql(sql))
        }
        K::List(_, items) if !items.is_empty() => {
            let mut items = items.into_iter();
            let head = items.next().expect("not empty");
            let f = match &head {
                K::Atom(Atom::Symbol(_)) | K::Vector(_, Vector::Char(_)) => name(&head),
                _ => None,
            }
            .ok_or_else(|| {
                format!(
                    "bad request: expected a SQL string or a list headed by a function name, got a list headed by type {}h",
                    head.ty()
                )
            })?;
            let args: Vec<K> = items.collect();
            match f.as_str() {
                "upd" | ".u.upd" => {
                    let [table, data]: [K; 2] = args.try_into().map_err(|a: Vec<K>| {
                        format!("bad request: {f} takes 2 arguments (table;data), got {}", a.len())
                    })?;
                    let table = match &table {
                        K::Atom(Atom::Symbol(_)) => name(&table),
                        _ => None,
                    }
                    .ok_or_else(|| format!("type: {f}: the table name must be a symbol"))?;
                    Ok(Request::Upd { table, data })
                }
                "queryService" => {
                    let [arg]: [K; 1] = args.try_into().map_err(|a: Vec<K>| {
                        format!("bad request: queryService takes 1 argument (seq;query), got {}", a.len())
                    })?;
                    let (seq, query) = qmesh_whitepaper::query_service_arg(arg)?;
                    let query = match &query {
                        K::Vector(_, Vector::Char(_)) => {
                            text(&query).ok_or_else(|| "bad request: SQL text is not UTF-8".to_string())
                        }
                        other => Err(format!(
                            "type: this service runs SQL strings; the query is of type {}h",
                            other.ty()
                        )),
                    };
                    Ok(Request::QueryService { seq, query })
                }
                "tables" => Ok(Request::Tables),
                other => Err(format!(
                    "bad request: unknown function `{other}`; this service answers SQL strings, upd, queryService and tables"
                )),
            }
        }
        other => Err(format!("bad request: expected a SQL string, got type {}h", other.ty())),
    }
}

/// The table names as a symbol vector.
pub fn tables(names: &[String]) -> K {
    K::syms(names.iter().map(String::as_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_strings() {
        assert_eq!(parse(K::string("select 1")), Ok(Request::Sql("select 1".into())));
        assert!(parse(K::string(b"\xff")).is_err());
        assert_eq!(parse(K::string("tables[]")), Ok(Request::Tables));
        assert_eq!(parse(K::string("\\a")), Ok(Request::Tables));
    }

    #[test]
    fn upd_forms() {
        let data = K::list(vec![K::syms(["a"])]);
        let want = Ok(Request::Upd { table: "trade".into(), data: data.clone() });
        assert_eq!(parse(K::list(vec![K::sym("upd"), K::sym("trade"), data.clone()])), want);
        assert_eq!(parse(K::list(vec![K::sym(".u.upd"), K::sym("trade"), data.clone()])), want);
        assert_eq!(parse(K::list(vec![K::string("upd"), K::sym("trade"), data.clone()])), want);
        let err = parse(K::list(vec![K::sym("upd"), K::sym("trade")])).unwrap_err();
        assert_eq!(err, "bad request: upd takes 2 arguments (table;data), got 1");
        let err = parse(K::list(vec![K::sym("upd"), K::string("trade"), data])).unwrap_err();
        assert!(err.starts_with("type:"), "{err}");
    }

    #[test]
    fn query_service() {
        let msg = K::list(vec![K::sym("queryService"), K::list(vec![K::long(7), K::string("select 1")])]);
        assert_eq!(parse(msg), Ok(Request::QueryService { seq: K::long(7), query: Ok("select 1".into()) }));
        let msg = K::list(vec![K::sym("queryService"), K::list(vec![K::long(7), K::long(1)])]);
        let Ok(Request::QueryService { query: Err(e), .. }) = parse(msg) else { panic!("error expected") };
        assert!(e.starts_with("type: this service runs SQL strings"), "{e}");
    }

    #[test]
    fn unknown_things_are_q_errors() {
        assert!(parse(K::long(1)).unwrap_err().starts_with("bad request:"));
        let e = parse(K::list(vec![K::sym("hopen"), K::long(1)])).unwrap_err();
        assert!(e.contains("unknown function `hopen`"), "{e}");
        assert!(parse(K::list(vec![K::long(1)])).is_err());
        assert_eq!(parse(K::list(vec![K::sym("tables"), K::GenericNull])), Ok(Request::Tables));
    }
}

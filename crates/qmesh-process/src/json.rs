//! kdb+ values as JSON: the one JSON form every qmesh HTTP API uses (the
//! gateway's and the service's `POST /query`, and the discovery and stream
//! APIs), and the one request body of `POST /query`.
//!
//! # The answer
//!
//! A query's answer is `{"type":98,"result":…}` ([`answer`]): `type` is q's
//! type number of the result (98 a table, 99 a dictionary or keyed table,
//! -7 a long atom, …) and `result` its JSON form ([`to_json`]), below. The
//! same value gives the same text wherever it is answered: a query sent
//! straight to a service instance and the same query through a gateway
//! answer the same bytes. Object members keep the order of the q value
//! (column order, dictionary key order).
//!
//! # The mapping
//!
//! | kdb+ (type) | JSON | null | infinities |
//! |---|---|---|---|
//! | boolean (1) | `true` / `false` | — | — |
//! | guid (2) | `"8c680a01-5a49-5aab-5a65-d4bfddb6a661"` | `null` (all zero) | — |
//! | byte (4) | number 0–255 | — | — |
//! | short, int, long (5–7) | number | `null` (`0Nh`, `0Ni`, `0N`) | their values (`0W` is 9223372036854775807, `-0W` its negation) |
//! | real (8) | number, the shortest decimal that reads back as the same 32-bit real (`1.1e` is `1.1`) | `null` (any NaN) | `null` (JSON has no infinity) |
//! | float (9) | number, the shortest decimal that reads back as the same double | `null` (any NaN) | `null` |
//! | char (10) | one-character string; a char vector is one string | `" "` (q's char null is the blank) | — |
//! | symbol (11) | string | `""` | — |
//! | timestamp (12) | `"2024-01-02T03:04:05.123456789"` (nine digits, no zone: kdb+ times are zone-less) | `null` | `"0W"` / `"-0W"` |
//! | month (13) | `"2024-01"` | `null` | `"0W"` / `"-0W"` |
//! | date (14) | `"2024-01-02"` | `null` | `"0W"` / `"-0W"` |
//! | datetime (15) | `"2024-01-02T03:04:05.123"` (to the millisecond, as q prints it) | `null` (any NaN) | `"0W"` / `"-0W"` |
//! | timespan (16) | `"0D03:04:05.123456789"` (`-` first when negative) | `null` | `"0W"` / `"-0W"` |
//! | minute (17) / second (18) / time (19) | `"03:04"` / `"03:04:05"` / `"03:04:05.123"` (`-` first when negative) | `null` | `"0W"` / `"-0W"` |
//! | vector (1–19) | array of the atoms' forms (a char vector: one string) | | |
//! | general list (0) | array of the items' forms | | |
//! | dictionary (99), symbol or string keys | object, keys in order | | |
//! | dictionary, other keys | `{"keys":[…],"values":[…]}` | | |
//! | table (98), records form (the default) | array of objects, one a row: `[{"sym":"a","px":1.5},…]` | | |
//! | table, columns form | object of column arrays: `{"sym":["a"],"px":[1.5]}` | | |
//! | keyed table (99 of two tables) | the table of its key columns then its value columns, in either form; `type` is 99 | | |
//! | `::` (generic null, 101) | `null` | | |
//! | enumeration (20–76) | array of the indices | | |
//! | function (100–112) | its q source as a string when it has one (a lambda), else `null` | | |
//! | error (-128) | `{"error":"text"}` | | |
//!
//! Strings and symbols that are not UTF-8 have their bad bytes replaced
//! (U+FFFD): JSON text is Unicode. Use kdb+ IPC or Arrow for bytes exactly.
//!
//! # The request
//!
//! `POST /query` takes one body everywhere ([`QueryRequest`]):
//!
//! ```json
//! {"query": "select from trade", "service": "EQ", "timeout_ms": 5000, "format": "columns"}
//! ```
//!
//! `query` is required; `service` (a name or a list of names) and
//! `all_instances` only at a gateway, which routes by them; `timeout_ms` and
//! `format` (`records`, the default, or `columns`; also `?format=` in the
//! URL) everywhere. Unknown members are refused (`bad request`), so a typo
//! is not silently ignored.

use qmesh_codec::temporal;
use qmesh_codec::{Atom, K, Table, Vector, nulls};
use serde::Deserialize;
use serde_json::{Map, Number, Value};

use crate::{ErrorKind, WireError};

/// How tables are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TableForm {
    /// `[{"sym":"a","px":1.5},…]`
    #[default]
    Records,
    /// `{"sym":["a",…],"px":[1.5,…]}`
    Columns,
}

impl TableForm {
    /// `records` or `columns` (none: records); anything else is a
    /// `bad request`.
    pub fn parse(name: Option<&str>) -> Result<TableForm, WireError> {
        match name {
            None | Some("records") => Ok(TableForm::Records),
            Some("columns") => Ok(TableForm::Columns),
            Some(other) => Err(WireError::with_detail(
                ErrorKind::BadRequest,
                format!("format must be records or columns, not {other:?}"),
            )),
        }
    }
}

/// One service name or several, as `service` is given.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Services {
    One(String),
    Many(Vec<String>),
}

/// The body of `POST /query`, the same at every component (see the module
/// documentation).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// The query: q text for a q service, SQL for a qmesh service.
    pub query: String,
    /// The service(s) to route to; a gateway needs it, an instance refuses
    /// it.
    #[serde(default)]
    pub service: Option<Services>,
    /// The request's deadline, in milliseconds.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// At a gateway: run on every instance of the service and join.
    #[serde(default)]
    pub all_instances: bool,
    /// `records` (the default) or `columns`.
    #[serde(default)]
    pub format: Option<String>,
}

impl QueryRequest {
    /// Reads a body; JSON that is not of this form is a `bad request`
    /// naming what is wrong.
    pub fn parse(body: &[u8]) -> Result<QueryRequest, WireError> {
        serde_json::from_slice(body)
            .map_err(|e| WireError::with_detail(ErrorKind::BadRequest, format!("JSON body: {e}")))
    }

    /// The table form: the body's `format`, else the URL's `?format=`.
    pub fn table_form(&self, url_format: Option<&str>) -> Result<TableForm, WireError> {
        TableForm::parse(self.format.as_deref().or(url_format))
    }

    /// The service names given, in order (empty when none).
    pub fn services(&self) -> Vec<String> {
        match &self.service {
            None => Vec::new(),
            Some(Services::One(s)) => vec![s.clone()],
            Some(Services::Many(v)) => v.clone(),
        }
    }
}

/// The answer to a query: `{"type":t,"result":…}`.
pub fn answer(k: &K, form: TableForm) -> Value {
    let mut out = Map::new();
    out.insert("type".to_string(), Value::from(k.ty()));
    out.insert("result".to_string(), to_json(k, form));
    Value::Object(out)
}

/// `k` as JSON (the mapping in the module documentation).
pub fn to_json(k: &K, form: TableForm) -> Value {
    match k {
        K::Atom(a) => atom(a),
        K::Vector(_, Vector::Char(c)) => Value::String(text(c)),
        K::Vector(_, v) => Value::Array((0..v.len()).filter_map(|i| v.get(i)).map(|a| atom(&a)).collect()),
        K::List(_, items) => Value::Array(items.iter().map(|x| to_json(x, form)).collect()),
        K::Dict(d) => match (&d.keys, &d.values) {
            (K::Table(kt), K::Table(vt)) => {
                let mut names = kt.names.clone();
                for n in vt.names.iter() {
                    names.push(n);
                }
                let columns = kt.columns.iter().chain(vt.columns.iter()).cloned().collect();
                table(&Table { attr: kt.attr, names, columns }, form)
            }
            (keys, values) => {
                let names: Option<Vec<String>> = match keys {
                    K::Vector(_, Vector::Symbol(s)) => Some(s.iter().map(text).collect()),
                    K::List(_, items) => items.iter().map(|x| x.as_text().map(text)).collect(),
                    _ => None,
                };
                let vals = element_values(values, form);
                match names {
                    Some(names) if names.len() == vals.len() => {
                        Value::Object(names.into_iter().zip(vals).collect::<Map<String, Value>>())
                    }
                    _ => {
                        let mut out = Map::new();
                        out.insert("keys".to_string(), to_json(keys, form));
                        out.insert("values".to_string(), Value::Array(vals));
                        Value::Object(out)
                    }
                }
            }
        },
        K::Table(t) => table(t, form),
        K::Enumeration(e) => Value::Array(e.indices.iter().map(|i| Value::from(*i)).collect()),
        K::GenericNull => Value::Null,
        K::Function(f) => f.lambda_source().map_or(Value::Null, |s| Value::String(text(s))),
        K::Error(t) => serde_json::json!({ "error": text(t) }),
        K::Raw(r) => match r.decode() {
            Ok(k) => to_json(&k, form),
            Err(e) => serde_json::json!({ "error": format!("undecodable: {e}") }),
        },
    }
}

fn element_values(values: &K, form: TableForm) -> Vec<Value> {
    match values {
        K::Vector(_, v) => (0..v.len()).filter_map(|i| v.get(i)).map(|a| atom(&a)).collect(),
        K::List(_, items) => items.iter().map(|x| to_json(x, form)).collect(),
        other => vec![to_json(other, form)],
    }
}

fn table(t: &Table, form: TableForm) -> Value {
    let names: Vec<String> = t.names.iter().map(text).collect();
    let cols: Vec<Vec<Value>> = t.columns.iter().map(|c| element_values(c, form)).collect();
    match form {
        TableForm::Columns => {
            Value::Object(names.into_iter().zip(cols.into_iter().map(Value::Array)).collect())
        }
        TableForm::Records => {
            let rows = t.row_count();
            let mut cols: Vec<std::vec::IntoIter<Value>> = cols.into_iter().map(Vec::into_iter).collect();
            let mut out = Vec::with_capacity(rows);
            for _ in 0..rows {
                let mut row = Map::new();
                for (name, col) in names.iter().zip(cols.iter_mut()) {
                    row.insert(name.clone(), col.next().unwrap_or(Value::Null));
                }
                out.push(Value::Object(row));
            }
            Value::Array(out)
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn float(v: f64) -> Value {
    Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// A real as the shortest decimal that reads back as the same real, so
/// `1.1e` is `1.1`, not the double nearest the real (`1.100000023841858`).
fn real(v: f32) -> Value {
    if !v.is_finite() {
        return Value::Null;
    }
    v.to_string().parse::<f64>().map_or(Value::Null, float)
}

/// `"0W"` or `"-0W"` when a temporal is one of its infinities.
fn temporal_inf(positive: bool) -> Value {
    Value::String(if positive { "0W" } else { "-0W" }.to_string())
}

fn long_inf(v: i64) -> Option<bool> {
    (v == nulls::LONG_INF || v == -nulls::LONG_INF).then_some(v > 0)
}

fn int_inf(v: i32) -> Option<bool> {
    (v == nulls::INT_INF || v == -nulls::INT_INF).then_some(v > 0)
}

fn atom(a: &Atom) -> Value {
    if a.is_null() {
        return match a {
            Atom::Char(_) => Value::String(" ".into()),
            Atom::Symbol(_) => Value::String(String::new()),
            _ => Value::Null,
        };
    }
    match a {
        Atom::Boolean(b) => Value::Bool(*b),
        Atom::Guid(g) => Value::String(guid(g)),
        Atom::Byte(b) => Value::from(*b),
        Atom::Short(h) => Value::from(*h),
        Atom::Int(i) => Value::from(*i),
        Atom::Long(j) => Value::from(*j),
        Atom::Real(e) => real(*e),
        Atom::Float(f) => float(*f),
        Atom::Char(c) => Value::String(text(&[*c])),
        Atom::Symbol(s) => Value::String(text(s)),
        Atom::Timestamp(p) => match long_inf(*p) {
            Some(pos) => temporal_inf(pos),
            None => opt(timestamp(*p)),
        },
        Atom::Month(m) => match int_inf(*m) {
            Some(pos) => temporal_inf(pos),
            None => opt(temporal::month_to_year_month(*m).map(|(y, m)| format!("{y:04}-{m:02}"))),
        },
        Atom::Date(d) => match int_inf(*d) {
            Some(pos) => temporal_inf(pos),
            None => {
                opt(temporal::date_to_civil(*d).map(|c| format!("{:04}-{:02}-{:02}", c.year, c.month, c.day)))
            }
        },
        Atom::Datetime(z) if z.is_infinite() => temporal_inf(*z > 0.0),
        Atom::Datetime(z) => opt(temporal::datetime_to_kdb_millis(*z)
            .and_then(|ms| ms.checked_mul(temporal::NANOS_PER_MILLI))
            .and_then(timestamp)
            .map(|s| s[..s.len() - 6].to_string())),
        Atom::Timespan(n) => match long_inf(*n) {
            Some(pos) => temporal_inf(pos),
            None => Value::String(timespan(*n)),
        },
        Atom::Minute(u) => match int_inf(*u) {
            Some(pos) => temporal_inf(pos),
            None => Value::String(clock(i64::from(*u) * 60, None, 2)),
        },
        Atom::Second(v) => match int_inf(*v) {
            Some(pos) => temporal_inf(pos),
            None => Value::String(clock(i64::from(*v), None, 3)),
        },
        Atom::Time(t) => match int_inf(*t) {
            Some(pos) => temporal_inf(pos),
            None => {
                let t = i64::from(*t);
                let sign = if t < 0 { "-" } else { "" };
                let a = t.unsigned_abs();
                Value::String(format!("{sign}{}", clock((a / 1000) as i64, Some(((a % 1000) as i64, 3)), 3)))
            }
        },
    }
}

fn opt(s: Option<String>) -> Value {
    s.map_or(Value::Null, Value::String)
}

fn guid(g: &[u8; 16]) -> String {
    let h: String = g.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn timestamp(p: i64) -> Option<String> {
    let c = temporal::timestamp_to_civil(p)?;
    Some(format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}",
        c.date.year, c.date.month, c.date.day, c.hour, c.minute, c.second, c.nanos
    ))
}

fn timespan(n: i64) -> String {
    let sign = if n < 0 { "-" } else { "" };
    let n = n.unsigned_abs();
    let day = 86_400_000_000_000u64;
    let (d, rest) = (n / day, n % day);
    let secs = rest / 1_000_000_000;
    format!("{sign}{d}D{:02}:{:02}:{:02}.{:09}", secs / 3600, secs / 60 % 60, secs % 60, rest % 1_000_000_000)
}

/// `hh:mm[:ss][.fff]` from seconds; `fields` 2 = hh:mm, 3 = hh:mm:ss.
fn clock(secs: i64, frac: Option<(i64, usize)>, fields: usize) -> String {
    let sign = if secs < 0 { "-" } else { "" };
    let s = secs.unsigned_abs();
    let mut out = format!("{sign}{:02}:{:02}", s / 3600, s / 60 % 60);
    if fields == 3 {
        out.push_str(&format!(":{:02}", s % 60));
    }
    if let Some((f, w)) = frac {
        out.push_str(&format!(".{f:0w$}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use qmesh_codec::{Attr, nulls};
    use serde_json::json;

    fn trade() -> K {
        K::Table(Table {
            attr: Attr::None,
            names: ["sym", "px", "n"].into_iter().collect(),
            columns: vec![
                K::syms(["a", "b"]),
                K::Vector(Attr::None, Vector::Float(vec![1.5, f64::NAN])),
                K::Vector(Attr::None, Vector::Long(vec![nulls::LONG_NULL, 7])),
            ],
        })
    }

    fn j(k: K) -> Value {
        to_json(&k, TableForm::Records)
    }

    #[test]
    fn tables_as_records_or_columns() {
        assert_eq!(
            to_json(&trade(), TableForm::Records),
            json!([{"sym":"a","px":1.5,"n":null},{"sym":"b","px":null,"n":7}])
        );
        assert_eq!(
            to_json(&trade(), TableForm::Columns),
            json!({"sym":["a","b"],"px":[1.5,null],"n":[null,7]})
        );
        assert_eq!(answer(&trade(), TableForm::Columns)["type"], 98);
    }

    /// JSON objects keep the table's column order (not sorted keys).
    #[test]
    fn columns_keep_their_order_in_the_text() {
        let text = |form| serde_json::to_string(&to_json(&trade(), form)).expect("text");
        assert_eq!(
            text(TableForm::Records),
            r#"[{"sym":"a","px":1.5,"n":null},{"sym":"b","px":null,"n":7}]"#
        );
        assert_eq!(text(TableForm::Columns), r#"{"sym":["a","b"],"px":[1.5,null],"n":[null,7]}"#);
        assert_eq!(
            serde_json::to_string(&answer(&K::long(1), TableForm::Records)).expect("text"),
            r#"{"type":-7,"result":1}"#
        );
    }

    #[test]
    fn keyed_table_puts_keys_first() {
        let K::Table(t) = trade() else { panic!() };
        let keys = Table {
            attr: Attr::None,
            names: ["sym"].into_iter().collect(),
            columns: vec![t.columns[0].clone()],
        };
        let vals = Table {
            attr: Attr::None,
            names: ["px", "n"].into_iter().collect(),
            columns: vec![t.columns[1].clone(), t.columns[2].clone()],
        };
        let kt = K::dict(K::Table(keys), K::Table(vals));
        assert_eq!(to_json(&kt, TableForm::Columns), json!({"sym":["a","b"],"px":[1.5,null],"n":[null,7]}));
        assert_eq!(answer(&kt, TableForm::Records)["type"], 99);
    }

    #[test]
    fn atoms_and_temporals() {
        assert_eq!(j(K::GenericNull), Value::Null);
        assert_eq!(j(K::string("hi")), json!("hi"));
        assert_eq!(j(K::Atom(Atom::Date(0))), json!("2000-01-01"));
        assert_eq!(j(K::Atom(Atom::Month(1))), json!("2000-02"));
        assert_eq!(j(K::Atom(Atom::Timestamp(1_500_000_000))), json!("2000-01-01T00:00:01.500000000"));
        assert_eq!(j(K::Atom(Atom::Timespan(-90_000_000_000))), json!("-0D00:01:30.000000000"));
        assert_eq!(j(K::Atom(Atom::Time(3_723_004))), json!("01:02:03.004"));
        assert_eq!(j(K::Atom(Atom::Time(-1_500))), json!("-00:00:01.500"));
        assert_eq!(j(K::Atom(Atom::Minute(61))), json!("01:01"));
        assert_eq!(j(K::Atom(Atom::Second(3661))), json!("01:01:01"));
        assert_eq!(j(K::Atom(Atom::Datetime(0.5))), json!("2000-01-01T12:00:00.000"));
        assert_eq!(j(K::Atom(Atom::Date(nulls::INT_NULL))), Value::Null);
        assert_eq!(j(K::Atom(Atom::Datetime(f64::from_bits(0x7FF8_0000_0000_0000)))), Value::Null);
        assert_eq!(j(K::Atom(Atom::Long(nulls::LONG_INF))), json!(i64::MAX));
        assert_eq!(j(K::Atom(Atom::Int(-nulls::INT_INF))), json!(-i64::from(i32::MAX)));
        assert_eq!(j(K::Atom(Atom::Short(nulls::SHORT_NULL))), Value::Null);
        assert_eq!(j(K::Atom(Atom::Float(f64::INFINITY))), Value::Null);
        assert_eq!(j(K::Atom(Atom::Real(1.1))), json!(1.1));
        assert_eq!(j(K::Atom(Atom::Real(f32::NEG_INFINITY))), Value::Null);
        assert_eq!(j(K::Atom(Atom::Char(b' '))), json!(" "));
        assert_eq!(j(K::sym("")), json!(""));
        assert_eq!(j(K::Atom(Atom::Byte(255))), json!(255));
        assert_eq!(j(K::Atom(Atom::Boolean(true))), json!(true));
        for inf in [
            Atom::Timestamp(nulls::LONG_INF),
            Atom::Timespan(nulls::LONG_INF),
            Atom::Date(nulls::INT_INF),
            Atom::Month(nulls::INT_INF),
            Atom::Minute(nulls::INT_INF),
            Atom::Second(nulls::INT_INF),
            Atom::Time(nulls::INT_INF),
            Atom::Datetime(f64::INFINITY),
        ] {
            assert_eq!(j(K::Atom(inf.clone())), json!("0W"), "{inf:?}");
        }
        assert_eq!(j(K::Atom(Atom::Date(-nulls::INT_INF))), json!("-0W"));
        assert_eq!(j(K::Atom(Atom::Guid([0; 16]))), Value::Null);
        assert_eq!(
            j(K::Atom(Atom::Guid([
                0x8c, 0x68, 0x0a, 0x01, 0x5a, 0x49, 0x5a, 0xab, 0x5a, 0x65, 0xd4, 0xbf, 0xdd, 0xb6, 0xa6,
                0x61
            ]))),
            json!("8c680a01-5a49-5aab-5a65-d4bfddb6a661")
        );
    }

    #[test]
    fn dictionaries() {
        let d = K::dict(K::syms(["a", "b"]), K::Vector(Attr::None, Vector::Long(vec![1, 2])));
        assert_eq!(j(d), json!({"a":1,"b":2}));
        let d = K::dict(K::Vector(Attr::None, Vector::Long(vec![1, 2])), K::syms(["x", "y"]));
        assert_eq!(j(d), json!({"keys":[1,2],"values":["x","y"]}));
        let raw = K::Raw(qmesh_codec::RawObject::encode(&K::long(5)));
        assert_eq!(j(raw), json!(5));
    }

    #[test]
    fn one_request_body() {
        let r = QueryRequest::parse(br#"{"query":"select from t","service":["A","B"],"format":"columns"}"#)
            .expect("body");
        assert_eq!(r.services(), ["A", "B"]);
        assert_eq!(r.table_form(None), Ok(TableForm::Columns));
        let r = QueryRequest::parse(br#"{"query":"x"}"#).expect("body");
        assert_eq!(r.services(), Vec::<String>::new());
        assert_eq!(r.table_form(Some("columns")), Ok(TableForm::Columns));
        assert_eq!(r.table_form(Some("rows")).map_err(|e| e.kind), Err(ErrorKind::BadRequest));
        let e = QueryRequest::parse(br#"{"sql":"x"}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(QueryRequest::parse(b"select 1").is_err());
    }
}

//! kdb+ values as JSON, for the gateway's HTTP API.
//!
//! | kdb+ | JSON |
//! |---|---|
//! | boolean | `true` / `false` |
//! | byte, short, int, long | number; null (`0N`…) → `null`; infinities (`0W`) → their value |
//! | real, float | number; `0n` and infinities → `null` |
//! | char | one-character string; string (char vector) → string |
//! | symbol | string |
//! | guid | `"8c680a01-5a49-5aab-5a65-d4bfddb6a661"` |
//! | timestamp | `"2024-01-02T03:04:05.123456789"` |
//! | month / date | `"2024-01"` / `"2024-01-02"` |
//! | datetime | `"2024-01-02T03:04:05.123"` |
//! | timespan | `"0D03:04:05.123456789"` (sign first when negative) |
//! | minute / second / time | `"03:04"` / `"03:04:05"` / `"03:04:05.123"` |
//! | any temporal null | `null` |
//! | list, vector | array |
//! | dictionary with symbol or string keys | object; other keys: `{"keys":[…],"values":[…]}` |
//! | table, records form (default) | array of objects, one per row |
//! | table, columns form | object of column arrays |
//! | keyed table | like a table, key columns first |
//! | `::` | `null` |
//! | enumeration | array of indices |
//! | function | its q source when it has one, else `null` |
//!
//! Non-UTF-8 bytes in strings and symbols are replaced (U+FFFD).

use qmesh_codec::temporal;
use qmesh_codec::{Atom, K, Table, Vector};
use serde_json::{Map, Number, Value};

/// How tables are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TableForm {
    /// `[{"sym":"a","px":1.5},…]`
    #[default]
    Records,
    /// `{"sym":["a",…],"px":[1.5,…]}`
    Columns,
}

/// `k` as JSON.
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
                    _ => serde_json::json!({ "keys": to_json(keys, form), "values": Value::Array(vals) }),
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

fn int(v: i64, null: bool) -> Value {
    if null { Value::Null } else { Value::from(v) }
}

fn float(v: f64) -> Value {
    Number::from_f64(v).map_or(Value::Null, Value::Number)
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
        Atom::Short(h) => int(i64::from(*h), false),
        Atom::Int(i) => int(i64::from(*i), false),
        Atom::Long(j) => int(*j, false),
        Atom::Real(e) => float(f64::from(*e)),
        Atom::Float(f) => float(*f),
        Atom::Char(c) => Value::String(text(&[*c])),
        Atom::Symbol(s) => Value::String(text(s)),
        Atom::Timestamp(p) => opt(timestamp(*p)),
        Atom::Month(m) => opt(temporal::month_to_year_month(*m).map(|(y, m)| format!("{y:04}-{m:02}"))),
        Atom::Date(d) => {
            opt(temporal::date_to_civil(*d).map(|c| format!("{:04}-{:02}-{:02}", c.year, c.month, c.day)))
        }
        Atom::Datetime(z) => opt(temporal::datetime_to_kdb_millis(*z)
            .and_then(|ms| ms.checked_mul(temporal::NANOS_PER_MILLI))
            .and_then(timestamp)
            .map(|s| s[..s.len() - 6].to_string())),
        Atom::Timespan(n) => Value::String(timespan(*n)),
        Atom::Minute(u) => Value::String(clock(i64::from(*u) * 60, None, 2)),
        Atom::Second(v) => Value::String(clock(i64::from(*v), None, 3)),
        Atom::Time(t) => {
            let t = i64::from(*t);
            Value::String(clock(t.div_euclid(1000), Some((t.rem_euclid(1000), 3)), 3))
        }
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
    }

    /// JSON objects keep the table's column order (not sorted keys).
    #[test]
    fn columns_keep_their_order_in_the_text() {
        let text = |form| serde_json::to_string(&to_json(&trade(), form)).unwrap();
        assert_eq!(
            text(TableForm::Records),
            r#"[{"sym":"a","px":1.5,"n":null},{"sym":"b","px":null,"n":7}]"#
        );
        assert_eq!(text(TableForm::Columns), r#"{"sym":["a","b"],"px":[1.5,null],"n":[null,7]}"#);
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
    }

    #[test]
    fn atoms_and_temporals() {
        assert_eq!(to_json(&K::GenericNull, TableForm::Records), Value::Null);
        assert_eq!(to_json(&K::string("hi"), TableForm::Records), json!(["h", "i"].concat()));
        assert_eq!(to_json(&K::Atom(Atom::Date(0)), TableForm::Records), json!("2000-01-01"));
        assert_eq!(to_json(&K::Atom(Atom::Month(1)), TableForm::Records), json!("2000-02"));
        assert_eq!(
            to_json(&K::Atom(Atom::Timestamp(1_500_000_000)), TableForm::Records),
            json!("2000-01-01T00:00:01.500000000")
        );
        assert_eq!(
            to_json(&K::Atom(Atom::Timespan(-90_000_000_000)), TableForm::Records),
            json!("-0D00:01:30.000000000")
        );
        assert_eq!(to_json(&K::Atom(Atom::Time(3_723_004)), TableForm::Records), json!("01:02:03.004"));
        assert_eq!(to_json(&K::Atom(Atom::Minute(61)), TableForm::Records), json!("01:01"));
        assert_eq!(to_json(&K::Atom(Atom::Second(3661)), TableForm::Records), json!("01:01:01"));
        assert_eq!(
            to_json(&K::Atom(Atom::Datetime(0.5)), TableForm::Records),
            json!("2000-01-01T12:00:00.000")
        );
        assert_eq!(to_json(&K::Atom(Atom::Date(nulls::INT_NULL)), TableForm::Records), Value::Null);
        assert_eq!(to_json(&K::Atom(Atom::Long(nulls::LONG_INF)), TableForm::Records), json!(i64::MAX));
        assert_eq!(to_json(&K::Atom(Atom::Float(f64::INFINITY)), TableForm::Records), Value::Null);
        assert_eq!(
            to_json(
                &K::Atom(Atom::Guid([
                    0x8c, 0x68, 0x0a, 0x01, 0x5a, 0x49, 0x5a, 0xab, 0x5a, 0x65, 0xd4, 0xbf, 0xdd, 0xb6, 0xa6,
                    0x61
                ])),
                TableForm::Records
            ),
            json!("8c680a01-5a49-5aab-5a65-d4bfddb6a661")
        );
    }

    #[test]
    fn dictionaries() {
        let d = K::dict(K::syms(["a", "b"]), K::Vector(Attr::None, Vector::Long(vec![1, 2])));
        assert_eq!(to_json(&d, TableForm::Records), json!({"a":1,"b":2}));
        let d = K::dict(K::Vector(Attr::None, Vector::Long(vec![1, 2])), K::syms(["x", "y"]));
        assert_eq!(to_json(&d, TableForm::Records), json!({"keys":[1,2],"values":["x","y"]}));
        let raw = K::Raw(qmesh_codec::RawObject::encode(&K::long(5)));
        assert_eq!(to_json(&raw, TableForm::Records), json!(5));
    }
}

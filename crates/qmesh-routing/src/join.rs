//! Joining the results of a fan-out.
//!
//! * Every part an unkeyed table with the same column names: one table, the
//!   parts' rows one after the other (q's `raze`). Column attributes are
//!   dropped (a sorted column need not stay sorted).
//! * Every part a keyed table with the same key and value columns: one keyed
//!   table, rows appended (no upsert: a key present in two parts appears
//!   twice, so nothing is silently lost).
//! * Anything else (atoms, lists, tables of different shapes): a general
//!   list of the parts, in request order, each exactly as its service sent it.

use qmesh_codec::{Attr, Dict, K, RawObject, Table, Vector, types};

use crate::types::Failure;

/// Joins the parts of a fan-out (see the module docs).
pub fn join(parts: Vec<RawObject>) -> Result<K, Failure> {
    let all = |ty: i16| !parts.is_empty() && parts.iter().all(|p| p.ty() == ty);
    if all(i16::from(types::TABLE)) {
        let tables = decode_all(&parts)?;
        let tables: Vec<Table> =
            tables.into_iter().filter_map(|k| if let K::Table(t) = k { Some(t) } else { None }).collect();
        if let Some(t) = concat_tables(tables) {
            return Ok(K::Table(t));
        }
    } else if all(i16::from(types::DICT)) {
        let dicts = decode_all(&parts)?;
        if let Some(k) = concat_keyed(dicts) {
            return Ok(k);
        }
    }
    Ok(K::list(parts.into_iter().map(K::Raw).collect()))
}

fn decode_all(parts: &[RawObject]) -> Result<Vec<K>, Failure> {
    parts
        .iter()
        .map(|p| p.decode().map_err(|e| Failure::Internal(format!("cannot decode a part to join: {e}"))))
        .collect()
}

fn concat_keyed(dicts: Vec<K>) -> Option<K> {
    let mut keys = Vec::with_capacity(dicts.len());
    let mut values = Vec::with_capacity(dicts.len());
    for d in dicts {
        let K::Dict(d) = d else { return None };
        let Dict { keys: K::Table(k), values: K::Table(v), .. } = *d else { return None };
        keys.push(k);
        values.push(v);
    }
    let keys = concat_tables(keys)?;
    let values = concat_tables(values)?;
    Some(K::dict(K::Table(keys), K::Table(values)))
}

/// Appends tables with identical column names; `None` if they differ or a
/// column cannot be appended.
pub fn concat_tables(tables: Vec<Table>) -> Option<Table> {
    let mut it = tables.into_iter();
    let mut acc = it.next()?;
    acc.attr = Attr::None;
    for c in &mut acc.columns {
        clear_attr(c);
    }
    for t in it {
        if t.names != acc.names {
            return None;
        }
        let mut cols = Vec::with_capacity(acc.columns.len());
        for (a, b) in std::mem::take(&mut acc.columns).into_iter().zip(t.columns) {
            cols.push(concat_columns(a, b)?);
        }
        acc.columns = cols;
    }
    Some(acc)
}

fn clear_attr(k: &mut K) {
    match k {
        K::Vector(a, _) | K::List(a, _) => *a = Attr::None,
        K::Enumeration(e) => e.attr = Attr::None,
        _ => {}
    }
}

/// Appends two columns.
fn concat_columns(a: K, b: K) -> Option<K> {
    match (a, b) {
        (K::Vector(_, x), K::Vector(_, y)) => match concat_vectors(x, y) {
            Ok(v) => Some(K::Vector(Attr::None, v)),
            Err((x, y)) => Some(K::List(Attr::None, atoms(x).into_iter().chain(atoms(y)).collect())),
        },
        (K::List(_, x), K::List(_, y)) => Some(K::List(Attr::None, x.into_iter().chain(y).collect())),
        // an empty general list is q's untyped empty column
        (K::List(_, x), K::Vector(_, y)) if x.is_empty() => Some(K::Vector(Attr::None, y)),
        (K::Vector(_, x), K::List(_, y)) if y.is_empty() => Some(K::Vector(Attr::None, x)),
        (K::List(_, x), K::Vector(_, y)) => {
            Some(K::List(Attr::None, x.into_iter().chain(atoms(y)).collect()))
        }
        (K::Vector(_, x), K::List(_, y)) => {
            Some(K::List(Attr::None, atoms(x).into_iter().chain(y).collect()))
        }
        (K::Enumeration(mut x), K::Enumeration(y)) if x.ty == y.ty && x.domain == y.domain => {
            x.indices.extend(y.indices);
            x.attr = Attr::None;
            Some(K::Enumeration(x))
        }
        _ => None,
    }
}

fn atoms(v: Vector) -> Vec<K> {
    (0..v.len()).filter_map(|i| v.get(i)).map(K::Atom).collect()
}

/// Appends `y` to `x` when both have the same type; gives both back if not.
fn concat_vectors(x: Vector, y: Vector) -> Result<Vector, (Vector, Vector)> {
    macro_rules! same {
        ($($v:ident),*) => {
            match (x, y) {
                $((Vector::$v(mut a), Vector::$v(b)) => {
                    a.extend(b);
                    Ok(Vector::$v(a))
                })*
                (Vector::Symbol(mut a), Vector::Symbol(b)) => {
                    for s in b.iter() {
                        a.push(s);
                    }
                    Ok(Vector::Symbol(a))
                }
                (x, y) => Err((x, y)),
            }
        };
    }
    same!(
        Boolean, Guid, Byte, Short, Int, Long, Real, Float, Char, Timestamp, Month, Date, Datetime, Timespan,
        Minute, Second, Time
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use qmesh_codec::Atom;

    fn table(syms: &[&str], px: &[f64]) -> K {
        K::Table(Table {
            attr: Attr::None,
            names: ["sym", "px"].into_iter().collect(),
            columns: vec![
                K::Vector(Attr::Grouped, Vector::Symbol(syms.iter().collect())),
                K::Vector(Attr::None, Vector::Float(px.to_vec())),
            ],
        })
    }

    fn raw(k: &K) -> RawObject {
        RawObject::encode(k)
    }

    #[test]
    fn tables_are_concatenated() {
        let j = join(vec![raw(&table(&["a"], &[1.0])), raw(&table(&["b", "c"], &[2.0, 3.0]))]).unwrap();
        let mut want = table(&["a", "b", "c"], &[1.0, 2.0, 3.0]);
        if let K::Table(t) = &mut want {
            t.columns[0] = K::Vector(Attr::None, Vector::Symbol(["a", "b", "c"].into_iter().collect()));
        }
        assert_eq!(j, want);
    }

    #[test]
    fn empty_table_parts_join() {
        let empty = K::Table(Table {
            attr: Attr::None,
            names: ["sym", "px"].into_iter().collect(),
            columns: vec![K::list(vec![]), K::list(vec![])],
        });
        let j = join(vec![raw(&empty), raw(&table(&["a"], &[1.0]))]).unwrap();
        assert_eq!(j.count(), 1);
        let j = join(vec![raw(&empty), raw(&empty)]).unwrap();
        assert_eq!(j.ty(), 98);
        assert_eq!(j.count(), 0);
    }

    #[test]
    fn different_shapes_give_a_list() {
        let other = K::Table(Table {
            attr: Attr::None,
            names: ["x"].into_iter().collect(),
            columns: vec![K::Vector(Attr::None, Vector::Long(vec![1]))],
        });
        let parts = vec![raw(&table(&["a"], &[1.0])), raw(&other)];
        assert_eq!(join(parts.clone()).unwrap(), K::list(parts.into_iter().map(K::Raw).collect()));
        let parts = vec![raw(&K::long(1)), raw(&K::GenericNull), raw(&K::string("x"))];
        assert_eq!(join(parts.clone()).unwrap(), K::list(parts.into_iter().map(K::Raw).collect()));
    }

    #[test]
    fn mixed_column_types_become_general_lists() {
        let a = K::Table(Table {
            attr: Attr::None,
            names: ["x"].into_iter().collect(),
            columns: vec![K::Vector(Attr::None, Vector::Long(vec![1]))],
        });
        let b = K::Table(Table {
            attr: Attr::None,
            names: ["x"].into_iter().collect(),
            columns: vec![K::Vector(Attr::None, Vector::Float(vec![2.0]))],
        });
        let K::Table(t) = join(vec![raw(&a), raw(&b)]).unwrap() else { panic!() };
        assert_eq!(t.columns[0], K::list(vec![K::long(1), K::Atom(Atom::Float(2.0))]));
    }

    #[test]
    fn keyed_tables_append() {
        let kt = |k: i64, v: f64| {
            K::dict(
                K::Table(Table {
                    attr: Attr::None,
                    names: ["k"].into_iter().collect(),
                    columns: vec![K::Vector(Attr::None, Vector::Long(vec![k]))],
                }),
                K::Table(Table {
                    attr: Attr::None,
                    names: ["v"].into_iter().collect(),
                    columns: vec![K::Vector(Attr::None, Vector::Float(vec![v]))],
                }),
            )
        };
        let j = join(vec![raw(&kt(1, 1.0)), raw(&kt(1, 2.0))]).unwrap();
        assert_eq!(j.count(), 2);
    }
}

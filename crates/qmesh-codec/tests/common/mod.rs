//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use qmesh_codec::{Atom, Dict, K, Table, Vector};

pub fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit")).collect()
}

pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter().fold(String::with_capacity(b.len() * 2), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// The package directory, read when the test runs (the test kit's).
pub use qmesh_testkit::manifest_dir;

pub fn fixtures_dir() -> PathBuf {
    manifest_dir().join("tests").join("fixtures")
}

/// The golden fixtures: case name → whole message bytes.
pub fn golden() -> BTreeMap<String, Vec<u8>> {
    let path = fixtures_dir().join("golden.json");
    let text = std::fs::read_to_string(&path).expect("read golden.json");
    let map: BTreeMap<String, String> = serde_json::from_str(&text).expect("golden.json is a map");
    map.into_iter().map(|(k, v)| (k, unhex(&v))).collect()
}

fn f32_same(a: f32, b: f32) -> bool {
    (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
}

fn f64_same(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
}

fn atom_same(a: &Atom, b: &Atom) -> bool {
    match (a, b) {
        (Atom::Real(x), Atom::Real(y)) => f32_same(*x, *y),
        (Atom::Float(x), Atom::Float(y)) | (Atom::Datetime(x), Atom::Datetime(y)) => f64_same(*x, *y),
        _ => a == b,
    }
}

fn vector_same(a: &Vector, b: &Vector) -> bool {
    match (a, b) {
        (Vector::Real(x), Vector::Real(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| f32_same(*p, *q))
        }
        (Vector::Float(x), Vector::Float(y)) | (Vector::Datetime(x), Vector::Datetime(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| f64_same(*p, *q))
        }
        _ => a == b,
    }
}

/// Equality that treats every NaN as equal to every NaN (kdb+ reads any NaN
/// as null), and otherwise compares floats by their bits (so 0.0 ≠ -0.0).
pub fn same(a: &K, b: &K) -> bool {
    match (a, b) {
        (K::Atom(x), K::Atom(y)) => atom_same(x, y),
        (K::Vector(p, x), K::Vector(q, y)) => p == q && vector_same(x, y),
        (K::List(p, x), K::List(q, y)) => {
            p == q && x.len() == y.len() && x.iter().zip(y).all(|(i, j)| same(i, j))
        }
        (K::Dict(x), K::Dict(y)) => {
            let (Dict { keys: k1, values: v1, sorted: s1 }, Dict { keys: k2, values: v2, sorted: s2 }) =
                (x.as_ref(), y.as_ref());
            s1 == s2 && same(k1, k2) && same(v1, v2)
        }
        (
            K::Table(Table { attr: a1, names: n1, columns: c1 }),
            K::Table(Table { attr: a2, names: n2, columns: c2 }),
        ) => a1 == a2 && n1 == n2 && c1.len() == c2.len() && c1.iter().zip(c2).all(|(i, j)| same(i, j)),
        _ => a == b,
    }
}

/// The Python with PyKX: the test kit's finder, so `QMESH_REQUIRE_PYTHON`
/// (set in CI) makes a missing interpreter a failure instead of a skip.
#[allow(unused_imports)] // not every test binary that shares this module runs Python
pub use qmesh_testkit::python;

pub mod arb {
    //! proptest strategies for arbitrary kdb+ values.
    use bytes::Bytes;
    use proptest::collection::vec;
    use proptest::prelude::*;
    use qmesh_codec::{Atom, Attr, Dict, Function, K, Symbols, Table, Vector};

    const MAX_LEN: usize = 12;

    fn name() -> impl Strategy<Value = Vec<u8>> {
        vec(1u8..=255, 0..6)
    }

    pub fn attr() -> impl Strategy<Value = Attr> {
        prop_oneof![
            6 => Just(Attr::None),
            1 => Just(Attr::Sorted),
            1 => Just(Attr::Unique),
            1 => Just(Attr::Parted),
            1 => Just(Attr::Grouped),
        ]
    }

    pub fn atom() -> impl Strategy<Value = Atom> {
        prop_oneof![
            any::<bool>().prop_map(Atom::Boolean),
            any::<[u8; 16]>().prop_map(Atom::Guid),
            any::<u8>().prop_map(Atom::Byte),
            any::<i16>().prop_map(Atom::Short),
            any::<i32>().prop_map(Atom::Int),
            any::<i64>().prop_map(Atom::Long),
            any::<f32>().prop_map(Atom::Real),
            any::<f64>().prop_map(Atom::Float),
            any::<u8>().prop_map(Atom::Char),
            name().prop_map(|n| Atom::Symbol(Bytes::from(n))),
            any::<i64>().prop_map(Atom::Timestamp),
            any::<i32>().prop_map(Atom::Month),
            any::<i32>().prop_map(Atom::Date),
            any::<f64>().prop_map(Atom::Datetime),
            any::<i64>().prop_map(Atom::Timespan),
            any::<i32>().prop_map(Atom::Minute),
            any::<i32>().prop_map(Atom::Second),
            any::<i32>().prop_map(Atom::Time),
        ]
    }

    /// A vector of exactly `n` items.
    pub fn vector_of_len(n: usize) -> impl Strategy<Value = Vector> {
        prop_oneof![
            vec(any::<bool>(), n).prop_map(Vector::Boolean),
            vec(any::<[u8; 16]>(), n).prop_map(Vector::Guid),
            vec(any::<u8>(), n).prop_map(Vector::Byte),
            vec(any::<i16>(), n).prop_map(Vector::Short),
            vec(any::<i32>(), n).prop_map(Vector::Int),
            vec(any::<i64>(), n).prop_map(Vector::Long),
            vec(any::<f32>(), n).prop_map(Vector::Real),
            vec(any::<f64>(), n).prop_map(Vector::Float),
            vec(any::<u8>(), n).prop_map(Vector::Char),
            vec(name(), n).prop_map(|v| Vector::Symbol(v.into_iter().collect::<Symbols>())),
            vec(any::<i64>(), n).prop_map(Vector::Timestamp),
            vec(any::<i32>(), n).prop_map(Vector::Month),
            vec(any::<i32>(), n).prop_map(Vector::Date),
            vec(any::<f64>(), n).prop_map(Vector::Datetime),
            vec(any::<i64>(), n).prop_map(Vector::Timespan),
            vec(any::<i32>(), n).prop_map(Vector::Minute),
            vec(any::<i32>(), n).prop_map(Vector::Second),
            vec(any::<i32>(), n).prop_map(Vector::Time),
        ]
    }

    pub fn vector() -> impl Strategy<Value = Vector> {
        (0..MAX_LEN).prop_flat_map(vector_of_len)
    }

    /// A column of `n` rows: a vector, or a general list of strings.
    fn column(n: usize) -> impl Strategy<Value = K> {
        prop_oneof![
            4 => (attr(), vector_of_len(n)).prop_map(|(a, v)| K::Vector(a, v)),
            1 => vec(vec(any::<u8>(), 0..5).prop_map(K::string), n).prop_map(K::list),
        ]
    }

    pub fn table() -> impl Strategy<Value = Table> {
        (0..6usize, 1..5usize).prop_flat_map(|(rows, cols)| (attr(), vec(column(rows), cols))).prop_map(
            |(attr, columns)| Table {
                attr,
                names: (0..columns.len()).map(|i| format!("c{i}")).collect(),
                columns,
            },
        )
    }

    /// Functions a router may carry: lambdas and primitives.
    fn function() -> impl Strategy<Value = K> {
        prop_oneof![
            vec(32u8..127, 0..10).prop_map(|src| {
                let mut raw = vec![100u8, 0, 10, 0];
                raw.extend_from_slice(&(src.len() as u32).to_le_bytes());
                raw.extend_from_slice(&src);
                K::Function(Function { raw: Bytes::from(raw) })
            }),
            (101u8..=103, 1u8..=255)
                .prop_map(|(t, b)| K::Function(Function { raw: Bytes::from(vec![t, b]) })),
        ]
    }

    /// Any value. `kx_readable` leaves out what PyKX's unlicensed
    /// deserializer cannot hand back unchanged (errors raise, lambdas become
    /// their text).
    pub fn k(kx_readable: bool) -> BoxedStrategy<K> {
        let mut leaves = vec![
            (4, atom().prop_map(K::Atom).boxed()),
            (4, (attr(), vector()).prop_map(|(a, v)| K::Vector(a, v)).boxed()),
            (1, Just(K::GenericNull).boxed()),
            (2, table().prop_map(K::Table).boxed()),
        ];
        if !kx_readable {
            leaves.push((1, vec(1u8..=255, 0..8).prop_map(K::error).boxed()));
            leaves.push((1, function().boxed()));
        }
        let leaf = proptest::strategy::Union::new_weighted(leaves);
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                (attr(), vec(inner.clone(), 0..6)).prop_map(|(a, items)| K::List(a, items)),
                (inner.clone(), inner.clone(), any::<bool>())
                    .prop_map(|(keys, values, sorted)| K::Dict(Box::new(Dict { keys, values, sorted }))),
                (table(), table()).prop_map(|(k, v)| K::dict(K::Table(k), K::Table(v))),
            ]
        })
        .boxed()
    }
}

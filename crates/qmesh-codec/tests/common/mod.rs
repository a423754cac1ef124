//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use qmesh_codec::{Atom, Dict, K, Table, Vector};

pub fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len() % 2 == 0, "odd hex length");
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex digit")).collect()
}

pub fn hex(b: &[u8]) -> String {
    use std::fmt::Write;
    b.iter().fold(String::with_capacity(b.len() * 2), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures")
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

/// The Python with PyKX, from `QMESH_PYTHON` or the default venv; `None`
/// (after saying so loudly) when neither exists.
pub fn python() -> Option<PathBuf> {
    let path = match std::env::var_os("QMESH_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => {
            let home = std::env::var_os("HOME")?;
            PathBuf::from(home).join(".cache/qmesh-venv/bin/python")
        }
    };
    if path.exists() {
        Some(path)
    } else {
        eprintln!("!!! SKIPPED: no PyKX python at {} (set QMESH_PYTHON) !!!", path.display());
        None
    }
}

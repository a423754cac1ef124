//! The benchmark objects, shared by benches/codec.rs and
//! examples/codec_bench.rs (and rebuilt value for value in PyKX by
//! bench/codec.py).

use qmesh_codec::{Atom, Attr, K, Table, Vector};

/// 2023.12.15D… as nanoseconds since 2000.01.01.
pub const T0: i64 = 756_000_000_000_000_000;
/// Rows of the trade table.
pub const TABLE_ROWS: usize = 1_000_000;
/// Length of the long vector.
pub const LONG_LEN: usize = 10_000_000;
/// Number of small `upd` messages.
pub const MESSAGES: usize = 100_000;
/// Distinct symbols in the table.
pub const SYMS: usize = 100;

pub fn sym_name(i: usize) -> String {
    format!("SYM{:02}", (i * 7919) % SYMS)
}

pub fn price(i: usize) -> f64 {
    100.0 + (i % 1000) as f64 * 0.01
}

pub fn size(i: usize) -> i64 {
    ((i % 100) as i64 + 1) * 100
}

/// `([] time; sym; price; size)`, 1,000,000 rows.
pub fn trade_table() -> K {
    let n = TABLE_ROWS;
    K::Table(Table {
        attr: Attr::None,
        names: ["time", "sym", "price", "size"].into_iter().collect(),
        columns: vec![
            K::Vector(Attr::None, Vector::Timestamp((0..n).map(|i| T0 + i as i64 * 1_000_000).collect())),
            K::syms((0..n).map(sym_name)),
            K::Vector(Attr::None, Vector::Float((0..n).map(price).collect())),
            K::Vector(Attr::None, Vector::Long((0..n).map(size).collect())),
        ],
    })
}

/// `til 10000000`.
pub fn long_vector() -> K {
    K::Vector(Attr::None, Vector::Long((0..LONG_LEN as i64).collect()))
}

/// `` (`upd;`trade;(time;sym;price;size)) `` for row `i`.
pub fn upd(i: usize) -> K {
    K::list(vec![
        K::sym("upd"),
        K::sym("trade"),
        K::list(vec![
            K::Atom(Atom::Timestamp(T0 + i as i64 * 1_000_000)),
            K::sym(sym_name(i)),
            K::Atom(Atom::Float(price(i))),
            K::long(size(i)),
        ]),
    ])
}

pub fn upd_messages() -> Vec<K> {
    (0..MESSAGES).map(upd).collect()
}

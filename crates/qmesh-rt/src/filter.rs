//! Subscription filters, decided from a payload's first bytes without
//! decoding it (rt.qpk: "an efficient way to filter messages that are
//! generic lists with one or two leading symbols, e.g. `` (`upd;`trade;data) ``").
//!
//! A payload's *leading symbols* are its first item, if that is a symbol
//! atom, and its second, if that is one too: `` (`upd;`trade;data) `` leads
//! with `` `upd `` and `` `trade ``; `` (`heartbeat;.z.p) `` with
//! `` `heartbeat ``. A [`Filter`] holds a symbol list; a message passes when
//! one of its leading symbols is in the list. A message with no leading
//! symbol (a table, an atom, a list starting with a number) does not pass a
//! filter. Only the bytes of the list header and the two symbols are read,
//! whatever the payload's size.

use std::collections::HashSet;

use qmesh_codec::types;

/// The leading symbols of a payload (little-endian bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Leading<'a> {
    /// The first item, when the payload is a general list starting with a symbol atom.
    pub first: Option<&'a [u8]>,
    /// The second item, when the first and second are symbol atoms.
    pub second: Option<&'a [u8]>,
}

/// A NUL-terminated symbol atom at `at`: its name and the offset after it.
fn sym_at(b: &[u8], at: usize) -> Option<(&[u8], usize)> {
    if *b.get(at)? as i8 != -types::SYMBOL {
        return None;
    }
    let rest = b.get(at + 1..)?;
    let n = rest.iter().position(|&c| c == 0)?;
    Some((&rest[..n], at + 1 + n + 1))
}

/// Reads the leading symbols of `payload`, a little-endian kdb+ object,
/// from its first bytes (never past the second symbol's NUL).
pub fn leading_symbols(payload: &[u8]) -> Leading<'_> {
    let mut out = Leading::default();
    // general list: type 0, attribute, 4-byte count (8 with the long-count flag)
    if payload.first().copied() != Some(types::LIST as u8) {
        return out;
    }
    let Some(&attr) = payload.get(1) else { return out };
    let width = if attr & 0x80 != 0 { 8 } else { 4 };
    let Some(count) = payload.get(2..2 + width) else { return out };
    let count = count.iter().rev().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    if count == 0 {
        return out;
    }
    let Some((first, next)) = sym_at(payload, 2 + width) else { return out };
    out.first = Some(first);
    if count >= 2 {
        out.second = sym_at(payload, next).map(|(s, _)| s);
    }
    out
}

/// A subscription's filter: the symbols whose messages it lets through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    symbols: HashSet<Box<[u8]>>,
}

impl Filter {
    /// A filter letting through messages led by one of `symbols`.
    pub fn new<S: AsRef<[u8]>>(symbols: impl IntoIterator<Item = S>) -> Filter {
        Filter { symbols: symbols.into_iter().map(|s| Box::from(s.as_ref())).collect() }
    }

    /// Whether `payload` passes: one of its leading symbols is in the list.
    pub fn matches(&self, payload: &[u8]) -> bool {
        let l = leading_symbols(payload);
        [l.first, l.second].into_iter().flatten().any(|s| self.symbols.contains(s))
    }

    /// The symbols, in no order.
    pub fn symbols(&self) -> impl Iterator<Item = &[u8]> {
        self.symbols.iter().map(|s| &**s)
    }

    /// How many symbols.
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    /// Whether the list is empty (nothing passes).
    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use qmesh_codec::{K, RawObject};

    fn enc(k: &K) -> Vec<u8> {
        RawObject::encode(k).bytes().to_vec()
    }

    #[test]
    fn reads_one_or_two_leading_symbols() {
        let upd = enc(&K::list(vec![K::sym("upd"), K::sym("trade"), K::long(1)]));
        let l = leading_symbols(&upd);
        assert_eq!((l.first, l.second), (Some(&b"upd"[..]), Some(&b"trade"[..])));
        let one = enc(&K::list(vec![K::sym("hb"), K::long(1)]));
        let l = leading_symbols(&one);
        assert_eq!((l.first, l.second), (Some(&b"hb"[..]), None));
        for k in [K::long(1), K::list(vec![]), K::list(vec![K::long(1), K::sym("a")]), K::syms(["a", "b"])] {
            assert_eq!(leading_symbols(&enc(&k)), Leading::default(), "{k:?}");
        }
    }

    #[test]
    fn never_reads_past_truncated_bytes() {
        let upd = enc(&K::list(vec![K::sym("upd"), K::sym("trade"), K::long(1)]));
        for n in 0..upd.len() {
            let _ = leading_symbols(&upd[..n]);
        }
        // the second symbol without its NUL is not a symbol
        let cut = &upd[..6 + 5 + 6];
        assert_eq!(leading_symbols(cut).second, None);
    }

    #[test]
    fn filter_matches_table_or_function() {
        let f = Filter::new(["trade", "quote"]);
        let trade = enc(&K::list(vec![K::sym("upd"), K::sym("trade"), K::long(1)]));
        let other = enc(&K::list(vec![K::sym("upd"), K::sym("news"), K::long(1)]));
        assert!(f.matches(&trade));
        assert!(!f.matches(&other));
        assert!(!f.matches(&enc(&K::long(3))));
        assert!(Filter::new(["upd"]).matches(&other));
    }
}

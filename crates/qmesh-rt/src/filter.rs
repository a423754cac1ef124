//! Subscription filters, decided from a payload's first bytes without
//! decoding it (rt.qpk: "an efficient way to filter messages that are
//! generic lists with one or two leading symbols, e.g. `` (`upd;`trade;data) ``").
//!
//! A payload's *leading symbols* are its first item, if that is a symbol
//! atom, and its second, if that is one too: `` (`upd;`trade;data) `` leads
//! with `` `upd `` and `` `trade ``; `` (`heartbeat;.z.p) `` with
//! `` `heartbeat ``. Only the bytes of the list header and the two symbols
//! are read, whatever the payload's size ([`scan`]).
//!
//! Two kinds of filter:
//!
//! * [`Filter`], a symbol list (the node's `.rt.sub` `filter` option): a
//!   message passes when one of its leading symbols is in the list; a
//!   message with no leading symbol (a table, an atom, a list starting with
//!   a number) does not pass.
//! * [`Predicate`], rt.qpk's `.rt.filter[pred;callback]` for a
//!   [`Subscriber`](crate::subscriber::Subscriber): a function of the two
//!   leading symbols, either *cached* (it answers `bool`, and its answer per
//!   symbol pair is kept: rt.qpk's boolean predicate) or *uncached* (it
//!   answers an integer, 0 to drop and 1 to deliver, asked for every
//!   message: rt.qpk's long/int predicate). [`Predicate::clear_cache`]
//!   (rt.qpk's `` filter[f;`clear_cache] ``) forgets the kept answers when
//!   what the predicate looks at changes.
//!
//! # The rule for messages of another shape
//!
//! A predicate is asked about every message, with q's null symbol (an empty
//! name) for each leading symbol the message lacks: `` (`hb;1) `` is asked
//! as `` (`hb;`) ``, and a message that is not a general list led by a
//! symbol (an atom, a vector, a table, an empty list, a list led by a
//! number) as `` (`;`) ``. The usual predicates
//! (`` {$[x=`upd;y in `trade`quote;0b]} ``) therefore drop what is not of the
//! `` (`upd;`table;data) `` shape, and a predicate that wants such messages
//! can say so. Bytes that end or break before the shape is known
//! ([`Shape::Malformed`]: a cut list header, a symbol without its closing
//! NUL) are not decided by the filter at all: the message goes on to the
//! subscriber's well-formedness check, which reports it as `badmsg`, so
//! corruption is never hidden by a filter.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// What the first bytes of a payload are, as far as a filter cares ([`scan`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape<'a> {
    /// A general list whose first item is a symbol atom; `second` is its second item when that is a symbol atom
    /// too. The names are the symbols' bytes, without the closing NUL.
    Led {
        /// The first item's name.
        first: &'a [u8],
        /// The second item's name, when the list has a second item and it is a symbol atom.
        second: Option<&'a [u8]>,
    },
    /// Well-formed as far as it was read, but not a general list led by a symbol: an atom, a vector, a table or
    /// dictionary, an empty list, a list whose first item is not a symbol atom.
    Other,
    /// The bytes end or break before the shape is known: no type byte, a list header cut short or with a bad
    /// attribute byte or a negative count, an item missing that the count promises, a leading symbol without its
    /// closing NUL.
    Malformed,
}

/// kdb+ list attributes are 0 (none) to 4 (`g#`); the top bit of the byte flags an 8-byte count.
const MAX_ATTRIBUTE: u8 = 4;
/// The attribute byte's flag for an 8-byte count (kdb+ capability 6).
const LONG_COUNT_FLAG: u8 = 0x80;

/// A symbol atom's name at `at` (after its type byte `-11`), and the offset after its NUL. `Err(())` when the
/// bytes end before the item's type byte or before the name's NUL; `Ok(None)` when the item is not a symbol atom.
fn symbol_item(b: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, ()> {
    let ty = *b.get(at).ok_or(())?;
    if ty as i8 != -types::SYMBOL {
        return Ok(None);
    }
    let rest = b.get(at + 1..).ok_or(())?;
    let n = rest.iter().position(|&c| c == 0).ok_or(())?;
    Ok(Some((&rest[..n], at + 1 + n + 1)))
}

/// The shape of `payload`, one little-endian kdb+ object as published, from its first bytes: the list header and
/// at most its first two items, never past the second symbol's closing NUL, and never decoding the rest. Never
/// panics, whatever the bytes.
pub fn scan(payload: &[u8]) -> Shape<'_> {
    let Some(&ty) = payload.first() else { return Shape::Malformed };
    if ty != types::LIST as u8 {
        return Shape::Other;
    }
    let Some(&attr) = payload.get(1) else { return Shape::Malformed };
    if attr & !LONG_COUNT_FLAG > MAX_ATTRIBUTE {
        return Shape::Malformed;
    }
    let width = if attr & LONG_COUNT_FLAG != 0 { 8 } else { 4 };
    let Some(count) = payload.get(2..2 + width) else { return Shape::Malformed };
    // little-endian, signed: the top byte's sign bit makes it negative
    if count[width - 1] & 0x80 != 0 {
        return Shape::Malformed;
    }
    let count = count.iter().rev().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
    if count == 0 {
        return Shape::Other;
    }
    let (first, next) = match symbol_item(payload, 2 + width) {
        Err(()) => return Shape::Malformed,
        Ok(None) => return Shape::Other,
        Ok(Some(x)) => x,
    };
    if count == 1 {
        return Shape::Led { first, second: None };
    }
    match symbol_item(payload, next) {
        Err(()) => Shape::Malformed,
        Ok(second) => Shape::Led { first, second: second.map(|(s, _)| s) },
    }
}

/// A [`Predicate`]'s verdict on one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Deliver it.
    Deliver,
    /// Skip it (its position still advances the subscription's).
    Drop,
    /// The bytes are [`Shape::Malformed`]: not the filter's to decide; the subscriber's well-formedness check
    /// decides between delivery and `badmsg`.
    Undecided,
}

type CachedFn = Box<dyn FnMut(&[u8], &[u8]) -> bool + Send>;
type UncachedFn = Box<dyn FnMut(&[u8], &[u8]) -> i64 + Send>;

enum Kind {
    Cached(CachedFn),
    Uncached(UncachedFn),
}

/// A handle that clears a [`Predicate`]'s cache from anywhere (another thread, a callback): rt.qpk's
/// `` filter[f;`clear_cache] ``. Cloning shares the one cache.
#[derive(Debug, Clone, Default)]
pub struct ClearCache(Arc<AtomicU64>);

impl ClearCache {
    /// Forgets every kept answer: the predicate is asked again, once per symbol pair, from the next message the
    /// subscriber decides on.
    pub fn clear_cache(&self) {
        self.0.fetch_add(1, Ordering::AcqRel);
    }
}

/// rt.qpk's `.rt.filter[pred;callback]`: a function of a message's two leading symbols (see the [module
/// docs](self) for the rule on other shapes) deciding whether the subscriber's callback gets it, without decoding
/// the payload.
///
/// ```
/// use qmesh_rt::filter::{Decision, Predicate};
/// # use qmesh_codec::{K, RawObject};
/// # let msg = |t: &str| RawObject::encode(&K::list(vec![K::sym("upd"), K::sym(t), K::long(1)])).bytes().to_vec();
/// // cached: {$[x=`upd;y in `trade`quote;0b]}
/// let mut f = Predicate::cached(|x, y| x == b"upd" && (y == b"trade" || y == b"quote"));
/// assert_eq!(f.decide(&msg("trade")), Decision::Deliver);
/// assert_eq!(f.decide(&msg("news")), Decision::Drop);
/// // uncached: {$[(x=`upd)&y in t;1;0]}
/// let mut g = Predicate::uncached(|x, y| i64::from(x == b"upd" && y == b"quote"));
/// assert_eq!(g.decide(&msg("quote")), Decision::Deliver);
/// ```
pub struct Predicate {
    kind: Kind,
    /// Kept answers by `first NUL second`.
    cache: HashMap<Box<[u8]>, bool>,
    /// The lookup key, reused so a lookup allocates nothing.
    key: Vec<u8>,
    clear: ClearCache,
    cleared: u64,
}

impl std::fmt::Debug for Predicate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Predicate")
            .field("cached", &self.is_cached())
            .field("kept_answers", &self.cache.len())
            .finish()
    }
}

impl Predicate {
    /// A filter with caching: `pred(first, second)` answers `true` to deliver, and its answer for each pair of
    /// leading symbols is kept (at most [`MAX_FILTER_CACHE_PAIRS`](crate::limits::MAX_FILTER_CACHE_PAIRS) pairs)
    /// until [`Predicate::clear_cache`]. rt.qpk: a predicate answering a boolean.
    pub fn cached(pred: impl FnMut(&[u8], &[u8]) -> bool + Send + 'static) -> Predicate {
        Predicate::with(Kind::Cached(Box::new(pred)))
    }

    /// A filter without caching: `pred(first, second)` answers 1 to deliver and 0 to drop (any other value
    /// delivers, as q's `$[n;…]` takes any non-zero number as true), asked for every message. rt.qpk: a predicate
    /// answering a long or an int.
    pub fn uncached(pred: impl FnMut(&[u8], &[u8]) -> i64 + Send + 'static) -> Predicate {
        Predicate::with(Kind::Uncached(Box::new(pred)))
    }

    fn with(kind: Kind) -> Predicate {
        Predicate { kind, cache: HashMap::new(), key: Vec::new(), clear: ClearCache::default(), cleared: 0 }
    }

    /// Whether answers are kept ([`Predicate::cached`]).
    pub fn is_cached(&self) -> bool {
        matches!(self.kind, Kind::Cached(_))
    }

    /// How many symbol pairs have a kept answer.
    pub fn kept_answers(&self) -> usize {
        self.cache.len()
    }

    /// Forgets every kept answer (rt.qpk's `` filter[f;`clear_cache] ``).
    pub fn clear_cache(&mut self) {
        self.clear.clear_cache();
    }

    /// A handle clearing this predicate's cache from elsewhere, once the predicate is inside a subscriber.
    pub fn clear_handle(&self) -> ClearCache {
        self.clear.clone()
    }

    /// Decides on `payload` (one little-endian kdb+ object) from its leading symbols ([`scan`]).
    pub fn decide(&mut self, payload: &[u8]) -> Decision {
        let (first, second) = match scan(payload) {
            Shape::Malformed => return Decision::Undecided,
            Shape::Other => (&b""[..], &b""[..]),
            Shape::Led { first, second } => (first, second.unwrap_or(b"")),
        };
        let deliver = match &mut self.kind {
            Kind::Uncached(pred) => pred(first, second) != 0,
            Kind::Cached(pred) => {
                let cleared = self.clear.0.load(Ordering::Acquire);
                if cleared != self.cleared || self.cache.len() >= crate::limits::MAX_FILTER_CACHE_PAIRS {
                    // a full cache starts again: every answer can be asked again
                    self.cache.clear();
                    self.cleared = cleared;
                }
                // the key is `first NUL second`: a name holds no NUL, so pairs never collide
                self.key.clear();
                self.key.extend_from_slice(first);
                self.key.push(0);
                self.key.extend_from_slice(second);
                match self.cache.get(self.key.as_slice()) {
                    Some(&d) => d,
                    None => {
                        let d = pred(first, second);
                        if self.key.len() <= crate::limits::MAX_FILTER_CACHED_SYMBOL_BYTES {
                            self.cache.insert(Box::from(self.key.as_slice()), d);
                        }
                        d
                    }
                }
            }
        };
        if deliver { Decision::Deliver } else { Decision::Drop }
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

    fn upd(t: &str) -> Vec<u8> {
        enc(&K::list(vec![K::sym("upd"), K::sym(t), K::long(1)]))
    }

    #[test]
    fn scan_shapes() {
        assert_eq!(scan(&upd("trade")), Shape::Led { first: b"upd", second: Some(b"trade") });
        let one = enc(&K::list(vec![K::sym("hb"), K::long(1)]));
        assert_eq!(scan(&one), Shape::Led { first: b"hb", second: None });
        let single = enc(&K::list(vec![K::sym("hb")]));
        assert_eq!(scan(&single), Shape::Led { first: b"hb", second: None });
        let null = enc(&K::list(vec![K::sym(""), K::sym(""), K::long(1)]));
        assert_eq!(scan(&null), Shape::Led { first: b"", second: Some(b"") });
        for k in [
            K::long(1),
            K::list(vec![]),
            K::list(vec![K::long(1), K::sym("a")]),
            K::syms(["a", "b"]),
            K::sym("upd"),
            K::dict(K::syms(["a"]), K::list(vec![K::long(1)])),
        ] {
            assert_eq!(scan(&enc(&k)), Shape::Other, "{k:?}");
        }
    }

    #[test]
    fn scan_truncated_and_malformed_bytes() {
        let m = upd("trade");
        // header 6 bytes, `upd` 5, `trade` 7: every cut before the second NUL is malformed, none panics
        let second_nul = 6 + 5 + 7;
        for n in 0..m.len() {
            let got = scan(&m[..n]);
            if n < second_nul {
                assert_eq!(got, Shape::Malformed, "cut at {n}");
            } else {
                assert_eq!(got, Shape::Led { first: b"upd", second: Some(b"trade") }, "cut at {n}");
            }
        }
        // a bad attribute byte, a negative count
        let mut bad = m.clone();
        bad[1] = 9;
        assert_eq!(scan(&bad), Shape::Malformed);
        let mut neg = m.clone();
        neg[5] = 0xff;
        assert_eq!(scan(&neg), Shape::Malformed);
        // an 8-byte count (capability 6)
        let mut long = vec![0u8, 0x80];
        long.extend_from_slice(&2i64.to_le_bytes());
        long.extend_from_slice(&m[6..]);
        assert_eq!(scan(&long), Shape::Led { first: b"upd", second: Some(b"trade") });
        // a list led by a symbol whose second item is missing though the count says 3
        assert_eq!(scan(&m[..6 + 5]), Shape::Malformed);
    }

    /// Random bytes, and random bytes behind a valid list header: no panic, and the scan reads no byte past the
    /// second symbol's NUL (so appending bytes never changes a `Led` answer).
    #[test]
    fn scan_random_bytes() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000 {
            let len = (rand() % 40) as usize;
            let mut b: Vec<u8> = (0..len).map(|_| rand() as u8).collect();
            if i % 2 == 0 && b.len() >= 7 {
                // a plausible prefix: general list, small count, symbol items
                b[0] = 0;
                b[1] = 0;
                b[2..6].copy_from_slice(&((rand() % 4) as i32).to_le_bytes());
                b[6] = 0xf5;
            }
            let got = scan(&b);
            if let Shape::Led { first, second } = got {
                let mut more = b.clone();
                more.extend_from_slice(&[0xf5, b'x', 0]);
                assert_eq!(scan(&more), Shape::Led { first, second }, "{b:?}");
            }
        }
    }

    fn counted(
        cached: bool,
    ) -> (
        Predicate,
        std::sync::Arc<std::sync::Mutex<Vec<String>>>,
        std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use std::sync::{Arc, Mutex, atomic::AtomicUsize};
        let tables = Arc::new(Mutex::new(vec!["quote".to_string()]));
        let asked = Arc::new(AtomicUsize::new(0));
        let (t, a) = (tables.clone(), asked.clone());
        let pass = move |x: &[u8], y: &[u8]| {
            a.fetch_add(1, Ordering::Relaxed);
            x == b"upd" && t.lock().unwrap().iter().any(|n| n.as_bytes() == y)
        };
        let p = if cached {
            Predicate::cached(pass)
        } else {
            Predicate::uncached(move |x, y| i64::from(pass(x, y)))
        };
        (p, tables, asked)
    }

    #[test]
    fn cached_predicate_asks_once_per_pair_until_cleared() {
        let (mut f, tables, asked) = counted(true);
        assert!(f.is_cached());
        for _ in 0..3 {
            assert_eq!(f.decide(&upd("quote")), Decision::Deliver);
            assert_eq!(f.decide(&upd("trade")), Decision::Drop);
            assert_eq!(f.decide(&enc(&K::long(1))), Decision::Drop);
        }
        assert_eq!(asked.load(Ordering::Relaxed), 3, "one question per pair");
        assert_eq!(f.kept_answers(), 3);
        tables.lock().unwrap().push("trade".into());
        // the kept answer stands until the cache is cleared
        assert_eq!(f.decide(&upd("trade")), Decision::Drop);
        f.clear_handle().clear_cache();
        assert_eq!(f.decide(&upd("trade")), Decision::Deliver);
        assert_eq!(asked.load(Ordering::Relaxed), 4);
        assert_eq!(f.kept_answers(), 1);
        // malformed bytes are not the filter's to decide, and ask nothing
        assert_eq!(f.decide(&upd("trade")[..8]), Decision::Undecided);
        assert_eq!(asked.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn uncached_predicate_asks_every_time() {
        let (mut f, tables, asked) = counted(false);
        assert!(!f.is_cached());
        for _ in 0..3 {
            assert_eq!(f.decide(&upd("quote")), Decision::Deliver);
            assert_eq!(f.decide(&upd("trade")), Decision::Drop);
        }
        assert_eq!(asked.load(Ordering::Relaxed), 6);
        assert_eq!(f.kept_answers(), 0);
        tables.lock().unwrap().push("trade".into());
        assert_eq!(f.decide(&upd("trade")), Decision::Deliver, "no cache to clear");
        // any non-zero answer delivers, as q's `$[n;…]`
        let mut two = Predicate::uncached(|_, _| 2);
        assert_eq!(two.decide(&upd("x")), Decision::Deliver);
    }

    #[test]
    fn cache_is_bounded() {
        let mut f = Predicate::cached(|_, _| true);
        for i in 0..crate::limits::MAX_FILTER_CACHE_PAIRS + 10 {
            f.decide(&upd(&format!("t{i}")));
        }
        assert!(f.kept_answers() <= crate::limits::MAX_FILTER_CACHE_PAIRS);
        let long = "x".repeat(crate::limits::MAX_FILTER_CACHED_SYMBOL_BYTES);
        let mut g = Predicate::cached(|_, _| true);
        g.decide(&upd(&long));
        assert_eq!(g.kept_answers(), 0, "a pair longer than the limit is not kept");
    }
}

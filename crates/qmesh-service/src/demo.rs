//! A demo data set in the shape of the whitepaper's `egTrade` and `egQuote`.
//!
//! The whitepaper's service holds
//!
//! ```q
//! egQuote:([] date:10#.z.D-1; sym:10#`FDP; time:09:30t+00:30t*til 10; bid:100.+0.01*til 10; ask:101.+0.01*til 10)
//! egTrade:([] date:10#.z.D-1; sym:10#`FDP; time:09:30t+00:30t*til 10; price:100.+0.01*til 10; size:10#100)
//! ```
//!
//! [`generate`] builds tables `trade` (`date sym time price size`) and `quote`
//! (`date sym time bid ask`) with the same column types, any number of rows,
//! spread over [`DEMO_SYMS`] through one trading day (09:30–16:00, times in
//! order as an RDB holds them), prices a random walk per symbol rounded to a
//! cent. The generator is seeded, so a size and a seed always give the same
//! data.

use qmesh_codec::{Attr, K, Symbols, Table, Vector};

use crate::store::{COMPACT_ROWS, Ingest, StoreError};

/// The symbols of the demo data; `FDP` is the whitepaper's.
pub const DEMO_SYMS: [&str; 10] =
    ["FDP", "AAPL", "MSFT", "IBM", "GOOG", "AMZN", "ORCL", "INTC", "CSCO", "NVDA"];

/// 09:30 in milliseconds after midnight.
const OPEN_MS: i64 = 9 * 3_600_000 + 30 * 60_000;

/// The trading day, 09:30–16:00, in milliseconds.
const DAY_MS: i64 = 6 * 3_600_000 + 30 * 60_000;

/// Default seed of the generator.
pub const DEFAULT_SEED: u64 = 2015;

/// A small, seeded generator (splitmix64): the data must not depend on a
/// crate's random-number algorithm changing between versions.
#[derive(Debug, Clone)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoSpec {
    /// Rows of `trade`.
    pub trades: usize,
    /// Rows of `quote`.
    pub quotes: usize,
    /// The kdb+ date (days since 2000.01.01) of every row.
    pub date: i32,
    pub seed: u64,
}

impl DemoSpec {
    /// `rows` trades and as many quotes, dated yesterday (the whitepaper's
    /// `.z.D-1`).
    pub fn yesterday(rows: usize) -> DemoSpec {
        let today = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| (d.as_secs() / 86_400) as i64 - i64::from(crate::mapping::KDB_EPOCH_DAYS));
        DemoSpec { trades: rows, quotes: rows, date: (today - 1) as i32, seed: DEFAULT_SEED }
    }
}

/// Rows of one chunk of a table, as kdb+ columns.
struct Chunk {
    syms: Symbols,
    times: Vec<i32>,
    a: Vec<f64>,
    b: Vec<f64>,
    sizes: Vec<i64>,
}

/// Generates `n` rows, calling `emit` every [`COMPACT_ROWS`] rows.
fn rows(
    n: usize,
    seed: u64,
    quotes: bool,
    mut emit: impl FnMut(Chunk) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut rng = Rng(seed);
    let mut last: Vec<i64> = (0..DEMO_SYMS.len() as i64).map(|i| 10_000 + 1_000 * i).collect(); // cents
    let mut done = 0;
    while done < n {
        let len = (n - done).min(COMPACT_ROWS);
        let mut c = Chunk {
            syms: Symbols::with_capacity(len, len * 5),
            times: Vec::with_capacity(len),
            a: Vec::with_capacity(len),
            b: Vec::with_capacity(len),
            sizes: Vec::with_capacity(len),
        };
        for i in done..done + len {
            let s = rng.below(DEMO_SYMS.len() as u64) as usize;
            // evenly spread through the day, in order
            let t = OPEN_MS + (i as i64 * DAY_MS) / n.max(1) as i64;
            let step = rng.below(21) as i64 - 10;
            last[s] = (last[s] + step).max(100);
            c.syms.push(DEMO_SYMS[s]);
            c.times.push(t as i32);
            let px = last[s] as f64 / 100.0;
            if quotes {
                let spread = 1 + rng.below(5) as i64;
                c.a.push(px);
                c.b.push((last[s] + spread) as f64 / 100.0);
            } else {
                c.a.push(px);
                c.sizes.push(100 * (1 + rng.below(10) as i64));
            }
        }
        done += len;
        emit(c)?;
    }
    Ok(())
}

fn table(names: &[&str], columns: Vec<K>) -> K {
    K::Table(Table { attr: Attr::None, names: names.iter().copied().collect(), columns })
}

/// Generates the demo tables into `ingest`.
pub fn generate(ingest: &dyn Ingest, spec: DemoSpec) -> Result<(), StoreError> {
    rows(spec.trades, spec.seed, false, |c| {
        let n = c.times.len();
        let t = table(
            &["date", "sym", "time", "price", "size"],
            vec![
                K::from(Vector::Date(vec![spec.date; n])),
                K::from(Vector::Symbol(c.syms)),
                K::from(Vector::Time(c.times)),
                K::from(Vector::Float(c.a)),
                K::from(Vector::Long(c.sizes)),
            ],
        );
        ingest.upd("trade", t).map(|_| ())
    })?;
    rows(spec.quotes, spec.seed ^ 0x5157, true, |c| {
        let n = c.times.len();
        let t = table(
            &["date", "sym", "time", "bid", "ask"],
            vec![
                K::from(Vector::Date(vec![spec.date; n])),
                K::from(Vector::Symbol(c.syms)),
                K::from(Vector::Time(c.times)),
                K::from(Vector::Float(c.a)),
                K::from(Vector::Float(c.b)),
            ],
        );
        ingest.upd("quote", t).map(|_| ())
    })?;
    tracing::info!(trades = spec.trades, quotes = spec.quotes, "demo data generated");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::KdbType;
    use crate::store::Store;

    #[test]
    fn shapes_match_the_whitepaper() {
        let store = Store::default();
        generate(&store, DemoSpec { trades: 1000, quotes: 500, date: 9000, seed: 1 }).expect("demo");
        let t = store.table("trade").expect("trade");
        assert_eq!(t.rows(), 1000);
        assert_eq!(
            t.kdb_types(),
            &[KdbType::Date, KdbType::Symbol, KdbType::Time, KdbType::Float, KdbType::Long]
        );
        let q = store.table("quote").expect("quote");
        assert_eq!(q.rows(), 500);
        let names: Vec<_> = q.schema().fields().iter().map(|f| f.name().clone()).collect();
        assert_eq!(names, ["date", "sym", "time", "bid", "ask"]);
    }

    #[test]
    fn seeded_and_sized() {
        let a = Store::default();
        let b = Store::default();
        let spec = DemoSpec { trades: 2 * COMPACT_ROWS + 5, quotes: 10, date: 0, seed: 7 };
        generate(&a, spec).expect("a");
        generate(&b, spec).expect("b");
        assert_eq!(a.table("trade").expect("t").snapshot(), b.table("trade").expect("t").snapshot());
        assert_eq!(a.table("trade").expect("t").rows(), 2 * COMPACT_ROWS + 5);
    }
}

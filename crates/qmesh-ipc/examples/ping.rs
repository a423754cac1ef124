//! Round-trip latency of sync calls to a kdb+ endpoint (an echo server, q…).
//!
//! ```text
//! cargo run --release -p qmesh-ipc --example ping -- ADDRESS [COUNT] [QUERY]
//! ```
//!
//! Sends COUNT (default 10000) sequential sync requests — `("echo"; 1)` for
//! the echo server, or the string QUERY — and prints the median, 99th
//! percentile and maximum round trip in microseconds.
#![allow(clippy::print_stdout)]

use std::time::Instant;

use qmesh_codec::K;
use qmesh_ipc::{Address, ClientOptions, Connection};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = Address::parse(&args.next().ok_or("usage: ping ADDRESS [COUNT] [QUERY]")?)?;
    let count: usize = args.next().map(|c| c.parse()).transpose()?.unwrap_or(10_000);
    let request = match args.next() {
        Some(q) => K::string(q),
        None => K::list(vec![K::string("echo"), K::long(1)]),
    };
    let conn = Connection::connect(&addr, ClientOptions::default()).await?;
    for _ in 0..count.min(1000) {
        conn.call(&request).await?;
    }
    let mut micros = Vec::with_capacity(count);
    let start = Instant::now();
    for _ in 0..count {
        let t = Instant::now();
        conn.call(&request).await?;
        micros.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let total = start.elapsed();
    micros.sort_by(f64::total_cmp);
    let pct = |p: f64| micros[((micros.len() - 1) as f64 * p) as usize];
    println!(
        "{count} calls to {addr}: median {:.1} us, p99 {:.1} us, max {:.1} us, {:.0} calls/s",
        pct(0.5),
        pct(0.99),
        pct(1.0),
        count as f64 / total.as_secs_f64()
    );
    Ok(())
}

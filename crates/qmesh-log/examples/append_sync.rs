//! Append+sync throughput of the log on this machine: 100-byte payloads, one `sync` (fdatasync) per N records.
//!
//! ```text
//! CARGO_TARGET_DIR=… cargo run --release -p qmesh-log --example append_sync -- [DIR] [N…]
//! ```
//!
//! DIR defaults to a fresh directory under the system temp dir (removed afterwards); N defaults to 1 10 100 1000
//! 10000. Prints, per N: records, seconds, records/s, MB/s of records, syncs/s and the p50/p99 of one commit (N
//! appends and their sync).

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use qmesh_log::{Log, LogOptions, RecordHeader};

const PAYLOAD: usize = 100;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (dir, own_dir) = match args.next() {
        Some(d) if !d.is_empty() => (std::path::PathBuf::from(d), false),
        Some(_) => return Err("DIR must not be empty".into()),
        None => (std::env::temp_dir().join(format!("qmesh-log-bench-{}", std::process::id())), true),
    };
    let mut batches: Vec<usize> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    if batches.is_empty() {
        batches = vec![1, 10, 100, 1000, 10_000];
    }
    let payload = [0x5au8; PAYLOAD];
    println!(
        "{:>7} {:>9} {:>7} {:>12} {:>8} {:>9} {:>10} {:>10}",
        "N", "records", "secs", "records/s", "MB/s", "syncs/s", "p50 commit", "p99 commit"
    );
    for n in batches {
        let run_dir = dir.join(format!("n{n}"));
        let _ = std::fs::remove_dir_all(&run_dir);
        let (mut log, _) = Log::open(&run_dir, LogOptions::default())?;
        // Enough records for ~2000 syncs, at most 2 M.
        let total = (2000 * n).min(2_000_000);
        let mut commits = Vec::with_capacity(total / n + 1);
        let started = Instant::now();
        let mut i = 0;
        while i < total {
            let t = Instant::now();
            for _ in 0..n.min(total - i) {
                let h = RecordHeader { on: b"bench", ts: i as i64, id: i as i64 + 1, to: 0, dedup: None };
                log.append(&h, &payload)?;
                i += 1;
            }
            log.sync()?;
            commits.push(t.elapsed());
        }
        let secs = started.elapsed().as_secs_f64();
        let bytes: u64 = log.handle().total_bytes();
        commits.sort();
        println!(
            "{:>7} {:>9} {:>7.2} {:>12.0} {:>8.1} {:>9.0} {:>8.0}µs {:>8.0}µs",
            n,
            total,
            secs,
            total as f64 / secs,
            bytes as f64 / secs / 1e6,
            commits.len() as f64 / secs,
            percentile(&commits, 0.5).as_secs_f64() * 1e6,
            percentile(&commits, 0.99).as_secs_f64() * 1e6,
        );
        drop(log);
        let _ = std::fs::remove_dir_all(&run_dir);
    }
    if own_dir {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

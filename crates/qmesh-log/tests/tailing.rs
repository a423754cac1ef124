//! A reader on another thread follows the writer through group commits, rolls and a new session, on files.

mod common;

use common::{Rec, TestDir};
use qmesh_log::{Event, Item, Log, LogOptions, Start};

#[test]
fn reader_tails_writer_across_rolls_and_sessions() {
    let dir = TestDir::new("tailing");
    let opts = LogOptions { segment_size: 8192, ..LogOptions::default() };
    let (mut log, _) = Log::open(dir.path(), opts).expect("open");
    let handle = log.handle();
    const N: usize = 20_000;
    let recs: Vec<Rec> = (0..N).map(|i| Rec::new(i, 100)).collect();
    let want = recs.clone();
    std::thread::scope(|s| {
        let reader = s.spawn(move || {
            let mut r = handle.reader(Start::Oldest).expect("reader");
            let (mut got, mut resets, mut polls_empty) = (Vec::with_capacity(N), 0, 0u64);
            while got.len() < N {
                match r.next().expect("read") {
                    Some(Item::Entry(e)) => got.push(Rec::of(&e)),
                    Some(Item::Event(Event::Reset { .. })) => resets += 1,
                    Some(Item::Event(e)) => panic!("unexpected {e:?}"),
                    None => {
                        polls_empty += 1;
                        std::thread::yield_now();
                    }
                }
            }
            (got, resets, polls_empty)
        });
        for (i, r) in recs.iter().enumerate() {
            log.append(&r.header(), &r.payload).expect("append");
            if i % 64 == 63 {
                log.sync().expect("sync");
            }
            if i == N / 2 {
                log.sync().expect("sync");
                log.new_session().expect("session");
            }
        }
        log.sync().expect("sync");
        let (got, resets, _polls) = reader.join().expect("reader thread");
        assert_eq!(got, want);
        assert_eq!(resets, 1);
    });
    assert!(log.handle().segments().len() > 100);
}

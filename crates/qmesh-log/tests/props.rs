//! Property tests: random appends, syncs, sessions, reopens and crashes over small segments; the log always reads
//! back exactly what was synced (plus, after a crash, a prefix of what was not), at the positions `append` returned,
//! with a `reset` at each session change; every position handed out restarts the same sequence.

mod common;

use common::{Rec, drain};
use proptest::prelude::*;
use qmesh_log::{Event, Item, Log, LogOptions, MemStorage, Position, Start};

#[derive(Clone, Debug)]
enum Op {
    /// Append records with these payload sizes, then sync.
    Append(Vec<usize>),
    NewSession,
    /// Drop the log and open it again.
    Reopen,
    /// Append records without syncing, then lose power.
    Crash(Vec<usize>),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(0usize..400, 1..8).prop_map(Op::Append),
        1 => Just(Op::NewSession),
        1 => Just(Op::Reopen),
        1 => prop::collection::vec(0usize..400, 1..6).prop_map(Op::Crash),
    ]
}

#[derive(Clone, Debug, PartialEq)]
enum Want {
    Entry(Rec, Position),
    Reset(Position),
}

fn check(log: &Log<MemStorage>, want: &[Want]) -> Result<(), TestCaseError> {
    let items = drain(&mut log.reader(Start::Oldest).expect("reader"));
    prop_assert_eq!(items.len(), want.len());
    let mut prev_next = None;
    for (item, w) in items.iter().zip(want) {
        match (item, w) {
            (Item::Entry(e), Want::Entry(r, p)) => {
                prop_assert_eq!(&Rec::of(e), r);
                prop_assert_eq!(e.position, *p);
                if let Some(n) = prev_next {
                    // Within a segment the next position is the following record; across a roll it is the end of
                    // the segment or the next segment's start.
                    prop_assert!(n <= e.position);
                }
                prev_next = Some(e.next);
            }
            (Item::Event(Event::Reset { from, to }), Want::Reset(p)) => {
                prop_assert_eq!(to, p);
                prop_assert!(from < to);
                prev_next = Some(*to);
            }
            (got, w) => prop_assert!(false, "got {:?}, want {:?}", got, w),
        }
    }
    // Restart from every entry's position: the same suffix.
    for (i, item) in items.iter().enumerate().step_by(3) {
        if let Item::Entry(e) = item {
            let rest = drain(&mut log.reader(Start::At(e.position)).expect("reader"));
            prop_assert_eq!(&rest[..], &items[i..]);
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn log_reads_back_what_was_synced(segment_size in 64u64..1500, ops in prop::collection::vec(op(), 1..25)) {
        let opts = LogOptions { segment_size, ..LogOptions::default() };
        let mut storage = MemStorage::new();
        let (mut log, _) = Log::open_with(storage.clone(), opts).expect("open");
        let mut want = Vec::new();
        let mut n = 0usize;
        for op in ops {
            match op {
                Op::Append(sizes) => {
                    for s in sizes {
                        let r = Rec::new(n, s);
                        n += 1;
                        let p = log.append(&r.header(), &r.payload).expect("append");
                        want.push(Want::Entry(r, p));
                    }
                    log.sync().expect("sync");
                }
                Op::NewSession => want.push(Want::Reset(log.new_session().expect("session"))),
                Op::Reopen => {
                    drop(log);
                    log = Log::open_with(storage.clone(), opts).expect("reopen").0;
                }
                Op::Crash(sizes) => {
                    let mut unsynced = Vec::new();
                    for s in sizes {
                        let r = Rec::new(n, s);
                        n += 1;
                        let p = log.append(&r.header(), &r.payload).expect("append");
                        unsynced.push(Want::Entry(r, p));
                    }
                    storage = storage.crash();
                    drop(log);
                    let (l, report) = Log::open_with(storage.clone(), opts).expect("reopen after crash");
                    prop_assert!(report.sealed.is_none());
                    log = l;
                    // What survived: everything synced, then a prefix of the rest (a roll syncs what it seals).
                    let items = drain(&mut log.reader(Start::Oldest).expect("reader"));
                    let kept = items.len() - want.len();
                    prop_assert!(kept <= unsynced.len());
                    want.extend(unsynced.into_iter().take(kept));
                }
            }
            check(&log, &want)?;
        }
    }
}

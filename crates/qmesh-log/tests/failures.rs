//! Storage failures, durability policies, the disk-use policy and the directory lock.

mod common;

use common::{Rec, TestDir, drain, entries};
use qmesh_log::{ArchivePolicy, Durability, Error, Log, LogOptions, MemStorage, Start, Storage};

fn opts(segment_size: u64, durability: Durability) -> LogOptions {
    LogOptions { segment_size, durability }
}

#[test]
fn a_failed_sync_voids_unsynced_appends_and_the_log_goes_on() {
    let storage = MemStorage::new();
    let (mut log, _) = Log::open_with(storage.clone(), opts(1 << 20, Durability::Always)).expect("open");
    let a = Rec::new(0, 50);
    log.append(&a.header(), &a.payload).expect("append");
    let synced = log.sync().expect("sync");
    // The device fills up: the next sync fails, and the appends since the last sync are gone.
    let used = storage.len(log.active_segment()).expect("len");
    storage.set_capacity(Some(used + 60));
    let b = Rec::new(1, 50);
    let c = Rec::new(2, 50);
    let pb = log.append(&b.header(), &b.payload).expect("append buffers");
    log.append(&c.header(), &c.payload).expect("append buffers");
    assert!(matches!(log.sync(), Err(Error::Io { op: "append", .. })));
    assert_eq!(log.end_position(), synced);
    assert_eq!(storage.len(log.active_segment()).expect("len"), used, "cut back to the last synced record");
    // Space again: the next append takes the voided position.
    storage.set_capacity(None);
    assert_eq!(log.append(&c.header(), &c.payload).expect("append"), pb);
    log.sync().expect("sync");
    let items = drain(&mut log.reader(Start::Oldest).expect("reader"));
    assert_eq!(entries(&items).iter().map(|e| Rec::of(e)).collect::<Vec<_>>(), vec![a, c]);
}

#[test]
fn durability_policies() {
    // Always: a crash right after sync keeps everything synced.
    let storage = MemStorage::new();
    let (mut log, _) = Log::open_with(storage.clone(), opts(1 << 20, Durability::Always)).expect("open");
    let r = Rec::new(0, 10);
    log.append(&r.header(), &r.payload).expect("append");
    log.sync().expect("sync");
    let (after, _) = Log::open_with(storage.crash(), opts(1 << 20, Durability::Always)).expect("reopen");
    assert_eq!(entries(&drain(&mut after.reader(Start::Oldest).expect("reader"))).len(), 1);
    // Never: readable after sync, but not durable; a power loss loses it.
    let storage = MemStorage::new();
    let (mut log, _) = Log::open_with(storage.clone(), opts(1 << 20, Durability::Never)).expect("open");
    log.append(&r.header(), &r.payload).expect("append");
    log.sync().expect("sync");
    assert_eq!(entries(&drain(&mut log.reader(Start::Oldest).expect("reader"))).len(), 1);
    let (after, _) = Log::open_with(storage.crash(), opts(1 << 20, Durability::Never)).expect("reopen");
    assert_eq!(entries(&drain(&mut after.reader(Start::Oldest).expect("reader"))).len(), 0);
    // Interval: the first sync after the interval fsyncs; within it, none.
    let storage = MemStorage::new();
    let (mut log, _) =
        Log::open_with(storage.clone(), opts(1 << 20, Durability::Interval(std::time::Duration::ZERO)))
            .expect("open");
    log.append(&r.header(), &r.payload).expect("append");
    log.sync().expect("sync");
    let (after, _) = Log::open_with(storage.crash(), opts(1 << 20, Durability::Always)).expect("reopen");
    assert_eq!(entries(&drain(&mut after.reader(Start::Oldest).expect("reader"))).len(), 1);
    let storage = MemStorage::new();
    let (mut log, _) =
        Log::open_with(storage.clone(), opts(1 << 20, Durability::Interval(std::time::Duration::MAX)))
            .expect("open");
    log.append(&r.header(), &r.payload).expect("append");
    log.sync().expect("sync");
    let (after, _) = Log::open_with(storage.crash(), opts(1 << 20, Durability::Always)).expect("reopen");
    assert_eq!(entries(&drain(&mut after.reader(Start::Oldest).expect("reader"))).len(), 0);
}

#[test]
fn disk_use_policy_removes_oldest_rolled_segments() {
    let storage = MemStorage::new();
    let (mut log, _) = Log::open_with(storage.clone(), opts(256, Durability::Always)).expect("open");
    for i in 0..20 {
        let r = Rec { dedup: None, ..Rec::new(i, 60) };
        log.append(&r.header(), &r.payload).expect("append");
        log.sync().expect("sync");
    }
    let held = log.handle().total_bytes();
    assert_eq!(held, 10 * 240);
    storage.set_capacity(Some(4000)); // 60 % used
    let policy = ArchivePolicy { max_disk_percent: Some(30.0), ..Default::default() };
    let rep = log.archive(&policy, 0).expect("archive");
    // Down to ≤ 1200 bytes = 5 segments of 240.
    assert_eq!(rep.removed.len(), 5);
    assert_eq!(rep.bytes, 5 * 240);
    assert!(storage.disk_usage().expect("usage").expect("known").percent() <= 30.0);
    assert_eq!(log.first_position(), log.handle().segments()[0].start);
    // RT's defaults remove nothing here.
    assert!(log.archive(&ArchivePolicy::rt_defaults(), 0).expect("archive").removed.is_empty());
}

#[test]
fn a_log_directory_has_one_writer() {
    let dir = TestDir::new("lock");
    let (_log, _) = Log::open(dir.path(), LogOptions::default()).expect("open");
    match Log::open(dir.path(), LogOptions::default()) {
        Err(Error::Dir { source, .. }) => assert_eq!(source.kind(), std::io::ErrorKind::WouldBlock),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_options_are_refused() {
    for segment_size in [0, 63, (1 << 30) + 1] {
        let r = Log::open_with(MemStorage::new(), LogOptions { segment_size, ..LogOptions::default() });
        assert!(matches!(r, Err(Error::Options(_))), "{segment_size}");
    }
}

#[test]
fn a_split_sync_covers_what_was_written_before_it_and_appends_go_on_during_the_fsync() {
    let storage = MemStorage::new();
    let (mut log, _) = Log::open_with(storage.clone(), opts(1 << 20, Durability::Always)).expect("open");
    let (a, b, c) = (Rec::new(0, 40), Rec::new(1, 40), Rec::new(2, 40));
    log.append(&a.header(), &a.payload).expect("append");
    let point = log.begin_sync().expect("begin");
    // another caller appends while the fsync runs without the log
    let pb = log.append(&b.header(), &b.payload).expect("append during the fsync");
    let fsynced = point.fsync(&log.handle());
    let latest = log.finish_sync(point, fsynced).expect("finish");
    assert_eq!(latest, pb, "visible up to the point, not the append made during the fsync");
    let seen = |log: &Log<MemStorage>| {
        entries(&drain(&mut log.reader(Start::Oldest).expect("reader")))
            .iter()
            .map(|e| Rec::of(e))
            .collect::<Vec<_>>()
    };
    assert_eq!(seen(&log), vec![a.clone()]);
    let (after, _) = Log::open_with(storage.crash(), opts(1 << 20, Durability::Always)).expect("reopen");
    assert_eq!(seen(&after), vec![a.clone()], "the point is durable");
    drop(after);
    // the next sync takes the rest
    log.sync().expect("sync");
    assert_eq!(seen(&log), vec![a.clone(), b.clone()]);
    // a failed fsync voids the appends since the last successful sync, as sync does
    log.append(&c.header(), &c.payload).expect("append");
    let point = log.begin_sync().expect("begin");
    let err = log.finish_sync(point, Err(std::io::Error::other("disk gone")));
    assert!(matches!(err, Err(Error::Io { op: "sync", .. })), "{err:?}");
    assert_eq!(seen(&log), vec![a, b]);
}

#[test]
fn a_split_sync_across_a_roll() {
    let storage = MemStorage::new();
    let (mut log, _) = Log::open_with(storage.clone(), opts(256, Durability::Always)).expect("open");
    let recs: Vec<Rec> = (0..8).map(|i| Rec::new(i, 60)).collect();
    log.append(&recs[0].header(), &recs[0].payload).expect("append");
    let point = log.begin_sync().expect("begin");
    // the others' appends roll the log past the point's segment, which the roll makes durable and visible
    for r in &recs[1..] {
        log.append(&r.header(), &r.payload).expect("append");
    }
    assert!(log.handle().segments().len() > 1, "the log did not roll");
    let fsynced = point.fsync(&log.handle());
    log.finish_sync(point, fsynced).expect("finish");
    // a rolled segment removed while its fsync ran is no failure either
    log.append(&recs[0].header(), &recs[0].payload).expect("append");
    let point = log.begin_sync().expect("begin");
    for r in &recs[1..4] {
        log.append(&r.header(), &r.payload).expect("append");
    }
    let gone = Err(std::io::Error::from(std::io::ErrorKind::NotFound));
    log.finish_sync(point, gone).expect("a removed rolled segment");
    log.sync().expect("sync");
    let (after, _) = Log::open_with(storage.crash(), opts(256, Durability::Always)).expect("reopen");
    let got: Vec<Rec> = entries(&drain(&mut after.reader(Start::Oldest).expect("reader")))
        .iter()
        .map(|e| Rec::of(e))
        .collect();
    assert_eq!(got, [&recs[..], &recs[..4]].concat());
}

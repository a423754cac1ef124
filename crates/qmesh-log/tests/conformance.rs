//! One suite, run against every `Storage` implementation (files and memory): append/read round trip, positions
//! across rolls and sessions, tailing, recovery after a tail cut at every byte, flipped bytes (`badtail`),
//! archiving, prune, shipping raw records.

mod common;

use common::*;
use qmesh_log::format::SEGMENT_HEADER_LEN;
use qmesh_log::{
    ArchivePolicy, Durability, Error, Event, Item, Log, LogOptions, MAX_PAYLOAD, Position, SegmentId, Start,
    Storage,
};

const HDR: u64 = SEGMENT_HEADER_LEN as u64;

fn opts(segment_size: u64) -> LogOptions {
    LogOptions { segment_size, durability: Durability::Always }
}

fn open<F: Fixture>(f: &F, segment_size: u64) -> Log<F::S> {
    Log::open_with(f.storage(), opts(segment_size)).expect("open").0
}

/// Appends `recs`, syncing every `batch`, returns their positions.
fn append_all<S: Storage>(log: &mut Log<S>, recs: &[Rec], batch: usize) -> Vec<Position> {
    let mut pos = Vec::new();
    for (i, r) in recs.iter().enumerate() {
        pos.push(log.append(&r.header(), &r.payload).expect("append"));
        if (i + 1) % batch == 0 {
            log.sync().expect("sync");
        }
    }
    log.sync().expect("sync");
    pos
}

fn recs(n: usize, size: impl Fn(usize) -> usize) -> Vec<Rec> {
    (0..n).map(|i| Rec::new(i, size(i))).collect()
}

fn round_trip<F: Fixture>(f: F) {
    let mut log = open(&f, 1 << 20);
    let mut tail = log.reader(Start::Oldest).expect("reader");
    assert!(tail.next().expect("read").is_none(), "an empty log has nothing to read");
    let rs = recs(50, |i| i * 7);
    let pos = append_all(&mut log, &rs, 8);
    let items = drain(&mut tail);
    let got = entries(&items);
    assert_eq!(got.len(), rs.len());
    assert!(events(&items).is_empty());
    for (i, e) in got.iter().enumerate() {
        assert_eq!(Rec::of(e), rs[i]);
        assert_eq!(e.position, pos[i]);
        if i + 1 < got.len() {
            assert_eq!(e.next, got[i + 1].position);
        }
    }
    assert_eq!(got.last().map(|e| e.next), Some(log.latest_position()));
    assert_eq!(log.first_position(), Position::new(0, 0, 0).expect("pos"));
    // Reopened, the log holds the same records and appends after them.
    drop(tail);
    drop(log);
    let (mut log, report) = Log::open_with(f.storage(), opts(1 << 20)).expect("reopen");
    assert_eq!(report.cut, None);
    assert_eq!(report.sealed, None);
    assert_eq!(report.records_in_last_segment, 50);
    let more = Rec::new(99, 3);
    let p = log.append(&more.header(), &more.payload).expect("append");
    assert_eq!(p, report.end);
    log.sync().expect("sync");
    let items = drain(&mut log.reader(Start::Oldest).expect("reader"));
    assert_eq!(entries(&items).len(), 51);
}

fn rolls_and_restart_points<F: Fixture>(f: F) {
    let mut log = open(&f, 300);
    // Sizes straddle the roll point: some records fill a segment alone, one overfills it.
    let rs = recs(60, |i| if i == 17 { 1000 } else { (i * 13) % 150 });
    let pos = append_all(&mut log, &rs, 5);
    assert!(log.handle().segments().len() > 10, "segments: {:?}", log.handle().segments());
    for w in pos.windows(2) {
        assert!(w[0] < w[1]);
        assert!(w[1].roll() == w[0].roll() || w[1].roll() == w[0].roll() + 1);
        assert_eq!(w[1].session(), 0);
    }
    let all = drain(&mut log.reader(Start::Oldest).expect("reader"));
    assert_eq!(entries(&all).iter().map(|e| Rec::of(e)).collect::<Vec<_>>(), rs);
    // Every position handed out (an entry's own or its next) is a restart point giving the rest.
    for (i, e) in entries(&all).iter().enumerate() {
        for start in [e.position, e.next] {
            let rest = drain(&mut log.reader(Start::At(start)).expect("reader"));
            let skip = if start == e.position { i } else { i + 1 };
            assert_eq!(rest, all[skip..].to_vec(), "from {start:?}");
        }
    }
    // Each segment's end position is a restart point too.
    for s in log.handle().segments() {
        let rest = drain(&mut log.reader(Start::At(s.end)).expect("reader"));
        let skip = entries(&all).iter().filter(|e| e.position < s.end).count();
        assert_eq!(rest, all[skip..].to_vec());
    }
    let ahead = Position::from_u64(log.latest_position().as_u64() + 1);
    assert!(matches!(log.reader(Start::At(ahead)), Err(Error::PositionAhead { .. })));
}

fn sessions<F: Fixture>(f: F) {
    let mut log = open(&f, 1 << 20);
    let a = recs(3, |_| 10);
    append_all(&mut log, &a, 1);
    let end_a = log.latest_position();
    let s1 = log.new_session().expect("new session");
    assert_eq!(s1, Position::new(1, 0, 0).expect("pos"));
    assert_eq!(s1.as_u64(), 17_592_186_044_416);
    let b = recs(2, |_| 20);
    let pos_b = append_all(&mut log, &b, 1);
    assert_eq!(pos_b[0], s1);
    let items = drain(&mut log.reader(Start::Oldest).expect("reader"));
    assert_eq!(events(&items), vec![Event::Reset { from: end_a, to: s1 }]);
    assert!(matches!(&items[3], Item::Event(Event::Reset { .. })));
    // Replays the same, from the start and from just before the reset.
    assert_eq!(drain(&mut log.reader(Start::Oldest).expect("reader")), items);
    assert_eq!(drain(&mut log.reader(Start::At(end_a)).expect("reader")), items[3..].to_vec());
    drop(log);
    let log = open(&f, 1 << 20);
    assert_eq!(drain(&mut log.reader(Start::Oldest).expect("reader")), items);
    assert_eq!(log.end_position(), log.latest_position());
    assert_eq!(log.latest_position().session(), 1);
}

fn tailing_and_latest<F: Fixture>(f: F) {
    let mut log = open(&f, 200);
    let mut from_start = log.reader(Start::Oldest).expect("reader");
    let mut seen = Vec::new();
    let rs = recs(40, |i| 30 + i);
    for (i, r) in rs.iter().enumerate() {
        log.append(&r.header(), &r.payload).expect("append");
        assert!(from_start.next().expect("read").is_none(), "unsynced records are not readable");
        log.sync().expect("sync");
        if i == 20 {
            log.new_session().expect("session");
        }
        seen.extend(drain(&mut from_start));
    }
    assert_eq!(entries(&seen).iter().map(|e| Rec::of(e)).collect::<Vec<_>>(), rs);
    assert_eq!(events(&seen).len(), 1);
    let mut latest = log.reader(Start::Latest).expect("reader");
    assert!(latest.next().expect("read").is_none());
    let r = Rec::new(1000, 5);
    let p = log.append(&r.header(), &r.payload).expect("append");
    log.sync().expect("sync");
    match latest.next().expect("read") {
        Some(Item::Entry(e)) => assert_eq!((e.position, Rec::of(&e)), (p, r)),
        other => panic!("{other:?}"),
    }
    assert_eq!(drain(&mut from_start).len(), 1);
}

fn tail_cut_at_every_byte<F: Fixture>(f: F) {
    let rs = recs(5, |i| 20 + i);
    let mut log = open(&f, 1 << 20);
    let pos = append_all(&mut log, &rs, 5);
    let seg = log.active_segment();
    let full = log.handle().storage().len(seg).expect("len");
    let last_start = HDR + pos[4].offset();
    drop(log);
    let image = read_segment(&f.storage(), seg);
    for cut in last_start..full {
        {
            let s = f.storage();
            s.truncate(seg, 0).expect("truncate");
            s.append(seg, &image[..cut as usize]).expect("append");
        }
        let (mut log, report) = Log::open_with(f.storage(), opts(1 << 20)).expect("reopen");
        let expect_cut = (cut > last_start).then_some(cut - last_start);
        assert_eq!(
            report.cut.as_ref().map(|c| (c.at, c.bytes)),
            expect_cut.map(|b| (pos[4], b)),
            "cut {cut}"
        );
        assert_eq!(report.end, pos[4]);
        let items = drain(&mut log.reader(Start::Oldest).expect("reader"));
        assert_eq!(
            entries(&items).iter().map(|e| Rec::of(e)).collect::<Vec<_>>(),
            rs[..4].to_vec(),
            "cut {cut}"
        );
        assert!(events(&items).is_empty());
        // The log goes on where the whole records end.
        assert_eq!(log.append(&rs[4].header(), &rs[4].payload).expect("append"), pos[4]);
        log.sync().expect("sync");
        drop(log);
        assert_eq!(read_segment(&f.storage(), seg), image, "re-appending restores the same bytes");
    }
}

fn read_segment<S: Storage>(s: &S, seg: SegmentId) -> Vec<u8> {
    let mut buf = vec![0u8; s.len(seg).expect("len") as usize];
    let n = s.read_at(seg, 0, &mut buf).expect("read");
    assert_eq!(n, buf.len());
    buf
}

fn torn_segment_header<F: Fixture>(f: F) {
    let mut log = open(&f, 100);
    append_all(&mut log, &recs(3, |_| 80), 1);
    let last = log.active_segment();
    let next = last.next_roll().expect("roll");
    drop(log);
    let s = f.storage();
    s.create(next).expect("create");
    s.append(next, &qmesh_log::format::SegmentHeader::encode(next)[..10]).expect("append");
    drop(s);
    let (log, report) = Log::open_with(f.storage(), opts(100)).expect("reopen");
    assert!(report.header_rewritten);
    assert_eq!(log.active_segment(), next);
    assert_eq!(entries(&drain(&mut log.reader(Start::Oldest).expect("reader"))).len(), 3);
}

fn flipped_byte_gives_badtail<F: Fixture>(f: F) {
    let mut log = open(&f, 200);
    let rs = recs(30, |_| 40);
    let pos = append_all(&mut log, &rs, 3);
    let segs = log.handle().segments();
    assert!(segs.len() >= 4);
    // Damage the second record of the second segment (rolled).
    let victim = pos.iter().copied().filter(|p| p.segment() == segs[1].id).nth(1).expect("record");
    flip_byte(log.handle().storage(), victim.segment(), HDR + victim.offset() + 45);
    let items = drain(&mut log.reader(Start::Oldest).expect("reader"));
    let next_seg = segs[2].start;
    assert_eq!(events(&items), vec![Event::Badtail { at: victim, next: next_seg }]);
    let got: Vec<Position> = entries(&items).iter().map(|e| e.position).collect();
    let want: Vec<Position> = pos.iter().copied().filter(|p| *p < victim || *p >= next_seg).collect();
    assert_eq!(got, want, "everything but the rest of the damaged segment");
    // The same sequence again, from the start and from just before the damage.
    assert_eq!(drain(&mut log.reader(Start::Oldest).expect("reader")), items);
    let i = items.iter().position(|i| matches!(i, Item::Event(_))).expect("event");
    assert_eq!(drain(&mut log.reader(Start::At(victim)).expect("reader")), items[i..].to_vec());
    // A damaged segment header: badtail at the segment's start.
    flip_byte(log.handle().storage(), segs[3].id, 3);
    let items = drain(&mut log.reader(Start::At(segs[3].start)).expect("reader"));
    assert_eq!(events(&items)[0], Event::Badtail { at: segs[3].start, next: segs[4].start });
}

fn corrupt_active_segment_is_sealed<F: Fixture>(f: F) {
    let mut log = open(&f, 1 << 20);
    let rs = recs(10, |_| 40);
    let pos = append_all(&mut log, &rs, 10);
    let seg = log.active_segment();
    flip_byte(log.handle().storage(), seg, HDR + pos[3].offset() + 50);
    drop(log);
    let (mut log, report) = Log::open_with(f.storage(), opts(1 << 20)).expect("reopen");
    assert_eq!(report.cut, None, "records after a mid-segment corruption are not cut");
    assert_eq!(report.sealed.as_ref().map(|s| s.at), Some(pos[3]));
    assert_eq!(log.active_segment(), seg.next_roll().expect("roll"));
    let r = Rec::new(77, 9);
    let p = log.append(&r.header(), &r.payload).expect("append");
    log.sync().expect("sync");
    let items = drain(&mut log.reader(Start::Oldest).expect("reader"));
    assert_eq!(events(&items), vec![Event::Badtail { at: pos[3], next: p }]);
    assert_eq!(entries(&items).len(), 4);
}

fn archive_policies<F: Fixture>(f: F) {
    let mut log = open(&f, 256);
    // Records of 104 bytes: two per segment; ts rises by 1 s per record.
    let rs: Vec<Rec> =
        (0..20).map(|i| Rec { ts: i as i64 * 1_000_000_000, dedup: None, ..Rec::new(i, 60) }).collect();
    append_all(&mut log, &rs, 1);
    let segs = log.handle().segments();
    assert_eq!(segs.len(), 10);
    let mut reader = log.reader(Start::Oldest).expect("reader");
    let first = reader.next().expect("read");
    assert!(matches!(first, Some(Item::Entry(_))));
    // Nothing due: nothing removed.
    let none = log.archive(&ArchivePolicy::default(), 0).expect("archive");
    assert!(none.removed.is_empty());
    // Age: now = 20 s, keep 13.5 s ⇒ records with ts < 6.5 s are old: segments 0..=2 (ts 0..=5 s) go.
    let now = 20 * 1_000_000_000;
    let by_age =
        ArchivePolicy { max_age: Some(std::time::Duration::from_millis(13_500)), ..Default::default() };
    let rep = log.archive(&by_age, now).expect("archive");
    assert_eq!(rep.removed, segs[..3].iter().map(|s| s.id).collect::<Vec<_>>());
    assert_eq!(rep.first, segs[3].start);
    assert_eq!(log.first_position(), segs[3].start);
    // A reader inside an archived segment skips forward.
    match reader.next().expect("read") {
        Some(Item::Event(Event::SkipForward { from, to })) => {
            assert_eq!((from.segment(), to), (segs[0].id, segs[3].start))
        }
        other => panic!("{other:?}"),
    }
    // Bytes: keep at most 3 segments' worth.
    let keep = 3 * segs[5].bytes;
    let rep =
        log.archive(&ArchivePolicy { max_bytes: Some(keep), ..Default::default() }, now).expect("archive");
    assert!(log.handle().total_bytes() <= keep, "{} > {keep}", log.handle().total_bytes());
    assert_eq!(rep.removed.len(), 4);
    // Never the active segment, whatever the policy says.
    let rep = log.archive(&ArchivePolicy { max_bytes: Some(0), ..Default::default() }, now).expect("archive");
    assert_eq!(rep.removed.len(), 2);
    assert_eq!(log.handle().segments().len(), 1);
    assert_eq!(log.handle().segments()[0].id, log.active_segment());
    // Reading from a removed position: skip-forward to the first unarchived segment.
    let items = drain(&mut log.reader(Start::At(segs[0].start)).expect("reader"));
    assert_eq!(events(&items), vec![Event::SkipForward { from: segs[0].start, to: log.first_position() }]);
}

fn prune<F: Fixture>(f: F) {
    let mut log = open(&f, 256);
    let pos = append_all(&mut log, &recs(20, |_| 60), 1); // two records per segment
    let segs = log.handle().segments();
    // A position inside segment 3: segments 0..=2 go, 3 stays.
    let inside = pos.iter().copied().find(|p| p.segment() == segs[3].id && p.offset() > 0).expect("pos");
    let rep = log.prune(inside).expect("prune");
    assert_eq!(rep.removed, segs[..3].iter().map(|s| s.id).collect::<Vec<_>>());
    // Segment 3's end position: segment 3 is wholly before it.
    let rep = log.prune(segs[3].end).expect("prune");
    assert_eq!(rep.removed, vec![segs[3].id]);
    // Beyond everything: all rolled segments go, the active stays.
    log.prune(log.latest_position()).expect("prune");
    assert_eq!(log.handle().segments().len(), 1);
}

fn shipped_records<F: Fixture>(f: F) {
    let src_store = qmesh_log::MemStorage::new();
    let (mut src, _) = Log::open_with(src_store, opts(300)).expect("open");
    let rs = recs(40, |i| (i * 17) % 200);
    append_all(&mut src, &rs[..20], 4);
    src.new_session().expect("session");
    append_all(&mut src, &rs[20..], 4);
    let mut dst = open(&f, 300);
    let mut items = Vec::new();
    for item in drain(&mut src.reader(Start::Oldest).expect("reader")) {
        match &item {
            Item::Entry(e) => assert_eq!(dst.append_raw(e.raw()).expect("append raw"), e.position),
            Item::Event(Event::Reset { to, .. }) => assert_eq!(dst.new_session().expect("session"), *to),
            Item::Event(e) => panic!("{e:?}"),
        }
        items.push(item);
    }
    dst.sync().expect("sync");
    assert_eq!(drain(&mut dst.reader(Start::Oldest).expect("reader")), items, "same positions, same bytes");
    let Item::Entry(e) = &items[0] else { panic!() };
    let mut bad = e.raw().to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(matches!(dst.append_raw(&bad), Err(Error::BadRecord(_))));
    assert!(matches!(dst.append_raw(&e.raw()[..10]), Err(Error::BadRecord(_))));
}

fn limits<F: Fixture>(f: F) {
    let mut log = open(&f, 1 << 20);
    let end = log.end_position();
    let huge = vec![0u8; MAX_PAYLOAD + 1]; // zeroed pages: never touched
    let r = Rec::new(0, 0);
    assert!(
        matches!(log.append(&r.header(), &huge), Err(Error::PayloadTooLarge { len, max }) if len == MAX_PAYLOAD + 1 && max == 1_073_741_783)
    );
    let long = vec![b'x'; 256];
    let h = qmesh_log::RecordHeader { on: &long, ..Default::default() };
    assert!(matches!(log.append(&h, b""), Err(Error::SymbolTooLong { field: "on", .. })));
    assert_eq!(log.end_position(), end, "nothing written");
    log.sync().expect("sync");
    assert_eq!(log.handle().storage().len(log.active_segment()).expect("len"), HDR);
}

/// A reader at `pos` is refused: it lies inside the record at `record`, and `next` is the boundary after it.
fn assert_inside<S: Storage>(log: &Log<S>, pos: Position, record: Position, next: Position) {
    match log.reader(Start::At(pos)) {
        Err(Error::NotARecordStart { pos: p, inside, next: n }) => {
            assert_eq!((p, inside, n), (pos, Some(record), next), "{pos:?}")
        }
        other => panic!("{pos:?} inside the record at {record:?}: {other:?}"),
    }
}

/// Every byte inside a record is refused as a start, every boundary accepted; past a rolled segment's end and inside
/// a segment that is not there are refused; archived positions are accepted (skip-forward).
fn positions_inside_records_are_refused<F: Fixture>(f: F) {
    let mut log = open(&f, 300);
    let rs = recs(40, |i| if i == 11 { 700 } else { (i * 13) % 150 });
    append_all(&mut log, &rs[..30], 4);
    let end_s0 = log.latest_position();
    log.new_session().expect("session");
    append_all(&mut log, &rs[30..], 4);
    let all = drain(&mut log.reader(Start::Oldest).expect("reader"));
    for e in entries(&all) {
        for p in [e.position, e.next] {
            log.handle().check_position(p).expect("a boundary");
        }
        let rest = drain(&mut log.reader(Start::At(e.position)).expect("reader"));
        assert_eq!(rest.first(), Some(&Item::Entry((*e).clone())));
        // every byte after the record's first is inside it; its end is the next boundary
        assert_eq!(e.next.segment(), e.position.segment());
        for off in e.position.offset() + 1..e.next.offset() {
            let inside = Position::new(e.position.session(), e.position.roll(), off).expect("pos");
            assert_inside(&log, inside, e.position, e.next);
        }
    }
    for s in log.handle().segments() {
        log.handle().check_position(s.start).expect("a segment's start");
        log.handle().check_position(s.end).expect("a segment's end");
        if s.rolled && s.end.segment() == s.id {
            let past = Position::from_u64(s.end.as_u64() + 1);
            match log.reader(Start::At(past)) {
                Err(Error::NotARecordStart { inside: None, next, .. }) => {
                    assert_eq!(next, s.id.next_roll().expect("roll").start())
                }
                other => panic!("past a rolled segment's end: {other:?}"),
            }
        }
    }
    // A segment that is not there, between segments that are: its start is where a reader moves on from (a
    // `reset` next), any other offset is refused.
    let missing = end_s0.segment().next_roll().expect("roll");
    assert!(log.handle().segments().iter().all(|s| s.id != missing));
    let items = drain(&mut log.reader(Start::At(missing.start())).expect("reader"));
    assert!(matches!(items[0], Item::Event(Event::Reset { .. })), "{:?}", items[0]);
    assert!(matches!(
        log.reader(Start::At(Position::new(missing.session, missing.roll, 7).expect("pos"))),
        Err(Error::NotARecordStart { inside: None, .. })
    ));
    let ahead = Position::from_u64(log.latest_position().as_u64() + 3);
    assert!(matches!(log.reader(Start::At(ahead)), Err(Error::PositionAhead { .. })));
    // An archived position cannot be checked: accepted, and the reader skips forward.
    let first_seg = log.handle().segments()[0];
    let Item::Entry(e0) = &all[0] else { panic!("{:?}", all[0]) };
    log.prune(first_seg.end).expect("prune");
    assert_ne!(log.handle().segments()[0].id, first_seg.id);
    let archived = Position::from_u64(e0.position.as_u64() + 1);
    let items = drain(&mut log.reader(Start::At(archived)).expect("reader"));
    assert!(matches!(items[0], Item::Event(Event::SkipForward { from, .. }) if from == archived));
}

/// A corrupt record at a boundary is still a start (`badtail` there); inside it is still refused while its length
/// holds; after a damaged length nothing can be said, and the position is read as today (`badtail`).
fn corrupt_record_at_a_boundary_is_badtail<F: Fixture>(f: F) {
    let mut log = open(&f, 600);
    let pos = append_all(&mut log, &recs(20, |_| 60), 1);
    let segs = log.handle().segments();
    let in_first: Vec<Position> = pos.iter().copied().filter(|p| p.segment() == segs[0].id).collect();
    assert!(in_first.len() >= 4, "{in_first:?}");
    let victim = in_first[1];
    flip_byte(log.handle().storage(), victim.segment(), HDR + victim.offset() + 45);
    let items = drain(&mut log.reader(Start::At(victim)).expect("a corrupt record's start"));
    assert_eq!(items[0], Item::Event(Event::Badtail { at: victim, next: segs[1].start }));
    assert_inside(&log, Position::from_u64(victim.as_u64() + 3), victim, in_first[2]);
    // records after it in the segment decode: still boundaries
    log.handle().check_position(in_first[2]).expect("a whole record");
    assert_inside(&log, Position::from_u64(in_first[2].as_u64() + 1), in_first[2], in_first[3]);
    // the length of the record before is damaged: positions after it cannot be told
    flip_byte(log.handle().storage(), victim.segment(), HDR + in_first[0].offset() + 5);
    let odd = Position::from_u64(in_first[1].as_u64() + 3);
    let items = drain(&mut log.reader(Start::At(odd)).expect("nothing to say: read as today"));
    assert_eq!(items[0], Item::Event(Event::Badtail { at: odd, next: segs[1].start }));
}

/// A copy of a log with a corrupt record: `mark_badtail` where the source's reader reported `badtail` makes the
/// copy's reader yield the same items; the mark survives a reopen, and a crash before the next roll was created.
fn badtail_mark_in_a_copy<F: Fixture>(f: F) {
    let (mut src, _) = Log::open_with(qmesh_log::MemStorage::new(), opts(300)).expect("open");
    let pos = append_all(&mut src, &recs(30, |_| 50), 3);
    let segs = src.handle().segments();
    let victim = pos.iter().copied().filter(|p| p.segment() == segs[1].id).nth(1).expect("record");
    flip_byte(src.handle().storage(), victim.segment(), HDR + victim.offset() + 45);
    let items = drain(&mut src.reader(Start::Oldest).expect("reader"));
    assert_eq!(events(&items), vec![Event::Badtail { at: victim, next: segs[2].start }]);
    let mut dst = open(&f, 300);
    for item in &items {
        match item {
            Item::Entry(e) => {
                if e.position.segment() > dst.active_segment() {
                    dst.continue_at(e.position.segment()).expect("continue");
                }
                assert_eq!(dst.append_raw(e.raw()).expect("append raw"), e.position);
            }
            Item::Event(Event::Badtail { at, next }) => {
                let wrong = Position::from_u64(at.as_u64() + 1);
                assert!(matches!(dst.mark_badtail(wrong), Err(Error::MarkNotAtEnd { .. })));
                assert_eq!(dst.mark_badtail(*at).expect("mark"), *next);
            }
            Item::Event(e) => panic!("{e:?}"),
        }
    }
    dst.sync().expect("sync");
    assert_eq!(drain(&mut dst.reader(Start::Oldest).expect("reader")), items, "same items, same positions");
    let i = items.iter().position(|i| matches!(i, Item::Event(_))).expect("event");
    assert_eq!(drain(&mut dst.reader(Start::At(victim)).expect("reader")), items[i..].to_vec());
    drop(dst);
    let (dst, report) = Log::open_with(f.storage(), opts(300)).expect("reopen");
    assert_eq!((report.cut, report.sealed), (None, None));
    assert_eq!(drain(&mut dst.reader(Start::Oldest).expect("reader")), items, "after a reopen");
    drop(dst);
    // A crash after the mark, before the next roll held anything: the marked segment is the last one.
    let s = f.storage();
    for seg in s.list().expect("list") {
        if seg > victim.segment() {
            s.remove(seg).expect("remove");
        }
    }
    drop(s);
    let (dst, report) = Log::open_with(f.storage(), opts(300)).expect("reopen");
    assert_eq!(report.sealed.map(|s| s.at), Some(victim), "the mark seals its segment");
    assert_eq!(report.cut, None);
    assert_eq!(dst.end_position(), segs[2].start);
    assert_eq!(drain(&mut dst.reader(Start::Oldest).expect("reader")), items[..=i].to_vec());
    drop(dst);
    // A mark torn by a crash: cut back to the corrupt record's position (a copy re-pulling from its end gets the
    // event again), or kept once its length fields are whole.
    let mark = qmesh_log::format::BADTAIL_MARK;
    for keep in 0..mark.len() {
        let s = f.storage();
        for seg in s.list().expect("list") {
            if seg > victim.segment() {
                s.remove(seg).expect("remove");
            }
        }
        s.truncate(victim.segment(), HDR + victim.offset()).expect("truncate");
        s.append(victim.segment(), &mark[..keep]).expect("append");
        drop(s);
        let (dst, report) = Log::open_with(f.storage(), opts(300)).expect("reopen");
        if keep < qmesh_log::format::RECORD_PREFIX_LEN {
            assert_eq!(dst.end_position(), victim, "torn mark of {keep} bytes");
            assert_eq!(report.cut.is_some(), keep > 0);
        } else {
            assert_eq!(report.sealed.map(|s| s.at), Some(victim), "mark of {keep} bytes");
            assert_eq!(dst.end_position(), segs[2].start);
        }
    }
}

/// A copy that starts after a corrupt record of the same segment (`fill_badtail`): readers from before the damage
/// see `badtail` and the next roll, readers from the resume point read on: what the source's readers see.
fn badtail_fill_in_a_copy<F: Fixture>(f: F) {
    let (mut src, _) = Log::open_with(qmesh_log::MemStorage::new(), opts(400)).expect("open");
    let pos = append_all(&mut src, &recs(30, |_| 50), 3);
    let segs = src.handle().segments();
    let in_seg1: Vec<Position> = pos.iter().copied().filter(|p| p.segment() == segs[1].id).collect();
    assert!(in_seg1.len() >= 3, "{in_seg1:?}");
    let (victim, resume) = (in_seg1[1], in_seg1[2]);
    flip_byte(src.handle().storage(), victim.segment(), HDR + victim.offset() + 45);
    let mut dst = open(&f, 400);
    dst.continue_at(segs[1].id).expect("a fresh copy starts at the segment");
    let first = drain(&mut src.reader(Start::At(segs[1].start)).expect("reader"));
    let Item::Entry(e) = &first[0] else { panic!("{:?}", first[0]) };
    dst.append_raw(e.raw()).expect("append raw");
    assert_eq!(first[1], Item::Event(Event::Badtail { at: victim, next: segs[2].start }));
    let wrong = Position::from_u64(resume.as_u64() + (1 << 30));
    assert!(matches!(dst.fill_badtail(victim, wrong), Err(Error::MarkNotAtEnd { .. })));
    assert_eq!(dst.fill_badtail(victim, resume).expect("fill"), resume);
    let rest = drain(&mut src.reader(Start::At(resume)).expect("reader"));
    for item in &rest {
        match item {
            Item::Entry(e) => {
                if e.position.segment() > dst.active_segment() {
                    dst.continue_at(e.position.segment()).expect("continue");
                }
                assert_eq!(dst.append_raw(e.raw()).expect("append raw"), e.position);
            }
            Item::Event(e) => panic!("{e:?}"),
        }
    }
    dst.sync().expect("sync");
    assert_eq!(drain(&mut dst.reader(Start::At(resume)).expect("reader")), rest, "from the resume point");
    assert_eq!(
        drain(&mut dst.reader(Start::At(segs[1].start)).expect("reader")),
        first,
        "from before the damage"
    );
    drop(dst);
    let dst = open(&f, 400);
    assert_eq!(drain(&mut dst.reader(Start::At(segs[1].start)).expect("reader")), first, "after a reopen");
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod mem_storage {
            use super::*;
            $(#[test] fn $name() { super::$name(common::mem()) })*
        }
        mod file_storage {
            use super::*;
            $(#[test] fn $name() { super::$name(common::file(stringify!($name))) })*
        }
    };
}

suite!(
    round_trip,
    rolls_and_restart_points,
    sessions,
    tailing_and_latest,
    tail_cut_at_every_byte,
    torn_segment_header,
    flipped_byte_gives_badtail,
    corrupt_active_segment_is_sealed,
    archive_policies,
    prune,
    shipped_records,
    limits,
    positions_inside_records_are_refused,
    corrupt_record_at_a_boundary_is_badtail,
    badtail_mark_in_a_copy,
    badtail_fill_in_a_copy,
);

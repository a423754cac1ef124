//! The body of the `decode_log` fuzz target, shared with the stable-toolchain corpus replay test
//! (crates/qmesh-log/tests/fuzz_corpus.rs), which includes this file with `#[path]`.

use qmesh_log::format::{SegmentHeader, decode_record};
use qmesh_log::{Error, Item, Log, LogOptions, MemStorage, Position, RecordHeader, SegmentId, Start};

/// Most items read back from one input: a bound, so a run stays short whatever the bytes say.
pub const FUZZ_MAX_ITEMS: usize = 10_000;
/// Most start offsets tried per input (each walks the segment's lengths up to it): a bound on a run's time.
pub const FUZZ_MAX_STARTS: u64 = 512;

/// Any bytes as a record, as a segment header, and as the image of a log's last segment (with a valid segment
/// header prepended when the first byte is even): the decoder never panics; recovery opens the log or fails
/// cleanly; whatever it keeps reads back whole, and an append after it reads back too.
pub fn decode_log(data: &[u8]) {
    if let Ok(v) = decode_record(data) {
        assert_eq!(decode_record(v.raw).map(|w| w.raw.len()), Ok(v.raw.len()));
    }
    let _ = SegmentHeader::decode(data);
    let seg = SegmentId::default();
    let image = match data.first() {
        Some(b) if b % 2 == 0 => [&SegmentHeader::encode(seg)[..], &data[1..]].concat(),
        _ => data.to_vec(),
    };
    let storage = MemStorage::new();
    storage.put(seg, image);
    let Ok((mut log, _report)) =
        Log::open_with(storage, LogOptions { segment_size: 4096, ..Default::default() })
    else {
        return;
    };
    let read_all = |log: &Log<MemStorage>| {
        let mut r = log.reader(Start::Oldest).expect("reader from the oldest position");
        let mut n = 0;
        while let Some(item) = r.next().expect("read from memory") {
            if let Item::Entry(e) = &item {
                assert_eq!(decode_record(e.raw()).map(|v| v.payload), Ok(e.payload()));
            }
            n += 1;
            if n >= FUZZ_MAX_ITEMS {
                break;
            }
        }
        n
    };
    // every offset of the first segment as a start position: refused with a reason, or read without panicking
    for off in 0..FUZZ_MAX_STARTS {
        let Some(p) = Position::new(0, 0, off) else { break };
        match log.reader(Start::At(p)) {
            Ok(mut r) => {
                let _ = r.next().expect("read from memory");
            }
            Err(Error::NotARecordStart { pos, next, .. }) => assert!(next > pos),
            Err(Error::PositionAhead { .. }) => break,
            Err(e) => panic!("start at {p:?}: {e}"),
        }
    }
    let before = read_all(&log);
    let header = RecordHeader { on: b"fuzz", ts: 1, id: 1, to: 0, dedup: None };
    log.append(&header, b"after").expect("append after recovery");
    log.sync().expect("sync");
    let after = read_all(&log);
    assert!(after > before || after >= FUZZ_MAX_ITEMS);
}

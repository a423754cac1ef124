//! Helpers shared by the log's integration tests.

#![allow(dead_code)] // each test file uses some of them

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use qmesh_log::{Entry, Event, FileStorage, Item, MemStorage, Reader, RecordHeader, Storage};

/// A fresh directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct TestDir(PathBuf);

impl TestDir {
    pub fn new(name: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "qmesh-log-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Something that hands out the same storage again (after the previous log on it was dropped).
pub trait Fixture {
    type S: Storage;
    fn storage(&self) -> Self::S;
}

pub struct MemFixture(pub MemStorage);

impl Fixture for MemFixture {
    type S = MemStorage;
    fn storage(&self) -> MemStorage {
        self.0.clone()
    }
}

pub struct FileFixture(pub TestDir);

impl Fixture for FileFixture {
    type S = FileStorage;
    fn storage(&self) -> FileStorage {
        FileStorage::open(self.0.path()).expect("open file storage")
    }
}

pub fn mem() -> MemFixture {
    MemFixture(MemStorage::new())
}

pub fn file(name: &str) -> FileFixture {
    FileFixture(TestDir::new(name))
}

/// Owned record contents, to compare with what a reader returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rec {
    pub on: Vec<u8>,
    pub ts: i64,
    pub id: i64,
    pub to: i64,
    pub dedup: Option<Vec<u8>>,
    pub payload: Vec<u8>,
}

impl Rec {
    pub fn new(i: usize, payload_len: usize) -> Self {
        Self {
            on: format!("pub{}", i % 3).into_bytes(),
            ts: 1_000_000 + i as i64,
            id: i as i64 + 1,
            to: 0,
            dedup: i.is_multiple_of(4).then(|| b"trade".to_vec()),
            payload: (0..payload_len).map(|j| (i * 31 + j) as u8).collect(),
        }
    }

    pub fn header(&self) -> RecordHeader<'_> {
        RecordHeader { on: &self.on, ts: self.ts, id: self.id, to: self.to, dedup: self.dedup.as_deref() }
    }

    pub fn of(e: &Entry) -> Self {
        let h = e.header();
        Self {
            on: h.on.to_vec(),
            ts: h.ts,
            id: h.id,
            to: h.to,
            dedup: h.dedup.map(<[u8]>::to_vec),
            payload: e.payload().to_vec(),
        }
    }
}

/// Everything readable now.
pub fn drain<S: Storage>(r: &mut Reader<S>) -> Vec<Item> {
    let mut out = Vec::new();
    while let Some(item) = r.next().expect("read") {
        out.push(item);
    }
    out
}

pub fn entries(items: &[Item]) -> Vec<&Entry> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Entry(e) => Some(e),
            Item::Event(_) => None,
        })
        .collect()
}

pub fn events(items: &[Item]) -> Vec<Event> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Event(e) => Some(*e),
            Item::Entry(_) => None,
        })
        .collect()
}

/// Overwrites one byte of a segment through the storage trait (read, flip, rewrite).
pub fn flip_byte<S: Storage>(s: &S, id: qmesh_log::SegmentId, offset: u64) {
    let len = s.len(id).expect("len");
    let mut buf = vec![0u8; len as usize];
    let mut at = 0;
    while at < buf.len() {
        let n = s.read_at(id, at as u64, &mut buf[at..]).expect("read");
        assert!(n > 0);
        at += n;
    }
    buf[offset as usize] ^= 0x5a;
    s.truncate(id, 0).expect("truncate");
    s.append(id, &buf).expect("append");
    s.sync(id).expect("sync");
}

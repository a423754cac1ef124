//! The dedup watermarks file, `dedup.watermarks` in a stream's directory:
//! the watermarks as of a position, written before segments are removed so
//! that archiving never forgets them. On open the node loads it and raises
//! the watermarks further from the records still in the log.
//!
//! ```text
//!  0        8        10       12       16                24
//! ┌────────┬────────┬────────┬────────┬─────────────────┬───────────────────────────────┬────────┐
//! │ magic  │version │reserved│ count  │ position        │ count × (len u8, key, mark u64)│ crc32c │
//! │QMRTWMK1│ u16 1  │ 0      │ u32    │ u64             │                               │ u32    │
//! └────────┴────────┴────────┴────────┴─────────────────┴───────────────────────────────┴────────┘
//! ```
//!
//! Little-endian; the checksum covers every byte before it. The file is
//! replaced atomically (written to a temporary file, fsynced, renamed, the
//! directory fsynced), so a crash leaves the old file or the new one.

use std::io::Write;
use std::path::Path;

use qmesh_rt::Watermarks;

/// The file's name in a stream's directory.
pub const FILE_NAME: &str = "dedup.watermarks";

const MAGIC: &[u8; 8] = b"QMRTWMK1";
const VERSION: u16 = 1;
const FIXED: usize = 24;

/// Why the file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WatermarkFileError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The file fails its checks (the path, what is wrong). The message says how to start anyway and what
    /// that costs.
    #[error(
        "{0} is corrupt: {1}. To start anyway, remove it: the node then rebuilds the dedup watermarks and the \
         publishers' shipping marks from the records still in the log, so what only archived records held is \
         lost: a dedup id of an archived record is accepted again, and a publisher whose records were all \
         archived re-ships what its local log still holds (possible duplicates)"
    )]
    Corrupt(String, &'static str),
}

/// Encodes `marks` as of `position`.
pub fn encode(marks: &Watermarks, position: u64) -> Vec<u8> {
    let mut b = Vec::with_capacity(FIXED + marks.len() * 24 + 4);
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&VERSION.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes());
    b.extend_from_slice(&(marks.len() as u32).to_le_bytes());
    b.extend_from_slice(&position.to_le_bytes());
    for (k, w) in marks.iter() {
        // keys are at most 255 bytes (qmesh_rt::limits::MAX_HEADER_SYM_BYTES)
        let k = &k.as_bytes()[..k.len().min(255)];
        b.push(k.len() as u8);
        b.extend_from_slice(k);
        b.extend_from_slice(&w.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a file's bytes: the watermarks and the position they hold at.
pub fn decode(b: &[u8], name: &str) -> Result<(Watermarks, u64), WatermarkFileError> {
    let bad = |why| WatermarkFileError::Corrupt(name.to_string(), why);
    if b.len() < FIXED + 4 {
        return Err(bad("shorter than its header"));
    }
    let (body, crc) = b.split_at(b.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err(bad("checksum mismatch"));
    }
    if &body[..8] != MAGIC {
        return Err(bad("bad magic"));
    }
    if u16::from_le_bytes([body[8], body[9]]) != VERSION {
        return Err(bad("unknown version"));
    }
    let count = u32::from_le_bytes([body[12], body[13], body[14], body[15]]) as usize;
    let position = u64::from_le_bytes(body[16..24].try_into().map_err(|_| bad("header"))?);
    let mut marks = Watermarks::new();
    let mut at = FIXED;
    for _ in 0..count {
        let n = *body.get(at).ok_or(bad("truncated entry"))? as usize;
        let key = body.get(at + 1..at + 1 + n).ok_or(bad("truncated key"))?;
        let w = body.get(at + 1 + n..at + 9 + n).ok_or(bad("truncated watermark"))?;
        let w = u64::from_le_bytes(w.try_into().map_err(|_| bad("watermark"))?);
        let id = i64::try_from(w).map_err(|_| bad("watermark out of range"))?;
        marks.observe(&String::from_utf8_lossy(key), id);
        at += 9 + n;
    }
    if at != body.len() {
        return Err(bad("trailing bytes"));
    }
    Ok((marks, position))
}

/// Reads `dir/dedup.watermarks`; `None` when there is none.
pub fn load(dir: &Path) -> Result<Option<(Watermarks, u64)>, WatermarkFileError> {
    let path = dir.join(FILE_NAME);
    match std::fs::read(&path) {
        Ok(b) => decode(&b, &path.display().to_string()).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Replaces `dir/dedup.watermarks` atomically and durably.
pub fn store(dir: &Path, marks: &Watermarks, position: u64) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&encode(marks, position))?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(FILE_NAME))?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marks() -> Watermarks {
        let mut w = Watermarks::new();
        w.observe("trade", 42);
        w.observe("quote", -7);
        w
    }

    #[test]
    fn round_trip() {
        let b = encode(&marks(), 99);
        let (w, p) = decode(&b, "f").expect("decode");
        assert_eq!((w, p), (marks(), 99));
    }

    /// The error says which file, what is wrong, how to start anyway and what that costs.
    #[test]
    fn the_corrupt_error_says_how_to_start_anyway_and_the_cost() {
        let mut b = encode(&marks(), 99);
        b[30] ^= 1;
        let e = decode(&b, "/d/trades/dedup.watermarks").unwrap_err().to_string();
        assert!(e.starts_with("/d/trades/dedup.watermarks is corrupt: checksum mismatch. "), "{e}");
        assert!(e.contains("remove it"), "{e}");
        assert!(e.contains("rebuilds the dedup watermarks and the publishers' shipping marks"), "{e}");
        assert!(e.contains("a dedup id of an archived record is accepted again"), "{e}");
    }

    #[test]
    fn every_cut_and_every_flipped_byte_is_refused() {
        let b = encode(&marks(), 99);
        for n in 0..b.len() {
            assert!(decode(&b[..n], "f").is_err(), "cut at {n}");
        }
        for i in 0..b.len() {
            let mut c = b.clone();
            c[i] ^= 0x40;
            assert!(decode(&c, "f").is_err(), "flip at {i}");
        }
    }

    #[test]
    fn store_and_load() {
        let dir = std::env::temp_dir().join(format!("qmesh-wm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        assert!(load(&dir).expect("load").is_none());
        store(&dir, &marks(), 5).expect("store");
        assert_eq!(load(&dir).expect("load"), Some((marks(), 5)));
        std::fs::remove_dir_all(&dir).expect("clean");
    }
}

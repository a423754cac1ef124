//! kdb+ IPC compression, both ways.
//!
//! The format is the one KX documents through its Java reference (`c.java`
//! `compress`/`uncompress`): after the 8-byte header (byte 2 = 1) comes the
//! uncompressed total length in 4 bytes, then groups of up to eight items,
//! each group led by a flag byte read from its least significant bit. A clear
//! bit is one literal byte; a set bit a back-reference of two bytes: an index
//! into a 256-entry table of positions (keyed by the XOR of two adjacent
//! bytes) and the number of bytes to copy beyond the first two (0..=255).
//!
//! Messages of 4 GiB and more (capability 5/6) use byte 2 = 2 and an 8-byte
//! uncompressed length; the stream is otherwise the same.
//!
//! The compressor gives up (returns `None`) as soon as its output would
//! reach half the input, which is q's "compress only if it halves" rule.

use crate::error::DecodeError;
use crate::header::{Compression, HEADER_LEN, Header};
use crate::limits::{MAX_DECOMPRESSION_RATIO, MAX_WIRE_LENGTH};

/// Bytes of the longest group: a flag byte and eight back-references.
const MAX_GROUP_LEN: usize = 17;

fn put_u32(out: &mut [u8], v: u32, le: bool) {
    out.copy_from_slice(&if le { v.to_le_bytes() } else { v.to_be_bytes() });
}

fn put_u64(out: &mut [u8], v: u64, le: bool) {
    out.copy_from_slice(&if le { v.to_le_bytes() } else { v.to_be_bytes() });
}

/// Writes the total `length` into header bytes 3..8.
fn put_length(header: &mut [u8], length: u64, le: bool) {
    header[3] = (length >> 32) as u8;
    put_u32(&mut header[4..8], length as u32, le);
}

/// Compresses a whole message (header included). `None` when it would not
/// halve the message, when the message is not a valid uncompressed message,
/// or when it is too short to be worth it.
pub fn compress(msg: &[u8]) -> Option<Vec<u8>> {
    let t = msg.len();
    let header: &[u8; HEADER_LEN] = msg.get(..HEADER_LEN)?.try_into().ok()?;
    let h = Header::parse(header).ok()?;
    if h.compression != Compression::None || h.length != t as u64 {
        return None;
    }
    let le = h.little_endian;
    let long = t as u64 > u64::from(u32::MAX);
    let compression = if long { Compression::CompressedLong } else { Compression::Compressed };
    let start = HEADER_LEN + compression.length_field_len();
    let half = t / 2;
    if half < start + MAX_GROUP_LEN {
        return None;
    }
    let limit = half - MAX_GROUP_LEN;

    let mut out = Vec::with_capacity(half);
    out.extend_from_slice(&msg[..HEADER_LEN]);
    out[2] = compression.to_byte();
    out.resize(start, 0);
    if long {
        put_u64(&mut out[8..16], t as u64, le);
    } else {
        put_u32(&mut out[8..12], t as u32, le);
    }

    let mut hash = [0usize; 256];
    let mut s = HEADER_LEN;
    let mut c = start; // the current group's flag byte
    out.push(0);
    let mut flags = 0u8;
    let mut bit = 1u8;
    // The previous literal's hash entry, inserted only after the next
    // lookup (so a literal never matches the pair that starts right after it).
    let mut pending: Option<(usize, usize)> = None;
    while s < t {
        if bit == 0 {
            if out.len() > limit {
                return None;
            }
            out[c] = flags;
            c = out.len();
            out.push(0);
            flags = 0;
            bit = 1;
        }
        let mut h = 0usize;
        let mut p = 0usize;
        let mut literal = s + 2 >= t;
        if !literal {
            h = usize::from(msg[s] ^ msg[s + 1]);
            p = hash[h];
            literal = p == 0 || msg[s] != msg[p];
        }
        if let Some((h0, s0)) = pending.take() {
            hash[h0] = s0;
        }
        if literal {
            pending = Some((h, s));
            out.push(msg[s]);
            s += 1;
        } else {
            // msg[p..p+2] == msg[s..s+2]: the XOR matches and so does the
            // first byte.
            hash[h] = s;
            flags |= bit;
            s += 2;
            p += 2;
            let r = s;
            let q = (s + 255).min(t);
            while s < q && msg[p] == msg[s] {
                s += 1;
                p += 1;
            }
            out.push(h as u8);
            out.push((s - r) as u8);
        }
        bit <<= 1;
    }
    out[c] = flags;
    let d = out.len();
    put_length(&mut out[..HEADER_LEN], d as u64, le);
    Some(out)
}

/// Decompresses a whole compressed message (header included) into the
/// uncompressed message (header byte 2 = 0, length = uncompressed length).
///
/// The input is untrusted: the claimed length is checked against `max_len`
/// and against what the input can possibly expand to before anything is
/// allocated, and every read and back-reference is bounds-checked.
pub fn decompress(msg: &[u8], max_len: u64) -> Result<Vec<u8>, DecodeError> {
    let header: &[u8; HEADER_LEN] =
        msg.get(..HEADER_LEN).and_then(|h| h.try_into().ok()).ok_or(DecodeError::Truncated {
            offset: 0,
            needed: (HEADER_LEN - msg.len().min(HEADER_LEN)) as u64,
        })?;
    let h = Header::parse(header)?;
    let le = h.little_endian;
    let start = HEADER_LEN + h.compression.length_field_len();
    let field = msg.get(HEADER_LEN..start).ok_or(DecodeError::Decompress("no uncompressed length"))?;
    let total: u64 = match h.compression {
        Compression::None => return Err(DecodeError::Decompress("message is not compressed")),
        Compression::Compressed => {
            let a: [u8; 4] =
                field.try_into().map_err(|_| DecodeError::Decompress("no uncompressed length"))?;
            u64::from(if le { u32::from_le_bytes(a) } else { u32::from_be_bytes(a) })
        }
        Compression::CompressedLong => {
            let a: [u8; 8] =
                field.try_into().map_err(|_| DecodeError::Decompress("no uncompressed length"))?;
            if le { u64::from_le_bytes(a) } else { u64::from_be_bytes(a) }
        }
    };
    if total < HEADER_LEN as u64 {
        return Err(DecodeError::Decompress("uncompressed length shorter than a header"));
    }
    let max = max_len.min(MAX_WIRE_LENGTH);
    if total > max {
        return Err(DecodeError::TooLarge { len: total, max });
    }
    let stream_len = (msg.len() - start) as u64;
    if total - HEADER_LEN as u64 > stream_len.saturating_mul(MAX_DECOMPRESSION_RATIO) {
        return Err(DecodeError::Decompress("uncompressed length larger than the stream can produce"));
    }
    let u =
        usize::try_from(total).map_err(|_| DecodeError::TooLarge { len: total, max: usize::MAX as u64 })?;

    let mut out = vec![0u8; u];
    out[..HEADER_LEN].copy_from_slice(header);
    out[2] = 0;
    put_length(&mut out[..HEADER_LEN], total, le);

    let truncated = DecodeError::Decompress("stream ends before the uncompressed length");
    let mut hash = [0usize; 256];
    let mut s = HEADER_LEN;
    let mut p = HEADER_LEN;
    let mut d = start;
    let mut flags = 0u8;
    let mut bit = 0u8;
    while s < u {
        if bit == 0 {
            flags = *msg.get(d).ok_or(truncated.clone())?;
            d += 1;
            bit = 1;
        }
        if flags & bit != 0 {
            let (&index, &n) = match msg.get(d..d + 2) {
                Some([a, b]) => (a, b),
                _ => return Err(truncated),
            };
            d += 2;
            let n = usize::from(n);
            let mut r = hash[usize::from(index)];
            if s + 2 + n > u {
                return Err(DecodeError::Decompress("back-reference runs past the uncompressed length"));
            }
            // r < s always (positions enter the table only once written), so
            // the copy reads bytes already produced, possibly overlapping.
            out[s] = out[r];
            out[s + 1] = out[r + 1];
            s += 2;
            r += 2;
            while p + 1 < s {
                hash[usize::from(out[p] ^ out[p + 1])] = p;
                p += 1;
            }
            for k in 0..n {
                out[s + k] = out[r + k];
            }
            s += n;
            p = s;
        } else {
            out[s] = *msg.get(d).ok_or(truncated.clone())?;
            d += 1;
            s += 1;
            while p + 1 < s {
                hash[usize::from(out[p] ^ out[p + 1])] = p;
                p += 1;
            }
        }
        bit <<= 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::encode::{EncodeOptions, encode_message};
    use crate::header::MsgType;
    use crate::value::{Attr, K, Vector};

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn plain(k: &K) -> Vec<u8> {
        encode_message(MsgType::Async, k, EncodeOptions::default()).unwrap()
    }

    #[test]
    fn java_golden_2000_booleans() {
        let msg = plain(&K::Vector(Attr::None, Vector::Boolean(vec![true; 2000])));
        let golden = hex("0100010026000000de070000000100d00700000101ff00ff00ff00ff00ff00ff00ff00ff00c5");
        assert_eq!(compress(&msg).unwrap(), golden);
        assert_eq!(decompress(&golden, u64::MAX).unwrap(), msg);
    }

    #[test]
    fn til_1000_compresses_to_3276_bytes() {
        let msg = plain(&K::Vector(Attr::None, Vector::Long((0..1000).collect())));
        assert_eq!(msg.len(), 8014);
        let c = compress(&msg).unwrap();
        assert_eq!(c.len(), 3276);
        assert_eq!(decompress(&c, u64::MAX).unwrap(), msg);
    }

    #[test]
    fn incompressible_is_none() {
        let mut x = 0x1234_5678_9abc_def0u64;
        let noise: Vec<u8> = (0..5000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(compress(&plain(&K::Vector(Attr::None, Vector::Byte(noise)))).is_none());
        assert!(compress(&[1, 0, 0, 0, 8, 0, 0, 0]).is_none());
        assert!(compress(&[]).is_none());
    }

    /// The format's hash is the XOR of two bytes. In a repeated unit whose
    /// two aligned pairs share a slot (191^124 == 248^59) each evicts the
    /// other, so no lookup ever finds its pair: a repetition that does not
    /// compress, sent plain. (The decompressor rebuilds the same table, so
    /// a compressor cannot choose a better hash.)
    #[test]
    fn repetition_with_colliding_pairs_is_none() {
        let body: Vec<u8> = [191u8, 124, 248, 59].iter().copied().cycle().take(2754).collect();
        assert!(compress(&plain(&K::Vector(Attr::None, Vector::Byte(body)))).is_none());
        let body: Vec<u8> = [191u8, 124, 248, 60].iter().copied().cycle().take(2754).collect();
        assert!(compress(&plain(&K::Vector(Attr::None, Vector::Byte(body)))).is_some());
    }
    #[test]
    fn big_endian_messages() {
        let mut msg = plain(&K::Vector(Attr::None, Vector::Boolean(vec![true; 2000])));
        msg[0] = 0;
        let n = msg.len() as u32;
        msg[4..8].copy_from_slice(&n.to_be_bytes());
        let c = compress(&msg).unwrap();
        assert_eq!(&c[8..12], &(msg.len() as u32).to_be_bytes());
        assert_eq!(decompress(&c, u64::MAX).unwrap(), msg);
    }

    #[test]
    fn hostile_streams_fail_cleanly() {
        let golden = hex("0100010026000000de070000000100d00700000101ff00ff00ff00ff00ff00ff00ff00ff00c5");
        // over the caller's limit
        assert!(matches!(decompress(&golden, 100), Err(DecodeError::TooLarge { .. })));
        // truncated anywhere
        for cut in 0..golden.len() {
            assert!(decompress(&golden[..cut], u64::MAX).is_err(), "cut at {cut}");
        }
        // a claimed length the stream cannot produce
        let mut huge = golden.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decompress(&huge, u64::MAX).is_err());
        // back-reference past the end
        let mut bad = golden.clone();
        let last = bad.len() - 1;
        bad[last] = 0xff;
        assert!(decompress(&bad, u64::MAX).is_err());
    }
}

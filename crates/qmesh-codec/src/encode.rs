//! Encoding [`K`] values: always little-endian, byte-exact with kdb+.
//!
//! [`encoded_len`] is computed first so a message is written into one
//! allocation; numeric vectors are written with one copy of their memory.

use crate::compress::compress;
use crate::decode::{big_to_little_endian, object_extent, required_capability};
use crate::error::EncodeError;
use crate::header::{HEADER_LEN, Header, MsgType};
use crate::limits::{COMPRESS_MIN_BYTES, MAX_LENGTH_BELOW_CAP5, MAX_SHORT_COUNT, MAX_WIRE_LENGTH};
use crate::value::{Atom, Attr, K, Symbols, Vector, types};

/// What the encoder may use for one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncodeOptions {
    /// The capability negotiated in the handshake (0..=6).
    pub capability: u8,
    /// Whether the peer is remote (not loopback, not a Unix socket): only
    /// then may a message be compressed, as in q.
    pub compress: bool,
}

impl Default for EncodeOptions {
    /// Capability 6, no compression (a local peer).
    fn default() -> EncodeOptions {
        EncodeOptions { capability: 6, compress: false }
    }
}

/// The text of the error object an [`K::Enumeration`] is written as by
/// [`encode_body_into`] (which cannot fail); [`encode_message`] refuses
/// enumerations instead.
pub const ENUMERATION_ERROR_TEXT: &[u8] = b"nyi: enumeration";

/// A NUL-terminated name is cut at its first NUL, as q does.
fn cut_at_nul(b: &[u8]) -> &[u8] {
    match b.iter().position(|&c| c == 0) {
        Some(i) => &b[..i],
        None => b,
    }
}

fn count_field_len(n: usize) -> usize {
    if n as u64 > MAX_SHORT_COUNT { 8 } else { 4 }
}

fn atom_len(a: &Atom) -> usize {
    match a {
        Atom::Symbol(s) => cut_at_nul(s).len() + 1,
        a => crate::decode::elem_width(a.ty()).expect("fixed-width atom"),
    }
}

fn vector_data_len(v: &Vector) -> usize {
    match v {
        Vector::Symbol(s) => s.as_wire_bytes().len(),
        v => v.len() * crate::decode::elem_width(v.ty()).expect("fixed-width vector"),
    }
}

/// The encoded length of the symbol vector of a table's column names.
fn names_len(names: &Symbols) -> usize {
    2 + count_field_len(names.len()) + names.as_wire_bytes().len()
}

/// The number of body bytes `k` encodes to.
pub fn encoded_len(k: &K) -> usize {
    match k {
        K::Atom(a) => 1 + atom_len(a),
        K::Vector(_, v) => 2 + count_field_len(v.len()) + vector_data_len(v),
        K::List(_, items) => 2 + count_field_len(items.len()) + items.iter().map(encoded_len).sum::<usize>(),
        K::Dict(d) => 1 + encoded_len(&d.keys) + encoded_len(&d.values),
        K::Table(t) => {
            // 98, attr, 99, names, 0 attr count columns…
            3 + names_len(&t.names)
                + 2
                + count_field_len(t.columns.len())
                + t.columns.iter().map(encoded_len).sum::<usize>()
        }
        K::Enumeration(_) => 2 + ENUMERATION_ERROR_TEXT.len(),
        K::GenericNull => 2,
        K::Function(f) => f.raw.len(),
        K::Error(e) => 2 + cut_at_nul(e).len(),
        K::Raw(r) => r.bytes().len(),
    }
}

/// Appends `v` as little-endian numbers: one copy on a little-endian host.
fn put_numbers<T: crate::decode::Wire>(out: &mut Vec<u8>, v: &[T]) {
    #[cfg(target_endian = "little")]
    out.extend_from_slice(bytemuck::cast_slice(v));
    #[cfg(target_endian = "big")]
    for x in v {
        out.extend_from_slice(bytemuck::bytes_of(&x.swapped()));
    }
}

fn put_attr_count(out: &mut Vec<u8>, attr: Attr, n: usize) {
    if n as u64 > MAX_SHORT_COUNT {
        out.push(attr as u8 | 0x80);
        out.extend_from_slice(&(n as u64).to_le_bytes());
    } else {
        out.push(attr as u8);
        out.extend_from_slice(&(n as u32).to_le_bytes());
    }
}

fn put_cstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(cut_at_nul(s));
    out.push(0);
}

fn put_atom(out: &mut Vec<u8>, a: &Atom) {
    out.push((-a.ty()) as u8);
    match a {
        Atom::Boolean(b) => out.push(u8::from(*b)),
        Atom::Guid(g) => out.extend_from_slice(g),
        Atom::Byte(b) | Atom::Char(b) => out.push(*b),
        Atom::Short(v) => out.extend_from_slice(&v.to_le_bytes()),
        Atom::Int(v) | Atom::Month(v) | Atom::Date(v) | Atom::Minute(v) | Atom::Second(v) | Atom::Time(v) => {
            out.extend_from_slice(&v.to_le_bytes())
        }
        Atom::Long(v) | Atom::Timestamp(v) | Atom::Timespan(v) => out.extend_from_slice(&v.to_le_bytes()),
        Atom::Real(v) => out.extend_from_slice(&v.to_le_bytes()),
        Atom::Float(v) | Atom::Datetime(v) => out.extend_from_slice(&v.to_le_bytes()),
        Atom::Symbol(s) => put_cstr(out, s),
    }
}

fn put_vector(out: &mut Vec<u8>, attr: Attr, v: &Vector) {
    out.push(v.ty() as u8);
    put_attr_count(out, attr, v.len());
    match v {
        Vector::Boolean(b) => out.extend_from_slice(bytemuck::cast_slice::<bool, u8>(b)),
        Vector::Guid(g) => out.extend_from_slice(bytemuck::cast_slice::<[u8; 16], u8>(g)),
        Vector::Byte(b) | Vector::Char(b) => out.extend_from_slice(b),
        Vector::Short(x) => put_numbers(out, x),
        Vector::Int(x)
        | Vector::Month(x)
        | Vector::Date(x)
        | Vector::Minute(x)
        | Vector::Second(x)
        | Vector::Time(x) => put_numbers(out, x),
        Vector::Long(x) | Vector::Timestamp(x) | Vector::Timespan(x) => put_numbers(out, x),
        Vector::Real(x) => put_numbers(out, x),
        Vector::Float(x) | Vector::Datetime(x) => put_numbers(out, x),
        Vector::Symbol(s) => out.extend_from_slice(s.as_wire_bytes()),
    }
}

/// Appends the little-endian encoding of `k` to `out`, reserving
/// [`encoded_len`] bytes first.
///
/// This cannot fail, so it writes what [`encode_message`] would refuse as
/// follows: an [`K::Enumeration`] (no verified wire layout) becomes the error
/// object [`ENUMERATION_ERROR_TEXT`], and a big-endian [`K::Raw`] whose bytes
/// are not one valid object is copied unchanged. Values needing a higher
/// capability are written as they are; check them with [`check_encodable`].
pub fn encode_body_into(k: &K, out: &mut Vec<u8>) {
    out.reserve(encoded_len(k));
    put(out, k);
}

fn put(out: &mut Vec<u8>, k: &K) {
    match k {
        K::Atom(a) => put_atom(out, a),
        K::Vector(attr, v) => put_vector(out, *attr, v),
        K::List(attr, items) => {
            out.push(types::LIST as u8);
            put_attr_count(out, *attr, items.len());
            for item in items {
                put(out, item);
            }
        }
        K::Dict(d) => {
            out.push(if d.sorted { types::SORTED_DICT } else { types::DICT } as u8);
            put(out, &d.keys);
            put(out, &d.values);
        }
        K::Table(t) => {
            out.extend_from_slice(&[
                types::TABLE as u8,
                t.attr as u8,
                types::DICT as u8,
                types::SYMBOL as u8,
            ]);
            put_attr_count(out, Attr::None, t.names.len());
            out.extend_from_slice(t.names.as_wire_bytes());
            out.push(types::LIST as u8);
            put_attr_count(out, Attr::None, t.columns.len());
            for c in &t.columns {
                put(out, c);
            }
        }
        K::Enumeration(_) => {
            out.push(types::ERROR as u8);
            put_cstr(out, ENUMERATION_ERROR_TEXT);
        }
        K::GenericNull => out.extend_from_slice(&[types::UNARY_PRIMITIVE as u8, 0]),
        K::Function(f) => out.extend_from_slice(&f.raw),
        K::Error(e) => {
            out.push(types::ERROR as u8);
            put_cstr(out, e);
        }
        K::Raw(r) => {
            if r.is_little_endian() {
                out.extend_from_slice(r.bytes());
            } else {
                match big_to_little_endian(r.bytes()) {
                    Ok(le) => out.extend_from_slice(&le),
                    Err(_) => out.extend_from_slice(r.bytes()),
                }
            }
        }
    }
}

fn need(capability: u8, needed: u8, what: &'static str) -> Result<(), EncodeError> {
    if capability < needed { Err(EncodeError::CapabilityTooLow { what, needed, capability }) } else { Ok(()) }
}

/// Checks that `k` can be sent to a peer of `capability`: guids need 3,
/// timestamps and timespans 1, vectors longer than 2^31-1 items 6;
/// enumerations and invalid functions or raw objects are refused.
///
/// Little-endian [`K::Raw`] objects are walked only when the capability is
/// below 6 (they are copied unchanged, so only their content's needs matter).
pub fn check_encodable(k: &K, capability: u8) -> Result<(), EncodeError> {
    match k {
        K::Atom(a) => match a {
            Atom::Guid(_) => need(capability, 3, "guid"),
            Atom::Timestamp(_) => need(capability, 1, "timestamp"),
            Atom::Timespan(_) => need(capability, 1, "timespan"),
            _ => Ok(()),
        },
        K::Vector(_, v) => {
            if v.len() as u64 > MAX_SHORT_COUNT {
                need(capability, 6, "vector of more than 2^31-1 items")?;
            }
            match v {
                Vector::Guid(_) => need(capability, 3, "guid"),
                Vector::Timestamp(_) => need(capability, 1, "timestamp"),
                Vector::Timespan(_) => need(capability, 1, "timespan"),
                _ => Ok(()),
            }
        }
        K::List(_, items) => {
            if items.len() as u64 > MAX_SHORT_COUNT {
                need(capability, 6, "list of more than 2^31-1 items")?;
            }
            items.iter().try_for_each(|i| check_encodable(i, capability))
        }
        K::Dict(d) => {
            check_encodable(&d.keys, capability)?;
            check_encodable(&d.values, capability)
        }
        K::Table(t) => {
            if t.names.len() != t.columns.len() {
                return Err(EncodeError::Unsupported(
                    "a table whose column count differs from its name count",
                ));
            }
            t.columns.iter().try_for_each(|c| check_encodable(c, capability))
        }
        K::Enumeration(_) => {
            Err(EncodeError::Unsupported("an enumeration (q sends enumerations as their values)"))
        }
        K::GenericNull | K::Error(_) => Ok(()),
        K::Function(f) => {
            let ty = f.ty();
            if !(types::LAMBDA..=types::DYNAMIC_LOAD).contains(&ty) {
                return Err(EncodeError::Unsupported(
                    "a function whose raw bytes do not start with type 100..=112",
                ));
            }
            match object_extent(&f.raw, true) {
                Ok(n) if n == f.raw.len() => Ok(()),
                Ok(n) => {
                    Err(EncodeError::InvalidRaw(crate::DecodeError::TrailingBytes { extra: f.raw.len() - n }))
                }
                Err(e) => Err(EncodeError::InvalidRaw(e)),
            }
        }
        K::Raw(r) => {
            if r.is_little_endian() && capability >= 6 {
                return Ok(());
            }
            let (needed, what) =
                required_capability(r.bytes(), r.is_little_endian()).map_err(EncodeError::InvalidRaw)?;
            need(capability, needed, what)
        }
    }
}

/// Checks `k` for a peer (see [`check_encodable`]) and returns the length of
/// its uncompressed message, header included, refusing one above
/// [`MAX_WIRE_LENGTH`] or above 2 GiB for a capability below 5.
fn checked_message_len(k: &K, opts: EncodeOptions) -> Result<u64, EncodeError> {
    check_encodable(k, opts.capability)?;
    let total = HEADER_LEN as u64 + encoded_len(k) as u64;
    if total > MAX_WIRE_LENGTH {
        return Err(EncodeError::TooLarge { len: total, max: MAX_WIRE_LENGTH });
    }
    if total > MAX_LENGTH_BELOW_CAP5 {
        need(opts.capability, 5, "message above 2 GiB")?;
    }
    Ok(total)
}

/// Appends a whole message to `out`, exactly the bytes [`encode_message`]
/// returns, and gives its length; on error `out` is left as it was.
///
/// For a writer that reuses one buffer (`out.clear()` between messages, or
/// several messages appended back to back): once the buffer has grown, the
/// encoding only copies into memory that is already mapped. When the
/// message is compressed, the uncompressed bytes are written first and then
/// replaced by the compressed ones.
pub fn encode_message_into(
    msg_type: MsgType,
    k: &K,
    opts: EncodeOptions,
    out: &mut Vec<u8>,
) -> Result<usize, EncodeError> {
    let total = checked_message_len(k, opts)?;
    let start = out.len();
    out.reserve(total as usize);
    out.extend_from_slice(&Header::new(msg_type, total).to_bytes());
    put(out, k);
    debug_assert_eq!((out.len() - start) as u64, total, "encoded_len disagrees with the encoder");
    if opts.compress
        && opts.capability >= 1
        && out.len() - start > COMPRESS_MIN_BYTES
        && let Some(c) = compress(&out[start..])
    {
        out.truncate(start);
        out.extend_from_slice(&c);
    }
    Ok(out.len() - start)
}

/// Encodes a whole message (header and body) for a peer: little-endian,
/// compressed when `opts.compress` is set, the message is above 2000 bytes
/// and compression halves it (as q does).
pub fn encode_message(msg_type: MsgType, k: &K, opts: EncodeOptions) -> Result<Vec<u8>, EncodeError> {
    let total = checked_message_len(k, opts)?;
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(&Header::new(msg_type, total).to_bytes());
    put(&mut out, k);
    debug_assert_eq!(out.len() as u64, total, "encoded_len disagrees with the encoder");
    if opts.compress
        && opts.capability >= 1
        && out.len() > COMPRESS_MIN_BYTES
        && let Some(c) = compress(&out)
    {
        return Ok(c);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::Vector;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn golden_messages() {
        let enc = |k: &K| hex(&encode_message(MsgType::Async, k, EncodeOptions::default()).unwrap());
        assert_eq!(enc(&K::long(1)), "0100000011000000f90100000000000000");
        assert_eq!(
            enc(&K::Vector(Attr::None, Vector::Long(vec![1, 2, 3]))),
            "0100000026000000070003000000010000000000000002000000000000000300000000000000"
        );
        assert_eq!(enc(&K::syms(["a", "b"])), "01000000120000000b000200000061006200");
        assert_eq!(enc(&K::GenericNull), "010000000a0000006500");
        assert_eq!(enc(&K::error("type")), "010000000e000000807479706500");
    }

    #[test]
    fn capabilities_are_enforced() {
        let guid = K::Atom(Atom::Guid([1; 16]));
        let opts = |capability| EncodeOptions { capability, compress: false };
        assert!(matches!(
            encode_message(MsgType::Sync, &guid, opts(2)),
            Err(EncodeError::CapabilityTooLow { needed: 3, .. })
        ));
        assert!(encode_message(MsgType::Sync, &guid, opts(3)).is_ok());
        let ts = K::list(vec![K::Atom(Atom::Timestamp(1))]);
        assert!(encode_message(MsgType::Sync, &ts, opts(0)).is_err());
        assert!(encode_message(MsgType::Sync, &ts, opts(1)).is_ok());
    }

    #[test]
    fn enumerations_are_refused() {
        let e = K::Enumeration(crate::Enumeration {
            ty: 20,
            domain: "sym".into(),
            attr: Attr::None,
            indices: vec![0],
        });
        assert!(matches!(
            encode_message(MsgType::Sync, &e, EncodeOptions::default()),
            Err(EncodeError::Unsupported(_))
        ));
        let mut out = Vec::new();
        encode_body_into(&e, &mut out);
        assert_eq!(out.len(), encoded_len(&e));
    }

    #[test]
    fn into_a_reused_buffer_matches_encode_message() {
        let cases = [
            (
                K::Vector(Attr::None, Vector::Long((0..1000).collect())),
                EncodeOptions { capability: 3, compress: true },
            ),
            (K::Vector(Attr::None, Vector::Long((0..1000).collect())), EncodeOptions::default()),
            (K::list(vec![K::sym("upd"), K::long(7)]), EncodeOptions::default()),
            (K::error("type"), EncodeOptions { capability: 0, compress: true }),
        ];
        let mut buf = b"prefix".to_vec();
        for (k, opts) in &cases {
            let want = encode_message(MsgType::Sync, k, *opts).unwrap();
            buf.truncate(6);
            let n = encode_message_into(MsgType::Sync, k, *opts, &mut buf).unwrap();
            assert_eq!(n, want.len());
            assert_eq!(&buf[..6], b"prefix");
            assert_eq!(&buf[6..], &want[..]);
        }
        let guid = K::Atom(Atom::Guid([1; 16]));
        let opts = EncodeOptions { capability: 2, compress: false };
        assert!(encode_message_into(MsgType::Sync, &guid, opts, &mut buf).is_err());
        assert_eq!(buf.len(), 6 + encode_message(MsgType::Sync, &cases[3].0, cases[3].1).unwrap().len());
    }

    #[test]
    fn compresses_only_when_asked_and_worth_it() {
        let k = K::Vector(Attr::None, Vector::Long((0..1000).collect()));
        let plain =
            encode_message(MsgType::Async, &k, EncodeOptions { capability: 3, compress: false }).unwrap();
        assert_eq!(plain.len(), 8014);
        let zipped =
            encode_message(MsgType::Async, &k, EncodeOptions { capability: 3, compress: true }).unwrap();
        assert_eq!(zipped.len(), 3276);
        let small = K::Vector(Attr::None, Vector::Long((0..10).collect()));
        let out =
            encode_message(MsgType::Async, &small, EncodeOptions { capability: 3, compress: true }).unwrap();
        assert_eq!(out[2], 0);
    }
}

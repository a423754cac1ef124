//! Decoding a message body (the bytes after the 8-byte header) into [`K`].
//!
//! The decoder reads untrusted input. It never panics, never loops without
//! consuming input, and never reserves memory the input does not justify:
//! every count is checked against the bytes that remain *before* the vector
//! that holds it is allocated, and nesting is limited to
//! [`MAX_DEPTH`] levels.
//!
//! Numeric vectors are decoded by one copy of their region (and, for
//! big-endian input, one in-place byte swap); symbol vectors by one copy and
//! one scan for their NULs.
//!
//! Where KX's deserializer (`d9`, checked through PyKX) and this decoder
//! differ, this one is stricter, never looser: both refuse booleans other
//! than 0/1, attribute bytes above 4, trailing bytes, negative counts, type 3
//! and types 77–97, and dynamic loads (112); this decoder also refuses tables
//! whose columns are not lists of one length (q never sends them; `d9` reads
//! them). A table's column-name vector and column list carry no attribute in
//! [`Table`]; q writes 0 there, and a non-zero one is dropped.
//!
//! Enumerations (types 20–76) are refused with [`DecodeError::Unsupported`]:
//! q converts enumerations to their values before sending them over IPC, the
//! layout it would use for them is undocumented, and KX's own deserializer
//! (`d9`, run through PyKX) rejected every plausible layout we tried (domain
//! name before or after the count, int or long indices, atoms and vectors).
//! Without a confirmed layout we do not guess one.

use bytes::Bytes;

use crate::error::DecodeError;
use crate::limits::{MAX_DEPTH, MAX_SYMBOL_VECTOR_BYTES};
use crate::value::{Atom, Attr, Dict, Function, K, Symbols, Table, Vector, types};

/// Why enumerations are refused (see the module documentation).
pub(crate) const ENUM_REASON: &str = "enumerations have no documented IPC layout (q sends their values) and KX's deserializer accepts none we tried";

/// Why a dynamic load (type 112) is refused.
const DYNAMIC_LOAD_REASON: &str =
    "dynamic loads (2: of a C function) cannot be sent over IPC; KX's deserializer rejects them";

/// A boolean byte other than 0 or 1 (KX's deserializer rejects these too).
const BAD_BOOLEAN: DecodeError = DecodeError::Malformed { what: "boolean", detail: "byte other than 0 or 1" };

/// Decodes one object that must fill `body` exactly.
pub fn decode_body(body: &[u8], little_endian: bool) -> Result<K, DecodeError> {
    let mut r = Reader { buf: body, pos: 0, le: little_endian };
    let k = r.object(0)?;
    if r.pos != body.len() {
        return Err(DecodeError::TrailingBytes { extra: body.len() - r.pos });
    }
    Ok(k)
}

/// The length in bytes of the first object in `body`, found without
/// building it (and without allocating).
pub fn object_extent(body: &[u8], little_endian: bool) -> Result<usize, DecodeError> {
    let mut w = Walker { buf: body, pos: 0, le: little_endian, visit: NoVisit };
    w.object(0)?;
    Ok(w.pos)
}

/// Rewrites one big-endian object as little-endian: the same layout with
/// every multi-byte number byte-swapped (GUIDs stay as they are). The object
/// must fill `obj` exactly.
pub(crate) fn big_to_little_endian(obj: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let mut out = obj.to_vec();
    let end = {
        let mut w = Walker { buf: obj, pos: 0, le: false, visit: Swapper { out: &mut out } };
        w.object(0)?;
        w.pos
    };
    if end != obj.len() {
        return Err(DecodeError::TrailingBytes { extra: obj.len() - end });
    }
    Ok(out)
}

/// What a walk over an encoded object found that an encoder must know:
/// the lowest capability the object needs.
pub(crate) fn required_capability(
    obj: &[u8],
    little_endian: bool,
) -> Result<(u8, &'static str), DecodeError> {
    let mut w = Walker { buf: obj, pos: 0, le: little_endian, visit: CapNeeds { need: 0, what: "" } };
    w.object(0)?;
    if w.pos != obj.len() {
        return Err(DecodeError::TrailingBytes { extra: obj.len() - w.pos });
    }
    Ok((w.visit.need, w.visit.what))
}

/// Bytes per element of vector type `ty` (1..=19), except symbols (variable).
pub(crate) fn elem_width(ty: i8) -> Option<usize> {
    use types::*;
    Some(match ty {
        BOOLEAN | BYTE | CHAR => 1,
        GUID => 16,
        SHORT => 2,
        INT | REAL | MONTH | DATE | MINUTE | SECOND | TIME => 4,
        LONG | FLOAT | TIMESTAMP | DATETIME | TIMESPAN => 8,
        _ => return None,
    })
}

/// A fixed-width number that can be copied from the wire as is.
pub(crate) trait Wire: bytemuck::Pod {
    /// The value with its bytes reversed.
    fn swapped(self) -> Self;
}

macro_rules! wire_int {
    ($($t:ty),*) => {$(
        impl Wire for $t {
            #[inline]
            fn swapped(self) -> Self {
                self.swap_bytes()
            }
        }
    )*};
}
wire_int!(i16, i32, i64);

impl Wire for f32 {
    #[inline]
    fn swapped(self) -> Self {
        f32::from_bits(self.to_bits().swap_bytes())
    }
}

impl Wire for f64 {
    #[inline]
    fn swapped(self) -> Self {
        f64::from_bits(self.to_bits().swap_bytes())
    }
}

/// Copies `src` (any alignment) into a new vector of `T`, whose length is
/// `src.len() / size_of::<T>()`: one allocation, one `memcpy`.
pub(crate) fn copy_pod<T: bytemuck::Pod>(src: &[u8]) -> Vec<T> {
    let n = src.len() / size_of::<T>();
    let len = n * size_of::<T>();
    let mut v: Vec<T> = Vec::with_capacity(n);
    // SAFETY: `v` has room for `n` elements, i.e. `len` bytes, and `src`
    // holds at least `len` bytes; the two do not overlap (`v` is new). After
    // the copy the first `n` elements are initialised, and `T: Pod` makes
    // any byte pattern a valid `T`.
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), v.as_mut_ptr().cast::<u8>(), len);
        v.set_len(n);
    }
    v
}

/// The position of the `n`-th NUL (1-based) in `buf`, recording where each
/// of the `n` names starts in `starts`. Eight bytes at a time.
fn scan_names(buf: &[u8], n: usize, mut starts: Option<&mut Vec<u32>>) -> Option<usize> {
    if n == 0 {
        return Some(0);
    }
    if let Some(s) = starts.as_deref_mut() {
        s.push(0);
    }
    let mut found = 0usize;
    let mut base = 0usize;
    let mut chunks = buf.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("chunks_exact gives 8 bytes"));
        // High bit set exactly in the bytes that are zero (no carries cross
        // bytes: (b & 0x7f) + 0x7f <= 0xfe).
        const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
        let mut zeros = !(((word & LOW7).wrapping_add(LOW7)) | word | LOW7);
        while zeros != 0 {
            let i = base + (zeros.trailing_zeros() / 8) as usize;
            found += 1;
            if found == n {
                return Some(i + 1);
            }
            if let Some(s) = starts.as_deref_mut() {
                s.push((i + 1) as u32);
            }
            zeros &= zeros - 1;
        }
        base += 8;
    }
    for (j, &b) in chunks.remainder().iter().enumerate() {
        if b == 0 {
            found += 1;
            if found == n {
                return Some(base + j + 1);
            }
            if let Some(s) = starts.as_deref_mut() {
                s.push((base + j + 1) as u32);
            }
        }
    }
    None
}

/// Builds a [`K`] from the bytes.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    le: bool,
}

impl<'a> Reader<'a> {
    fn truncated(&self, needed: u64) -> DecodeError {
        DecodeError::Truncated {
            offset: self.pos,
            needed: needed.saturating_sub((self.buf.len() - self.pos) as u64),
        }
    }

    #[inline]
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(self.truncated(n as u64));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    #[inline]
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn i16(&mut self) -> Result<i16, DecodeError> {
        let a = self.array()?;
        Ok(if self.le { i16::from_le_bytes(a) } else { i16::from_be_bytes(a) })
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        let a = self.array()?;
        Ok(if self.le { i32::from_le_bytes(a) } else { i32::from_be_bytes(a) })
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        let a = self.array()?;
        Ok(if self.le { i64::from_le_bytes(a) } else { i64::from_be_bytes(a) })
    }

    fn f32(&mut self) -> Result<f32, DecodeError> {
        Ok(f32::from_bits(self.i32()? as u32))
    }

    fn f64(&mut self) -> Result<f64, DecodeError> {
        Ok(f64::from_bits(self.i64()? as u64))
    }

    /// A NUL-terminated name; the NUL is consumed, not returned.
    fn cstr(&mut self) -> Result<&'a [u8], DecodeError> {
        let rest = &self.buf[self.pos..];
        match rest.iter().position(|&b| b == 0) {
            Some(i) => {
                self.pos += i + 1;
                Ok(&rest[..i])
            }
            None => Err(self.truncated(rest.len() as u64 + 1)),
        }
    }

    /// Attribute byte and count of a vector or list.
    fn attr_count(&mut self) -> Result<(Attr, usize), DecodeError> {
        let offset = self.pos;
        let byte = self.u8()?;
        let attr = Attr::from_byte(byte & 0x7f).ok_or(DecodeError::BadAttribute { byte, offset })?;
        let n: u64 = if byte & 0x80 != 0 {
            // capability 6: an 8-byte count
            let n = self.i64()?;
            u64::try_from(n)
                .map_err(|_| DecodeError::Malformed { what: "vector", detail: "negative count" })?
        } else {
            let n = self.i32()?;
            u64::try_from(n)
                .map_err(|_| DecodeError::Malformed { what: "vector", detail: "negative count" })?
        };
        // Every element takes at least one byte: a count above the bytes
        // left is a lie, whatever the element type.
        if n > self.remaining() as u64 {
            return Err(self.truncated(n));
        }
        Ok((attr, n as usize))
    }

    /// The `n * width` bytes of a vector's elements.
    fn elems(&mut self, n: usize, width: usize) -> Result<&'a [u8], DecodeError> {
        match n.checked_mul(width) {
            Some(len) => self.take(len),
            None => Err(self.truncated(u64::MAX)),
        }
    }

    fn nums<T: Wire>(&mut self, n: usize) -> Result<Vec<T>, DecodeError> {
        let src = self.elems(n, size_of::<T>())?;
        let mut v = copy_pod::<T>(src);
        if !self.le {
            for x in &mut v {
                *x = x.swapped();
            }
        }
        Ok(v)
    }

    fn symbols(&mut self, n: usize) -> Result<Symbols, DecodeError> {
        let rest = &self.buf[self.pos..];
        let window = &rest[..rest.len().min(MAX_SYMBOL_VECTOR_BYTES)];
        // `attr_count` has checked n <= rest.len().
        let mut starts = Vec::with_capacity(n);
        let Some(end) = scan_names(window, n, Some(&mut starts)) else {
            if window.len() < rest.len() {
                return Err(DecodeError::Malformed { what: "symbol vector", detail: "names above 4 GiB" });
            }
            return Err(self.truncated(rest.len() as u64 + 1));
        };
        self.pos += end;
        Ok(Symbols::from_raw_parts(rest[..end].to_vec(), starts))
    }

    fn object(&mut self, depth: usize) -> Result<K, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep { limit: MAX_DEPTH });
        }
        let at = self.pos;
        let ty = self.u8()? as i8;
        match ty {
            -19..=-1 => self.atom(ty, at).map(K::Atom),
            1..=19 => self.vector(ty, at),
            types::LIST => {
                let (attr, n) = self.attr_count()?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.object(depth + 1)?);
                }
                Ok(K::List(attr, items))
            }
            types::DICT | types::SORTED_DICT => {
                let keys = self.object(depth + 1)?;
                let values = self.object(depth + 1)?;
                Ok(K::Dict(Box::new(Dict { keys, values, sorted: ty == types::SORTED_DICT })))
            }
            types::TABLE => self.table(depth),
            types::ERROR => Ok(K::Error(Bytes::copy_from_slice(self.cstr()?))),
            types::UNARY_PRIMITIVE if self.buf.get(self.pos) == Some(&0) => {
                self.pos += 1;
                Ok(K::GenericNull)
            }
            types::DYNAMIC_LOAD => Err(DecodeError::Unsupported { ty, reason: DYNAMIC_LOAD_REASON }),
            types::LAMBDA..=types::DYNAMIC_LOAD => {
                self.pos = at;
                let mut w = Walker { buf: self.buf, pos: at, le: self.le, visit: NoVisit };
                w.object(depth)?;
                let raw = &self.buf[at..w.pos];
                self.pos = w.pos;
                let raw = if self.le { raw.to_vec() } else { big_to_little_endian(raw)? };
                Ok(K::Function(Function { raw: Bytes::from(raw) }))
            }
            types::ENUM_FIRST..=types::ENUM_LAST | -76..=-20 => {
                Err(DecodeError::Unsupported { ty, reason: ENUM_REASON })
            }
            _ => Err(DecodeError::UnknownType { ty, offset: at }),
        }
    }

    fn atom(&mut self, ty: i8, at: usize) -> Result<Atom, DecodeError> {
        Ok(match -ty {
            types::BOOLEAN => match self.u8()? {
                0 => Atom::Boolean(false),
                1 => Atom::Boolean(true),
                _ => return Err(BAD_BOOLEAN),
            },
            types::GUID => Atom::Guid(self.array()?),
            types::BYTE => Atom::Byte(self.u8()?),
            types::SHORT => Atom::Short(self.i16()?),
            types::INT => Atom::Int(self.i32()?),
            types::LONG => Atom::Long(self.i64()?),
            types::REAL => Atom::Real(self.f32()?),
            types::FLOAT => Atom::Float(self.f64()?),
            types::CHAR => Atom::Char(self.u8()?),
            types::SYMBOL => Atom::Symbol(Bytes::copy_from_slice(self.cstr()?)),
            types::TIMESTAMP => Atom::Timestamp(self.i64()?),
            types::MONTH => Atom::Month(self.i32()?),
            types::DATE => Atom::Date(self.i32()?),
            types::DATETIME => Atom::Datetime(self.f64()?),
            types::TIMESPAN => Atom::Timespan(self.i64()?),
            types::MINUTE => Atom::Minute(self.i32()?),
            types::SECOND => Atom::Second(self.i32()?),
            types::TIME => Atom::Time(self.i32()?),
            _ => return Err(DecodeError::UnknownType { ty, offset: at }),
        })
    }

    fn vector(&mut self, ty: i8, at: usize) -> Result<K, DecodeError> {
        if ty == 3 {
            return Err(DecodeError::UnknownType { ty, offset: at });
        }
        let (attr, n) = self.attr_count()?;
        let v = match ty {
            types::BOOLEAN => {
                let bytes = self.elems(n, 1)?;
                if bytes.iter().any(|&b| b > 1) {
                    return Err(BAD_BOOLEAN);
                }
                Vector::Boolean(bytes.iter().map(|&b| b != 0).collect())
            }
            types::GUID => Vector::Guid(copy_pod(self.elems(n, 16)?)),
            types::BYTE => Vector::Byte(self.elems(n, 1)?.to_vec()),
            types::SHORT => Vector::Short(self.nums(n)?),
            types::INT => Vector::Int(self.nums(n)?),
            types::LONG => Vector::Long(self.nums(n)?),
            types::REAL => Vector::Real(self.nums(n)?),
            types::FLOAT => Vector::Float(self.nums(n)?),
            types::CHAR => Vector::Char(self.elems(n, 1)?.to_vec()),
            types::SYMBOL => Vector::Symbol(self.symbols(n)?),
            types::TIMESTAMP => Vector::Timestamp(self.nums(n)?),
            types::MONTH => Vector::Month(self.nums(n)?),
            types::DATE => Vector::Date(self.nums(n)?),
            types::DATETIME => Vector::Datetime(self.nums(n)?),
            types::TIMESPAN => Vector::Timespan(self.nums(n)?),
            types::MINUTE => Vector::Minute(self.nums(n)?),
            types::SECOND => Vector::Second(self.nums(n)?),
            types::TIME => Vector::Time(self.nums(n)?),
            _ => return Err(DecodeError::UnknownType { ty, offset: at }),
        };
        Ok(K::Vector(attr, v))
    }

    /// `98`, attribute, then a dictionary of column names → columns.
    fn table(&mut self, depth: usize) -> Result<K, DecodeError> {
        let offset = self.pos;
        let byte = self.u8()?;
        let attr = Attr::from_byte(byte).ok_or(DecodeError::BadAttribute { byte, offset })?;
        let malformed = |detail| DecodeError::Malformed { what: "table", detail };
        if self.u8()? as i8 != types::DICT {
            return Err(malformed("not followed by a dictionary"));
        }
        let K::Vector(_, Vector::Symbol(names)) = self.object(depth + 1)? else {
            return Err(malformed("column names are not a symbol vector"));
        };
        let columns = match self.object(depth + 1)? {
            K::List(_, columns) => columns,
            _ => return Err(malformed("columns are not a general list")),
        };
        if columns.len() != names.len() {
            return Err(malformed("column count differs from name count"));
        }
        let rows = columns.first().map_or(0, K::count);
        for c in &columns {
            if !matches!(c, K::Vector(..) | K::List(..)) {
                return Err(malformed("a column is not a list"));
            }
            if c.count() != rows {
                return Err(malformed("columns of different lengths"));
            }
        }
        Ok(K::Table(Table { attr, names, columns }))
    }
}

/// What a [`Walker`] reports as it goes.
trait Visit {
    /// A type byte.
    fn ty(&mut self, _ty: i8) {}
    /// An 8-byte vector count (capability 6).
    fn long_count(&mut self) {}
    /// `count` numbers of `width` bytes at `at` (big-endian input only).
    fn swap(&mut self, _at: usize, _width: usize, _count: usize) {}
}

struct NoVisit;
impl Visit for NoVisit {}

/// Byte-swaps every number the walker reports, in a copy of the input.
struct Swapper<'o> {
    out: &'o mut [u8],
}

impl Visit for Swapper<'_> {
    fn swap(&mut self, at: usize, width: usize, count: usize) {
        if width > 1 {
            for chunk in self.out[at..at + width * count].chunks_exact_mut(width) {
                chunk.reverse();
            }
        }
    }
}

/// Finds the lowest capability an encoded object needs.
struct CapNeeds {
    need: u8,
    what: &'static str,
}

impl CapNeeds {
    fn at_least(&mut self, need: u8, what: &'static str) {
        if need > self.need {
            self.need = need;
            self.what = what;
        }
    }
}

impl Visit for CapNeeds {
    fn ty(&mut self, ty: i8) {
        match ty.unsigned_abs() as i8 {
            types::GUID => self.at_least(3, "guid"),
            types::TIMESTAMP => self.at_least(1, "timestamp"),
            types::TIMESPAN => self.at_least(1, "timespan"),
            _ => {}
        }
    }
    fn long_count(&mut self) {
        self.at_least(6, "vector of more than 2^31-1 items");
    }
}

/// Walks over one encoded object without building it.
struct Walker<'a, V> {
    buf: &'a [u8],
    pos: usize,
    le: bool,
    visit: V,
}

impl<V: Visit> Walker<'_, V> {
    fn skip(&mut self, n: usize) -> Result<(), DecodeError> {
        if n > self.buf.len() - self.pos {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                needed: (n - (self.buf.len() - self.pos)) as u64,
            });
        }
        self.pos += n;
        Ok(())
    }

    /// Skips `count` numbers of `width` bytes, reporting them for swapping.
    fn numbers(&mut self, width: usize, count: usize) -> Result<(), DecodeError> {
        let len =
            width.checked_mul(count).ok_or(DecodeError::Truncated { offset: self.pos, needed: u64::MAX })?;
        let at = self.pos;
        self.skip(len)?;
        if !self.le {
            self.visit.swap(at, width, count);
        }
        Ok(())
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or(DecodeError::Truncated { offset: self.pos, needed: 1 })?;
        self.pos += 1;
        Ok(b)
    }

    fn int(&mut self) -> Result<i64, DecodeError> {
        let at = self.pos;
        self.numbers(4, 1)?;
        let a: [u8; 4] = self.buf[at..at + 4].try_into().expect("4 bytes were skipped");
        Ok(i64::from(if self.le { i32::from_le_bytes(a) } else { i32::from_be_bytes(a) }))
    }

    fn cstr(&mut self) -> Result<(), DecodeError> {
        let rest = &self.buf[self.pos..];
        match rest.iter().position(|&b| b == 0) {
            Some(i) => {
                self.pos += i + 1;
                Ok(())
            }
            None => Err(DecodeError::Truncated { offset: self.pos, needed: 1 }),
        }
    }

    fn count(&mut self) -> Result<usize, DecodeError> {
        let offset = self.pos;
        let byte = self.byte()?;
        if Attr::from_byte(byte & 0x7f).is_none() {
            return Err(DecodeError::BadAttribute { byte, offset });
        }
        let n = if byte & 0x80 != 0 {
            self.visit.long_count();
            let at = self.pos;
            self.numbers(8, 1)?;
            let a: [u8; 8] = self.buf[at..at + 8].try_into().expect("8 bytes were skipped");
            if self.le { i64::from_le_bytes(a) } else { i64::from_be_bytes(a) }
        } else {
            self.int()?
        };
        self.checked_count(n)
    }

    /// A count must be non-negative and at most the bytes left (every item
    /// takes at least one byte).
    fn checked_count(&self, n: i64) -> Result<usize, DecodeError> {
        let n = u64::try_from(n)
            .map_err(|_| DecodeError::Malformed { what: "vector", detail: "negative count" })?;
        let left = (self.buf.len() - self.pos) as u64;
        if n > left {
            return Err(DecodeError::Truncated { offset: self.pos, needed: n - left });
        }
        Ok(n as usize)
    }

    fn objects(&mut self, n: usize, depth: usize) -> Result<(), DecodeError> {
        for _ in 0..n {
            self.object(depth)?;
        }
        Ok(())
    }

    fn object(&mut self, depth: usize) -> Result<(), DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep { limit: MAX_DEPTH });
        }
        let at = self.pos;
        let ty = self.byte()? as i8;
        self.visit.ty(ty);
        match ty {
            -19..=-1 if ty != -3 => match -ty {
                types::SYMBOL => self.cstr(),
                types::GUID => self.skip(16),
                types::BOOLEAN => match self.byte()? {
                    0 | 1 => Ok(()),
                    _ => Err(BAD_BOOLEAN),
                },
                t => self.numbers(elem_width(t).expect("atom types 1..=19 have widths"), 1),
            },
            1..=19 if ty != 3 => {
                let n = self.count()?;
                match ty {
                    types::SYMBOL => {
                        let rest = &self.buf[self.pos..];
                        let end = scan_names(rest, n, None)
                            .ok_or(DecodeError::Truncated { offset: self.pos, needed: 1 })?;
                        self.pos += end;
                        Ok(())
                    }
                    types::GUID => self.skip(16 * n),
                    types::BOOLEAN => {
                        let at = self.pos;
                        self.skip(n)?;
                        if self.buf[at..self.pos].iter().any(|&b| b > 1) {
                            return Err(BAD_BOOLEAN);
                        }
                        Ok(())
                    }
                    t => self.numbers(elem_width(t).expect("vector types 1..=19 have widths"), n),
                }
            }
            types::LIST => {
                let n = self.count()?;
                self.objects(n, depth + 1)
            }
            types::DICT | types::SORTED_DICT => self.objects(2, depth + 1),
            types::TABLE => {
                let offset = self.pos;
                let byte = self.byte()?;
                if Attr::from_byte(byte).is_none() {
                    return Err(DecodeError::BadAttribute { byte, offset });
                }
                if self.buf.get(self.pos) != Some(&(types::DICT as u8)) {
                    return Err(DecodeError::Malformed {
                        what: "table",
                        detail: "not followed by a dictionary",
                    });
                }
                self.object(depth + 1)
            }
            types::ERROR => self.cstr(),
            types::LAMBDA => {
                self.cstr()?;
                self.object(depth + 1)
            }
            types::UNARY_PRIMITIVE | types::OPERATOR | types::ITERATOR => self.skip(1),
            types::PROJECTION | types::COMPOSITION => {
                let n = self.int()?;
                let n = self.checked_count(n)?;
                self.objects(n, depth + 1)
            }
            types::DYNAMIC_LOAD => Err(DecodeError::Unsupported { ty, reason: DYNAMIC_LOAD_REASON }),
            types::EACH..=types::DYNAMIC_LOAD => self.object(depth + 1),
            types::ENUM_FIRST..=types::ENUM_LAST | -76..=-20 => {
                Err(DecodeError::Unsupported { ty, reason: ENUM_REASON })
            }
            _ => Err(DecodeError::UnknownType { ty, offset: at }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn scans_names_in_words() {
        let buf = b"a\0\0bcdefghij\0k\0rest";
        let mut starts = Vec::new();
        assert_eq!(scan_names(buf, 4, Some(&mut starts)), Some(15));
        assert_eq!(starts, vec![0, 2, 3, 13]);
        assert_eq!(scan_names(buf, 5, None), None);
        assert_eq!(scan_names(b"", 0, None), Some(0));
        // bytes with the high bit set are not NULs
        assert_eq!(scan_names(&[0x80, 0x81, 0xff, 0x01, 0x80, 0x7f, 0xfe, 0x00, 0x00], 2, None), Some(9));
    }

    #[test]
    fn big_endian_vectors() {
        // 1 2 3 as a big-endian long vector
        let mut be = vec![7u8, 0, 0, 0, 0, 3];
        for i in 1..=3i64 {
            be.extend_from_slice(&i.to_be_bytes());
        }
        assert_eq!(decode_body(&be, false).unwrap(), K::Vector(Attr::None, Vector::Long(vec![1, 2, 3])));
        let le = big_to_little_endian(&be).unwrap();
        assert_eq!(decode_body(&le, true).unwrap(), K::Vector(Attr::None, Vector::Long(vec![1, 2, 3])));
    }

    #[test]
    fn big_endian_lambda_becomes_little_endian() {
        let be = hex("64000a00000000057b782b797d");
        let K::Function(f) = decode_body(&be, false).unwrap() else { panic!("not a function") };
        assert_eq!(f.raw.as_ref(), &hex("64000a00050000007b782b797d")[..]);
        assert_eq!(f.lambda_source(), Some(&b"{x+y}"[..]));
    }

    #[test]
    fn long_counts_are_accepted() {
        // `a`b with attr 0x80 and an 8-byte count
        let body = hex("0b8002000000000000006100620000");
        assert_eq!(decode_body(&body[..body.len() - 1], true).unwrap(), K::syms(["a", "b"]));
        assert_eq!(object_extent(&body, true).unwrap(), body.len() - 1);
    }

    #[test]
    fn lying_counts_fail_before_allocating() {
        // a general list claiming 2^31-1 items in 6 bytes
        assert!(matches!(decode_body(&hex("0000ffffff7f"), true), Err(DecodeError::Truncated { .. })));
        // a long vector claiming 2^62 items
        assert!(decode_body(&hex("0780000000000000004000"), true).is_err());
        assert!(decode_body(&hex("0000ffffffff"), true).is_err());
    }

    #[test]
    fn depth_is_limited() {
        let mut body = Vec::new();
        for _ in 0..(MAX_DEPTH + 5) {
            body.extend_from_slice(&[0, 0, 1, 0, 0, 0]);
        }
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        assert_eq!(decode_body(&body, true), Err(DecodeError::TooDeep { limit: MAX_DEPTH }));
        assert_eq!(object_extent(&body, true), Err(DecodeError::TooDeep { limit: MAX_DEPTH }));
    }

    #[test]
    fn enumerations_are_refused() {
        assert!(matches!(
            decode_body(&hex("1400010000000000000000000000"), true),
            Err(DecodeError::Unsupported { ty: 20, .. })
        ));
    }

    #[test]
    fn generic_null_and_primitives() {
        assert_eq!(decode_body(&[0x65, 0], true).unwrap(), K::GenericNull);
        let K::Function(f) = decode_body(&[0x65, 1], true).unwrap() else { panic!() };
        assert_eq!(f.ty(), 101);
    }

    #[test]
    fn capability_needs() {
        assert_eq!(required_capability(&hex("fe00000000000000000000000000000000"), true).unwrap().0, 3);
        assert_eq!(required_capability(&hex("f40100000000000000"), true).unwrap().0, 1);
        assert_eq!(required_capability(&hex("f90100000000000000"), true).unwrap().0, 0);
    }
}

//! The kdb+ value model.
//!
//! [`K`] is one kdb+ object as it travels over IPC. The model follows the wire
//! closely so that decode → encode is byte-exact:
//!
//! * atoms carry their kdb+ type (a `date` is not an `int`);
//! * vectors keep their attribute and store elements in their wire width
//!   (`Vec<i64>` for longs and timestamps, `Vec<i32>` for dates, …) so that
//!   numeric vectors are copied, not converted, element by element;
//! * symbol vectors are one buffer of NUL-terminated names ([`Symbols`]), as on
//!   the wire, so a million-symbol column is two allocations, not a million;
//! * functions (types 100–112) are kept as their raw encoded bytes
//!   ([`Function`]): no non-q peer can run them, but a router can pass them on.
//!
//! Temporal values hold the kdb+ count from the kdb+ epoch (2000.01.01); see
//! [`crate::temporal`] for conversions to and from Unix time.

use bytes::Bytes;

/// A vector attribute, as in the byte after a vector's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Attr {
    /// No attribute.
    #[default]
    None = 0,
    /// `` `s# ``: sorted.
    Sorted = 1,
    /// `` `u# ``: unique.
    Unique = 2,
    /// `` `p# ``: parted.
    Parted = 3,
    /// `` `g# ``: grouped.
    Grouped = 4,
}

impl Attr {
    /// The attribute for a wire byte, if it is one q defines.
    pub fn from_byte(b: u8) -> Option<Attr> {
        Some(match b {
            0 => Attr::None,
            1 => Attr::Sorted,
            2 => Attr::Unique,
            3 => Attr::Parted,
            4 => Attr::Grouped,
            _ => return None,
        })
    }

    /// The character q prints before `#` (`s`, `u`, `p`, `g`), or `None`.
    pub fn letter(self) -> Option<char> {
        match self {
            Attr::None => None,
            Attr::Sorted => Some('s'),
            Attr::Unique => Some('u'),
            Attr::Parted => Some('p'),
            Attr::Grouped => Some('g'),
        }
    }
}

/// Wire type codes. Atoms are the negation of their vector's code.
pub mod types {
    pub const LIST: i8 = 0;
    pub const BOOLEAN: i8 = 1;
    pub const GUID: i8 = 2;
    pub const BYTE: i8 = 4;
    pub const SHORT: i8 = 5;
    pub const INT: i8 = 6;
    pub const LONG: i8 = 7;
    pub const REAL: i8 = 8;
    pub const FLOAT: i8 = 9;
    pub const CHAR: i8 = 10;
    pub const SYMBOL: i8 = 11;
    pub const TIMESTAMP: i8 = 12;
    pub const MONTH: i8 = 13;
    pub const DATE: i8 = 14;
    pub const DATETIME: i8 = 15;
    pub const TIMESPAN: i8 = 16;
    pub const MINUTE: i8 = 17;
    pub const SECOND: i8 = 18;
    pub const TIME: i8 = 19;
    /// First enumeration type (`20h`); enumerations run to [`ENUM_LAST`].
    pub const ENUM_FIRST: i8 = 20;
    /// Last enumeration type (`76h`).
    pub const ENUM_LAST: i8 = 76;
    pub const TABLE: i8 = 98;
    pub const DICT: i8 = 99;
    pub const LAMBDA: i8 = 100;
    /// Unary primitive; `(::)`, the generic null, is this type with byte 0.
    pub const UNARY_PRIMITIVE: i8 = 101;
    pub const OPERATOR: i8 = 102;
    pub const ITERATOR: i8 = 103;
    pub const PROJECTION: i8 = 104;
    pub const COMPOSITION: i8 = 105;
    /// `'` (each) … `\:` (each-left) are 106..=111; 112 is a dynamic load.
    pub const EACH: i8 = 106;
    pub const DYNAMIC_LOAD: i8 = 112;
    pub const SORTED_DICT: i8 = 127;
    pub const ERROR: i8 = -128;
}

/// The kdb+ null and infinity patterns for the integral types.
pub mod nulls {
    pub const SHORT_NULL: i16 = i16::MIN;
    pub const SHORT_INF: i16 = i16::MAX;
    pub const INT_NULL: i32 = i32::MIN;
    pub const INT_INF: i32 = i32::MAX;
    pub const LONG_NULL: i64 = i64::MIN;
    pub const LONG_INF: i64 = i64::MAX;
    /// The null guid is sixteen zero bytes.
    pub const GUID_NULL: [u8; 16] = [0; 16];
    /// The char null is a space.
    pub const CHAR_NULL: u8 = b' ';
}

/// A symbol: an interned name in q, here its bytes (not necessarily UTF-8,
/// never containing NUL). The null symbol is empty.
pub type Sym = Bytes;

/// A symbol vector stored as on the wire: every name followed by a NUL, in
/// one buffer, plus where each name starts.
///
/// Decoding is one copy and one scan; encoding is one copy.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Symbols {
    /// Names, each terminated by NUL.
    data: Vec<u8>,
    /// Start of each name in `data`. The end of name `i` is the NUL before
    /// `starts[i + 1]` (or before `data.len()` for the last).
    starts: Vec<u32>,
}

impl Symbols {
    pub fn new() -> Symbols {
        Symbols::default()
    }

    pub fn with_capacity(names: usize, bytes: usize) -> Symbols {
        Symbols { data: Vec::with_capacity(bytes), starts: Vec::with_capacity(names) }
    }

    /// Builds from a NUL-terminated buffer and the start offset of each name.
    ///
    /// The caller (the decoder) guarantees the layout; this is checked in
    /// debug builds only.
    pub fn from_raw_parts(data: Vec<u8>, starts: Vec<u32>) -> Symbols {
        debug_assert!(starts.is_empty() || data.last() == Some(&0));
        Symbols { data, starts }
    }

    /// Appends one name. A NUL in `name` would corrupt the vector, so the
    /// name is cut at its first NUL, as q does.
    pub fn push(&mut self, name: impl AsRef<[u8]>) {
        let name = name.as_ref();
        let name = match name.iter().position(|&b| b == 0) {
            Some(i) => &name[..i],
            None => name,
        };
        let start = u32::try_from(self.data.len()).expect("symbol vector above 4 GiB");
        self.starts.push(start);
        self.data.extend_from_slice(name);
        self.data.push(0);
    }

    pub fn len(&self) -> usize {
        self.starts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// The bytes of name `i`, without its NUL.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let start = *self.starts.get(i)? as usize;
        let end = match self.starts.get(i + 1) {
            Some(&next) => next as usize - 1,
            None => self.data.len() - 1,
        };
        Some(&self.data[start..end])
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &[u8]> + '_ {
        (0..self.len()).map(move |i| self.get(i).expect("index in range"))
    }

    /// The wire form: every name followed by NUL.
    pub fn as_wire_bytes(&self) -> &[u8] {
        &self.data
    }

    /// The start offsets of the names in [`Symbols::as_wire_bytes`].
    pub fn starts(&self) -> &[u32] {
        &self.starts
    }
}

impl std::fmt::Debug for Symbols {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter().map(|s| String::from_utf8_lossy(s))).finish()
    }
}

impl<S: AsRef<[u8]>> FromIterator<S> for Symbols {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Symbols {
        let mut out = Symbols::new();
        for s in iter {
            out.push(s);
        }
        out
    }
}

/// A kdb+ atom. Temporal atoms hold the kdb+ count from 2000.01.01.
#[derive(Debug, Clone, PartialEq)]
pub enum Atom {
    Boolean(bool),
    /// Sixteen bytes, in wire order (never byte-swapped).
    Guid([u8; 16]),
    Byte(u8),
    Short(i16),
    Int(i32),
    Long(i64),
    Real(f32),
    Float(f64),
    Char(u8),
    Symbol(Sym),
    /// Nanoseconds since 2000.01.01D00:00.
    Timestamp(i64),
    /// Months since 2000.01.
    Month(i32),
    /// Days since 2000.01.01.
    Date(i32),
    /// Days (with fraction) since 2000.01.01; deprecated in q.
    Datetime(f64),
    /// Nanoseconds.
    Timespan(i64),
    /// Minutes.
    Minute(i32),
    /// Seconds.
    Second(i32),
    /// Milliseconds since midnight.
    Time(i32),
}

/// The elements of a kdb+ vector (types 1–19), in their wire width.
#[derive(Debug, Clone, PartialEq)]
pub enum Vector {
    Boolean(Vec<bool>),
    Guid(Vec<[u8; 16]>),
    Byte(Vec<u8>),
    Short(Vec<i16>),
    Int(Vec<i32>),
    Long(Vec<i64>),
    Real(Vec<f32>),
    Float(Vec<f64>),
    /// A string: raw bytes, not necessarily UTF-8.
    Char(Vec<u8>),
    Symbol(Symbols),
    Timestamp(Vec<i64>),
    Month(Vec<i32>),
    Date(Vec<i32>),
    Datetime(Vec<f64>),
    Timespan(Vec<i64>),
    Minute(Vec<i32>),
    Second(Vec<i32>),
    Time(Vec<i32>),
}

/// A dictionary (`99h`) or sorted dictionary (`127h`). A keyed table is a
/// dictionary whose keys and values are both tables.
#[derive(Debug, Clone, PartialEq)]
pub struct Dict {
    pub keys: K,
    pub values: K,
    /// `127h` (`` `s#`a`b!… ``) rather than `99h`.
    pub sorted: bool,
}

/// A table (`98h`): column names and one column (a vector or a general list)
/// per name, all of one length.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    /// The table's own attribute (`` `s#([]…) `` has `Sorted`).
    pub attr: Attr,
    pub names: Symbols,
    pub columns: Vec<K>,
}

/// An enumeration (types 20–76) against a named domain (`` `sym$`a`b ``).
#[derive(Debug, Clone, PartialEq)]
pub struct Enumeration {
    /// The wire type, 20..=76.
    pub ty: i8,
    /// The domain's name, e.g. `sym`.
    pub domain: Sym,
    pub attr: Attr,
    /// Indices into the domain.
    pub indices: Vec<i64>,
}

/// A function (types 100–112) kept as its encoded bytes, starting with the
/// type byte. q code cannot run here; it is carried so it can be passed on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Function {
    pub raw: Bytes,
}

impl Function {
    /// The wire type, 100..=112.
    pub fn ty(&self) -> i8 {
        self.raw.first().map_or(0, |&b| b as i8)
    }

    /// The source text of a lambda (`{x+y}`), if this is one that carries
    /// its text as a plain char vector.
    pub fn lambda_source(&self) -> Option<&[u8]> {
        let raw = &self.raw[..];
        if raw.first() != Some(&(types::LAMBDA as u8)) {
            return None;
        }
        let ctx_end = raw[1..].iter().position(|&b| b == 0)? + 1;
        let rest = raw.get(ctx_end + 1..)?;
        // char vector: type 10, attr, u32 count (little-endian when we encoded it)
        if rest.len() < 6 || rest[0] != types::CHAR as u8 {
            return None;
        }
        let n = u32::from_le_bytes(rest[2..6].try_into().ok()?) as usize;
        rest.get(6..6 + n)
    }
}

/// One kdb+ object.
#[derive(Debug, Clone, PartialEq)]
pub enum K {
    Atom(Atom),
    /// A typed vector (types 1–19) and its attribute.
    Vector(Attr, Vector),
    /// A general list (type 0).
    List(Attr, Vec<K>),
    /// A dictionary or sorted dictionary; keyed tables too.
    Dict(Box<Dict>),
    Table(Table),
    Enumeration(Enumeration),
    /// The generic null `(::)` (type 101, byte 0).
    GenericNull,
    /// Any other function or primitive, kept opaque.
    Function(Function),
    /// An error (`-128h`): the text after `'`.
    Error(Bytes),
    /// An object already encoded (for example a result a router received
    /// and passes on), written through without decoding. The decoder never
    /// produces it; see [`crate::RawObject`].
    Raw(crate::RawObject),
}

impl K {
    /// The kdb+ type number, as `type x` gives it in q.
    pub fn ty(&self) -> i16 {
        match self {
            K::Atom(a) => -(a.ty() as i16),
            K::Vector(_, v) => v.ty() as i16,
            K::List(..) => 0,
            K::Dict(d) => {
                if d.sorted {
                    types::SORTED_DICT as i16
                } else {
                    types::DICT as i16
                }
            }
            K::Table(_) => types::TABLE as i16,
            K::Enumeration(e) => e.ty as i16,
            K::GenericNull => types::UNARY_PRIMITIVE as i16,
            K::Function(f) => f.ty() as i16,
            K::Error(_) => types::ERROR as i16,
            K::Raw(r) => r.ty(),
        }
    }

    /// A symbol atom.
    pub fn sym(s: impl AsRef<[u8]>) -> K {
        K::Atom(Atom::Symbol(Bytes::copy_from_slice(s.as_ref())))
    }

    /// A string (char vector).
    pub fn string(s: impl AsRef<[u8]>) -> K {
        K::Vector(Attr::None, Vector::Char(s.as_ref().to_vec()))
    }

    /// A long atom.
    pub fn long(j: i64) -> K {
        K::Atom(Atom::Long(j))
    }

    /// A symbol vector.
    pub fn syms<S: AsRef<[u8]>>(names: impl IntoIterator<Item = S>) -> K {
        K::Vector(Attr::None, Vector::Symbol(names.into_iter().collect()))
    }

    /// A general list.
    pub fn list(items: Vec<K>) -> K {
        K::List(Attr::None, items)
    }

    /// An error object; `detail` follows q's convention (`"timeout"`,
    /// `"unknown service: FX"`).
    pub fn error(detail: impl AsRef<[u8]>) -> K {
        K::Error(Bytes::copy_from_slice(detail.as_ref()))
    }

    /// A dictionary.
    pub fn dict(keys: K, values: K) -> K {
        K::Dict(Box::new(Dict { keys, values, sorted: false }))
    }

    /// The string of a char vector, the name of a symbol atom.
    pub fn as_text(&self) -> Option<&[u8]> {
        match self {
            K::Vector(_, Vector::Char(c)) => Some(c),
            K::Atom(Atom::Symbol(s)) => Some(s),
            K::Atom(Atom::Char(c)) => Some(std::slice::from_ref(c)),
            _ => None,
        }
    }

    /// `count x`: 1 for atoms, the length for lists, rows for tables, keys for
    /// dictionaries.
    pub fn count(&self) -> usize {
        match self {
            K::Vector(_, v) => v.len(),
            K::List(_, items) => items.len(),
            K::Dict(d) => d.keys.count(),
            K::Table(t) => t.row_count(),
            K::Enumeration(e) => e.indices.len(),
            _ => 1,
        }
    }
}

impl Atom {
    /// The vector type this atom belongs to (positive).
    pub fn ty(&self) -> i8 {
        use types::*;
        match self {
            Atom::Boolean(_) => BOOLEAN,
            Atom::Guid(_) => GUID,
            Atom::Byte(_) => BYTE,
            Atom::Short(_) => SHORT,
            Atom::Int(_) => INT,
            Atom::Long(_) => LONG,
            Atom::Real(_) => REAL,
            Atom::Float(_) => FLOAT,
            Atom::Char(_) => CHAR,
            Atom::Symbol(_) => SYMBOL,
            Atom::Timestamp(_) => TIMESTAMP,
            Atom::Month(_) => MONTH,
            Atom::Date(_) => DATE,
            Atom::Datetime(_) => DATETIME,
            Atom::Timespan(_) => TIMESPAN,
            Atom::Minute(_) => MINUTE,
            Atom::Second(_) => SECOND,
            Atom::Time(_) => TIME,
        }
    }

    /// Whether this atom is its type's null (`0N`, `0n`, `` ` ``, `" "`, …).
    /// Booleans and bytes have no null.
    pub fn is_null(&self) -> bool {
        match *self {
            Atom::Boolean(_) | Atom::Byte(_) => false,
            Atom::Guid(g) => g == nulls::GUID_NULL,
            Atom::Short(v) => v == nulls::SHORT_NULL,
            Atom::Int(v)
            | Atom::Month(v)
            | Atom::Date(v)
            | Atom::Minute(v)
            | Atom::Second(v)
            | Atom::Time(v) => v == nulls::INT_NULL,
            Atom::Long(v) | Atom::Timestamp(v) | Atom::Timespan(v) => v == nulls::LONG_NULL,
            Atom::Real(v) => v.is_nan(),
            Atom::Float(v) | Atom::Datetime(v) => v.is_nan(),
            Atom::Char(c) => c == nulls::CHAR_NULL,
            Atom::Symbol(ref s) => s.is_empty(),
        }
    }
}

impl Vector {
    /// The wire type, 1..=19.
    pub fn ty(&self) -> i8 {
        use types::*;
        match self {
            Vector::Boolean(_) => BOOLEAN,
            Vector::Guid(_) => GUID,
            Vector::Byte(_) => BYTE,
            Vector::Short(_) => SHORT,
            Vector::Int(_) => INT,
            Vector::Long(_) => LONG,
            Vector::Real(_) => REAL,
            Vector::Float(_) => FLOAT,
            Vector::Char(_) => CHAR,
            Vector::Symbol(_) => SYMBOL,
            Vector::Timestamp(_) => TIMESTAMP,
            Vector::Month(_) => MONTH,
            Vector::Date(_) => DATE,
            Vector::Datetime(_) => DATETIME,
            Vector::Timespan(_) => TIMESPAN,
            Vector::Minute(_) => MINUTE,
            Vector::Second(_) => SECOND,
            Vector::Time(_) => TIME,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Vector::Boolean(v) => v.len(),
            Vector::Guid(v) => v.len(),
            Vector::Byte(v) | Vector::Char(v) => v.len(),
            Vector::Short(v) => v.len(),
            Vector::Int(v)
            | Vector::Month(v)
            | Vector::Date(v)
            | Vector::Minute(v)
            | Vector::Second(v)
            | Vector::Time(v) => v.len(),
            Vector::Long(v) | Vector::Timestamp(v) | Vector::Timespan(v) => v.len(),
            Vector::Real(v) => v.len(),
            Vector::Float(v) | Vector::Datetime(v) => v.len(),
            Vector::Symbol(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` as an atom.
    pub fn get(&self, i: usize) -> Option<Atom> {
        Some(match self {
            Vector::Boolean(v) => Atom::Boolean(*v.get(i)?),
            Vector::Guid(v) => Atom::Guid(*v.get(i)?),
            Vector::Byte(v) => Atom::Byte(*v.get(i)?),
            Vector::Short(v) => Atom::Short(*v.get(i)?),
            Vector::Int(v) => Atom::Int(*v.get(i)?),
            Vector::Long(v) => Atom::Long(*v.get(i)?),
            Vector::Real(v) => Atom::Real(*v.get(i)?),
            Vector::Float(v) => Atom::Float(*v.get(i)?),
            Vector::Char(v) => Atom::Char(*v.get(i)?),
            Vector::Symbol(v) => Atom::Symbol(Bytes::copy_from_slice(v.get(i)?)),
            Vector::Timestamp(v) => Atom::Timestamp(*v.get(i)?),
            Vector::Month(v) => Atom::Month(*v.get(i)?),
            Vector::Date(v) => Atom::Date(*v.get(i)?),
            Vector::Datetime(v) => Atom::Datetime(*v.get(i)?),
            Vector::Timespan(v) => Atom::Timespan(*v.get(i)?),
            Vector::Minute(v) => Atom::Minute(*v.get(i)?),
            Vector::Second(v) => Atom::Second(*v.get(i)?),
            Vector::Time(v) => Atom::Time(*v.get(i)?),
        })
    }
}

impl Table {
    /// The number of rows (the length of the first column; 0 with none).
    pub fn row_count(&self) -> usize {
        self.columns.first().map_or(0, K::count)
    }

    /// The column called `name`.
    pub fn column(&self, name: &[u8]) -> Option<&K> {
        self.names.iter().position(|n| n == name).map(|i| &self.columns[i])
    }
}

impl From<Atom> for K {
    fn from(a: Atom) -> K {
        K::Atom(a)
    }
}

impl From<Vector> for K {
    fn from(v: Vector) -> K {
        K::Vector(Attr::None, v)
    }
}

impl From<Table> for K {
    fn from(t: Table) -> K {
        K::Table(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_keep_names_and_wire_layout() {
        let s: Symbols = ["a", "", "bc"].into_iter().collect();
        assert_eq!(s.len(), 3);
        assert_eq!(s.get(0), Some(&b"a"[..]));
        assert_eq!(s.get(1), Some(&b""[..]));
        assert_eq!(s.get(2), Some(&b"bc"[..]));
        assert_eq!(s.get(3), None);
        assert_eq!(s.as_wire_bytes(), b"a\0\0bc\0");
    }

    #[test]
    fn symbol_push_cuts_at_nul() {
        let mut s = Symbols::new();
        s.push(b"ab\0cd");
        assert_eq!(s.get(0), Some(&b"ab"[..]));
    }

    #[test]
    fn type_numbers_match_q() {
        assert_eq!(K::long(1).ty(), -7);
        assert_eq!(K::string("ab").ty(), 10);
        assert_eq!(K::syms(["a"]).ty(), 11);
        assert_eq!(K::GenericNull.ty(), 101);
        assert_eq!(K::error("type").ty(), -128);
    }
}

//! kdb+ ⇄ Apache Arrow, column by column.
//!
//! See the crate documentation for the table of types. The rules in short:
//!
//! * every kdb+ column type has one Arrow type, and the field carries the
//!   kdb+ type name in its metadata under [`KDB_TYPE_KEY`] so that types which
//!   share an Arrow type (`month` and `date` are both `Date32`; `minute` and
//!   `second` are both `Time32(Second)`; `datetime` and `timestamp` are both
//!   `Timestamp(Nanosecond)`; `char` and `string` are both `Utf8`) come back as
//!   they went in;
//! * kdb+ nulls are Arrow nulls, both ways;
//! * kdb+ infinities (`0W`, `-0W`) stay the extreme values of the Arrow type,
//!   so they still sort first and last after the epoch shift;
//! * temporals move from the kdb+ epoch (2000.01.01) to the Unix epoch;
//! * numeric columns move into Arrow without copying when the kdb+ value is
//!   owned ([`table_to_batch`] takes the table by value).

use std::collections::HashMap as StdHashMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, BooleanArray, Date32Array, DictionaryArray, FixedSizeBinaryArray,
    Float32Array, Float64Array, GenericByteArray, Int32Array, NullArray, PrimitiveArray, StringArray,
    Time32SecondArray, TimestampNanosecondArray,
};
use datafusion::arrow::buffer::{BooleanBuffer, Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{
    ArrowPrimitiveType, ByteArrayType, DataType, Date32Type, DurationMicrosecondType,
    DurationMillisecondType, DurationNanosecondType, DurationSecondType, Field, Float16Type, Float32Type,
    Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, Schema, Time32MillisecondType, Time32SecondType,
    Time64MicrosecondType, Time64NanosecondType, TimeUnit, TimestampMicrosecondType,
    TimestampMillisecondType, TimestampNanosecondType, TimestampSecondType, UInt8Type, UInt16Type,
    UInt32Type, UInt64Type,
};
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::common::HashMap;
use qmesh_codec::{Atom, Attr, K, Symbols, Table, Vector, nulls};

/// Field metadata key holding the kdb+ type name of a column (`"month"`,
/// `"symbol"`, …; see [`KdbType::name`]).
pub const KDB_TYPE_KEY: &str = "kdb.type";

/// Arrow's canonical extension-type key; guid columns carry `arrow.uuid`.
pub const ARROW_EXTENSION_KEY: &str = "ARROW:extension:name";

/// The canonical Arrow extension name for UUIDs, used for guid columns.
pub const UUID_EXTENSION: &str = "arrow.uuid";

/// Days from 1970.01.01 to 2000.01.01.
pub const KDB_EPOCH_DAYS: i32 = 10_957;

/// Nanoseconds in a day.
const NS_PER_DAY: i64 = 86_400_000_000_000;

/// Nanoseconds from 1970.01.01D00:00 to 2000.01.01D00:00.
pub const KDB_EPOCH_NS: i64 = KDB_EPOCH_DAYS as i64 * NS_PER_DAY;

/// The bit pattern of q's float null `0n`.
pub const FLOAT_NULL_BITS: u64 = 0xFFF8_0000_0000_0000;

/// The bit pattern of q's real null `0Ne`.
pub const REAL_NULL_BITS: u32 = 0xFFC0_0000;

/// Largest number of distinct symbols one column of one batch may hold: the
/// dictionary keys are `Int32`.
pub const MAX_DICTIONARY_VALUES: usize = i32::MAX as usize;

/// Largest number of bytes of text one string or symbol column of one batch
/// may hold: `Utf8`/`Binary` offsets are `i32`.
pub const MAX_TEXT_BYTES: usize = i32::MAX as usize;

/// Errors turning kdb+ values into Arrow or back. The text starts with the
/// word of the catalog entry [`MapError::kind`] names.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    /// The value is not a table (or a list of columns) at all.
    #[error("bad request: expected a table, got kdb+ type {0}h")]
    NotATable(i16),
    /// A column's kdb+ type has no Arrow mapping.
    #[error("unsupported type: column `{column}` has kdb+ type {ty}h, which has no Arrow mapping ({why})")]
    UnsupportedKdb { column: String, ty: i16, why: &'static str },
    /// A result column's Arrow type has no kdb+ mapping.
    #[error("unsupported type: column `{column}` has Arrow type {arrow}, which has no kdb+ mapping")]
    UnsupportedArrow { column: String, arrow: String },
    /// A value cannot be represented on the other side.
    #[error("unsupported type: column `{column}` row {row}: {what}")]
    OutOfRange { column: String, row: usize, what: String },
    /// Column names must be UTF-8 to become Arrow field names.
    #[error("bad request: column name {0:?} is not UTF-8")]
    NameNotUtf8(String),
    /// Columns of different lengths.
    #[error("bad request: column `{column}` has {got} rows, expected {expected}")]
    Length { column: String, got: usize, expected: usize },
    /// A column holds more text than one Arrow array can address.
    #[error("limit: column `{column}` holds more than {limit} bytes of text")]
    TooMuchText { column: String, limit: usize },
    /// Arrow refused to build an array (a bug in this module if it happens).
    #[error("internal: arrow: {0}")]
    Arrow(String),
}

impl MapError {
    /// The catalog entry, the same over IPC and HTTP.
    pub fn kind(&self) -> qmesh_process::ErrorKind {
        use qmesh_process::ErrorKind;
        match self {
            MapError::NotATable(_) | MapError::NameNotUtf8(_) | MapError::Length { .. } => {
                ErrorKind::BadRequest
            }
            MapError::UnsupportedKdb { .. }
            | MapError::UnsupportedArrow { .. }
            | MapError::OutOfRange { .. } => ErrorKind::UnsupportedType,
            MapError::TooMuchText { .. } => ErrorKind::Limit,
            MapError::Arrow(_) => ErrorKind::Internal,
        }
    }
}

/// The kdb+ column types this module maps, as named in field metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KdbType {
    Boolean,
    Guid,
    Byte,
    Short,
    Int,
    Long,
    Real,
    Float,
    /// A char vector used as a column: one char per row.
    Char,
    Symbol,
    /// A general list of char vectors: one string per row.
    String,
    /// A general list of byte vectors: one byte string per row.
    Bytes,
    Timestamp,
    Month,
    Date,
    Datetime,
    Timespan,
    Minute,
    Second,
    Time,
}

impl KdbType {
    /// Every type, in kdb+ type-number order (strings and byte strings last).
    pub const ALL: [KdbType; 20] = [
        KdbType::Boolean,
        KdbType::Guid,
        KdbType::Byte,
        KdbType::Short,
        KdbType::Int,
        KdbType::Long,
        KdbType::Real,
        KdbType::Float,
        KdbType::Char,
        KdbType::Symbol,
        KdbType::Timestamp,
        KdbType::Month,
        KdbType::Date,
        KdbType::Datetime,
        KdbType::Timespan,
        KdbType::Minute,
        KdbType::Second,
        KdbType::Time,
        KdbType::String,
        KdbType::Bytes,
    ];

    /// The name stored under [`KDB_TYPE_KEY`] (q's own name for the type).
    pub fn name(self) -> &'static str {
        match self {
            KdbType::Boolean => "boolean",
            KdbType::Guid => "guid",
            KdbType::Byte => "byte",
            KdbType::Short => "short",
            KdbType::Int => "int",
            KdbType::Long => "long",
            KdbType::Real => "real",
            KdbType::Float => "float",
            KdbType::Char => "char",
            KdbType::Symbol => "symbol",
            KdbType::String => "string",
            KdbType::Bytes => "bytes",
            KdbType::Timestamp => "timestamp",
            KdbType::Month => "month",
            KdbType::Date => "date",
            KdbType::Datetime => "datetime",
            KdbType::Timespan => "timespan",
            KdbType::Minute => "minute",
            KdbType::Second => "second",
            KdbType::Time => "time",
        }
    }

    /// The type for a metadata name.
    pub fn from_name(name: &str) -> Option<KdbType> {
        KdbType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The kdb+ vector type number of a column of this type (0 for the
    /// general-list columns).
    pub fn code(self) -> i16 {
        match self {
            KdbType::Boolean => 1,
            KdbType::Guid => 2,
            KdbType::Byte => 4,
            KdbType::Short => 5,
            KdbType::Int => 6,
            KdbType::Long => 7,
            KdbType::Real => 8,
            KdbType::Float => 9,
            KdbType::Char => 10,
            KdbType::Symbol => 11,
            KdbType::Timestamp => 12,
            KdbType::Month => 13,
            KdbType::Date => 14,
            KdbType::Datetime => 15,
            KdbType::Timespan => 16,
            KdbType::Minute => 17,
            KdbType::Second => 18,
            KdbType::Time => 19,
            KdbType::String | KdbType::Bytes => 0,
        }
    }

    /// The Arrow type a column of this type becomes. Text columns whose
    /// bytes are not all UTF-8 become the `Binary` form instead (see
    /// [`KdbType::arrow_type_binary`]).
    pub fn arrow_type(self) -> DataType {
        match self {
            KdbType::Boolean => DataType::Boolean,
            KdbType::Guid => DataType::FixedSizeBinary(16),
            KdbType::Byte => DataType::UInt8,
            KdbType::Short => DataType::Int16,
            KdbType::Int => DataType::Int32,
            KdbType::Long => DataType::Int64,
            KdbType::Real => DataType::Float32,
            KdbType::Float => DataType::Float64,
            KdbType::Char | KdbType::String => DataType::Utf8,
            KdbType::Bytes => DataType::Binary,
            KdbType::Symbol => DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            KdbType::Timestamp | KdbType::Datetime => DataType::Timestamp(TimeUnit::Nanosecond, None),
            KdbType::Month | KdbType::Date => DataType::Date32,
            KdbType::Timespan => DataType::Duration(TimeUnit::Nanosecond),
            KdbType::Minute | KdbType::Second => DataType::Time32(TimeUnit::Second),
            KdbType::Time => DataType::Time32(TimeUnit::Millisecond),
        }
    }

    /// The Arrow type of a symbol or string column holding bytes that are
    /// not UTF-8.
    pub fn arrow_type_binary(self) -> Option<DataType> {
        match self {
            KdbType::Symbol => {
                Some(DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Binary)))
            }
            KdbType::String => Some(DataType::Binary),
            _ => None,
        }
    }

    /// The field for a column of this type: nullable, with the kdb+ type in
    /// its metadata (and `arrow.uuid` for guids).
    pub fn field(self, name: &str, arrow: DataType) -> Field {
        let mut meta = StdHashMap::new();
        meta.insert(KDB_TYPE_KEY.to_string(), self.name().to_string());
        if self == KdbType::Guid {
            meta.insert(ARROW_EXTENSION_KEY.to_string(), UUID_EXTENSION.to_string());
        }
        Field::new(name, arrow, true).with_metadata(meta)
    }

    /// The kdb+ type recorded in a field's metadata, if any.
    pub fn of_field(field: &Field) -> Option<KdbType> {
        field.metadata().get(KDB_TYPE_KEY).and_then(|n| KdbType::from_name(n))
    }
}

impl std::fmt::Display for KdbType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------
// Temporal conversions. Every function maps a kdb+ value (null and ±infinity
// included) to an Arrow value, or back; `None` is null, `Err` a value the
// other side cannot hold. Infinities are kept as the extreme values.

/// Why a temporal value cannot cross.
const OUT_OF_RANGE: &str = "outside the range the other side can represent";

/// kdb+ timestamp (ns since 2000.01.01) → Unix nanoseconds.
pub fn timestamp_to_unix_ns(v: i64) -> Result<Option<i64>, &'static str> {
    match v {
        nulls::LONG_NULL => Ok(None),
        i64::MAX => Ok(Some(i64::MAX)),
        x if x == -i64::MAX => Ok(Some(-i64::MAX)),
        x => match x.checked_add(KDB_EPOCH_NS) {
            Some(u) if u != i64::MAX => Ok(Some(u)),
            _ => Err(OUT_OF_RANGE),
        },
    }
}

/// Unix nanoseconds → kdb+ timestamp.
pub fn unix_ns_to_timestamp(v: i64) -> Result<i64, &'static str> {
    match v {
        i64::MAX => Ok(i64::MAX),
        x if x == -i64::MAX => Ok(-i64::MAX),
        x => match x.checked_sub(KDB_EPOCH_NS) {
            Some(k) if k != i64::MIN && k != -i64::MAX => Ok(k),
            _ => Err(OUT_OF_RANGE),
        },
    }
}

/// kdb+ date (days since 2000.01.01) → Unix days.
pub fn date_to_unix_days(v: i32) -> Result<Option<i32>, &'static str> {
    match v {
        nulls::INT_NULL => Ok(None),
        i32::MAX => Ok(Some(i32::MAX)),
        x if x == -i32::MAX => Ok(Some(-i32::MAX)),
        x => match x.checked_add(KDB_EPOCH_DAYS) {
            Some(u) if u != i32::MAX => Ok(Some(u)),
            _ => Err(OUT_OF_RANGE),
        },
    }
}

/// Unix days → kdb+ date.
pub fn unix_days_to_date(v: i32) -> Result<i32, &'static str> {
    match v {
        i32::MAX => Ok(i32::MAX),
        x if x == -i32::MAX => Ok(-i32::MAX),
        x => match x.checked_sub(KDB_EPOCH_DAYS) {
            Some(k) if k != i32::MIN && k != -i32::MAX => Ok(k),
            _ => Err(OUT_OF_RANGE),
        },
    }
}

/// Days from 1970.01.01 of a proleptic Gregorian civil date (month 1..=12).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12; // March = 0
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil (year, month 1..=12, day) of a day count from 1970.01.01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// kdb+ month (months since 2000.01) → Unix days of the month's first day.
pub fn month_to_unix_days(v: i32) -> Result<Option<i32>, &'static str> {
    match v {
        nulls::INT_NULL => Ok(None),
        i32::MAX => Ok(Some(i32::MAX)),
        x if x == -i32::MAX => Ok(Some(-i32::MAX)),
        x => {
            let m = i64::from(x);
            let days = days_from_civil(2000 + m.div_euclid(12), m.rem_euclid(12) + 1, 1);
            match i32::try_from(days) {
                Ok(d) if d != i32::MAX && d != -i32::MAX && d != i32::MIN => Ok(Some(d)),
                _ => Err(OUT_OF_RANGE),
            }
        }
    }
}

/// Unix days → kdb+ month (the month the day falls in).
pub fn unix_days_to_month(v: i32) -> Result<i32, &'static str> {
    match v {
        i32::MAX => Ok(i32::MAX),
        x if x == -i32::MAX => Ok(-i32::MAX),
        x => {
            let (y, m, _) = civil_from_days(i64::from(x));
            let months = (y - 2000) * 12 + (m - 1);
            match i32::try_from(months) {
                Ok(k) if k != i32::MIN && k != -i32::MAX && k != i32::MAX => Ok(k),
                _ => Err(OUT_OF_RANGE),
            }
        }
    }
}

/// kdb+ minute → seconds since midnight (`Time32(Second)`).
pub fn minute_to_seconds(v: i32) -> Result<Option<i32>, &'static str> {
    match v {
        nulls::INT_NULL => Ok(None),
        i32::MAX => Ok(Some(i32::MAX)),
        x if x == -i32::MAX => Ok(Some(-i32::MAX)),
        x => x.checked_mul(60).map(Some).ok_or(OUT_OF_RANGE),
    }
}

/// Seconds since midnight → kdb+ minute (rounding down).
pub fn seconds_to_minute(v: i32) -> i32 {
    match v {
        i32::MAX => i32::MAX,
        x if x == -i32::MAX => -i32::MAX,
        x => x.div_euclid(60),
    }
}

/// The exact value of a finite double times `NS_PER_DAY`, rounded to the
/// nearest integer (ties to even), or `None` if it does not fit an `i64`.
fn days_f64_to_ns(d: f64) -> Option<i64> {
    debug_assert!(d.is_finite());
    if d == 0.0 {
        return Some(0);
    }
    let bits = d.to_bits();
    let negative = bits >> 63 == 1;
    let exp_bits = ((bits >> 52) & 0x7FF) as i32;
    let frac = bits & ((1u64 << 52) - 1);
    // d = mantissa * 2^exp
    let (mantissa, exp) = if exp_bits == 0 { (frac, -1074) } else { (frac | (1u64 << 52), exp_bits - 1075) };
    let product = i128::from(mantissa) * i128::from(NS_PER_DAY); // < 2^100
    let magnitude: i128 = if exp >= 0 {
        if exp > 26 {
            return None; // above 2^126, far beyond i64
        }
        product.checked_shl(exp as u32)?
    } else {
        let shift = (-exp) as u32;
        if shift >= 127 {
            0
        } else {
            let q = product >> shift;
            let rem = product - (q << shift);
            let half = 1i128 << (shift - 1);
            if rem > half || (rem == half && q & 1 == 1) { q + 1 } else { q }
        }
    };
    let signed = if negative { -magnitude } else { magnitude };
    i64::try_from(signed).ok()
}

/// kdb+ datetime (days since 2000.01.01, as a double) → Unix nanoseconds.
///
/// Exact: the double is multiplied out without rounding error, then rounded
/// once to the nanosecond.
pub fn datetime_to_unix_ns(d: f64) -> Result<Option<i64>, &'static str> {
    if d.is_nan() {
        return Ok(None);
    }
    if d == f64::INFINITY {
        return Ok(Some(i64::MAX));
    }
    if d == f64::NEG_INFINITY {
        return Ok(Some(-i64::MAX));
    }
    let ns = days_f64_to_ns(d).ok_or(OUT_OF_RANGE)?;
    match ns.checked_add(KDB_EPOCH_NS) {
        Some(u) if u != i64::MAX && u != -i64::MAX && u != i64::MIN => Ok(Some(u)),
        _ => Err(OUT_OF_RANGE),
    }
}

/// Unix nanoseconds → kdb+ datetime: the double whose nanosecond value
/// ([`datetime_to_unix_ns`]) is `v`, the nearest to `v` when several are
/// (within 64 days of 2000.01.01 doubles are finer than a nanosecond). So a
/// datetime made from milliseconds (divided by 86,400,000, as q does) comes
/// back bit for bit.
pub fn unix_ns_to_datetime(v: i64) -> Result<f64, &'static str> {
    match v {
        i64::MAX => return Ok(f64::INFINITY),
        x if x == -i64::MAX => return Ok(f64::NEG_INFINITY),
        _ => {}
    }
    let k = i128::from(v) - i128::from(KDB_EPOCH_NS);
    let k = i64::try_from(k).map_err(|_| OUT_OF_RANGE)?;
    // Within ±2^53 ns (104 days) `k` is exact as a double, so one division
    // gives the double nearest to k / NS_PER_DAY; if it maps back to `k`,
    // no other double that does is nearer.
    if k.unsigned_abs() < 1 << 53 {
        let nearest = k as f64 / NS_PER_DAY as f64;
        if days_f64_to_ns(nearest) == Some(k) {
            return Ok(nearest);
        }
    }
    // Otherwise the double is within a few ulps of this guess (beyond 64
    // days it is the only one that maps to `k`).
    let days = k.div_euclid(NS_PER_DAY);
    let rest = k.rem_euclid(NS_PER_DAY);
    let guess = days as f64 + rest as f64 / NS_PER_DAY as f64;
    if days_f64_to_ns(guess) == Some(k) {
        return Ok(guess);
    }
    // The guess is within a couple of ulps of the answer; look either side.
    let mut down = guess;
    let mut up = guess;
    for _ in 0..4 {
        down = down.next_down();
        up = up.next_up();
        if days_f64_to_ns(down) == Some(k) {
            return Ok(down);
        }
        if days_f64_to_ns(up) == Some(k) {
            return Ok(up);
        }
    }
    Ok(guess)
}

fn unit_to_ns(v: i64, unit: TimeUnit) -> Option<i64> {
    match unit {
        TimeUnit::Second => v.checked_mul(1_000_000_000),
        TimeUnit::Millisecond => v.checked_mul(1_000_000),
        TimeUnit::Microsecond => v.checked_mul(1_000),
        TimeUnit::Nanosecond => Some(v),
    }
}

// ---------------------------------------------------------------------------
// kdb+ → Arrow

fn null_buffer(len: usize, is_null: impl Fn(usize) -> bool) -> Option<NullBuffer> {
    let validity = BooleanBuffer::collect_bool(len, |i| !is_null(i));
    let nb = NullBuffer::new(validity);
    (nb.null_count() > 0).then_some(nb)
}

fn primitive<T: ArrowPrimitiveType>(values: Vec<T::Native>, null: Option<T::Native>) -> PrimitiveArray<T>
where
    T::Native: PartialEq,
{
    let nulls = null.and_then(|n| null_buffer(values.len(), |i| values[i] == n));
    PrimitiveArray::<T>::new(ScalarBuffer::from(values), nulls)
}

fn float_array(values: Vec<f64>) -> Float64Array {
    let nulls = null_buffer(values.len(), |i| values[i].is_nan());
    Float64Array::new(ScalarBuffer::from(values), nulls)
}

fn real_array(values: Vec<f32>) -> Float32Array {
    let nulls = null_buffer(values.len(), |i| values[i].is_nan());
    Float32Array::new(ScalarBuffer::from(values), nulls)
}

/// Applies a temporal conversion in place; nulls become 0 under a null bit.
fn shift_in_place<N: Copy + Default>(
    column: &str,
    values: &mut [N],
    f: impl Fn(N) -> Result<Option<N>, &'static str>,
) -> Result<Option<NullBuffer>, MapError> {
    let mut null_rows = Vec::new();
    for (row, v) in values.iter_mut().enumerate() {
        match f(*v) {
            Ok(Some(x)) => *v = x,
            Ok(None) => {
                *v = N::default();
                null_rows.push(row);
            }
            Err(what) => {
                return Err(MapError::OutOfRange { column: column.to_string(), row, what: what.to_string() });
            }
        }
    }
    if null_rows.is_empty() {
        return Ok(None);
    }
    let mut validity = vec![true; values.len()];
    for r in null_rows {
        validity[r] = false;
    }
    Ok(Some(NullBuffer::from(validity)))
}

/// Builds a `Utf8` array if every value is UTF-8, else a `Binary` one.
/// `offsets` has one more entry than there are values.
fn text_array(
    column: &str,
    offsets: Vec<i32>,
    data: Vec<u8>,
    nulls: Option<NullBuffer>,
) -> Result<(ArrayRef, bool), MapError> {
    let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
    let utf8 = std::str::from_utf8(&data).is_ok()
        && offsets.windows(2).all(|w| std::str::from_utf8(&data[w[0] as usize..w[1] as usize]).is_ok());
    let data = Buffer::from_vec(data);
    if utf8 {
        let a = StringArray::try_new(offsets, data, nulls).map_err(|e| MapError::Arrow(e.to_string()))?;
        Ok((Arc::new(a), true))
    } else {
        let a = BinaryArray::try_new(offsets, data, nulls).map_err(|e| MapError::Arrow(e.to_string()))?;
        let _ = column;
        Ok((Arc::new(a), false))
    }
}

fn offset(column: &str, n: usize) -> Result<i32, MapError> {
    i32::try_from(n).map_err(|_| MapError::TooMuchText { column: column.to_string(), limit: MAX_TEXT_BYTES })
}

/// A symbol vector → `Dictionary(Int32, Utf8)` (or `Binary` values when a
/// name is not UTF-8). The null symbol is an Arrow null.
fn symbols_array(column: &str, syms: &Symbols) -> Result<(ArrayRef, bool), MapError> {
    let n = syms.len();
    let mut index: HashMap<&[u8], i32> = HashMap::new();
    let mut keys: Vec<i32> = Vec::with_capacity(n);
    let mut offsets: Vec<i32> = vec![0];
    let mut data: Vec<u8> = Vec::new();
    let mut any_null = false;
    let mut last: Option<(&[u8], i32)> = None;
    for name in syms.iter() {
        if name.is_empty() {
            any_null = true;
            keys.push(0);
            continue;
        }
        if let Some((l, k)) = last
            && l == name
        {
            keys.push(k);
            continue;
        }
        let k = match index.get(name) {
            Some(&k) => k,
            None => {
                let k = i32::try_from(index.len()).map_err(|_| MapError::TooMuchText {
                    column: column.to_string(),
                    limit: MAX_DICTIONARY_VALUES,
                })?;
                data.extend_from_slice(name);
                offsets.push(offset(column, data.len())?);
                index.insert(name, k);
                k
            }
        };
        last = Some((name, k));
        keys.push(k);
    }
    let nulls = if any_null { null_buffer(n, |i| syms.get(i).is_some_and(<[u8]>::is_empty)) } else { None };
    let keys = Int32Array::new(ScalarBuffer::from(keys), nulls);
    let (values, utf8) = text_array(column, offsets, data, None)?;
    let dict =
        DictionaryArray::<Int32Type>::try_new(keys, values).map_err(|e| MapError::Arrow(e.to_string()))?;
    Ok((Arc::new(dict), utf8))
}

/// A char vector used as a column → `Utf8`, one character per row. Bytes
/// are read as Latin-1 (byte `b` is code point `b`), so every byte has a
/// character and the way back is exact. The null char `" "` is an Arrow
/// null.
fn chars_array(column: &str, chars: &[u8]) -> Result<ArrayRef, MapError> {
    let mut offsets = Vec::with_capacity(chars.len() + 1);
    let mut data = Vec::with_capacity(chars.len());
    offsets.push(0);
    for &c in chars {
        if c != nulls::CHAR_NULL {
            let mut buf = [0u8; 4];
            data.extend_from_slice(char::from(c).encode_utf8(&mut buf).as_bytes());
        }
        offsets.push(offset(column, data.len())?);
    }
    let nulls = null_buffer(chars.len(), |i| chars[i] == nulls::CHAR_NULL);
    let a =
        StringArray::try_new(OffsetBuffer::new(ScalarBuffer::from(offsets)), Buffer::from_vec(data), nulls)
            .map_err(|e| MapError::Arrow(e.to_string()))?;
    Ok(Arc::new(a))
}

/// What a general-list column holds.
fn list_kind(items: &[K]) -> Option<KdbType> {
    let mut kind = None;
    for item in items {
        let this = match item {
            K::Vector(_, Vector::Char(_)) | K::Atom(Atom::Char(_)) => KdbType::String,
            K::Vector(_, Vector::Byte(_)) | K::Atom(Atom::Byte(_)) => KdbType::Bytes,
            _ => return None,
        };
        match kind {
            None => kind = Some(this),
            Some(k) if k == this => {}
            Some(_) => return None,
        }
    }
    kind
}

fn list_items_bytes(item: &K) -> &[u8] {
    match item {
        K::Vector(_, Vector::Char(c)) | K::Vector(_, Vector::Byte(c)) => c,
        K::Atom(Atom::Char(c)) | K::Atom(Atom::Byte(c)) => std::slice::from_ref(c),
        _ => &[],
    }
}

/// One kdb+ column → an Arrow field and array.
///
/// `hint` is the type wanted for a column whose own type cannot tell (an
/// empty general list); with no hint such a column is a string column.
pub fn column_to_array(name: &str, column: K, hint: Option<KdbType>) -> Result<(Field, ArrayRef), MapError> {
    let unsupported =
        |ty: i16, why: &'static str| MapError::UnsupportedKdb { column: name.to_string(), ty, why };
    let (kt, array): (KdbType, ArrayRef) = match column {
        K::Vector(_, v) => match v {
            Vector::Boolean(b) => (KdbType::Boolean, Arc::new(BooleanArray::from(b))),
            Vector::Guid(g) => {
                let len = g.len();
                let nulls = null_buffer(len, |i| g[i] == nulls::GUID_NULL);
                let flat: Vec<u8> = g.into_flattened();
                let a = FixedSizeBinaryArray::try_new(16, Buffer::from_vec(flat), nulls)
                    .map_err(|e| MapError::Arrow(e.to_string()))?;
                (KdbType::Guid, Arc::new(a))
            }
            Vector::Byte(b) => (KdbType::Byte, Arc::new(primitive::<UInt8Type>(b, None))),
            Vector::Short(v) => {
                (KdbType::Short, Arc::new(primitive::<Int16Type>(v, Some(nulls::SHORT_NULL))))
            }
            Vector::Int(v) => (KdbType::Int, Arc::new(primitive::<Int32Type>(v, Some(nulls::INT_NULL)))),
            Vector::Long(v) => (KdbType::Long, Arc::new(primitive::<Int64Type>(v, Some(nulls::LONG_NULL)))),
            Vector::Real(v) => (KdbType::Real, Arc::new(real_array(v))),
            Vector::Float(v) => (KdbType::Float, Arc::new(float_array(v))),
            Vector::Char(c) => (KdbType::Char, chars_array(name, &c)?),
            Vector::Symbol(s) => {
                let (a, utf8) = symbols_array(name, &s)?;
                let _ = utf8;
                (KdbType::Symbol, a)
            }
            Vector::Timestamp(mut v) => {
                let nulls = shift_in_place(name, &mut v, timestamp_to_unix_ns)?;
                (KdbType::Timestamp, Arc::new(TimestampNanosecondArray::new(ScalarBuffer::from(v), nulls)))
            }
            Vector::Month(mut v) => {
                let nulls = shift_in_place(name, &mut v, month_to_unix_days)?;
                (KdbType::Month, Arc::new(Date32Array::new(ScalarBuffer::from(v), nulls)))
            }
            Vector::Date(mut v) => {
                let nulls = shift_in_place(name, &mut v, date_to_unix_days)?;
                (KdbType::Date, Arc::new(Date32Array::new(ScalarBuffer::from(v), nulls)))
            }
            Vector::Datetime(v) => {
                let mut ns = Vec::with_capacity(v.len());
                let mut validity = Vec::new();
                for (row, d) in v.iter().enumerate() {
                    match datetime_to_unix_ns(*d) {
                        Ok(Some(x)) => ns.push(x),
                        Ok(None) => {
                            if validity.is_empty() {
                                validity = vec![true; v.len()];
                            }
                            validity[row] = false;
                            // The NaN's bits, kept under the null (as for
                            // floats), so any NaN comes back as it was.
                            ns.push(d.to_bits() as i64);
                        }
                        Err(what) => {
                            return Err(MapError::OutOfRange {
                                column: name.to_string(),
                                row,
                                what: what.to_string(),
                            });
                        }
                    }
                }
                let nulls = (!validity.is_empty()).then(|| NullBuffer::from(validity));
                (KdbType::Datetime, Arc::new(TimestampNanosecondArray::new(ScalarBuffer::from(ns), nulls)))
            }
            Vector::Timespan(v) => {
                (KdbType::Timespan, Arc::new(primitive::<DurationNanosecondType>(v, Some(nulls::LONG_NULL))))
            }
            Vector::Minute(mut v) => {
                let nulls = shift_in_place(name, &mut v, minute_to_seconds)?;
                (KdbType::Minute, Arc::new(Time32SecondArray::new(ScalarBuffer::from(v), nulls)))
            }
            Vector::Second(v) => {
                (KdbType::Second, Arc::new(primitive::<Time32SecondType>(v, Some(nulls::INT_NULL))))
            }
            Vector::Time(v) => {
                (KdbType::Time, Arc::new(primitive::<Time32MillisecondType>(v, Some(nulls::INT_NULL))))
            }
        },
        K::List(_, items) => {
            let kind = if items.is_empty() {
                match hint {
                    Some(h) if h.code() != 0 => return empty_column(name, h),
                    Some(h) => h,
                    None => KdbType::String,
                }
            } else {
                list_kind(&items).ok_or_else(|| {
                    unsupported(
                        0,
                        "only lists of strings or of byte vectors can be columns; nested lists are not",
                    )
                })?
            };
            let mut offsets = Vec::with_capacity(items.len() + 1);
            let total: usize = items.iter().map(|i| list_items_bytes(i).len()).sum();
            if total > MAX_TEXT_BYTES {
                return Err(MapError::TooMuchText { column: name.to_string(), limit: MAX_TEXT_BYTES });
            }
            let mut data = Vec::with_capacity(total);
            offsets.push(0);
            for item in &items {
                data.extend_from_slice(list_items_bytes(item));
                offsets.push(offset(name, data.len())?);
            }
            if kind == KdbType::Bytes {
                let a = BinaryArray::try_new(
                    OffsetBuffer::new(ScalarBuffer::from(offsets)),
                    Buffer::from_vec(data),
                    None,
                )
                .map_err(|e| MapError::Arrow(e.to_string()))?;
                (KdbType::Bytes, Arc::new(a))
            } else {
                let (a, _) = text_array(name, offsets, data, None)?;
                (KdbType::String, a)
            }
        }
        K::Enumeration(e) => {
            return Err(unsupported(
                i16::from(e.ty),
                "enumerations need their domain; send the column as symbols",
            ));
        }
        other => return Err(unsupported(other.ty(), "a column must be a vector or a list of strings")),
    };
    let field = kt.field(name, array.data_type().clone());
    Ok((field, array))
}

/// An empty column of a kdb+ type.
fn empty_column(name: &str, kt: KdbType) -> Result<(Field, ArrayRef), MapError> {
    let v = match kt {
        KdbType::Boolean => K::from(Vector::Boolean(vec![])),
        KdbType::Guid => K::from(Vector::Guid(vec![])),
        KdbType::Byte => K::from(Vector::Byte(vec![])),
        KdbType::Short => K::from(Vector::Short(vec![])),
        KdbType::Int => K::from(Vector::Int(vec![])),
        KdbType::Long => K::from(Vector::Long(vec![])),
        KdbType::Real => K::from(Vector::Real(vec![])),
        KdbType::Float => K::from(Vector::Float(vec![])),
        KdbType::Char => K::from(Vector::Char(vec![])),
        KdbType::Symbol => K::from(Vector::Symbol(Symbols::new())),
        KdbType::Timestamp => K::from(Vector::Timestamp(vec![])),
        KdbType::Month => K::from(Vector::Month(vec![])),
        KdbType::Date => K::from(Vector::Date(vec![])),
        KdbType::Datetime => K::from(Vector::Datetime(vec![])),
        KdbType::Timespan => K::from(Vector::Timespan(vec![])),
        KdbType::Minute => K::from(Vector::Minute(vec![])),
        KdbType::Second => K::from(Vector::Second(vec![])),
        KdbType::Time => K::from(Vector::Time(vec![])),
        KdbType::String | KdbType::Bytes => K::list(vec![]),
    };
    column_to_array(name, v, Some(kt))
}

/// Column names of a kdb+ table as Rust strings.
pub fn column_names(names: &Symbols) -> Result<Vec<String>, MapError> {
    names
        .iter()
        .map(|n| {
            std::str::from_utf8(n)
                .map(str::to_string)
                .map_err(|_| MapError::NameNotUtf8(String::from_utf8_lossy(n).into_owned()))
        })
        .collect()
}

/// A kdb+ table → one record batch. `hints` gives, by position, the kdb+
/// type of each column where it is known (for empty general lists).
pub fn table_to_batch(table: Table, hints: Option<&[KdbType]>) -> Result<RecordBatch, MapError> {
    let names = column_names(&table.names)?;
    columns_to_batch(&names, table.columns, hints)
}

/// Named columns → one record batch.
pub fn columns_to_batch(
    names: &[String],
    columns: Vec<K>,
    hints: Option<&[KdbType]>,
) -> Result<RecordBatch, MapError> {
    let rows = columns.first().map_or(0, K::count);
    let mut fields = Vec::with_capacity(columns.len());
    let mut arrays = Vec::with_capacity(columns.len());
    for (i, (name, col)) in names.iter().zip(columns).enumerate() {
        if col.count() != rows {
            return Err(MapError::Length { column: name.clone(), got: col.count(), expected: rows });
        }
        let hint = hints.and_then(|h| h.get(i).copied());
        let (f, a) = column_to_array(name, col, hint)?;
        fields.push(f);
        arrays.push(a);
    }
    let schema = Arc::new(Schema::new(fields));
    RecordBatch::try_new_with_options(schema, arrays, &RecordBatchOptions::new().with_row_count(Some(rows)))
        .map_err(|e| MapError::Arrow(e.to_string()))
}

// ---------------------------------------------------------------------------
// Arrow → kdb+

/// The kdb+ type a field becomes: its metadata when that agrees with the
/// Arrow type, otherwise the natural kdb+ type of the Arrow type.
pub fn kdb_type_for(field: &Field) -> Result<KdbType, MapError> {
    let dt = field.data_type();
    if let Some(kt) = KdbType::of_field(field)
        && (kt.arrow_type() == *dt || kt.arrow_type_binary().as_ref() == Some(dt))
    {
        return Ok(kt);
    }
    let unsupported = || MapError::UnsupportedArrow { column: field.name().clone(), arrow: dt.to_string() };
    Ok(match dt {
        DataType::Boolean => KdbType::Boolean,
        DataType::UInt8 => KdbType::Byte,
        DataType::Int8 | DataType::Int16 => KdbType::Short,
        DataType::Int32 | DataType::UInt16 => KdbType::Int,
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => KdbType::Long,
        DataType::Float16 | DataType::Float32 => KdbType::Real,
        DataType::Float64 | DataType::Decimal32(..) | DataType::Decimal64(..) | DataType::Decimal128(..) => {
            KdbType::Float
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => KdbType::String,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => KdbType::Bytes,
        DataType::FixedSizeBinary(16) => KdbType::Guid,
        DataType::Dictionary(_, v) => match v.as_ref() {
            DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Binary
            | DataType::LargeBinary
            | DataType::BinaryView => KdbType::Symbol,
            other => {
                let inner = Field::new(field.name(), other.clone(), true);
                return kdb_type_for(&inner);
            }
        },
        DataType::Timestamp(..) => KdbType::Timestamp,
        DataType::Date32 | DataType::Date64 => KdbType::Date,
        DataType::Time32(TimeUnit::Second) => KdbType::Second,
        DataType::Time32(_) => KdbType::Time,
        DataType::Time64(_) | DataType::Duration(_) => KdbType::Timespan,
        _ => return Err(unsupported()),
    })
}

fn out_of_range(field: &Field, row: usize, what: impl Into<String>) -> MapError {
    MapError::OutOfRange { column: field.name().clone(), row, what: what.into() }
}

/// Copies primitive arrays into one vector, writing `null` where the Arrow
/// value is null.
fn gather<T: ArrowPrimitiveType, N: Copy>(
    arrays: &[&dyn Array],
    null: N,
    f: impl Fn(T::Native) -> N,
) -> Vec<N> {
    let total = arrays.iter().map(|a| a.len()).sum();
    let mut out = Vec::with_capacity(total);
    for a in arrays {
        let a = a.as_primitive::<T>();
        match a.nulls().filter(|n| n.null_count() > 0) {
            None => out.extend(a.values().iter().map(|&v| f(v))),
            Some(nb) => {
                out.extend(a.values().iter().zip(nb.iter()).map(|(&v, ok)| if ok { f(v) } else { null }))
            }
        }
    }
    out
}

/// Like [`gather`] with a conversion that may fail.
fn try_gather<T: ArrowPrimitiveType, N: Copy>(
    field: &Field,
    arrays: &[&dyn Array],
    null: N,
    f: impl Fn(T::Native) -> Result<N, &'static str>,
) -> Result<Vec<N>, MapError> {
    let total = arrays.iter().map(|a| a.len()).sum();
    let mut out = Vec::with_capacity(total);
    for a in arrays {
        let a = a.as_primitive::<T>();
        for i in 0..a.len() {
            if a.is_null(i) {
                out.push(null);
            } else {
                let row = out.len();
                out.push(f(a.value(i)).map_err(|w| out_of_range(field, row, w))?);
            }
        }
    }
    Ok(out)
}

/// Floats keep the bits of a NaN stored under a null (so a kdb+ NaN that
/// went in comes back bit for bit); other nulls become q's `0n`.
fn gather_f64(arrays: &[&dyn Array]) -> Vec<f64> {
    let null = f64::from_bits(FLOAT_NULL_BITS);
    let total = arrays.iter().map(|a| a.len()).sum();
    let mut out = Vec::with_capacity(total);
    for a in arrays {
        let a = a.as_primitive::<Float64Type>();
        match a.nulls().filter(|n| n.null_count() > 0) {
            None => out.extend_from_slice(a.values()),
            Some(nb) => out.extend(
                a.values().iter().zip(nb.iter()).map(|(&v, ok)| if ok || v.is_nan() { v } else { null }),
            ),
        }
    }
    out
}

fn gather_f32(arrays: &[&dyn Array]) -> Vec<f32> {
    let null = f32::from_bits(REAL_NULL_BITS);
    let total = arrays.iter().map(|a| a.len()).sum();
    let mut out = Vec::with_capacity(total);
    for a in arrays {
        let a = a.as_primitive::<Float32Type>();
        match a.nulls().filter(|n| n.null_count() > 0) {
            None => out.extend_from_slice(a.values()),
            Some(nb) => out.extend(
                a.values().iter().zip(nb.iter()).map(|(&v, ok)| if ok || v.is_nan() { v } else { null }),
            ),
        }
    }
    out
}

/// Casts every array to `to` (for Arrow types that map by conversion:
/// `Int8` → short, decimals → float, string views → strings, …).
fn cast_all(field: &Field, arrays: &[&dyn Array], to: &DataType) -> Result<Vec<ArrayRef>, MapError> {
    arrays
        .iter()
        .map(|a| {
            datafusion::arrow::compute::cast(*a, to).map_err(|e| MapError::UnsupportedArrow {
                column: field.name().clone(),
                arrow: format!("{} ({e})", a.data_type()),
            })
        })
        .collect()
}

/// Each row's bytes of a text or binary array (null → `None`).
fn for_each_bytes(a: &dyn Array, mut f: impl FnMut(Option<&[u8]>)) -> bool {
    fn each<T: ByteArrayType>(a: &GenericByteArray<T>, f: &mut impl FnMut(Option<&[u8]>)) {
        for i in 0..a.len() {
            if a.is_null(i) {
                f(None)
            } else {
                let v: &[u8] = a.value(i).as_ref();
                f(Some(v))
            }
        }
    }
    match a.data_type() {
        DataType::Utf8 => each(a.as_string::<i32>(), &mut f),
        DataType::LargeUtf8 => each(a.as_string::<i64>(), &mut f),
        DataType::Binary => each(a.as_binary::<i32>(), &mut f),
        DataType::LargeBinary => each(a.as_binary::<i64>(), &mut f),
        DataType::Utf8View => {
            let v = a.as_string_view();
            for i in 0..v.len() {
                f(if v.is_null(i) { None } else { Some(v.value(i).as_bytes()) })
            }
        }
        DataType::BinaryView => {
            let v = a.as_binary_view();
            for i in 0..v.len() {
                f(if v.is_null(i) { None } else { Some(v.value(i)) })
            }
        }
        DataType::FixedSizeBinary(_) => {
            let v = a.as_fixed_size_binary();
            for i in 0..v.len() {
                f(if v.is_null(i) { None } else { Some(v.value(i)) })
            }
        }
        _ => return false,
    }
    true
}

/// Arrow arrays (one per batch) of one field → one kdb+ column.
pub fn arrays_to_column(field: &Field, arrays: &[&dyn Array]) -> Result<K, MapError> {
    let kt = kdb_type_for(field)?;
    let dt = field.data_type();
    let total: usize = arrays.iter().map(|a| a.len()).sum();
    let v = match (kt, dt) {
        (KdbType::Boolean, DataType::Boolean) => {
            let mut out = Vec::with_capacity(total);
            for a in arrays {
                let a = a.as_boolean();
                out.extend((0..a.len()).map(|i| a.is_valid(i) && a.value(i)));
            }
            Vector::Boolean(out)
        }
        (KdbType::Guid, DataType::FixedSizeBinary(16)) => {
            let mut out = Vec::with_capacity(total);
            for a in arrays {
                let a = a.as_fixed_size_binary();
                for i in 0..a.len() {
                    let mut g = nulls::GUID_NULL;
                    if a.is_valid(i) {
                        g.copy_from_slice(a.value(i));
                    }
                    out.push(g);
                }
            }
            Vector::Guid(out)
        }
        (KdbType::Byte, DataType::UInt8) => Vector::Byte(gather::<UInt8Type, u8>(arrays, 0, |v| v)),
        (KdbType::Short, DataType::Int16) => {
            Vector::Short(gather::<Int16Type, i16>(arrays, nulls::SHORT_NULL, |v| v))
        }
        (KdbType::Short, DataType::Int8) => {
            Vector::Short(gather::<Int8Type, i16>(arrays, nulls::SHORT_NULL, i16::from))
        }
        (KdbType::Int, DataType::Int32) => {
            Vector::Int(gather::<Int32Type, i32>(arrays, nulls::INT_NULL, |v| v))
        }
        (KdbType::Int, DataType::UInt16) => {
            Vector::Int(gather::<UInt16Type, i32>(arrays, nulls::INT_NULL, i32::from))
        }
        (KdbType::Long, DataType::Int64) => {
            Vector::Long(gather::<Int64Type, i64>(arrays, nulls::LONG_NULL, |v| v))
        }
        (KdbType::Long, DataType::UInt32) => {
            Vector::Long(gather::<UInt32Type, i64>(arrays, nulls::LONG_NULL, i64::from))
        }
        (KdbType::Long, DataType::UInt64) => {
            Vector::Long(try_gather::<UInt64Type, i64>(field, arrays, nulls::LONG_NULL, |v| {
                i64::try_from(v).map_err(|_| "unsigned value above the largest long")
            })?)
        }
        (KdbType::Real, DataType::Float32) => Vector::Real(gather_f32(arrays)),
        (KdbType::Real, DataType::Float16) => {
            Vector::Real(gather::<Float16Type, f32>(arrays, f32::from_bits(REAL_NULL_BITS), f32::from))
        }
        (KdbType::Float, DataType::Float64) => Vector::Float(gather_f64(arrays)),
        (KdbType::Float, _) => {
            let cast = cast_all(field, arrays, &DataType::Float64)?;
            let refs: Vec<&dyn Array> = cast.iter().map(|a| a.as_ref()).collect();
            Vector::Float(gather_f64(&refs))
        }
        (KdbType::Char, DataType::Utf8) => {
            let mut out = Vec::with_capacity(total);
            let mut bad = None;
            for a in arrays {
                for_each_bytes(*a, |v| match v {
                    None => out.push(nulls::CHAR_NULL),
                    Some(b) => {
                        let s = std::str::from_utf8(b).unwrap_or("");
                        let mut cs = s.chars();
                        match (cs.next(), cs.next()) {
                            (Some(c), None) if u32::from(c) <= 0xFF => out.push(c as u32 as u8),
                            (None, None) => out.push(nulls::CHAR_NULL),
                            _ => {
                                bad.get_or_insert(out.len());
                                out.push(nulls::CHAR_NULL);
                            }
                        }
                    }
                });
            }
            if bad.is_some() {
                // Not one Latin-1 character a row (the column was computed):
                // it is a string column.
                let f = Field::new(field.name(), dt.clone(), true);
                return arrays_to_column(&f, arrays);
            }
            Vector::Char(out)
        }
        (KdbType::String | KdbType::Bytes, _) => {
            let mut items = Vec::with_capacity(total);
            for a in arrays {
                let ok = for_each_bytes(*a, |v| {
                    let b = v.unwrap_or_default().to_vec();
                    items.push(if kt == KdbType::Bytes {
                        K::Vector(Attr::None, Vector::Byte(b))
                    } else {
                        K::Vector(Attr::None, Vector::Char(b))
                    });
                });
                if !ok {
                    return Err(MapError::UnsupportedArrow {
                        column: field.name().clone(),
                        arrow: a.data_type().to_string(),
                    });
                }
            }
            return Ok(K::List(Attr::None, items));
        }
        (KdbType::Symbol, DataType::Dictionary(..)) => {
            let mut out = Symbols::with_capacity(total, 0);
            for a in arrays {
                let d = a.as_any_dictionary();
                let values = d.values();
                let mut names: Vec<Option<Vec<u8>>> = Vec::with_capacity(values.len());
                let ok = for_each_bytes(values.as_ref(), |v| names.push(v.map(<[u8]>::to_vec)));
                if !ok {
                    return Err(MapError::UnsupportedArrow {
                        column: field.name().clone(),
                        arrow: a.data_type().to_string(),
                    });
                }
                if values.is_empty() {
                    // every key is null
                    for _ in 0..a.len() {
                        out.push(b"");
                    }
                    continue;
                }
                let keys = d.normalized_keys();
                for (i, k) in keys.into_iter().enumerate() {
                    if a.is_null(i) {
                        out.push(b"");
                    } else {
                        out.push(names.get(k).and_then(|n| n.as_deref()).unwrap_or_default());
                    }
                }
            }
            Vector::Symbol(out)
        }
        (KdbType::Datetime, DataType::Timestamp(TimeUnit::Nanosecond, _)) => {
            // Under a null lies the NaN that went in (its bits); anything
            // else there (a null SQL made) is q's `0n`.
            let total = arrays.iter().map(|a| a.len()).sum();
            let mut out = Vec::with_capacity(total);
            for a in arrays {
                let a = a.as_primitive::<TimestampNanosecondType>();
                for (i, &v) in a.values().iter().enumerate() {
                    let row = out.len();
                    let d = if a.is_null(i) {
                        let under = f64::from_bits(v as u64);
                        if under.is_nan() { under } else { f64::from_bits(FLOAT_NULL_BITS) }
                    } else {
                        unix_ns_to_datetime(v).map_err(|w| out_of_range(field, row, w))?
                    };
                    out.push(d);
                }
            }
            Vector::Datetime(out)
        }
        (KdbType::Timestamp | KdbType::Datetime, DataType::Timestamp(unit, _)) => {
            let unit = *unit;
            let to_ns = |v: i64| -> Result<i64, &'static str> {
                if v == i64::MAX || v == -i64::MAX {
                    return Ok(v);
                }
                unit_to_ns(v, unit).ok_or(OUT_OF_RANGE)
            };
            let ns: Vec<i64> = match unit {
                TimeUnit::Second => try_gather::<TimestampSecondType, i64>(field, arrays, i64::MIN, to_ns)?,
                TimeUnit::Millisecond => {
                    try_gather::<TimestampMillisecondType, i64>(field, arrays, i64::MIN, to_ns)?
                }
                TimeUnit::Microsecond => {
                    try_gather::<TimestampMicrosecondType, i64>(field, arrays, i64::MIN, to_ns)?
                }
                TimeUnit::Nanosecond => {
                    try_gather::<TimestampNanosecondType, i64>(field, arrays, i64::MIN, Ok)?
                }
            };
            if kt == KdbType::Datetime {
                let mut out = Vec::with_capacity(ns.len());
                for (row, v) in ns.into_iter().enumerate() {
                    out.push(if v == i64::MIN {
                        f64::from_bits(FLOAT_NULL_BITS)
                    } else {
                        unix_ns_to_datetime(v).map_err(|w| out_of_range(field, row, w))?
                    });
                }
                Vector::Datetime(out)
            } else {
                let mut out = ns;
                for (row, v) in out.iter_mut().enumerate() {
                    if *v != i64::MIN {
                        *v = unix_ns_to_timestamp(*v).map_err(|w| out_of_range(field, row, w))?;
                    }
                }
                Vector::Timestamp(out)
            }
        }
        (KdbType::Date, DataType::Date32) => {
            Vector::Date(try_gather::<Date32Type, i32>(field, arrays, nulls::INT_NULL, unix_days_to_date)?)
        }
        (KdbType::Month, DataType::Date32) => {
            Vector::Month(try_gather::<Date32Type, i32>(field, arrays, nulls::INT_NULL, unix_days_to_month)?)
        }
        (KdbType::Date, DataType::Date64) => {
            let cast = cast_all(field, arrays, &DataType::Date32)?;
            let refs: Vec<&dyn Array> = cast.iter().map(|a| a.as_ref()).collect();
            Vector::Date(try_gather::<Date32Type, i32>(field, &refs, nulls::INT_NULL, unix_days_to_date)?)
        }
        (KdbType::Timespan, DataType::Duration(unit)) => {
            let unit = *unit;
            let f = |v: i64| unit_to_ns(v, unit).ok_or(OUT_OF_RANGE);
            Vector::Timespan(match unit {
                TimeUnit::Second => {
                    try_gather::<DurationSecondType, i64>(field, arrays, nulls::LONG_NULL, f)?
                }
                TimeUnit::Millisecond => {
                    try_gather::<DurationMillisecondType, i64>(field, arrays, nulls::LONG_NULL, f)?
                }
                TimeUnit::Microsecond => {
                    try_gather::<DurationMicrosecondType, i64>(field, arrays, nulls::LONG_NULL, f)?
                }
                TimeUnit::Nanosecond => {
                    gather::<DurationNanosecondType, i64>(arrays, nulls::LONG_NULL, |v| v)
                }
            })
        }
        (KdbType::Timespan, DataType::Time64(unit)) => Vector::Timespan(match unit {
            TimeUnit::Microsecond => {
                try_gather::<Time64MicrosecondType, i64>(field, arrays, nulls::LONG_NULL, |v| {
                    v.checked_mul(1000).ok_or(OUT_OF_RANGE)
                })?
            }
            _ => gather::<Time64NanosecondType, i64>(arrays, nulls::LONG_NULL, |v| v),
        }),
        (KdbType::Minute, DataType::Time32(TimeUnit::Second)) => {
            Vector::Minute(gather::<Time32SecondType, i32>(arrays, nulls::INT_NULL, seconds_to_minute))
        }
        (KdbType::Second, DataType::Time32(TimeUnit::Second)) => {
            Vector::Second(gather::<Time32SecondType, i32>(arrays, nulls::INT_NULL, |v| v))
        }
        (KdbType::Time, DataType::Time32(_)) => {
            Vector::Time(gather::<Time32MillisecondType, i32>(arrays, nulls::INT_NULL, |v| v))
        }
        _ => {
            return Err(MapError::UnsupportedArrow { column: field.name().clone(), arrow: dt.to_string() });
        }
    };
    Ok(K::Vector(Attr::None, v))
}

/// Record batches → a kdb+ table (an empty one if there are no batches).
pub fn batches_to_table(schema: &Schema, batches: &[RecordBatch]) -> Result<Table, MapError> {
    let mut names = Symbols::with_capacity(schema.fields().len(), 0);
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (i, field) in schema.fields().iter().enumerate() {
        names.push(field.name().as_bytes());
        let arrays: Vec<&dyn Array> = batches.iter().map(|b| b.column(i).as_ref()).collect();
        let col = if field.data_type() == &DataType::Null {
            let n = arrays.iter().map(|a| a.len()).sum();
            K::List(Attr::None, vec![K::GenericNull; n])
        } else {
            arrays_to_column(field, &arrays)?
        };
        columns.push(col);
    }
    Ok(Table { attr: Attr::None, names, columns })
}

/// An Arrow null column of `n` rows (for tests and empty results).
pub fn null_array(n: usize) -> ArrayRef {
    Arc::new(NullArray::new(n))
}

/// The kdb+ type of each field of a schema.
pub fn kdb_types(schema: &Schema) -> Result<Vec<KdbType>, MapError> {
    schema.fields().iter().map(|f| kdb_type_for(f)).collect()
}

/// The kdb+ type of a vector column as it would be stored (`None` for
/// columns that cannot be stored).
pub fn kdb_type_of_column(col: &K) -> Option<KdbType> {
    Some(match col {
        K::Vector(_, v) => match v {
            Vector::Boolean(_) => KdbType::Boolean,
            Vector::Guid(_) => KdbType::Guid,
            Vector::Byte(_) => KdbType::Byte,
            Vector::Short(_) => KdbType::Short,
            Vector::Int(_) => KdbType::Int,
            Vector::Long(_) => KdbType::Long,
            Vector::Real(_) => KdbType::Real,
            Vector::Float(_) => KdbType::Float,
            Vector::Char(_) => KdbType::Char,
            Vector::Symbol(_) => KdbType::Symbol,
            Vector::Timestamp(_) => KdbType::Timestamp,
            Vector::Month(_) => KdbType::Month,
            Vector::Date(_) => KdbType::Date,
            Vector::Datetime(_) => KdbType::Datetime,
            Vector::Timespan(_) => KdbType::Timespan,
            Vector::Minute(_) => KdbType::Minute,
            Vector::Second(_) => KdbType::Second,
            Vector::Time(_) => KdbType::Time,
        },
        K::List(_, items) => list_kind(items)?,
        _ => return None,
    })
}

/// The kdb+ vector an atom would join in a one-row insert.
pub fn atom_to_vector(a: Atom) -> Vector {
    match a {
        Atom::Boolean(x) => Vector::Boolean(vec![x]),
        Atom::Guid(x) => Vector::Guid(vec![x]),
        Atom::Byte(x) => Vector::Byte(vec![x]),
        Atom::Short(x) => Vector::Short(vec![x]),
        Atom::Int(x) => Vector::Int(vec![x]),
        Atom::Long(x) => Vector::Long(vec![x]),
        Atom::Real(x) => Vector::Real(vec![x]),
        Atom::Float(x) => Vector::Float(vec![x]),
        Atom::Char(x) => Vector::Char(vec![x]),
        Atom::Symbol(x) => Vector::Symbol(std::iter::once(x).collect()),
        Atom::Timestamp(x) => Vector::Timestamp(vec![x]),
        Atom::Month(x) => Vector::Month(vec![x]),
        Atom::Date(x) => Vector::Date(vec![x]),
        Atom::Datetime(x) => Vector::Datetime(vec![x]),
        Atom::Timespan(x) => Vector::Timespan(vec![x]),
        Atom::Minute(x) => Vector::Minute(vec![x]),
        Atom::Second(x) => Vector::Second(vec![x]),
        Atom::Time(x) => Vector::Time(vec![x]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(col: K) -> K {
        let expected = col.clone();
        let (field, array) = column_to_array("c", col, None).expect("to arrow");
        assert_eq!(field.data_type(), array.data_type());
        let back = arrays_to_column(&field, &[array.as_ref()]).expect("from arrow");
        assert_same(&expected, &back);
        back
    }

    /// Equality that compares floats bit for bit.
    fn assert_same(a: &K, b: &K) {
        match (a, b) {
            (K::Vector(_, Vector::Float(x)), K::Vector(_, Vector::Float(y)))
            | (K::Vector(_, Vector::Datetime(x)), K::Vector(_, Vector::Datetime(y))) => {
                let xb: Vec<u64> = x.iter().map(|v| v.to_bits()).collect();
                let yb: Vec<u64> = y.iter().map(|v| v.to_bits()).collect();
                assert_eq!(xb, yb, "{a:?} vs {b:?}");
            }
            (K::Vector(_, Vector::Real(x)), K::Vector(_, Vector::Real(y))) => {
                let xb: Vec<u32> = x.iter().map(|v| v.to_bits()).collect();
                let yb: Vec<u32> = y.iter().map(|v| v.to_bits()).collect();
                assert_eq!(xb, yb);
            }
            _ => assert_eq!(a, b),
        }
    }

    fn v(x: Vector) -> K {
        K::Vector(Attr::None, x)
    }

    #[test]
    fn every_type_round_trips_with_nulls_and_infinities() {
        let i64s = vec![0, 1, -1, nulls::LONG_NULL, i64::MAX, -i64::MAX, 123_456_789_012];
        let i32s = vec![0, 1, -1, nulls::INT_NULL, i32::MAX, -i32::MAX, 7_000];
        roundtrip(v(Vector::Boolean(vec![true, false, true])));
        roundtrip(v(Vector::Guid(vec![[1; 16], nulls::GUID_NULL, [0xAB; 16]])));
        roundtrip(v(Vector::Byte(vec![0, 255, 7])));
        roundtrip(v(Vector::Short(vec![0, nulls::SHORT_NULL, i16::MAX, -i16::MAX, 42])));
        roundtrip(v(Vector::Int(i32s.clone())));
        roundtrip(v(Vector::Long(i64s.clone())));
        roundtrip(v(Vector::Real(vec![
            1.5,
            f32::from_bits(REAL_NULL_BITS),
            f32::INFINITY,
            f32::NEG_INFINITY,
        ])));
        roundtrip(v(Vector::Float(vec![1.5, f64::from_bits(FLOAT_NULL_BITS), f64::INFINITY, -0.0])));
        roundtrip(v(Vector::Char(b"ab c\xff\x00".to_vec())));
        roundtrip(K::syms(["a", "", "bc", "a", "\u{e9}t\u{e9}"]));
        roundtrip(v(Vector::Timestamp(vec![
            0,
            1,
            nulls::LONG_NULL,
            i64::MAX,
            -i64::MAX,
            700_000_000_000_000_000,
        ])));
        roundtrip(v(Vector::Month(i32s.clone())));
        roundtrip(v(Vector::Date(i32s.clone())));
        roundtrip(v(Vector::Datetime(vec![
            0.0,
            0.5,
            -1.25,
            f64::from_bits(FLOAT_NULL_BITS),
            f64::INFINITY,
            f64::NEG_INFINITY,
            7_305.123_456_789,
            1.0 / 86_400_000.0,
        ])));
        roundtrip(v(Vector::Timespan(i64s.clone())));
        roundtrip(v(Vector::Minute(vec![0, 570, nulls::INT_NULL, i32::MAX, -i32::MAX, -5, 2000])));
        roundtrip(v(Vector::Second(i32s.clone())));
        roundtrip(v(Vector::Time(i32s)));
        roundtrip(K::list(vec![K::string("hello"), K::string(""), K::string("caf\u{e9}")]));
        roundtrip(K::list(vec![
            K::Vector(Attr::None, Vector::Byte(vec![1, 2])),
            K::Vector(Attr::None, Vector::Byte(vec![])),
        ]));
    }

    #[test]
    fn arrow_types_and_metadata_are_as_documented() {
        let cases: Vec<(K, KdbType, DataType)> = vec![
            (v(Vector::Boolean(vec![])), KdbType::Boolean, DataType::Boolean),
            (v(Vector::Guid(vec![])), KdbType::Guid, DataType::FixedSizeBinary(16)),
            (v(Vector::Month(vec![])), KdbType::Month, DataType::Date32),
            (v(Vector::Date(vec![])), KdbType::Date, DataType::Date32),
            (v(Vector::Minute(vec![])), KdbType::Minute, DataType::Time32(TimeUnit::Second)),
            (v(Vector::Time(vec![])), KdbType::Time, DataType::Time32(TimeUnit::Millisecond)),
            (v(Vector::Timespan(vec![])), KdbType::Timespan, DataType::Duration(TimeUnit::Nanosecond)),
            (v(Vector::Datetime(vec![])), KdbType::Datetime, DataType::Timestamp(TimeUnit::Nanosecond, None)),
            (
                K::syms(["a"]),
                KdbType::Symbol,
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            ),
            (v(Vector::Char(b"a".to_vec())), KdbType::Char, DataType::Utf8),
            (K::list(vec![K::string("a")]), KdbType::String, DataType::Utf8),
        ];
        for (col, kt, dt) in cases {
            let (field, _) = column_to_array("c", col, None).expect("convert");
            assert_eq!(field.data_type(), &dt);
            assert_eq!(KdbType::of_field(&field), Some(kt));
            assert_eq!(kt.arrow_type(), dt);
        }
        let (f, _) = column_to_array("g", v(Vector::Guid(vec![])), None).expect("guid");
        assert_eq!(f.metadata().get(ARROW_EXTENSION_KEY).map(String::as_str), Some(UUID_EXTENSION));
    }

    #[test]
    fn nulls_are_arrow_nulls() {
        let (_, a) = column_to_array("c", v(Vector::Long(vec![1, nulls::LONG_NULL])), None).expect("long");
        assert_eq!(a.null_count(), 1);
        assert!(a.is_null(1));
        let (_, a) = column_to_array("c", K::syms(["a", ""]), None).expect("sym");
        assert!(a.is_null(1));
        let (_, a) = column_to_array("c", v(Vector::Float(vec![f64::NAN, 1.0])), None).expect("float");
        assert!(a.is_null(0));
        let (_, a) = column_to_array("c", v(Vector::Date(vec![nulls::INT_NULL, 0])), None).expect("date");
        assert!(a.is_null(0));
        let (_, a) = column_to_array("c", v(Vector::Guid(vec![nulls::GUID_NULL])), None).expect("guid");
        assert!(a.is_null(0));
        let (_, a) = column_to_array("c", v(Vector::Char(b" x".to_vec())), None).expect("char");
        assert!(a.is_null(0));
        let (_, a) = column_to_array("c", v(Vector::Datetime(vec![f64::NAN])), None).expect("datetime");
        assert!(a.is_null(0));
    }

    #[test]
    fn epochs_shift_to_unix() {
        let (_, a) = column_to_array("c", v(Vector::Date(vec![0, 1])), None).expect("date");
        assert_eq!(a.as_primitive::<Date32Type>().values().as_ref(), &[10_957, 10_958]);
        let (_, a) = column_to_array("c", v(Vector::Timestamp(vec![0])), None).expect("ts");
        assert_eq!(a.as_primitive::<TimestampNanosecondType>().value(0), 946_684_800_000_000_000);
        // 2000.02m is 2000.02.01; 1999.12m is 1999.12.01
        let (_, a) = column_to_array("c", v(Vector::Month(vec![1, -1, 0])), None).expect("month");
        assert_eq!(a.as_primitive::<Date32Type>().values().as_ref(), &[10_957 + 31, 10_957 - 31, 10_957]);
        // 09:30 is 34200 seconds after midnight
        let (_, a) = column_to_array("c", v(Vector::Minute(vec![570])), None).expect("minute");
        assert_eq!(a.as_primitive::<Time32SecondType>().value(0), 34_200);
        // 2000.01.02T12:00 is 1.5 days
        let (_, a) = column_to_array("c", v(Vector::Datetime(vec![1.5])), None).expect("datetime");
        assert_eq!(a.as_primitive::<TimestampNanosecondType>().value(0), KDB_EPOCH_NS + 3 * NS_PER_DAY / 2);
    }

    #[test]
    fn out_of_range_values_are_errors_not_wraps() {
        let err = column_to_array("t", v(Vector::Timestamp(vec![0, i64::MAX - 5])), None).unwrap_err();
        assert!(matches!(err, MapError::OutOfRange { row: 1, .. }), "{err}");
        assert!(unix_ns_to_timestamp(i64::MIN).is_err());
        assert!(column_to_array("d", v(Vector::Date(vec![i32::MAX - 3])), None).is_err());
        assert!(column_to_array("m", v(Vector::Minute(vec![i32::MAX / 2])), None).is_err());
        assert!(column_to_array("z", v(Vector::Datetime(vec![1e300])), None).is_err());
    }

    #[test]
    fn civil_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 1, 1), 10_957);
        assert_eq!(days_from_civil(2000, 3, 1), 10_957 + 60);
        for d in [-800_000, -1, 0, 1, 10_957, 59, 60, 2_000_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
        assert_eq!(unix_days_to_month(10_957 + 45).expect("month"), 1); // 2000.02.15 → 2000.02m
    }

    #[test]
    fn non_utf8_text_falls_back_to_binary_and_back() {
        let col = K::syms([&b"ok"[..], &b"\xff\xfe"[..]]);
        let (f, a) = column_to_array("s", col.clone(), None).expect("sym");
        assert_eq!(f.data_type(), &KdbType::Symbol.arrow_type_binary().expect("binary"));
        let back = arrays_to_column(&f, &[a.as_ref()]).expect("back");
        assert_eq!(back, col);
        let col = K::list(vec![K::string(b"\xc3"), K::string("a")]);
        let (f, a) = column_to_array("s", col.clone(), None).expect("str");
        assert_eq!(f.data_type(), &DataType::Binary);
        assert_eq!(KdbType::of_field(&f), Some(KdbType::String));
        assert_eq!(arrays_to_column(&f, &[a.as_ref()]).expect("back"), col);
    }

    #[test]
    fn nested_lists_and_enumerations_are_refused() {
        let err = column_to_array("x", K::list(vec![K::long(1)]), None).unwrap_err();
        assert!(err.to_string().starts_with("unsupported type: column `x`"), "{err}");
        let err = column_to_array("x", K::long(1), None).unwrap_err();
        assert!(matches!(err, MapError::UnsupportedKdb { .. }));
    }

    #[test]
    fn empty_general_list_takes_the_hint() {
        let (f, a) = column_to_array("x", K::list(vec![]), Some(KdbType::Float)).expect("empty");
        assert_eq!(f.data_type(), &DataType::Float64);
        assert_eq!(a.len(), 0);
        let (f, _) = column_to_array("x", K::list(vec![]), None).expect("empty");
        assert_eq!(f.data_type(), &DataType::Utf8);
    }

    #[test]
    fn tables_convert_whole_and_check_lengths() {
        let t = Table {
            attr: Attr::None,
            names: ["sym", "price"].into_iter().collect(),
            columns: vec![K::syms(["a", "b"]), v(Vector::Float(vec![1.0, 2.0]))],
        };
        let b = table_to_batch(t.clone(), None).expect("batch");
        assert_eq!(b.num_rows(), 2);
        let back = batches_to_table(&b.schema(), &[b.clone(), b]).expect("back");
        assert_eq!(back.row_count(), 4);
        let bad = Table { columns: vec![K::syms(["a"]), v(Vector::Float(vec![1.0, 2.0]))], ..t };
        assert!(matches!(table_to_batch(bad, None), Err(MapError::Length { .. })));
    }

    #[test]
    fn computed_arrow_types_map_to_natural_kdb_types() {
        let f = Field::new("n", DataType::UInt32, true);
        let a: ArrayRef = Arc::new(datafusion::arrow::array::UInt32Array::from(vec![Some(1), None]));
        assert_eq!(
            arrays_to_column(&f, &[a.as_ref()]).expect("u32"),
            v(Vector::Long(vec![1, nulls::LONG_NULL]))
        );
        let f = Field::new("s", DataType::Utf8View, true);
        let a: ArrayRef = Arc::new(datafusion::arrow::array::StringViewArray::from(vec![Some("x"), None]));
        assert_eq!(
            arrays_to_column(&f, &[a.as_ref()]).expect("view"),
            K::list(vec![K::string("x"), K::string("")])
        );
        let f = Field::new("t", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true);
        let a: ArrayRef = Arc::new(
            datafusion::arrow::array::TimestampMillisecondArray::from(vec![Some(946_684_800_000)])
                .with_timezone("UTC"),
        );
        assert_eq!(arrays_to_column(&f, &[a.as_ref()]).expect("ts"), v(Vector::Timestamp(vec![0])));
        let f = Field::new("l", DataType::List(Arc::new(Field::new("i", DataType::Int32, true))), true);
        assert!(kdb_type_for(&f).is_err());
        // A char column whose metadata survived but whose values are not one
        // character each is a string column.
        let f = KdbType::Char.field("c", DataType::Utf8);
        let a: ArrayRef = Arc::new(StringArray::from(vec!["ab"]));
        assert_eq!(arrays_to_column(&f, &[a.as_ref()]).expect("chars"), K::list(vec![K::string("ab")]));
    }

    /// Near 2000.01.01 several doubles name the same nanosecond; the one
    /// q computes from milliseconds is the one that comes back (a proptest
    /// found this one: the old sum `days + rest / NS_PER_DAY` gave its
    /// neighbour).
    #[test]
    fn datetime_near_the_epoch_comes_back_bit_for_bit() {
        for ms in [-86_771_151i64, -1, 1, 86_399_999, -4_000_000_000, 4_000_000_000] {
            let d = ms as f64 / 86_400_000.0;
            let ns = datetime_to_unix_ns(d).expect("range").expect("not null");
            assert_eq!(unix_ns_to_datetime(ns).expect("back").to_bits(), d.to_bits(), "{ms}");
        }
    }

    /// Any NaN: quiet or signalling, either sign, any payload.
    fn any_nan64() -> impl Strategy<Value = f64> {
        (any::<bool>(), 1u64..(1 << 52))
            .prop_map(|(neg, payload)| f64::from_bits((u64::from(neg) << 63) | (0x7FF << 52) | payload))
    }

    fn any_nan32() -> impl Strategy<Value = f32> {
        (any::<bool>(), 1u32..(1 << 23))
            .prop_map(|(neg, payload)| f32::from_bits((u32::from(neg) << 31) | (0xFF << 23) | payload))
    }

    /// What numpy, PyKX and Java clients write for a null datetime.
    #[test]
    fn the_positive_quiet_nan_datetime_comes_back_as_it_was() {
        let nan = f64::from_bits(0x7FF8_0000_0000_0000);
        roundtrip(v(Vector::Datetime(vec![1.5, nan, f64::from_bits(FLOAT_NULL_BITS)])));
        roundtrip(v(Vector::Float(vec![nan])));
        roundtrip(v(Vector::Real(vec![f32::from_bits(0x7FC0_0000)])));
    }

    proptest! {
        /// Every float-backed kdb+ type (real, float, datetime) keeps every
        /// NaN payload bit for bit, among other values.
        #[test]
        fn every_nan_payload_survives_the_mapping(
            floats in proptest::collection::vec(prop_oneof![any_nan64(), any::<f64>()], 0..16),
            reals in proptest::collection::vec(prop_oneof![any_nan32(), any::<f32>()], 0..16),
            // (doubles 64 days or more from 2000.01.01 map exactly, see the table)
            days in proptest::collection::vec(
                prop_oneof![any_nan64(), 64.0f64..90_000.0, -70_000.0f64..-64.0],
                0..16
            ),
        ) {
            roundtrip(v(Vector::Float(floats)));
            roundtrip(v(Vector::Real(reals)));
            roundtrip(v(Vector::Datetime(days)));
        }

        #[test]
        fn datetime_round_trips_at_millisecond_resolution(ms in -3_000_000_000_000i64..3_000_000_000_000i64) {
            let d = ms as f64 / 86_400_000.0;
            let ns = datetime_to_unix_ns(d).expect("range").expect("not null");
            prop_assert_eq!(unix_ns_to_datetime(ns).expect("back").to_bits(), d.to_bits());
        }

        #[test]
        fn datetime_round_trips_any_double_away_from_the_epoch(d in prop_oneof![64.0f64..90_000.0, -100_000.0f64..-64.0]) {
            let ns = datetime_to_unix_ns(d).expect("range").expect("not null");
            prop_assert_eq!(unix_ns_to_datetime(ns).expect("back").to_bits(), d.to_bits());
        }

        #[test]
        fn timestamps_round_trip(x in (-i64::MAX + 1)..(i64::MAX - KDB_EPOCH_NS)) {
            let u = timestamp_to_unix_ns(x).expect("range").expect("not null");
            prop_assert_eq!(unix_ns_to_timestamp(u).expect("back"), x);
        }

        #[test]
        fn months_round_trip(m in -20_000_000i32..20_000_000) {
            let d = month_to_unix_days(m).expect("range").expect("not null");
            prop_assert_eq!(unix_days_to_month(d).expect("back"), m);
        }

        #[test]
        fn longs_with_nulls_round_trip(xs in proptest::collection::vec(prop_oneof![any::<i64>(), Just(nulls::LONG_NULL)], 0..50)) {
            roundtrip(v(Vector::Long(xs)));
        }

        #[test]
        fn symbols_round_trip(xs in proptest::collection::vec("[a-c]{0,2}", 0..40)) {
            roundtrip(K::syms(xs));
        }
    }
}

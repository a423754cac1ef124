//! kdb+ temporals ⇄ Unix time, `SystemTime` and the calendar.
//!
//! kdb+ counts time from its own epoch, 2000.01.01D00:00 (UTC by convention),
//! 10957 days after the Unix epoch. Every temporal type is a count in one
//! unit from that epoch (or from midnight, for the time-of-day types):
//!
//! | type | unit | wire width | here |
//! |---|---|---|---|
//! | timestamp `p` | ns since 2000.01.01 | i64 | [`timestamp_to_unix_nanos`] … |
//! | month `m` | months since 2000.01 | i32 | [`month_to_year_month`] … |
//! | date `d` | days since 2000.01.01 | i32 | [`date_to_unix_days`] … |
//! | datetime `z` | days (f64, fraction = time of day) | f64 | [`datetime_to_unix_millis`] … |
//! | timespan `n` | ns | i64 | [`timespan_to_duration`] … |
//! | minute `u` | minutes | i32 | [`minute_to_timespan`] … |
//! | second `v` | seconds | i32 | [`second_to_timespan`] … |
//! | time `t` | ms since midnight | i32 | [`time_to_timespan`] … |
//!
//! Nulls (`0Np`, `0Nd`, …, NaN for datetime) and infinities (`0Wp`, `-0Wd`,
//! …) are not instants: every conversion out of a kdb+ value answers `None`
//! for them, and every conversion into a kdb+ value answers `None` when the
//! result would overflow the type or land on one of those patterns.
//!
//! The calendar is the proleptic Gregorian one, as in q, computed here by
//! integer arithmetic (days ⇄ civil date over 400-year eras), valid for every
//! day an `i64` can count.

use std::time::{Duration, SystemTime};

use crate::value::nulls::{INT_INF, INT_NULL, LONG_INF, LONG_NULL};

/// Days from 1970.01.01 (Unix) to 2000.01.01 (kdb+).
pub const KDB_EPOCH_OFFSET_DAYS: i32 = 10_957;
/// Seconds from the Unix epoch to the kdb+ epoch.
pub const KDB_EPOCH_OFFSET_SECS: i64 = 946_684_800;
/// Milliseconds from the Unix epoch to the kdb+ epoch.
pub const KDB_EPOCH_OFFSET_MILLIS: i64 = KDB_EPOCH_OFFSET_SECS * MILLIS_PER_SEC;
/// Nanoseconds from the Unix epoch to the kdb+ epoch.
pub const KDB_EPOCH_OFFSET_NANOS: i64 = KDB_EPOCH_OFFSET_SECS * NANOS_PER_SEC;
/// The year of the kdb+ epoch; month `0` is 2000.01.
pub const KDB_EPOCH_YEAR: i32 = 2000;

/// Seconds in a day (no leap seconds, as in q and Unix time).
pub const SECS_PER_DAY: i64 = 86_400;
/// Milliseconds in a second.
pub const MILLIS_PER_SEC: i64 = 1_000;
/// Milliseconds in a day.
pub const MILLIS_PER_DAY: i64 = SECS_PER_DAY * MILLIS_PER_SEC;
/// Nanoseconds in a millisecond.
pub const NANOS_PER_MILLI: i64 = 1_000_000;
/// Nanoseconds in a second.
pub const NANOS_PER_SEC: i64 = 1_000_000_000;
/// Nanoseconds in a minute.
pub const NANOS_PER_MINUTE: i64 = 60 * NANOS_PER_SEC;
/// Nanoseconds in a day.
pub const NANOS_PER_DAY: i64 = SECS_PER_DAY * NANOS_PER_SEC;

/// Days from 0000-03-01 (the start of the 400-year era the civil algorithm
/// counts in) to 1970-01-01.
const ERA_SHIFT_DAYS: i64 = 719_468;
/// Days in a 400-year Gregorian era.
const DAYS_PER_ERA: i64 = 146_097;

/// A proleptic Gregorian calendar date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CivilDate {
    /// The year; astronomical numbering (year 0 exists, -1 is 2 BC).
    pub year: i64,
    /// 1..=12.
    pub month: u32,
    /// 1..=31.
    pub day: u32,
}

/// A calendar date and a time of day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CivilDateTime {
    pub date: CivilDate,
    /// 0..=23.
    pub hour: u32,
    /// 0..=59.
    pub minute: u32,
    /// 0..=59.
    pub second: u32,
    /// 0..=999_999_999.
    pub nanos: u32,
}

/// Whether `year` is a Gregorian leap year.
pub fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

/// The number of days in `month` (1..=12) of `year`; 0 for a bad month.
pub fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap_year(year) => 29,
        2 => 28,
        _ => 0,
    }
}

/// The calendar date of a day counted from 1970-01-01.
pub fn civil_from_unix_days(days: i64) -> CivilDate {
    // Count from 0000-03-01 so that the leap day ends each year; a shift
    // that would overflow is only possible within 719468 days of i64::MAX.
    let z = days.saturating_add(ERA_SHIFT_DAYS);
    let era = z.div_euclid(DAYS_PER_ERA);
    let day_of_era = z.rem_euclid(DAYS_PER_ERA); // 0..=146096
    // Years into the era: drop the leap days before this day (one every 4
    // years, none every 100, one again at 400).
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / (DAYS_PER_ERA - 1)) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100); // 0..=365
    // Months from March, 153 days per 5 months.
    let month_from_march = (5 * day_of_year + 2) / 153; // 0..=11
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    CivilDate { year, month: month as u32, day: day as u32 }
}

/// The day, counted from 1970-01-01, of a calendar date. The date is not
/// checked: day 0 or 32 count on from the month's start like any other.
/// Years beyond ±2.5e16 overflow.
pub fn unix_days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let month = i64::from(month);
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * DAYS_PER_ERA + day_of_era - ERA_SHIFT_DAYS
}

/// The day counted from 1970-01-01 of a valid calendar date, or `None` if
/// the month or day does not exist (2023.02.29).
pub fn checked_unix_days_from_civil(year: i64, month: u32, day: u32) -> Option<i64> {
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if year.unsigned_abs() > MAX_CIVIL_YEAR {
        return None;
    }
    Some(unix_days_from_civil(year, month, day))
}

/// Years beyond this magnitude would overflow the day arithmetic.
const MAX_CIVIL_YEAR: u64 = 1 << 52;

/// The calendar date and time of day of a count of nanoseconds from the Unix
/// epoch.
pub fn civil_from_unix_nanos(nanos: i64) -> CivilDateTime {
    let days = nanos.div_euclid(NANOS_PER_DAY);
    let of_day = nanos.rem_euclid(NANOS_PER_DAY);
    with_time_of_day(civil_from_unix_days(days), of_day)
}

fn with_time_of_day(date: CivilDate, nanos_of_day: i64) -> CivilDateTime {
    let secs = nanos_of_day / NANOS_PER_SEC;
    CivilDateTime {
        date,
        hour: (secs / 3_600) as u32,
        minute: (secs / 60 % 60) as u32,
        second: (secs % 60) as u32,
        nanos: (nanos_of_day % NANOS_PER_SEC) as u32,
    }
}

// ---------------------------------------------------------------------------
// Null and infinity patterns.

/// The value unless it is the i64 null or ±infinity.
pub(crate) fn finite_i64(v: i64) -> Option<i64> {
    (v != LONG_NULL && v != LONG_INF && v != -LONG_INF).then_some(v)
}

/// The value unless it is the i32 null or ±infinity.
pub(crate) fn finite_i32(v: i32) -> Option<i32> {
    (v != INT_NULL && v != INT_INF && v != -INT_INF).then_some(v)
}

/// `v` as an i64 kdb+ value, unless it overflows or is a null/inf pattern.
fn to_kdb_i64(v: i128) -> Option<i64> {
    i64::try_from(v).ok().and_then(finite_i64)
}

/// `v` as an i32 kdb+ value, unless it overflows or is a null/inf pattern.
fn to_kdb_i32(v: i64) -> Option<i32> {
    i32::try_from(v).ok().and_then(finite_i32)
}

// ---------------------------------------------------------------------------
// SystemTime.

/// Nanoseconds from the Unix epoch of a `SystemTime` (negative before 1970).
pub fn system_time_to_unix_nanos(t: SystemTime) -> i128 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(after) => after.as_nanos() as i128,
        Err(before) => -(before.duration().as_nanos() as i128),
    }
}

/// The `SystemTime` a count of nanoseconds from the Unix epoch names, if the
/// platform can represent it.
pub fn system_time_from_unix_nanos(nanos: i128) -> Option<SystemTime> {
    let magnitude = nanos.unsigned_abs();
    let secs = u64::try_from(magnitude / NANOS_PER_SEC as u128).ok()?;
    let sub = (magnitude % NANOS_PER_SEC as u128) as u32;
    let d = Duration::new(secs, sub);
    if nanos >= 0 { SystemTime::UNIX_EPOCH.checked_add(d) } else { SystemTime::UNIX_EPOCH.checked_sub(d) }
}

// ---------------------------------------------------------------------------
// timestamp (p): i64 ns since 2000.01.01D0.

/// Unix nanoseconds of a timestamp; `None` for `0Np`, `±0Wp`, and for
/// timestamps after 2262.04.11 that Unix nanoseconds in i64 cannot hold.
pub fn timestamp_to_unix_nanos(p: i64) -> Option<i64> {
    finite_i64(p)?.checked_add(KDB_EPOCH_OFFSET_NANOS)
}

/// The timestamp of a count of Unix nanoseconds; `None` before 1707.09.22
/// (i64 underflow) or on a null/infinity pattern.
pub fn timestamp_from_unix_nanos(nanos: i64) -> Option<i64> {
    to_kdb_i64(i128::from(nanos) - i128::from(KDB_EPOCH_OFFSET_NANOS))
}

/// Whole Unix seconds of a timestamp, rounded down (towards the past).
pub fn timestamp_to_unix_secs(p: i64) -> Option<i64> {
    Some(finite_i64(p)?.div_euclid(NANOS_PER_SEC) + KDB_EPOCH_OFFSET_SECS)
}

/// The timestamp of a whole number of Unix seconds; `None` outside the
/// timestamp range (1707–2292).
pub fn timestamp_from_unix_secs(secs: i64) -> Option<i64> {
    to_kdb_i64((i128::from(secs) - i128::from(KDB_EPOCH_OFFSET_SECS)) * i128::from(NANOS_PER_SEC))
}

/// The `SystemTime` of a timestamp.
pub fn timestamp_to_system_time(p: i64) -> Option<SystemTime> {
    system_time_from_unix_nanos(i128::from(finite_i64(p)?) + i128::from(KDB_EPOCH_OFFSET_NANOS))
}

/// The timestamp of a `SystemTime` (nanosecond precision, as far as the
/// platform's clock has it); `None` outside 1707–2292.
pub fn timestamp_from_system_time(t: SystemTime) -> Option<i64> {
    to_kdb_i64(system_time_to_unix_nanos(t) - i128::from(KDB_EPOCH_OFFSET_NANOS))
}

/// The calendar date and time of a timestamp.
pub fn timestamp_to_civil(p: i64) -> Option<CivilDateTime> {
    let p = finite_i64(p)?;
    let days = p.div_euclid(NANOS_PER_DAY);
    let date = civil_from_unix_days(days + i64::from(KDB_EPOCH_OFFSET_DAYS));
    Some(with_time_of_day(date, p.rem_euclid(NANOS_PER_DAY)))
}

/// The timestamp of a calendar date and time; `None` if the date or time
/// does not exist or is outside the timestamp range.
pub fn timestamp_from_civil(dt: CivilDateTime) -> Option<i64> {
    if dt.hour > 23 || dt.minute > 59 || dt.second > 59 || i64::from(dt.nanos) >= NANOS_PER_SEC {
        return None;
    }
    let days = checked_unix_days_from_civil(dt.date.year, dt.date.month, dt.date.day)?
        - i64::from(KDB_EPOCH_OFFSET_DAYS);
    let of_day = (i64::from(dt.hour) * 3_600 + i64::from(dt.minute) * 60 + i64::from(dt.second))
        * NANOS_PER_SEC
        + i64::from(dt.nanos);
    to_kdb_i128_days(days, of_day)
}

fn to_kdb_i128_days(days: i64, nanos_of_day: i64) -> Option<i64> {
    to_kdb_i64(i128::from(days) * i128::from(NANOS_PER_DAY) + i128::from(nanos_of_day))
}

/// The date part of a timestamp (`` `date$p ``), rounding towards the past.
pub fn timestamp_to_date(p: i64) -> Option<i32> {
    to_kdb_i32(finite_i64(p)?.div_euclid(NANOS_PER_DAY))
}

/// The timestamp at the start of a date (`` `timestamp$d ``); `None` for
/// dates outside the timestamp range.
pub fn date_to_timestamp(d: i32) -> Option<i64> {
    to_kdb_i128_days(i64::from(finite_i32(d)?), 0)
}

/// The time-of-day part of a timestamp, as a timespan (`p mod 1D`).
pub fn timestamp_time_of_day(p: i64) -> Option<i64> {
    Some(finite_i64(p)?.rem_euclid(NANOS_PER_DAY))
}

// ---------------------------------------------------------------------------
// date (d): i32 days since 2000.01.01.

/// Days since 1970-01-01 of a date.
pub fn date_to_unix_days(d: i32) -> Option<i64> {
    Some(i64::from(finite_i32(d)?) + i64::from(KDB_EPOCH_OFFSET_DAYS))
}

/// The date of a day counted from 1970-01-01.
pub fn date_from_unix_days(days: i64) -> Option<i32> {
    to_kdb_i32(days.checked_sub(i64::from(KDB_EPOCH_OFFSET_DAYS))?)
}

/// Unix seconds at the start (midnight) of a date.
pub fn date_to_unix_secs(d: i32) -> Option<i64> {
    Some(date_to_unix_days(d)? * SECS_PER_DAY)
}

/// The date containing a Unix second (rounding towards the past).
pub fn date_from_unix_secs(secs: i64) -> Option<i32> {
    date_from_unix_days(secs.div_euclid(SECS_PER_DAY))
}

/// The `SystemTime` at the start of a date.
pub fn date_to_system_time(d: i32) -> Option<SystemTime> {
    system_time_from_unix_nanos(i128::from(date_to_unix_days(d)?) * i128::from(NANOS_PER_DAY))
}

/// The date containing a `SystemTime`.
pub fn date_from_system_time(t: SystemTime) -> Option<i32> {
    let days = system_time_to_unix_nanos(t).div_euclid(i128::from(NANOS_PER_DAY));
    date_from_unix_days(i64::try_from(days).ok()?)
}

/// The calendar date of a date. Any finite date has one, including those
/// outside 0001.01.01–9999.12.31 that q displays as `0000.00.00`.
pub fn date_to_civil(d: i32) -> Option<CivilDate> {
    Some(civil_from_unix_days(date_to_unix_days(d)?))
}

/// The date of a calendar date; `None` if the date does not exist or does
/// not fit in a kdb+ date.
pub fn date_from_civil(year: i64, month: u32, day: u32) -> Option<i32> {
    date_from_unix_days(checked_unix_days_from_civil(year, month, day)?)
}

// ---------------------------------------------------------------------------
// month (m): i32 months since 2000.01.

/// The year and month (1..=12) of a month.
pub fn month_to_year_month(m: i32) -> Option<(i64, u32)> {
    let m = i64::from(finite_i32(m)?);
    Some((i64::from(KDB_EPOCH_YEAR) + m.div_euclid(12), (m.rem_euclid(12) + 1) as u32))
}

/// The month of a year and month (1..=12).
pub fn month_from_year_month(year: i64, month: u32) -> Option<i32> {
    if !(1..=12).contains(&month) {
        return None;
    }
    let months =
        year.checked_sub(i64::from(KDB_EPOCH_YEAR))?.checked_mul(12)?.checked_add(i64::from(month) - 1)?;
    to_kdb_i32(months)
}

/// The first day of a month (`` `date$m ``).
pub fn month_to_date(m: i32) -> Option<i32> {
    let (year, month) = month_to_year_month(m)?;
    date_from_civil(year, month, 1)
}

/// The month containing a date (`` `month$d ``).
pub fn date_to_month(d: i32) -> Option<i32> {
    let c = date_to_civil(d)?;
    month_from_year_month(c.year, c.month)
}

/// Unix seconds at the start of a month.
pub fn month_to_unix_secs(m: i32) -> Option<i64> {
    date_to_unix_secs(month_to_date(m)?)
}

/// The month containing a Unix second.
pub fn month_from_unix_secs(secs: i64) -> Option<i32> {
    date_to_month(date_from_unix_secs(secs)?)
}

/// The `SystemTime` at the start of a month.
pub fn month_to_system_time(m: i32) -> Option<SystemTime> {
    date_to_system_time(month_to_date(m)?)
}

/// The month containing a `SystemTime`.
pub fn month_from_system_time(t: SystemTime) -> Option<i32> {
    date_to_month(date_from_system_time(t)?)
}

// ---------------------------------------------------------------------------
// datetime (z): f64 days since 2000.01.01, deprecated in q. Its precision is
// the millisecond (q displays `2000.01.01T00:00:00.000`); conversions round
// to the nearest millisecond so that a value written from milliseconds comes
// back exactly.

/// The largest |milliseconds| a datetime converts to: beyond it the f64 has
/// no millisecond resolution left and i64 arithmetic could overflow.
const DATETIME_MAX_ABS_MILLIS: f64 = 9.0e15;

/// Milliseconds from 2000.01.01 of a datetime, rounded to nearest.
pub fn datetime_to_kdb_millis(z: f64) -> Option<i64> {
    if !z.is_finite() {
        return None;
    }
    let ms = (z * MILLIS_PER_DAY as f64).round();
    (ms.abs() <= DATETIME_MAX_ABS_MILLIS).then_some(ms as i64)
}

/// Unix milliseconds of a datetime; `None` for `0Nz`, `±0wz`, and beyond
/// ±9e15 ms (±285,000 years) where f64 days lose the millisecond.
pub fn datetime_to_unix_millis(z: f64) -> Option<i64> {
    Some(datetime_to_kdb_millis(z)? + KDB_EPOCH_OFFSET_MILLIS)
}

/// The datetime of a count of Unix milliseconds.
pub fn datetime_from_unix_millis(ms: i64) -> f64 {
    (i128::from(ms) - i128::from(KDB_EPOCH_OFFSET_MILLIS)) as f64 / MILLIS_PER_DAY as f64
}

/// Unix nanoseconds of a datetime (millisecond precision).
pub fn datetime_to_unix_nanos(z: f64) -> Option<i64> {
    datetime_to_unix_millis(z)?.checked_mul(NANOS_PER_MILLI)
}

/// The datetime of a count of Unix nanoseconds (rounded to the millisecond
/// below, the type's precision).
pub fn datetime_from_unix_nanos(nanos: i64) -> f64 {
    datetime_from_unix_millis(nanos.div_euclid(NANOS_PER_MILLI))
}

/// Whole Unix seconds of a datetime, rounded down.
pub fn datetime_to_unix_secs(z: f64) -> Option<i64> {
    Some(datetime_to_unix_millis(z)?.div_euclid(MILLIS_PER_SEC))
}

/// The datetime of a count of Unix seconds.
pub fn datetime_from_unix_secs(secs: i64) -> f64 {
    (i128::from(secs) - i128::from(KDB_EPOCH_OFFSET_SECS)) as f64 / SECS_PER_DAY as f64
}

/// The `SystemTime` of a datetime.
pub fn datetime_to_system_time(z: f64) -> Option<SystemTime> {
    system_time_from_unix_nanos(i128::from(datetime_to_unix_millis(z)?) * i128::from(NANOS_PER_MILLI))
}

/// The datetime of a `SystemTime` (rounded to the millisecond below).
pub fn datetime_from_system_time(t: SystemTime) -> f64 {
    let ms = system_time_to_unix_nanos(t).div_euclid(i128::from(NANOS_PER_MILLI));
    (ms - i128::from(KDB_EPOCH_OFFSET_MILLIS)) as f64 / MILLIS_PER_DAY as f64
}

/// The timestamp of a datetime (`` `timestamp$z ``), to the millisecond.
pub fn datetime_to_timestamp(z: f64) -> Option<i64> {
    to_kdb_i64(i128::from(datetime_to_kdb_millis(z)?) * i128::from(NANOS_PER_MILLI))
}

/// The datetime of a timestamp (`` `datetime$p ``), to the millisecond below.
pub fn timestamp_to_datetime(p: i64) -> Option<f64> {
    Some(finite_i64(p)?.div_euclid(NANOS_PER_MILLI) as f64 / MILLIS_PER_DAY as f64)
}

/// The calendar date and time of a datetime (millisecond precision: `nanos`
/// is a whole number of milliseconds).
pub fn datetime_to_civil(z: f64) -> Option<CivilDateTime> {
    let ms = datetime_to_kdb_millis(z)?;
    let date = civil_from_unix_days(ms.div_euclid(MILLIS_PER_DAY) + i64::from(KDB_EPOCH_OFFSET_DAYS));
    Some(with_time_of_day(date, ms.rem_euclid(MILLIS_PER_DAY) * NANOS_PER_MILLI))
}

/// The datetime of a calendar date and time (its `nanos` are rounded down
/// to the millisecond).
pub fn datetime_from_civil(dt: CivilDateTime) -> Option<f64> {
    if dt.hour > 23 || dt.minute > 59 || dt.second > 59 || i64::from(dt.nanos) >= NANOS_PER_SEC {
        return None;
    }
    let days = checked_unix_days_from_civil(dt.date.year, dt.date.month, dt.date.day)?
        - i64::from(KDB_EPOCH_OFFSET_DAYS);
    let ms_of_day = (i64::from(dt.hour) * 3_600 + i64::from(dt.minute) * 60 + i64::from(dt.second))
        * MILLIS_PER_SEC
        + i64::from(dt.nanos) / NANOS_PER_MILLI;
    Some(days as f64 + ms_of_day as f64 / MILLIS_PER_DAY as f64)
}

// ---------------------------------------------------------------------------
// The time types: timespan (n, i64 ns), minute (u), second (v), time (t, ms).
// They are durations (or times of day), not instants; they convert to
// `std::time::Duration` when not negative, and to each other through
// nanoseconds.

/// The `Duration` of a timespan; `None` for null, infinities and negative
/// spans (a `Duration` is never negative).
pub fn timespan_to_duration(n: i64) -> Option<Duration> {
    let n = finite_i64(n)?;
    let n = u64::try_from(n).ok()?;
    Some(Duration::from_nanos(n))
}

/// The timespan of a `Duration`; `None` beyond 106751 days (i64 ns).
pub fn timespan_from_duration(d: Duration) -> Option<i64> {
    to_kdb_i64(i128::try_from(d.as_nanos()).ok()?)
}

/// Split a count of nanoseconds into (negative, days, hours, minutes,
/// seconds, nanoseconds) for `[-]dDhh:mm:ss.nnnnnnnnn`.
pub fn timespan_parts(n: i64) -> Option<SpanParts> {
    let n = finite_i64(n)?;
    let abs = n.unsigned_abs();
    let secs = abs / NANOS_PER_SEC as u64;
    Some(SpanParts {
        negative: n < 0,
        days: secs / SECS_PER_DAY as u64,
        hours: (secs / 3_600 % 24) as u32,
        minutes: (secs / 60 % 60) as u32,
        seconds: (secs % 60) as u32,
        nanos: (abs % NANOS_PER_SEC as u64) as u32,
    })
}

/// The parts of a timespan; see [`timespan_parts`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanParts {
    pub negative: bool,
    pub days: u64,
    /// 0..=23.
    pub hours: u32,
    pub minutes: u32,
    pub seconds: u32,
    pub nanos: u32,
}

/// The timespan of a minute (`` `timespan$u ``).
pub fn minute_to_timespan(u: i32) -> Option<i64> {
    Some(i64::from(finite_i32(u)?) * NANOS_PER_MINUTE)
}

/// The minute of a timespan (`` `minute$n ``), truncated towards zero.
pub fn minute_from_timespan(n: i64) -> Option<i32> {
    to_kdb_i32(finite_i64(n)? / NANOS_PER_MINUTE)
}

/// The timespan of a second (`` `timespan$v ``).
pub fn second_to_timespan(v: i32) -> Option<i64> {
    Some(i64::from(finite_i32(v)?) * NANOS_PER_SEC)
}

/// The second of a timespan, truncated towards zero.
pub fn second_from_timespan(n: i64) -> Option<i32> {
    to_kdb_i32(finite_i64(n)? / NANOS_PER_SEC)
}

/// The timespan of a time (`` `timespan$t ``).
pub fn time_to_timespan(t: i32) -> Option<i64> {
    Some(i64::from(finite_i32(t)?) * NANOS_PER_MILLI)
}

/// The time of a timespan, truncated towards zero to the millisecond.
pub fn time_from_timespan(n: i64) -> Option<i32> {
    to_kdb_i32(finite_i64(n)? / NANOS_PER_MILLI)
}

/// The `Duration` of a minute; `None` if null, infinite or negative.
pub fn minute_to_duration(u: i32) -> Option<Duration> {
    timespan_to_duration(minute_to_timespan(u)?)
}

/// The minute of a `Duration`, truncated.
pub fn minute_from_duration(d: Duration) -> Option<i32> {
    to_kdb_i32(i64::try_from(d.as_secs() / 60).ok()?)
}

/// The `Duration` of a second; `None` if null, infinite or negative.
pub fn second_to_duration(v: i32) -> Option<Duration> {
    timespan_to_duration(second_to_timespan(v)?)
}

/// The second of a `Duration`, truncated.
pub fn second_from_duration(d: Duration) -> Option<i32> {
    to_kdb_i32(i64::try_from(d.as_secs()).ok()?)
}

/// The `Duration` of a time; `None` if null, infinite or negative.
pub fn time_to_duration(t: i32) -> Option<Duration> {
    timespan_to_duration(time_to_timespan(t)?)
}

/// The time of a `Duration`, truncated to the millisecond.
pub fn time_from_duration(d: Duration) -> Option<i32> {
    to_kdb_i32(i64::try_from(d.as_millis()).ok()?)
}

/// The time of day of a timestamp as a `time` (ms since midnight).
pub fn timestamp_to_time(p: i64) -> Option<i32> {
    time_from_timespan(timestamp_time_of_day(p)?)
}

/// The timestamp of a date plus a time span (`d + n` in q).
pub fn timestamp_from_date_and_timespan(d: i32, n: i64) -> Option<i64> {
    to_kdb_i64(i128::from(finite_i32(d)?) * i128::from(NANOS_PER_DAY) + i128::from(finite_i64(n)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::nulls::{INT_INF, INT_NULL, LONG_INF, LONG_NULL};

    fn civil(year: i64, month: u32, day: u32) -> CivilDate {
        CivilDate { year, month, day }
    }

    #[test]
    fn epoch_constants_agree() {
        assert_eq!(i64::from(KDB_EPOCH_OFFSET_DAYS) * SECS_PER_DAY, KDB_EPOCH_OFFSET_SECS);
        assert_eq!(unix_days_from_civil(2000, 1, 1), i64::from(KDB_EPOCH_OFFSET_DAYS));
        assert_eq!(KDB_EPOCH_OFFSET_NANOS, 946_684_800_000_000_000);
    }

    #[test]
    fn known_dates() {
        assert_eq!(civil_from_unix_days(0), civil(1970, 1, 1));
        assert_eq!(date_to_civil(0), Some(civil(2000, 1, 1)));
        assert_eq!(date_to_civil(-KDB_EPOCH_OFFSET_DAYS), Some(civil(1970, 1, 1)));
        assert_eq!(date_to_civil(-1), Some(civil(1999, 12, 31)));
        // 2026.11.23: 26 years of 365 days, 7 leap days (2000..2024), 326 days into 2026.
        assert_eq!(date_from_civil(2026, 11, 23), Some(26 * 365 + 7 + 326));
        assert_eq!(date_to_civil(26 * 365 + 7 + 326), Some(civil(2026, 11, 23)));
        assert_eq!(date_to_unix_secs(0), Some(946_684_800));
        assert_eq!(date_from_civil(2026, 11, 23).and_then(date_to_unix_secs), Some(1_795_392_000));
        assert_eq!(date_from_civil(1, 1, 1), Some(-730_119));
        assert_eq!(date_to_civil(-730_120), Some(civil(0, 12, 31)));
        assert_eq!(date_from_civil(9999, 12, 31), Some(2_921_939));
    }

    #[test]
    fn leap_years() {
        assert!(is_leap_year(2000));
        assert!(is_leap_year(2024));
        assert!(!is_leap_year(1900));
        assert!(!is_leap_year(2100));
        assert!(is_leap_year(0));
        assert!(is_leap_year(-4));
        assert_eq!(date_from_civil(2000, 2, 29), Some(59));
        assert_eq!(date_to_civil(59), Some(civil(2000, 2, 29)));
        assert_eq!(date_to_civil(60), Some(civil(2000, 3, 1)));
        assert_eq!(date_from_civil(2023, 2, 29), None);
        assert_eq!(date_from_civil(1900, 2, 29), None);
        assert_eq!(date_from_civil(2024, 2, 29).and_then(date_to_civil), Some(civil(2024, 2, 29)));
        assert_eq!(date_from_civil(2024, 13, 1), None);
        assert_eq!(date_from_civil(2024, 4, 31), None);
        assert_eq!(date_from_civil(2024, 4, 0), None);
    }

    #[test]
    fn civil_round_trips_over_many_years() {
        // Every day from 1600 to 2400, and spot checks far away.
        let start = unix_days_from_civil(1600, 1, 1);
        let end = unix_days_from_civil(2400, 12, 31);
        let mut prev = civil_from_unix_days(start - 1);
        for day in start..=end {
            let c = civil_from_unix_days(day);
            assert_eq!(unix_days_from_civil(c.year, c.month, c.day), day);
            assert!(c.day >= 1 && c.day <= days_in_month(c.year, c.month));
            // consecutive: next day, or first of next month/year
            if c.day != prev.day + 1 {
                assert_eq!(c.day, 1);
                assert!(c.month == prev.month % 12 + 1);
            }
            prev = c;
        }
        for day in [i64::from(i32::MIN), i64::from(i32::MAX), -1_000_000_000_000, 1_000_000_000_000] {
            let c = civil_from_unix_days(day);
            assert_eq!(unix_days_from_civil(c.year, c.month, c.day), day);
        }
    }

    #[test]
    fn negative_days() {
        assert_eq!(date_to_civil(-10_957), Some(civil(1970, 1, 1)));
        assert_eq!(date_to_civil(-10_958), Some(civil(1969, 12, 31)));
        assert_eq!(date_to_unix_days(-20_000), Some(-9_043));
        assert_eq!(date_from_unix_days(-9_043), Some(-20_000));
        assert_eq!(date_from_unix_secs(-1), Some(-10_958));
        assert_eq!(date_from_unix_secs(0), Some(-10_957));
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp_to_unix_nanos(0), Some(KDB_EPOCH_OFFSET_NANOS));
        assert_eq!(timestamp_from_unix_nanos(0), Some(-KDB_EPOCH_OFFSET_NANOS));
        assert_eq!(timestamp_to_unix_secs(-1), Some(KDB_EPOCH_OFFSET_SECS - 1));
        assert_eq!(timestamp_from_unix_secs(1_795_392_000), Some(848_707_200 * NANOS_PER_SEC));
        let p = 848_707_200 * NANOS_PER_SEC + 3_723_000_000_123; // 2026.11.23D01:02:03.000000123
        assert_eq!(
            timestamp_to_civil(p),
            Some(CivilDateTime { date: civil(2026, 11, 23), hour: 1, minute: 2, second: 3, nanos: 123 })
        );
        assert_eq!(timestamp_to_civil(p).and_then(timestamp_from_civil), Some(p));
        assert_eq!(
            timestamp_to_civil(-1),
            Some(CivilDateTime {
                date: civil(1999, 12, 31),
                hour: 23,
                minute: 59,
                second: 59,
                nanos: 999_999_999
            })
        );
        assert_eq!(timestamp_to_date(-1), Some(-1));
        assert_eq!(timestamp_to_date(p), date_from_civil(2026, 11, 23));
        assert_eq!(date_to_timestamp(1), Some(NANOS_PER_DAY));
        assert_eq!(timestamp_to_time(p), Some(3_723_000));
        assert_eq!(timestamp_from_date_and_timespan(1, 5), Some(NANOS_PER_DAY + 5));
        // q's range: -0W 0Wp+1 -1 = 1707.09.22D00:12:43.145224194 2292.04.10D23:47:16.854775806
        let lo = timestamp_to_civil(-LONG_INF + 1).unwrap();
        assert_eq!(
            (lo.date, lo.hour, lo.minute, lo.second, lo.nanos),
            (civil(1707, 9, 22), 0, 12, 43, 145_224_194)
        );
        let hi = timestamp_to_civil(LONG_INF - 1).unwrap();
        assert_eq!(
            (hi.date, hi.hour, hi.minute, hi.second, hi.nanos),
            (civil(2292, 4, 10), 23, 47, 16, 854_775_806)
        );
        // Unix ns in i64 end in 2262.
        assert_eq!(timestamp_to_unix_nanos(LONG_INF - 1), None);
        assert_eq!(timestamp_from_unix_nanos(i64::MIN), None);
        assert_eq!(timestamp_from_unix_secs(i64::MAX), None);
    }

    #[test]
    fn nulls_and_infinities_are_none() {
        for p in [LONG_NULL, LONG_INF, -LONG_INF] {
            assert_eq!(timestamp_to_unix_nanos(p), None);
            assert_eq!(timestamp_to_unix_secs(p), None);
            assert_eq!(timestamp_to_system_time(p), None);
            assert_eq!(timestamp_to_civil(p), None);
            assert_eq!(timestamp_to_date(p), None);
            assert_eq!(timespan_to_duration(p), None);
            assert_eq!(timespan_parts(p), None);
            assert_eq!(minute_from_timespan(p), None);
        }
        for d in [INT_NULL, INT_INF, -INT_INF] {
            assert_eq!(date_to_unix_days(d), None);
            assert_eq!(date_to_civil(d), None);
            assert_eq!(date_to_system_time(d), None);
            assert_eq!(month_to_year_month(d), None);
            assert_eq!(minute_to_timespan(d), None);
            assert_eq!(second_to_timespan(d), None);
            assert_eq!(time_to_timespan(d), None);
            assert_eq!(date_to_timestamp(d), None);
        }
        for z in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 1e300] {
            assert_eq!(datetime_to_unix_millis(z), None);
            assert_eq!(datetime_to_civil(z), None);
            assert_eq!(datetime_to_system_time(z), None);
        }
        // results that would be a null/inf pattern are refused
        assert_eq!(timestamp_from_unix_nanos(i64::MIN + KDB_EPOCH_OFFSET_NANOS), None);
        assert_eq!(timestamp_from_unix_nanos(i64::MIN + KDB_EPOCH_OFFSET_NANOS + 2), Some(i64::MIN + 2));
        assert_eq!(date_from_unix_days(i64::from(i32::MAX) + i64::from(KDB_EPOCH_OFFSET_DAYS)), None);
        assert_eq!(date_from_unix_days(i64::from(i32::MIN) + i64::from(KDB_EPOCH_OFFSET_DAYS)), None);
        assert_eq!(
            date_from_unix_days(i64::from(i32::MIN) + 2 + i64::from(KDB_EPOCH_OFFSET_DAYS)),
            Some(i32::MIN + 2)
        );
    }

    #[test]
    fn system_time_round_trip() {
        let unix = SystemTime::UNIX_EPOCH;
        assert_eq!(timestamp_from_system_time(unix), Some(-KDB_EPOCH_OFFSET_NANOS));
        assert_eq!(timestamp_to_system_time(-KDB_EPOCH_OFFSET_NANOS), Some(unix));
        assert_eq!(date_from_system_time(unix), Some(-KDB_EPOCH_OFFSET_DAYS));
        let before = unix - Duration::from_nanos(1);
        assert_eq!(timestamp_from_system_time(before), Some(-KDB_EPOCH_OFFSET_NANOS - 1));
        assert_eq!(date_from_system_time(before), Some(-KDB_EPOCH_OFFSET_DAYS - 1));
        let p = 848_707_200 * NANOS_PER_SEC + 42;
        let t = timestamp_to_system_time(p).unwrap();
        assert_eq!(timestamp_from_system_time(t), Some(p));
        assert_eq!(date_to_system_time(0), Some(unix + Duration::from_secs(946_684_800)));
        assert_eq!(month_to_system_time(1), date_from_civil(2000, 2, 1).and_then(date_to_system_time));
        assert_eq!(month_from_system_time(t), month_from_year_month(2026, 11));
        assert_eq!(datetime_from_system_time(unix + Duration::from_secs(946_684_800)), 0.0);
        assert_eq!(datetime_to_system_time(0.5), Some(unix + Duration::from_secs(946_684_800 + 43_200)));
    }

    #[test]
    fn months() {
        assert_eq!(month_to_year_month(0), Some((2000, 1)));
        assert_eq!(month_to_year_month(-1), Some((1999, 12)));
        assert_eq!(month_to_year_month(322), Some((2026, 11)));
        assert_eq!(month_from_year_month(2026, 11), Some(322));
        assert_eq!(month_from_year_month(1970, 1), Some(-360));
        assert_eq!(month_from_year_month(1970, 0), None);
        assert_eq!(month_to_date(1), Some(31));
        assert_eq!(month_to_date(-360), Some(-KDB_EPOCH_OFFSET_DAYS));
        assert_eq!(date_to_month(59), Some(1));
        assert_eq!(date_to_month(-1), Some(-1));
        assert_eq!(month_to_unix_secs(-360), Some(0));
        assert_eq!(month_from_unix_secs(-1), Some(-361));
    }

    #[test]
    fn datetimes() {
        assert_eq!(datetime_to_unix_millis(0.0), Some(KDB_EPOCH_OFFSET_MILLIS));
        assert_eq!(datetime_from_unix_millis(KDB_EPOCH_OFFSET_MILLIS), 0.0);
        assert_eq!(datetime_to_unix_millis(-0.5), Some(KDB_EPOCH_OFFSET_MILLIS - 43_200_000));
        assert_eq!(datetime_to_unix_secs(1.0), Some(KDB_EPOCH_OFFSET_SECS + 86_400));
        assert_eq!(datetime_from_unix_secs(KDB_EPOCH_OFFSET_SECS + 86_400), 1.0);
        // a millisecond survives the round trip, far from the epoch too
        let ms = 1_795_392_000_123_i64;
        let z = datetime_from_unix_millis(ms);
        assert_eq!(datetime_to_unix_millis(z), Some(ms));
        assert_eq!(datetime_to_unix_nanos(z), Some(ms * NANOS_PER_MILLI));
        assert_eq!(datetime_from_unix_nanos(ms * NANOS_PER_MILLI + 999_999), z);
        let c = datetime_to_civil(z).unwrap();
        assert_eq!(
            (c.date, c.hour, c.minute, c.second, c.nanos),
            (civil(2026, 11, 23), 0, 0, 0, 123_000_000)
        );
        assert_eq!(datetime_from_civil(c).and_then(datetime_to_unix_millis), Some(ms));
        assert_eq!(datetime_to_timestamp(1.5), Some(NANOS_PER_DAY * 3 / 2));
        assert_eq!(timestamp_to_datetime(NANOS_PER_DAY * 3 / 2), Some(1.5));
        let before = datetime_to_civil(-1.0 / 86_400_000.0).unwrap();
        assert_eq!((before.date, before.hour, before.nanos), (civil(1999, 12, 31), 23, 999_000_000));
    }

    #[test]
    fn spans() {
        assert_eq!(timespan_to_duration(1_500_000_000), Some(Duration::from_millis(1_500)));
        assert_eq!(timespan_to_duration(-1), None);
        assert_eq!(timespan_from_duration(Duration::from_secs(1)), Some(NANOS_PER_SEC));
        assert_eq!(timespan_from_duration(Duration::from_secs(u64::MAX)), None);
        assert_eq!(minute_to_timespan(61), Some(61 * NANOS_PER_MINUTE));
        assert_eq!(minute_from_timespan(61 * NANOS_PER_MINUTE + 59 * NANOS_PER_SEC), Some(61));
        assert_eq!(second_to_timespan(-1), Some(-NANOS_PER_SEC));
        assert_eq!(second_from_timespan(-1_500_000_000), Some(-1));
        assert_eq!(time_to_timespan(1), Some(NANOS_PER_MILLI));
        assert_eq!(time_from_timespan(NANOS_PER_DAY), Some(86_400_000));
        assert_eq!(minute_to_duration(2), Some(Duration::from_secs(120)));
        assert_eq!(minute_from_duration(Duration::from_secs(179)), Some(2));
        assert_eq!(second_to_duration(-2), None);
        assert_eq!(second_from_duration(Duration::from_millis(2_999)), Some(2));
        assert_eq!(time_to_duration(1_234), Some(Duration::from_millis(1_234)));
        assert_eq!(time_from_duration(Duration::from_micros(1_234_999)), Some(1_234));
        assert_eq!(
            timespan_parts(-(NANOS_PER_DAY + 3_723 * NANOS_PER_SEC + 5)),
            Some(SpanParts { negative: true, days: 1, hours: 1, minutes: 2, seconds: 3, nanos: 5 })
        );
    }
}

//! Positions and segment identities.
//!
//! A [`Position`] is RT's opaque 64-bit restart token (kdb Insights "RT log files": "x is the top 20 bits… y is the
//! next 14 bits… The remaining 30 bits then locate the start of the message in the correct log file"):
//!
//! ```text
//!  63            44 43        30 29                         0
//! ┌────────────────┬────────────┬────────────────────────────┐
//! │ session (20 b) │ roll (14 b)│ byte offset (30 b)         │
//! └────────────────┴────────────┴────────────────────────────┘
//! ```
//!
//! The byte offset counts from the first record of the segment (just after its [segment
//! header](crate::format::SEGMENT_HEADER_LEN)), so the first message of session 1 is at 2^44 = 17592186044416, as in
//! RT's own `reset` example. Positions order as the log does: a later record has a larger position. A position is a
//! pure function of the records and session changes before it (never of which node wrote them), so a log rebuilt
//! from shipped records (with the same segment size) hands out the same positions.

use std::fmt;

/// Bit at which the session number starts in a [`Position`] (RT: the top 20 bits).
pub const SESSION_SHIFT: u32 = 44;
/// Bit at which the roll number starts in a [`Position`] (RT: the next 14 bits).
pub const ROLL_SHIFT: u32 = 30;
/// Largest session number: 2^20 − 1 (20 bits).
pub const MAX_SESSION: u32 = (1 << 20) - 1;
/// Largest roll number within a session: 2^14 − 1 (14 bits).
pub const MAX_ROLL: u32 = (1 << 14) - 1;
/// Largest byte offset a position can name: 2^30 − 1 (30 bits), so a record must start in the first GiB of its
/// segment.
pub const MAX_OFFSET: u64 = (1 << 30) - 1;

/// One segment file: a session and a roll within it. Orders as the log does (session first, then roll).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default)]
pub struct SegmentId {
    /// The session (a hard reset starts the next one), 0..=[`MAX_SESSION`].
    pub session: u32,
    /// The roll within the session (the segment number), 0..=[`MAX_ROLL`].
    pub roll: u32,
}

impl SegmentId {
    /// The segment `session`/`roll`; `None` if either is out of range.
    pub const fn new(session: u32, roll: u32) -> Option<Self> {
        if session > MAX_SESSION || roll > MAX_ROLL { None } else { Some(Self { session, roll }) }
    }

    /// The position of the segment's first record (byte offset 0).
    pub const fn start(self) -> Position {
        Position(((self.session as u64) << SESSION_SHIFT) | ((self.roll as u64) << ROLL_SHIFT))
    }

    /// The next segment of the same session; `None` once the roll space (14 bits) is used up.
    pub const fn next_roll(self) -> Option<Self> {
        Self::new(self.session, self.roll + 1)
    }

    /// The first segment of the next session; `None` once the session space (20 bits) is used up.
    pub const fn next_session(self) -> Option<Self> {
        if self.session >= MAX_SESSION { None } else { Self::new(self.session + 1, 0) }
    }

    /// The segment's file name, `log.SSSSSSS.RRRRR` (RT's `log.<session>.<roll>`, zero-padded so that names sort
    /// as the log does).
    pub fn file_name(self) -> String {
        format!("log.{:07}.{:05}", self.session, self.roll)
    }

    /// Parses a name made by [`SegmentId::file_name`]; anything else is `None`.
    pub fn parse_file_name(name: &str) -> Option<Self> {
        let rest = name.strip_prefix("log.")?;
        let (s, r) = rest.split_once('.')?;
        if s.len() != 7
            || r.len() != 5
            || !s.bytes().all(|b| b.is_ascii_digit())
            || !r.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        Self::new(s.parse().ok()?, r.parse().ok()?)
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file_name())
    }
}

/// RT's opaque 64-bit position: `session << 44 | roll << 30 | byte offset` (kdb Insights "RT log files").
///
/// ```text
///  63            44 43        30 29                         0
/// ┌────────────────┬────────────┬────────────────────────────┐
/// │ session (20 b) │ roll (14 b)│ byte offset (30 b)         │
/// └────────────────┴────────────┴────────────────────────────┘
/// ```
///
/// The offset counts from the segment's first record (just after its 32-byte header), so the first message of
/// session 1 is at 2^44 = 17592186044416, as in RT's `reset` example. Positions order as the log does. Every
/// position the log hands out (an entry's position or next position, an event's positions,
/// [`first`](crate::LogHandle::first_position)/[`latest`](crate::LogHandle::latest_position)) is a valid restart
/// point for a [`Reader`](crate::Reader), and depends only on the records and session changes before it (and the
/// segment size), never on which node wrote them. `Display` prints the raw number, as q shows the long.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position(u64);

impl Position {
    /// The position `offset` bytes into segment `session`/`roll`; `None` if a part is out of range.
    pub const fn new(session: u32, roll: u32, offset: u64) -> Option<Self> {
        match SegmentId::new(session, roll) {
            Some(seg) if offset <= MAX_OFFSET => Some(Self(seg.start().0 | offset)),
            _ => None,
        }
    }

    /// The position with this raw value (as a q client hands it back).
    pub const fn from_u64(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw value, as sent to q (a long).
    pub const fn as_u64(self) -> u64 {
        self.0
    }

    /// The session number (top 20 bits).
    pub const fn session(self) -> u32 {
        (self.0 >> SESSION_SHIFT) as u32
    }

    /// The roll number (next 14 bits).
    pub const fn roll(self) -> u32 {
        ((self.0 >> ROLL_SHIFT) as u32) & MAX_ROLL
    }

    /// The byte offset within the segment's record area (low 30 bits).
    pub const fn offset(self) -> u64 {
        self.0 & MAX_OFFSET
    }

    /// The segment this position points into.
    pub const fn segment(self) -> SegmentId {
        SegmentId { session: self.session(), roll: self.roll() }
    }

    /// The position `end` bytes into `seg`, where `end` may be one past the 30-bit range (a record that fills or
    /// overfills its segment): then it is the start of the next roll, which is numerically the same value when
    /// `end` is exactly 2^30.
    pub(crate) const fn after(seg: SegmentId, end: u64) -> Self {
        if end > MAX_OFFSET { Self(seg.start().0 + (1 << ROLL_SHIFT)) } else { Self(seg.start().0 | end) }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Debug for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Position({} = s{}/r{}/{})", self.0, self.session(), self.roll(), self.offset())
    }
}

impl From<Position> for u64 {
    fn from(p: Position) -> u64 {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_rt() {
        let p = Position::new(1, 0, 0).expect("in range");
        assert_eq!(p.as_u64(), 17_592_186_044_416);
        let p = Position::new(3, 5, 130).expect("in range");
        assert_eq!((p.session(), p.roll(), p.offset()), (3, 5, 130));
        assert_eq!(p.segment(), SegmentId { session: 3, roll: 5 });
        assert!(Position::new(MAX_SESSION + 1, 0, 0).is_none());
        assert!(Position::new(0, MAX_ROLL + 1, 0).is_none());
        assert!(Position::new(0, 0, MAX_OFFSET + 1).is_none());
        assert_eq!(
            Position::after(SegmentId { session: 2, roll: 7 }, 1 << 30),
            SegmentId { session: 2, roll: 8 }.start()
        );
        assert_eq!(
            Position::after(SegmentId { session: 2, roll: 7 }, (1 << 30) + 99),
            SegmentId { session: 2, roll: 8 }.start()
        );
        assert_eq!(p.to_string(), p.as_u64().to_string());
    }

    #[test]
    fn file_names_sort_and_parse() {
        let ids = [
            SegmentId { session: 0, roll: 2 },
            SegmentId { session: 0, roll: 10 },
            SegmentId { session: 1, roll: 0 },
        ];
        let names: Vec<String> = ids.iter().map(|s| s.file_name()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        for id in ids {
            assert_eq!(SegmentId::parse_file_name(&id.file_name()), Some(id));
        }
        assert_eq!(SegmentId::parse_file_name("log.1.2"), None);
        assert_eq!(SegmentId::parse_file_name("LOCK"), None);
        assert_eq!(SegmentId::parse_file_name("log.9999999.00000"), None);
    }
}

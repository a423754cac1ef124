//! The events a subscriber is told about, each with the two positions the
//! rt.qpk documentation defines for it.

/// An event in a stream, delivered as
/// `` (`.rt.event;`stream;`event;(p1;p2)) ``.
///
/// | event | `p1` | `p2` |
/// |---|---|---|
/// | `badtail` | the corrupt record | the start of the next segment |
/// | `badmsg` | the record that cannot be decoded | the next record |
/// | `reset` | the end of the last message | the first position of the new session |
/// | `skip-forward` | the position in the archived segment | the start of the first unarchived segment |
///
/// Events replay like messages: re-subscribing from an earlier position
/// gives the same sequence of messages and events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// A corrupt record mid-log; the rest of its segment is skipped. Always
    /// data loss.
    BadTail,
    /// A record whose payload is not one well-formed kdb+ object; it is
    /// skipped.
    BadMsg,
    /// The stream was reset and a new session started; possible loss and
    /// duplication.
    Reset,
    /// The subscriber's position was archived; it skips to the first
    /// unarchived segment. Always data loss.
    SkipForward,
}

impl Event {
    /// Every event.
    pub const ALL: [Event; 4] = [Event::BadTail, Event::BadMsg, Event::Reset, Event::SkipForward];

    /// The event's symbol as the subscriber receives it.
    pub fn name(self) -> &'static str {
        match self {
            Event::BadTail => "badtail",
            Event::BadMsg => "badmsg",
            Event::Reset => "reset",
            Event::SkipForward => "skip-forward",
        }
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

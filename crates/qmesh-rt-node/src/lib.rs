//! The reliable-transport stream node (work in progress).

//! The reliable-transport wire protocol (work in progress).

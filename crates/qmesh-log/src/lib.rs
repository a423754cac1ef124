//! The stream segment log (work in progress).

//! qmesh-ipc (work in progress).
pub mod address;
pub mod auth;
pub mod handshake;

//! kdb+ values as JSON, for the gateway's HTTP API: the shared form of
//! [`qmesh_process::json`] (every qmesh HTTP API answers the same JSON), its
//! mapping table is there.

pub use qmesh_process::json::{TableForm, answer, to_json};

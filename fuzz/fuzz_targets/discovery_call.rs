#![no_main]

//! Untrusted input to the discovery registry: any bytes as a kdb+ message
//! body read as a call (`.master.storeHb`, `.master.lookup`, …) and, if it
//! is a heartbeat, applied to a registry; and any bytes as a stored record.
//! Nothing may panic; a refused heartbeat must leave the registry unchanged.

use qmesh_discovery::registry::{Config, Registry};
use qmesh_discovery::wire::{Call, call};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = qmesh_discovery::store::decode_record(data);
    let Ok(k) = qmesh_codec::decode_body(data, true) else { return };
    if let Ok(Call::StoreHb(hb)) = call(&k) {
        let mut r = Registry::new(Config::default(), 0);
        match r.heartbeat(0, 1, hb) {
            Ok(_) => assert_eq!(r.len(), 1),
            Err(_) => assert!(r.is_empty() && r.drain_changes().next().is_none()),
        }
    }
});

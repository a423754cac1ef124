#![no_main]

//! A stream-fed service's snapshot file (qmesh_service::snapshot): any bytes
//! are an error or a snapshot, never a panic; what decodes re-encodes to a
//! file that decodes to the same position, stream and tables.

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(snap) = qmesh_service::snapshot::decode(data) {
        let again = qmesh_service::snapshot::encode(&snap).expect("a decoded snapshot encodes");
        let back = qmesh_service::snapshot::decode(&again).expect("an encoded snapshot decodes");
        assert_eq!(back.position, snap.position);
        assert_eq!(back.stream, snap.stream);
        assert_eq!(back.tables.len(), snap.tables.len());
    }
});

//! Fuzzes the descriptor parser; a parsed descriptor must survive a write/parse round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmdk::descriptor::{looks_like_descriptor, Descriptor};

fuzz_target!(|data: &[u8]| {
    let _ = looks_like_descriptor(data);
    if let Ok(d) = Descriptor::parse(data) {
        let again = Descriptor::parse(d.to_text().as_bytes()).expect("written descriptor must parse");
        assert_eq!(again.extents, d.extents);
        assert_eq!(again.cid, d.cid);
        assert_eq!(again.parent_cid, d.parent_cid);
    }
});

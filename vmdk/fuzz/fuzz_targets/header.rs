//! Fuzzes the sparse extent header parser and its layout validation.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmdk::header::SparseHeader;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = SparseHeader::parse(data) {
        // Layout validation against any file length must not panic or overflow.
        let _ = h.validate_layout(data.len() as u64);
        let _ = h.validate_layout(u64::MAX);
        let _ = (h.gd_entries(), h.gd_sectors(), h.gt_sectors(), h.gt_coverage());
        // A parsed header serialises back to something that parses to the same header.
        assert_eq!(SparseHeader::parse(&h.to_bytes()), Ok(h));
    }
});

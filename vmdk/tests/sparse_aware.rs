//! Issue 11 item 5: `compare` and `convert` read only what may hold data. Holes in flat extents
//! (SEEK_DATA/SEEK_HOLE) and unallocated grains are known zeros. Oracle: `qemu-img map`, which
//! reports the same holes, and `qemu-img compare`.

mod common;

use common::{have_qemu, qemu_img, qemu_ok, s, Scratch};
use std::os::unix::fs::FileExt;
use vmdk::{AnyImage, CreateOptions, Image, MapKind, Subformat};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

fn data_bytes(img: &AnyImage) -> u64 {
    img.data_ranges().unwrap().iter().map(|r| r.1).sum()
}

#[test]
fn test_empty_flat_extents_have_no_data() {
    let d = Scratch::new("sparse-flat-empty");
    for sf in [Subformat::MonolithicFlat, Subformat::TwoGbMaxExtentFlat] {
        let p = d.path(&format!("{}.vmdk", sf.as_str()));
        vmdk::create(&p, &CreateOptions::new(sf, 64 * GIB)).unwrap();
        let img = AnyImage::open(&p, false).unwrap();
        assert_eq!(data_bytes(&img), 0, "{}: an empty flat image has no data ranges", sf.as_str());
    }
}

#[test]
fn test_flat_map_matches_qemu_img() {
    if !have_qemu("test_flat_map_matches_qemu_img") {
        return;
    }
    let d = Scratch::new("sparse-flat-map");
    let p = d.path("t.vmdk");
    vmdk::create(&p, &CreateOptions::new(Subformat::TwoGbMaxExtentFlat, 5 * GIB)).unwrap();
    let img = Image::open_rw(&p).unwrap();
    for off in [0, 3 * MIB, 2 * GIB - 65536, 4 * GIB + 7 * MIB] {
        img.write_at(&[0xA5; 131072], off).unwrap();
    }
    img.flush().unwrap();
    let ours: Vec<(u64, u64)> = img
        .map()
        .unwrap()
        .into_iter()
        .filter(|r| matches!(r.kind, MapKind::Data { .. }))
        .map(|r| (r.start, r.len))
        .collect();
    drop(img);
    // qemu-img maps a VMDK's flat extents as all data, but its raw driver reports the file
    // system's holes: map each extent file as raw and shift by the extent's start.
    let mut theirs: Vec<(u64, u64)> = Vec::new();
    for (i, base) in [0u64, 2 * GIB, 4 * GIB].into_iter().enumerate() {
        let f = d.path(&format!("t-f{:03}.vmdk", i + 1));
        let out = qemu_ok(&["map", "-f", "raw", "--output", "json", s(&f)]);
        let j: serde_json::Value = serde_json::from_str(&out).unwrap();
        for e in j.as_array().unwrap() {
            if e["data"].as_bool().unwrap() {
                let (st, l) = (base + e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap());
                match theirs.last_mut() {
                    Some(t) if t.0 + t.1 == st => t.1 += l,
                    _ => theirs.push((st, l)),
                }
            }
        }
    }
    assert_eq!(ours, theirs, "data ranges differ from qemu-img map");
}

#[test]
fn test_compare_images_finds_differences_in_data_and_tails() {
    let d = Scratch::new("sparse-compare");
    let a = d.path("a.vmdk");
    let b = d.path("b.vmdk");
    vmdk::create(&a, &CreateOptions::new(Subformat::TwoGbMaxExtentFlat, 6 * GIB)).unwrap();
    vmdk::create(&b, &CreateOptions::new(Subformat::MonolithicSparse, 6 * GIB)).unwrap();
    let open = |p| AnyImage::open(p, false).unwrap();
    assert_eq!(vmdk::compare_images(&open(&a), &open(&b), &|_| {}).unwrap(), None);
    // Data in a's flat hole region only.
    Image::open_rw(&a).unwrap().write_at(&[1; 512], 5 * GIB + 4096).unwrap();
    assert_eq!(vmdk::compare_images(&open(&a), &open(&b), &|_| {}).unwrap(), Some(5 * GIB + 4096));
    // The same data in b: identical again.
    Image::open_rw(&b).unwrap().write_at(&[1; 512], 5 * GIB + 4096).unwrap();
    assert_eq!(vmdk::compare_images(&open(&a), &open(&b), &|_| {}).unwrap(), None);
    // Data written as zeros in b where a has a hole: still identical.
    Image::open_rw(&b).unwrap().write_at(&vec![0; 65536 * 3], GIB).unwrap();
    assert_eq!(vmdk::compare_images(&open(&a), &open(&b), &|_| {}).unwrap(), None);
    // A longer raw image: its tail matters only if non-zero.
    let r = d.path("r.raw");
    let f = std::fs::File::create(&r).unwrap();
    f.set_len(7 * GIB).unwrap();
    f.write_all_at(&[1; 512], 5 * GIB + 4096).unwrap();
    assert_eq!(vmdk::compare_images(&open(&a), &open(&r), &|_| {}).unwrap(), None);
    f.write_all_at(&[9], 6 * GIB + 12345).unwrap();
    assert_eq!(vmdk::compare_images(&open(&a), &open(&r), &|_| {}).unwrap(), Some(6 * GIB + 12288));
    if have_qemu("test_compare_images_finds_differences_in_data_and_tails") {
        let (rc, _) = qemu_img(&["compare", s(&a), s(&r)]);
        assert_eq!(rc, 1, "qemu-img also sees a mismatch");
        let (rc, _) = qemu_img(&["compare", s(&a), s(&b)]);
        assert_eq!(rc, 0, "qemu-img also sees them identical");
    }
}

#[test]
fn test_two_tib_empty_images_map_to_no_data() {
    let d = Scratch::new("sparse-2t");
    let a = d.path("a.vmdk");
    vmdk::create(&a, &CreateOptions::new(Subformat::TwoGbMaxExtentFlat, 2 << 40)).unwrap();
    let b = d.path("b.vmdk");
    vmdk::create(&b, &CreateOptions::new(Subformat::MonolithicSparse, 2040 * GIB)).unwrap();
    let (x, y) = (AnyImage::open(&a, false).unwrap(), AnyImage::open(&b, false).unwrap());
    assert_eq!(data_bytes(&x) + data_bytes(&y), 0);
    assert_eq!(vmdk::compare_images(&x, &y, &|_| {}).unwrap(), None);
}

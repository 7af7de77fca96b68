//! A corpus of malformed images, generated programmatically (shared with the CLI test in the root
//! package through `#[path]`). Every case must give a clear error, never a panic.
#![allow(dead_code)]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use vmdk::header::SparseHeader;
use vmdk::{CreateOptions, Image, Subformat};

const MIB: u64 = 1 << 20;

fn patch(p: &Path, off: u64, b: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(b, off).unwrap();
}

fn header(p: &Path) -> SparseHeader {
    let mut b = [0u8; 512];
    std::fs::File::open(p).unwrap().read_exact_at(&mut b, 0).unwrap();
    SparseHeader::parse(&b).unwrap()
}

fn read_u32(p: &Path, off: u64) -> u32 {
    let mut b = [0u8; 4];
    std::fs::File::open(p).unwrap().read_exact_at(&mut b, off).unwrap();
    u32::from_le_bytes(b)
}

/// A valid 8 MiB monolithicSparse image with data in grains 0, 1 and 5.
fn good_sparse(p: &Path) {
    vmdk::create(p, &CreateOptions::new(Subformat::MonolithicSparse, 8 * MIB)).unwrap();
    let i = Image::open_rw(p).unwrap();
    i.write_at(&[0x11; 65536 * 2], 0).unwrap();
    i.write_at(&[0x55; 1000], 5 * 65536 + 7).unwrap();
    i.flush().unwrap();
}

fn good_stream(dir: &Path, p: &Path) {
    let raw = dir.join("stream-src.raw");
    let mut data = vec![0u8; 4 * MIB as usize];
    for (i, b) in data.iter_mut().enumerate().take(300_000) {
        *b = (i * 7 % 251) as u8;
    }
    std::fs::write(&raw, &data).unwrap();
    let src = vmdk::AnyImage::open(&raw, false).unwrap();
    let o = CreateOptions::new(Subformat::StreamOptimized, 0);
    vmdk::convert(&src, p, &vmdk::Target::Vmdk(o), &|_| {}).unwrap();
    std::fs::remove_file(raw).unwrap();
}

fn sparse_case(dir: &Path, name: &str, f: impl FnOnce(&Path, &SparseHeader)) -> (String, PathBuf) {
    let p = dir.join(format!("{name}.vmdk"));
    good_sparse(&p);
    let h = header(&p);
    f(&p, &h);
    (name.to_string(), p)
}

fn text_case(dir: &Path, name: &str, text: &[u8]) -> (String, PathBuf) {
    let p = dir.join(format!("{name}.vmdk"));
    std::fs::write(&p, text).unwrap();
    (name.to_string(), p)
}

/// Sector of the primary grain table and of the redundant one.
fn gt_sectors(p: &Path, h: &SparseHeader) -> (u64, u64) {
    (u64::from(read_u32(p, h.gd_offset * 512)), u64::from(read_u32(p, h.rgd_offset * 512)))
}

fn delta_desc(extent: &str, parent_cid: &str, hint: &str) -> String {
    format!(
        "# Disk DescriptorFile\nversion=1\nCID=11111111\nparentCID={parent_cid}\ncreateType=\"monolithicFlat\"\n\
         parentFileNameHint=\"{hint}\"\nRW 16384 FLAT \"{extent}\" 0\n"
    )
}

/// Builds the corpus in `dir`; returns (case name, top-level file).
pub fn build(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v = Vec::new();
    let le32 = |x: u32| x.to_le_bytes();
    let le64 = |x: u64| x.to_le_bytes();
    v.push(text_case(dir, "empty-file", b""));
    v.push(text_case(dir, "truncated-header", &[b"KDMV".as_slice(), &[1, 0, 0, 0, 3, 0, 0, 0], &[0; 90]].concat()));
    v.push(sparse_case(dir, "bad-magic", |p, _| patch(p, 0, b"KDMX")));
    v.push(sparse_case(dir, "version-0", |p, _| patch(p, 4, &le32(0))));
    v.push(sparse_case(dir, "version-99", |p, _| patch(p, 4, &le32(99))));
    v.push(sparse_case(dir, "unknown-incompatible-flag", |p, _| patch(p, 8, &le32(0x0100_0003))));
    v.push(sparse_case(dir, "markers-without-compression", |p, _| patch(p, 8, &le32(0x2_0003))));
    v.push(sparse_case(dir, "unknown-compression", |p, _| {
        patch(p, 8, &le32(0x3_0003));
        patch(p, 0x4D, &[7, 0]);
    }));
    v.push(sparse_case(dir, "newline-bytes-mangled", |p, _| patch(p, 0x49, b"\n \n\n")));
    v.push(sparse_case(dir, "grain-size-0", |p, _| patch(p, 0x14, &le64(0))));
    v.push(sparse_case(dir, "grain-size-not-power-of-2", |p, _| patch(p, 0x14, &le64(100))));
    v.push(sparse_case(dir, "grain-size-absurd", |p, _| patch(p, 0x14, &le64(1 << 40))));
    v.push(sparse_case(dir, "gtes-per-gt-0", |p, _| patch(p, 0x2C, &le32(0))));
    v.push(sparse_case(dir, "gtes-per-gt-absurd", |p, _| patch(p, 0x2C, &le32(1 << 30))));
    v.push(sparse_case(dir, "capacity-absurd", |p, _| patch(p, 0x0C, &le64(1 << 62))));
    v.push(sparse_case(dir, "capacity-gd-past-eof", |p, _| patch(p, 0x0C, &le64(1 << 36))));
    v.push(sparse_case(dir, "gd-offset-past-eof", |p, _| patch(p, 0x38, &le64(1 << 30))));
    v.push(sparse_case(dir, "gd-offset-into-header", |p, _| patch(p, 0x38, &le64(0))));
    v.push(sparse_case(dir, "rgd-offset-past-eof", |p, _| patch(p, 0x30, &le64(u64::MAX - 3))));
    v.push(sparse_case(dir, "descriptor-size-absurd", |p, _| patch(p, 0x24, &le64(1 << 40))));
    v.push(sparse_case(dir, "gd-entry-past-eof", |p, h| {
        patch(p, h.gd_offset * 512, &le32(0x00F0_0000));
        patch(p, h.rgd_offset * 512, &le32(0x00F0_0000));
    }));
    v.push(sparse_case(dir, "gd-entry-into-header", |p, h| {
        patch(p, h.gd_offset * 512, &le32(0));
        patch(p, h.gd_offset * 512, &le32(1));
    }));
    v.push(sparse_case(dir, "gte-past-eof", |p, h| {
        let (gt, rgt) = gt_sectors(p, h);
        patch(p, gt * 512 + 4, &le32(0x7000_0000));
        patch(p, rgt * 512 + 4, &le32(0x7000_0000));
    }));
    v.push(sparse_case(dir, "gte-into-header", |p, h| {
        let (gt, rgt) = gt_sectors(p, h);
        patch(p, gt * 512, &le32(0));
        patch(p, gt * 512, &le32(2));
        patch(p, rgt * 512, &le32(2));
    }));
    v.push(sparse_case(dir, "overlapping-grains", |p, h| {
        let (gt, rgt) = gt_sectors(p, h);
        let g0 = read_u32(p, gt * 512);
        patch(p, gt * 512 + 4, &le32(g0 + 64));
        patch(p, rgt * 512 + 4, &le32(g0 + 64));
    }));
    v.push(sparse_case(dir, "grain-overlapping-grain-table", |p, h| {
        let (gt, rgt) = gt_sectors(p, h);
        patch(p, gt * 512 + 8, &le32(gt as u32));
        patch(p, rgt * 512 + 8, &le32(gt as u32));
    }));
    v.push(sparse_case(dir, "gt-and-redundant-gt-disagree", |p, h| {
        let (_, rgt) = gt_sectors(p, h);
        let g = read_u32(p, rgt * 512 + 5 * 4);
        patch(p, rgt * 512 + 5 * 4, &le32(g + 128));
    }));
    v.push(sparse_case(dir, "embedded-descriptor-garbage", |p, h| {
        patch(p, h.desc_offset * 512, b"\x01\x02garbage that is no descriptor at all\n\xff\xfe");
    }));
    v.push(sparse_case(dir, "embedded-descriptor-absurd-extent", |p, h| {
        let d = "# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicSparse\"\nRW 99999999999999999 SPARSE \"x.vmdk\"\n";
        let mut b = d.as_bytes().to_vec();
        b.resize((h.desc_size * 512) as usize, 0);
        patch(p, h.desc_offset * 512, &b);
    }));
    v.push(sparse_case(dir, "extent-larger-than-capacity", |p, h| {
        let name = p.file_name().unwrap().to_str().unwrap();
        let d = format!("# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicSparse\"\nRW 99999 SPARSE \"{name}\"\n");
        let mut b = d.into_bytes();
        b.resize((h.desc_size * 512) as usize, 0);
        patch(p, h.desc_offset * 512, &b);
    }));
    v.push(text_case(dir, "descriptor-unknown-extent-type", b"# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 100 FOO \"x\" 0\n"));
    v.push(text_case(dir, "descriptor-missing-extent-file", b"# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 100 FLAT \"does-not-exist-flat.vmdk\" 0\n"));
    v.push(text_case(
        dir,
        "descriptor-no-extents",
        b"# Disk DescriptorFile\nversion=1\nCID=1\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n",
    ));
    v.push(text_case(
        dir,
        "descriptor-bad-cid",
        b"# Disk DescriptorFile\nversion=1\nCID=xyz\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\nRW 1 ZERO\n",
    ));
    v.push(text_case(
        dir,
        "descriptor-not-utf8",
        b"# Disk DescriptorFile\nversion=1\nCID=1\ncreateType=\"\xff\xfe\"\nRW 1 ZERO\n",
    ));
    v.push(text_case(dir, "descriptor-huge", &{
        let mut t = b"# Disk DescriptorFile\nversion=1\n".to_vec();
        t.resize(3 << 20, b'#');
        t
    }));
    v.push(text_case(dir, "cowd-extent", &[b"COWD".as_slice(), &[0; 2044]].concat()));
    // Delta links.
    std::fs::File::create(dir.join("d-flat.vmdk")).unwrap().set_len(16384 * 512).unwrap();
    v.push(text_case(dir, "parent-missing", delta_desc("d-flat.vmdk", "12345678", "no-such-parent.vmdk").as_bytes()));
    v.push(text_case(
        dir,
        "parent-self-loop",
        delta_desc("d-flat.vmdk", "11111111", "parent-self-loop.vmdk").as_bytes(),
    ));
    std::fs::write(dir.join("loop-b.vmdk"), delta_desc("d-flat.vmdk", "11111111", "parent-loop-a.vmdk")).unwrap();
    v.push(text_case(dir, "parent-loop-a", delta_desc("d-flat.vmdk", "11111111", "loop-b.vmdk").as_bytes()));
    let base = dir.join("cid-base.vmdk");
    good_sparse(&base);
    v.push(text_case(dir, "parent-cid-mismatch", delta_desc("d-flat.vmdk", "0badc1d0", "cid-base.vmdk").as_bytes()));
    // streamOptimized.
    let sp = dir.join("stream-truncated.vmdk");
    good_stream(dir, &sp);
    let len = std::fs::metadata(&sp).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&sp).unwrap().set_len(len - 1024).unwrap();
    v.push(("stream-truncated".into(), sp));
    let sp = dir.join("stream-footer-bad.vmdk");
    good_stream(dir, &sp);
    let len = std::fs::metadata(&sp).unwrap().len();
    patch(&sp, len - 1024, b"XXXX");
    v.push(("stream-footer-bad".into(), sp));
    let sp = dir.join("stream-grain-garbage.vmdk");
    good_stream(dir, &sp);
    patch(&sp, 128 * 512 + 12, &[0xAB; 200]);
    v.push(("stream-grain-garbage".into(), sp));
    let sp = dir.join("stream-grain-size-absurd.vmdk");
    good_stream(dir, &sp);
    patch(&sp, 128 * 512 + 8, &le32(0x7FFF_FFFF));
    v.push(("stream-grain-size-absurd".into(), sp));
    let sp = dir.join("stream-header-descriptor-absurd.vmdk");
    good_stream(dir, &sp);
    patch(&sp, 0x24, &le64(1 << 60));
    v.push(("stream-header-descriptor-absurd".into(), sp));
    v
}

/// Opens, reads everything and checks: returns the first error as text, or None if all passed.
pub fn first_error(p: &Path) -> Option<String> {
    let img = match Image::open(p) {
        Ok(i) => i,
        Err(e) => return Some(e.to_string()),
    };
    let mut b = vec![0u8; MIB as usize];
    let mut off = 0;
    while off < img.size() {
        let n = (img.size() - off).min(MIB) as usize;
        if let Err(e) = img.read_at(&mut b[..n], off) {
            return Some(e.to_string());
        }
        off += n as u64;
    }
    match vmdk::check(p, false) {
        Ok(r) if r.exit_code() != 0 => Some(format!("check: {}", r.corruptions.first().or(r.leaks.first()).unwrap())),
        Ok(_) => None,
        Err(e) => Some(e.to_string()),
    }
}

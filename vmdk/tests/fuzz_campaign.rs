//! Mutational fuzz campaign over VMDK images (issue 11 acceptance).
//!
//! Each case takes one of six seed images (monolithicSparse made here and by qemu-img,
//! streamOptimized, twoGbMaxExtentSparse, monolithicFlat, a delta child on a parent), copies it
//! under a NEW name next to untouched decoys (among them the original name, which a single-file
//! image's embedded descriptor still carries), applies 1-3 mutations (extent lines, descriptor
//! keys, header fields, grain directory / table entries, truncation, byte flips), and runs every
//! verb on it through the library: info, map, check, convert (to raw and to monolithicSparse),
//! compare, check --repair, snapshot + commit, and a write/read-back. qemu-img converts the same
//! mutated file first; where both accept it, the guest-visible contents must agree.
//!
//! Findings (each fails the run):
//! - a panic in any verb;
//! - data safety: any file changed other than the image's own (for a single-file image: only the
//!   file itself, and for a delta the parent its hint names);
//! - self-inconsistency: convert -> raw and convert -> VMDK differ, compare of the image with its
//!   own conversion differs, a write that succeeded reads back differently, `check --repair` of a
//!   clean image changes its content.
//!
//! qemu disagreements are counted and printed (categories: both accept and agree / both accept and
//! differ / only qemu accepts / only we accept / both refuse), with the first examples of each.
//!
//!   cargo test -p vmdk --release --test fuzz_campaign -- --ignored --nocapture   (3,000 cases)
//!   FUZZ_CASES=N FUZZ_SEED=S  to change the count and the seed; FUZZ_ONLY=I replays case I alone
//!   and FUZZ_KEEP=1 keeps its files (in $TMPDIR/fuzz-kept-I, with the mutated file as mutated).
//! The always-on slice (`test_fuzz_slice`) runs 200 cases.

mod common;

use common::{s, Rng, Scratch};
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use vmdk::{AnyImage, CreateOptions, Image, Subformat, Target};

const MIB: u64 = 1 << 20;

/// One seed image: its files (name -> bytes) and which file is opened.
#[derive(Clone)]
struct Seed {
    name: &'static str,
    files: Vec<(String, Vec<u8>)>,
    /// Index in `files` of the file to open.
    main: usize,
    /// Whether the image is a single file (embedded descriptor).
    single: bool,
}

fn write_pattern(img: &Image, rng: &mut Rng, n: usize) {
    for _ in 0..n {
        let len = 512 * (1 + rng.below(300)) as usize;
        let off = rng.below(img.size().saturating_sub(len as u64).max(1) / 512) * 512;
        let mut b = vec![0u8; len];
        rng.fill(&mut b);
        img.write_at(&b, off).unwrap();
    }
}

fn have_qemu_tools() -> bool {
    Command::new("qemu-img").arg("--version").output().is_ok_and(|o| o.status.success())
}

fn seeds(dir: &Path, qemu: bool) -> Vec<Seed> {
    let mut rng = Rng(0x5eed);
    let mut out = Vec::new();
    let read = |p: &Path| std::fs::read(p).unwrap();
    // monolithicSparse, ours.
    let p = dir.join("a.vmdk");
    vmdk::create(&p, &CreateOptions::new(Subformat::MonolithicSparse, 4 * MIB)).unwrap();
    write_pattern(&Image::open_rw(&p).unwrap(), &mut rng, 6);
    out.push(Seed { name: "monolithicSparse", files: vec![("a.vmdk".into(), read(&p))], main: 0, single: true });
    // streamOptimized, ours.
    let raw = dir.join("src.raw");
    common::mixed_raw(&raw, 4 * MIB, &[0, 2 * MIB + 4097], 9);
    let p = dir.join("so.vmdk");
    let src = AnyImage::open(&raw, false).unwrap();
    vmdk::convert(&src, &p, &Target::Vmdk(CreateOptions::new(Subformat::StreamOptimized, 0)), &|_| {}).unwrap();
    out.push(Seed { name: "streamOptimized", files: vec![("so.vmdk".into(), read(&p))], main: 0, single: true });
    // monolithicFlat.
    let p = dir.join("f.vmdk");
    vmdk::create(&p, &CreateOptions::new(Subformat::MonolithicFlat, 2 * MIB)).unwrap();
    write_pattern(&Image::open_rw(&p).unwrap(), &mut rng, 4);
    out.push(Seed {
        name: "monolithicFlat",
        files: vec![("f.vmdk".into(), read(&p)), ("f-flat.vmdk".into(), read(&dir.join("f-flat.vmdk")))],
        main: 0,
        single: false,
    });
    // twoGbMaxExtentSparse with two extents (the second small).
    let p = dir.join("t.vmdk");
    vmdk::create(&p, &CreateOptions::new(Subformat::TwoGbMaxExtentSparse, (2 << 30) + 4 * MIB)).unwrap();
    {
        let i = Image::open_rw(&p).unwrap();
        i.write_at(&[0x3C; 70000], (2 << 30) - 30000).unwrap();
        i.write_at(&[0x4D; 4096], 4096).unwrap();
    }
    out.push(Seed {
        name: "twoGbMaxExtentSparse",
        files: ["t.vmdk", "t-s001.vmdk", "t-s002.vmdk"].iter().map(|n| (n.to_string(), read(&dir.join(n)))).collect(),
        main: 0,
        single: false,
    });
    // A delta child (single file) on a parent.
    let par = dir.join("base.vmdk");
    vmdk::create(&par, &CreateOptions::new(Subformat::MonolithicSparse, 4 * MIB)).unwrap();
    write_pattern(&Image::open_rw(&par).unwrap(), &mut rng, 5);
    let ch = dir.join("child.vmdk");
    vmdk::snapshot(&par, &ch, Subformat::MonolithicSparse, true).unwrap();
    write_pattern(&Image::open_rw(&ch).unwrap(), &mut rng, 3);
    out.push(Seed {
        name: "delta",
        files: vec![("child.vmdk".into(), read(&ch)), ("base.vmdk".into(), read(&par))],
        main: 0,
        single: true,
    });
    // monolithicSparse made by qemu-img.
    if qemu {
        let p = dir.join("q.vmdk");
        let ok = Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "vmdk", s(&raw), s(&p)])
            .status()
            .is_ok_and(|st| st.success());
        if ok {
            out.push(Seed {
                name: "qemu-monolithicSparse",
                files: vec![("q.vmdk".into(), read(&p))],
                main: 0,
                single: true,
            });
        }
    }
    out
}

// ---------------------------------------------------------------- mutator

fn u32_at(b: &[u8], o: usize) -> u32 {
    b.get(o..o + 4).map_or(0, |x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    b.get(o..o + 8).map_or(0, |x| u64::from_le_bytes(x.try_into().unwrap()))
}

fn interesting(rng: &mut Rng, around: u64) -> u64 {
    match rng.below(10) {
        0 => 0,
        1 => 1,
        2 => around.wrapping_add(1),
        3 => around.wrapping_sub(1),
        4 => around.wrapping_mul(2),
        5 => around / 2,
        6 => u64::from(u32::MAX),
        7 => u64::MAX,
        8 => rng.below(4096),
        _ => rng.next(),
    }
}

/// Where the embedded descriptor text is, if the file is a sparse extent with one.
fn embedded_desc(b: &[u8]) -> Option<(usize, usize)> {
    if u32_at(b, 0) != 0x564D_444B {
        return None;
    }
    let (off, size) = (u64_at(b, 0x1C) as usize * 512, u64_at(b, 0x24) as usize * 512);
    if off == 0 || size == 0 || off.checked_add(size)? > b.len() {
        return None;
    }
    let end = b[off..off + size].iter().position(|&c| c == 0).unwrap_or(size);
    Some((off, off + end))
}

fn mutate_text(t: &str, rng: &mut Rng, names: &[&str]) -> String {
    let mut lines: Vec<String> = t.lines().map(str::to_string).collect();
    let ext: Vec<usize> =
        (0..lines.len()).filter(|&i| ["RW ", "RDONLY ", "NOACCESS "].iter().any(|p| lines[i].starts_with(p))).collect();
    let pick = |rng: &mut Rng, v: &[usize]| v[rng.below(v.len().max(1) as u64) as usize % v.len().max(1)];
    match rng.below(12) {
        0 if !ext.is_empty() => {
            let i = pick(rng, &ext);
            let kinds = ["FLAT", "SPARSE", "VMFS", "ZERO", "VMFSSPARSE", "SESPARSE"];
            let k = kinds[rng.below(kinds.len() as u64) as usize];
            for o in ["FLAT", "SPARSE", "VMFS", "ZERO"] {
                if lines[i].contains(&format!(" {o}")) {
                    lines[i] = lines[i].replacen(&format!(" {o}"), &format!(" {k}"), 1);
                    break;
                }
            }
            if k == "FLAT" && rng.below(2) == 0 {
                lines[i] += &format!(" {}", rng.below(64));
            }
        }
        1 if !ext.is_empty() => {
            // The size field.
            let i = pick(rng, &ext);
            let f: Vec<String> = lines[i].split(' ').map(str::to_string).collect();
            if f.len() > 1 {
                let old: u64 = f[1].parse().unwrap_or(8192);
                let new = match rng.below(6) {
                    0 => format!("+{old}"),
                    1 => format!("-{old}"),
                    2 => format!("{}", old / 2),
                    3 => format!("{}", old * 2),
                    4 => format!("{}", old + 1),
                    _ => format!("{}", interesting(rng, old)),
                };
                let mut g = f.clone();
                g[1] = new;
                lines[i] = g.join(" ");
            }
        }
        2 if !ext.is_empty() => {
            let i = pick(rng, &ext);
            let n = 1 + rng.below(4) as usize;
            for _ in 0..n {
                lines.insert(i, lines[i].clone());
            }
        }
        3 if !ext.is_empty() => {
            let i = pick(rng, &ext);
            lines.remove(i);
        }
        4 if !ext.is_empty() => {
            // The file name: another file of the case, a missing one, a path outside.
            let i = pick(rng, &ext);
            if let (Some(a), Some(b)) = (lines[i].find('"'), lines[i].rfind('"')) {
                if b > a {
                    let choices: Vec<String> = names
                        .iter()
                        .map(|n| n.to_string())
                        .chain(["missing.vmdk", "../outside.vmdk", "/etc/passwd", "", "sub/x.vmdk"].map(String::from))
                        .collect();
                    let n = &choices[rng.below(choices.len() as u64) as usize];
                    lines[i] = format!("{}\"{n}\"{}", &lines[i][..a], &lines[i][b + 1..]);
                }
            }
        }
        5 if !ext.is_empty() => {
            let i = pick(rng, &ext);
            let acc = ["RW", "RDONLY", "NOACCESS", "rw", "XX"][rng.below(5) as usize];
            if let Some(sp) = lines[i].find(' ') {
                lines[i] = format!("{acc}{}", &lines[i][sp..]);
            }
        }
        6 => {
            let keys = ["CID", "parentCID", "createType", "version", "parentFileNameHint"];
            let k = keys[rng.below(keys.len() as u64) as usize];
            let vals = [
                "ffffffff",
                "fffffffe",
                "0",
                "\"monolithicFlat\"",
                "\"streamOptimized\"",
                "\"base.vmdk\"",
                "\"a.vmdk\"",
                "2",
                "9",
                "\"\"",
            ];
            let v = vals[rng.below(vals.len() as u64) as usize];
            match lines.iter().position(|l| l.starts_with(&format!("{k}="))) {
                Some(i) if rng.below(4) == 0 => {
                    lines.remove(i);
                }
                Some(i) => lines[i] = format!("{k}={v}"),
                None => lines.insert(1, format!("{k}={v}")),
            }
        }
        7 if !ext.is_empty() => {
            // A FLAT offset.
            let i = pick(rng, &ext);
            if lines[i].contains(" FLAT ") {
                let f: Vec<&str> = lines[i].rsplitn(2, ' ').collect();
                if f.len() == 2 && f[0].chars().all(|c| c.is_ascii_digit()) {
                    let old: u64 = f[0].parse().unwrap_or(0);
                    lines[i] = format!("{} {}", f[1], interesting(rng, old) % (1 << 40));
                } else {
                    lines[i] += &format!(" {}", rng.below(1 << 33));
                }
            }
        }
        8 => {
            // A new extent line.
            let l = [
                "RW 100 ZERO",
                "RW 2048 FLAT \"a.vmdk\" 0",
                "RW 8192 SPARSE \"a.vmdk\"",
                "RDONLY 64 FLAT \"victim.raw\" 3",
            ];
            let at = ext.last().map_or(lines.len(), |&i| i + 1);
            lines.insert(at, l[rng.below(l.len() as u64) as usize].to_string());
        }
        _ => {
            // Byte flips in the text.
            let mut b = lines.join("\n").into_bytes();
            for _ in 0..1 + rng.below(3) {
                if !b.is_empty() {
                    let i = rng.below(b.len() as u64) as usize;
                    b[i] = [b' ', b'"', b'\n', b'=', b'0', b'9', b'#', 0xFF, 0][rng.below(9) as usize];
                }
            }
            return String::from_utf8_lossy(&b).into_owned();
        }
    }
    let mut t = lines.join("\n");
    t.push('\n');
    t
}

/// Applies one mutation to a file of the case; returns what it did.
fn mutate_file(b: &mut Vec<u8>, rng: &mut Rng, names: &[&str]) -> String {
    let sparse = u32_at(b, 0) == 0x564D_444B;
    let text = !sparse && b.starts_with(b"# Disk DescriptorFile");
    let choice = rng.below(100);
    if text && choice < 70 {
        let t = String::from_utf8_lossy(b).into_owned();
        *b = mutate_text(&t, rng, names).into_bytes();
        return "descriptor text".into();
    }
    if sparse && choice < 30 {
        if let Some((o, e)) = embedded_desc(b) {
            let t = String::from_utf8_lossy(&b[o..e]).into_owned();
            let room = u64_at(b, 0x24) as usize * 512;
            let mut n = mutate_text(&t, rng, names).into_bytes();
            n.truncate(room);
            n.resize(room, 0);
            b[o..o + room].copy_from_slice(&n);
            return "embedded descriptor".into();
        }
    }
    if sparse && choice < 55 {
        // A header field.
        let fields: [(usize, usize, &str); 11] = [
            (4, 4, "version"),
            (8, 4, "flags"),
            (0x0C, 8, "capacity"),
            (0x14, 8, "grainSize"),
            (0x1C, 8, "descriptorOffset"),
            (0x24, 8, "descriptorSize"),
            (0x2C, 4, "numGTEsPerGT"),
            (0x30, 8, "rgdOffset"),
            (0x38, 8, "gdOffset"),
            (0x40, 8, "overHead"),
            (0x4D, 2, "compressAlgorithm"),
        ];
        let (o, w, name) = fields[rng.below(fields.len() as u64) as usize];
        if o + w > b.len() {
            b.truncate(b.len() / 2);
            return "truncation".into();
        }
        let old = if w == 8 { u64_at(b, o) } else { u64::from(u32_at(b, o)) };
        let v = interesting(rng, old);
        b[o..o + w].copy_from_slice(&v.to_le_bytes()[..w]);
        return format!("header {name}");
    }
    if sparse && choice < 80 {
        // A grain directory or grain table entry.
        let gd = u64_at(b, 0x38);
        let rgd = u64_at(b, 0x30);
        let dir = if rng.below(2) == 0 { gd } else { rgd };
        let dir_off = (dir as usize).saturating_mul(512);
        if dir != 0 && dir_off.checked_add(16).is_some_and(|e| e <= b.len()) {
            let gt = u32_at(b, dir_off) as usize * 512;
            let (at, what) = if rng.below(3) == 0 || gt == 0 || gt + 2048 > b.len() {
                (dir_off + 4 * rng.below(4) as usize, "GD entry")
            } else {
                (gt + 4 * rng.below(512) as usize, "GT entry")
            };
            if at.checked_add(4).is_some_and(|e| e <= b.len()) {
                let old = u64::from(u32_at(b, at));
                let v = match rng.below(5) {
                    0 => u64::from(u32_at(b, gt + 4 * rng.below(512) as usize)), // alias another entry
                    1 => rng.below(8),                                           // into the header
                    2 => (b.len() as u64 / 512).saturating_sub(rng.below(3)),    // at EOF
                    _ => interesting(rng, old),
                } as u32;
                b[at..at + 4].copy_from_slice(&v.to_le_bytes());
                return what.into();
            }
        }
    }
    if choice < 90 && b.len() > 1 {
        let n = match rng.below(4) {
            0 => b.len() - 1,
            1 => b.len() / 2,
            2 => 512 * (1 + rng.below(8) as usize),
            _ => rng.below(b.len() as u64) as usize,
        };
        b.truncate(n.min(b.len()));
        return "truncation".into();
    }
    for _ in 0..1 + rng.below(8) {
        if !b.is_empty() {
            let i = rng.below(b.len().min(1 << 16) as u64) as usize;
            b[i] ^= 1 << rng.below(8);
        }
    }
    "bit flips".into()
}

// ---------------------------------------------------------------- verbs

#[derive(Default, Debug)]
struct Tally {
    cases: usize,
    opened: usize,
    refused: usize,
    qemu_agree: usize,
    qemu_differ: usize,
    only_qemu_accepts: usize,
    only_we_accept: usize,
    both_refuse: usize,
    qemu_skipped: usize,
    findings: Vec<String>,
    examples: BTreeMap<&'static str, Vec<String>>,
    /// Why we refused files qemu-img accepts (message shape -> count).
    refusal_reasons: BTreeMap<String, usize>,
    /// Content differences where the descriptor has RDONLY, NOACCESS or ZERO extents, which
    /// qemu-img drops (a documented difference).
    differ_dropped_extents: usize,
    by_seed: BTreeMap<&'static str, usize>,
}

impl Tally {
    fn example(&mut self, cat: &'static str, what: String) {
        let v = self.examples.entry(cat).or_default();
        if v.len() < 5 {
            v.push(what);
        }
    }
}

fn hash(p: &Path) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let b = std::fs::read(p).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    b.hash(&mut h);
    Some(h.finish())
}

fn snapshot_dir(dir: &Path) -> BTreeMap<PathBuf, Option<u64>> {
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.file_type().is_ok_and(|t| t.is_file()) {
            m.insert(e.path(), hash(&e.path()));
        }
    }
    m
}

/// Runs `f`, turning a panic into a finding.
fn guarded<T>(t: &mut Tally, case: &str, verb: &str, f: impl FnOnce() -> T) -> Option<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => Some(v),
        Err(e) => {
            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
            t.findings.push(format!("{case}: {verb} panicked: {}", msg.unwrap_or_default()));
            None
        }
    }
}

fn qemu_convert(img: &Path, out: &Path) -> bool {
    Command::new("timeout")
        .args(["30", "qemu-img", "convert", "-f", "vmdk", "-O", "raw", s(img), s(out)])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|st| st.success())
}

fn same_content(a: &Path, b: &Path) -> Result<Option<u64>, vmdk::Error> {
    let raw = |p: &Path| p.extension().is_none_or(|e| e != "vmdk");
    let x = AnyImage::open_as(a, raw(a), false)?;
    let y = AnyImage::open_as(b, raw(b), false)?;
    vmdk::compare_images(&x, &y, &|_| {})
}

/// Largest virtual size the campaign converts (bigger mutated capacities are still opened,
/// mapped and checked, but not written out).
const MAX_CONVERT: u64 = 8 << 30;

fn run_case(t: &mut Tally, root: &Path, seed: &Seed, idx: usize, rng: &mut Rng, qemu: bool) {
    let case = format!("case {idx} ({})", seed.name);
    let dir = root.join(format!("c{idx}"));
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    // The image under a new name; its original name and other files stay as decoys.
    let mut names: Vec<String> = seed.files.iter().map(|f| f.0.clone()).collect();
    let new_main = format!("copy-of-{}", names[seed.main]);
    let mut files: Vec<(String, Vec<u8>)> = seed.files.clone();
    files[seed.main].0 = new_main.clone();
    names.push(new_main.clone());
    for (n, b) in &seed.files {
        std::fs::write(dir.join(n), b).unwrap(); // decoys (and, for multi-file images, the extents)
    }
    std::fs::write(dir.join("victim.raw"), vec![0x99u8; 64 << 10]).unwrap();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).chain(["victim.raw"]).collect();
    let mut what = Vec::new();
    for _ in 0..1 + rng.below(3) {
        let k = if rng.below(3) == 0 { rng.below(files.len() as u64) as usize } else { seed.main };
        let m = mutate_file(&mut files[k].1, rng, &name_refs);
        what.push(format!("{}: {m}", files[k].0));
    }
    let case = format!("{case} [{}]", what.join("; "));
    for (n, b) in &files {
        if n != &new_main && seed.single {
            continue; // a single-file image's other files are decoys: keep the originals
        }
        std::fs::write(dir.join(n), b).unwrap();
    }
    let img = dir.join(&new_main);
    // Files the image may legitimately change.
    let mut allowed: Vec<PathBuf> = vec![img.clone()];
    let own_text = std::fs::read(&img).unwrap_or_default();
    let desc_text = match embedded_desc(&own_text) {
        Some((o, e)) => String::from_utf8_lossy(&own_text[o..e]).into_owned(),
        None => String::from_utf8_lossy(&own_text[..own_text.len().min(1 << 20)]).into_owned(),
    };
    for l in desc_text.lines() {
        let quoted = l.split('"').nth(1).unwrap_or_default();
        let is_hint = l.trim_start().starts_with("parentFileNameHint");
        if !quoted.is_empty() && (is_hint || !seed.single) {
            allowed.push(dir.join(quoted));
            if let Ok(c) = std::fs::canonicalize(dir.join(quoted)) {
                allowed.push(c);
            }
        }
    }
    let before = snapshot_dir(&dir);
    let _ = std::fs::copy(&img, out.join(format!("pristine-{new_main}")));

    // qemu-img first, on the untouched mutated file.
    let qraw = out.join("qemu.raw");
    let qemu_ok = qemu && qemu_convert(&img, &qraw);
    if !qemu {
        t.qemu_skipped += 1;
    }

    // Read-only verbs.
    let opened = guarded(t, &case, "info", || match AnyImage::open(&img, false) {
        Ok(AnyImage::Vmdk(i)) => {
            let _ = (i.descriptor(), i.extent_info(), i.allocated_bytes(), i.chain_depth(), i.parent_path());
            Ok(i.size())
        }
        Ok(AnyImage::Raw(_)) => Err("probed as raw".to_string()),
        Err(e) => Err(e.to_string()),
    });
    let Some(opened) = opened else { return };
    guarded(t, &case, "map", || Image::open(&img).and_then(|i| i.map()).map(|m| m.len()));
    let clean =
        guarded(t, &case, "check", || vmdk::check(&img, false).map(|r| r.exit_code() == 0)).and_then(Result::ok);
    let fraw = out.join("ours.raw");
    let converted = match &opened {
        Ok(size) if *size <= MAX_CONVERT => guarded(t, &case, "convert", || {
            let src = AnyImage::open(&img, false)?;
            vmdk::convert(&src, &fraw, &Target::Raw, &|_| {})
        })
        .is_some_and(|r| r.is_ok()),
        _ => false,
    };
    if converted {
        let fvm = out.join("ours.vmdk");
        let r = guarded(t, &case, "convert to vmdk", || {
            let src = AnyImage::open(&img, false)?;
            vmdk::convert(&src, &fvm, &Target::Vmdk(CreateOptions::new(Subformat::MonolithicSparse, 0)), &|_| {})
        });
        if r.as_ref().is_some_and(|r| r.is_ok()) {
            match same_content(&fraw, &fvm) {
                Ok(None) => {}
                other => t.findings.push(format!("{case}: convert to raw and to vmdk differ: {other:?}")),
            }
        }
        let r = guarded(t, &case, "compare", || same_content(&img, &fraw));
        if let Some(r) = r {
            if !matches!(r, Ok(None)) {
                t.findings.push(format!("{case}: compare of the image with its own conversion: {r:?}"));
            }
        }
    }
    match &opened {
        Ok(_) => t.opened += 1,
        Err(_) => t.refused += 1,
    }
    // qemu agreement.
    if qemu {
        let ours_ok = converted;
        match (qemu_ok, ours_ok) {
            (true, true) => match same_content(&fraw, &qraw) {
                Ok(None) => t.qemu_agree += 1,
                other => {
                    t.qemu_differ += 1;
                    let dropped = desc_text.lines().any(|l| {
                        let l = l.trim_start();
                        l.starts_with("RDONLY ") || l.starts_with("NOACCESS ") || l.contains(" ZERO")
                    });
                    if dropped {
                        t.differ_dropped_extents += 1;
                        t.example(
                            "both accept, content differs (RDONLY/NOACCESS/ZERO extent)",
                            format!("{case}: {other:?}"),
                        );
                    } else {
                        t.example("both accept, content differs (other)", format!("{case}: {other:?}"));
                    }
                }
            },
            (true, false) => {
                t.only_qemu_accepts += 1;
                let why = match &opened {
                    Err(e) => e.clone(),
                    Ok(sz) if *sz > MAX_CONVERT => format!("size {sz} not converted by the campaign"),
                    Ok(_) => "convert failed".into(),
                };
                // The shape of the message: after the file name, digits folded, quoted text dropped.
                let tail = why.rsplit(".vmdk: ").next().unwrap_or(&why);
                let mut shape: String = tail
                    .split('"')
                    .enumerate()
                    .map(|(i, p)| if i % 2 == 1 { "\"…\"" } else { p })
                    .collect::<String>()
                    .chars()
                    .map(|c| if c.is_ascii_digit() { '#' } else { c })
                    .collect();
                while shape.contains("##") {
                    shape = shape.replace("##", "#");
                }
                *t.refusal_reasons.entry(shape.chars().take(90).collect()).or_default() += 1;
                t.example("only qemu-img accepts", format!("{case}: {why}"));
            }
            (false, true) => {
                t.only_we_accept += 1;
                t.example("only ferrovisor accepts", case.clone());
            }
            (false, false) => t.both_refuse += 1,
        }
    }

    // Verbs that write.
    if opened.is_ok() {
        let before_repair = if clean == Some(true) && converted { Some(fraw.clone()) } else { None };
        guarded(t, &case, "check --repair", || vmdk::check(&img, true).map(|r| r.exit_code()));
        if let Some(raw) = before_repair {
            match same_content(&img, &raw) {
                Ok(None) => {}
                other => t.findings.push(format!("{case}: check --repair of a clean image changed it: {other:?}")),
            }
        }
        let child = out.join("snap.vmdk");
        guarded(t, &case, "snapshot + commit", || -> vmdk::Result<()> {
            vmdk::snapshot(&img, &child, Subformat::MonolithicSparse, false)?;
            let c = Image::open_rw(&child)?;
            let data = vec![0xC7u8; 4096];
            let off = (c.size() / 2) / 4096 * 4096;
            if c.size() < 4096 {
                return Ok(());
            }
            c.write_at(&data, off)?;
            drop(c);
            vmdk::commit(&child, &|_| {})?;
            // A commit that succeeded must be visible in the image.
            let i = Image::open(&img)?;
            let mut b = vec![0u8; 4096];
            i.read_at(&mut b, off)?;
            assert!(b == data, "commit succeeded but the data is not in the image");
            Ok(())
        });
        guarded(t, &case, "write", || -> vmdk::Result<()> {
            let i = Image::open_rw(&img)?;
            if i.size() < 8192 {
                return Ok(());
            }
            let mut r = Rng(idx as u64 + 1);
            let mut data = vec![0u8; 8192];
            r.fill(&mut data);
            let off = r.below((i.size() / 512 - 16).max(1)) * 512;
            i.write_at(&data, off)?;
            i.flush()?;
            drop(i);
            let i = Image::open(&img)?;
            let mut b = vec![0u8; 8192];
            i.read_at(&mut b, off)?;
            assert!(b == data, "a write that succeeded reads back differently");
            Ok(())
        });
    }

    // Data safety: nothing outside the image's own files changed.
    let after = snapshot_dir(&dir);
    for (p, h) in &before {
        let changed = after.get(p) != Some(h);
        let ok = allowed.iter().any(|a| a == p || std::fs::canonicalize(a).ok().as_deref() == Some(p.as_path()));
        if changed && !ok {
            t.findings.push(format!("{case}: DATA SAFETY: {} changed", p.display()));
        }
    }
    for p in after.keys() {
        if !before.contains_key(p) {
            t.findings.push(format!("{case}: DATA SAFETY: {} was created", p.display()));
        }
    }
    if std::env::var_os("FUZZ_KEEP").is_some() {
        // Keep the case (and the scratch root) for inspection.
        let keep = std::env::temp_dir().join(format!("fuzz-kept-{idx}"));
        let _ = std::fs::remove_dir_all(&keep);
        let _ = std::fs::rename(&dir, &keep);
        eprintln!("kept {} as {}", case, keep.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn campaign(cases: usize, seed: u64) -> Tally {
    let root = Scratch::new(&format!("fuzz-campaign-{seed}"));
    let qemu = have_qemu_tools();
    let seeds_dir = root.path("seeds");
    std::fs::create_dir_all(&seeds_dir).unwrap();
    let seeds = seeds(&seeds_dir, qemu);
    let only: Option<usize> = std::env::var("FUZZ_ONLY").ok().and_then(|v| v.parse().ok());
    let mut t = Tally::default();
    for idx in 0..cases {
        if only.is_some_and(|o| o != idx) {
            continue;
        }
        let sd = &seeds[idx % seeds.len()];
        *t.by_seed.entry(sd.name).or_default() += 1;
        // One generator per case, so that FUZZ_ONLY=N replays case N alone.
        let mut rng = Rng((seed ^ (idx as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
        rng.next();
        run_case(&mut t, &root.0, sd, idx, &mut rng, qemu);
        t.cases += 1;
        if (idx + 1) % 500 == 0 {
            eprintln!("fuzz campaign: {} cases, {} findings", idx + 1, t.findings.len());
        }
    }
    println!("fuzz campaign: seed {seed:#x}, {} cases over seeds {:?}", t.cases, t.by_seed);
    println!("  opened by ferrovisor: {}, refused with an error: {}", t.opened, t.refused);
    if qemu {
        println!(
            "  vs qemu-img: both accept and agree {}, both accept and differ {}, only qemu-img accepts {}, only ferrovisor accepts {}, both refuse {}",
            t.qemu_agree, t.qemu_differ, t.only_qemu_accepts, t.only_we_accept, t.both_refuse
        );
    } else {
        println!("  skipped: qemu-img comparison (qemu-img not found) for {} cases", t.qemu_skipped);
    }
    if qemu {
        println!(
            "  of the content differences, {} have RDONLY/NOACCESS/ZERO extents (qemu-img drops them)",
            t.differ_dropped_extents
        );
        let mut reasons: Vec<_> = t.refusal_reasons.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1));
        println!("  why ferrovisor refused files qemu-img accepts (top 15):");
        for (r, n) in reasons.iter().take(15) {
            println!("    {n:5}  {r}");
        }
    }
    for (cat, ex) in &t.examples {
        println!("  {cat}, first examples:");
        for e in ex {
            println!("    {e}");
        }
    }
    println!("  findings: {}", t.findings.len());
    for f in t.findings.iter().take(50) {
        println!("    {f}");
    }
    t
}

fn env_or(k: &str, d: u64) -> u64 {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

#[test]
fn test_fuzz_slice() {
    let t = campaign(env_or("FUZZ_SLICE_CASES", 200) as usize, 0x0511CE);
    assert!(t.findings.is_empty(), "{} findings: {:#?}", t.findings.len(), t.findings);
}

#[test]
#[ignore = "the full 3,000-case campaign (a few minutes); run with --ignored"]
fn fuzz_campaign_full() {
    let t = campaign(env_or("FUZZ_CASES", 3000) as usize, env_or("FUZZ_SEED", 0xF022));
    assert!(t.findings.is_empty(), "{} findings: {:#?}", t.findings.len(), t.findings);
}

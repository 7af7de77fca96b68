//! `ferrovisor disk` end to end: verbs, exit codes, and the malformed corpus through the CLI.

#[path = "../vmdk/tests/common/mod.rs"]
mod common;
#[path = "../vmdk/tests/corpus/mod.rs"]
mod corpus;

use common::{have_qemu, qemu_img, s, Scratch};
use std::process::Command;

fn fv(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_ferrovisor")).arg("disk").args(args).output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn test_help_for_every_verb() {
    for v in ["create", "info", "check", "convert", "snapshot", "commit", "compare", "map"] {
        let (rc, out, _) = fv(&[v, "--help"]);
        assert_eq!(rc, 0, "{v} --help");
        assert!(out.contains("Usage: ferrovisor disk"), "{v}: {out}");
    }
}

#[test]
fn test_corpus_through_cli() {
    let d = Scratch::new("cli-corpus");
    for (name, p) in corpus::build(&d.0) {
        let (rc, out, err) = fv(&["check", s(&p)]);
        assert!(!err.contains("panicked") && !out.contains("panicked"), "{name}: panic: {err}");
        assert!(matches!(rc, 1..=3), "{name}: check exit {rc}\n{out}\n{err}");
        if rc == 1 {
            let line = err.lines().next().unwrap_or_default();
            assert!(line.starts_with("ferrovisor: ") && line.len() > 20, "{name}: unclear error {err:?}");
        }
        let (rc, _, err) = fv(&["map", s(&p)]);
        assert!(!err.contains("panicked"), "{name}: map panicked: {err}");
        let _ = rc;
    }
}

#[test]
fn test_verbs_end_to_end() {
    let d = Scratch::new("cli-verbs");
    let raw = d.path("in.raw");
    common::mixed_raw(&raw, 12 << 20, &[0, 3 << 20, 7_000_001, 11 << 20], 5);
    // create + info
    let img = d.path("new.vmdk");
    let (rc, _, err) = fv(&["create", "--subformat", "monolithicFlat", "--adapter-type", "lsilogic", s(&img), "100M"]);
    assert_eq!(rc, 0, "{err}");
    let (rc, out, _) = fv(&["info", "--output", "json", s(&img)]);
    assert_eq!(rc, 0);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["virtual-size"], 100 << 20);
    assert_eq!(j["create-type"], "monolithicFlat");
    assert_eq!(j["adapter-type"], "lsilogic");
    assert_eq!(j["extents"][0]["type"], "FLAT");
    let (rc, _, _) = fv(&["create", s(&img), "1M"]);
    assert_eq!(rc, 1, "create must refuse an existing file");
    // convert raw -> every subformat -> raw, compare
    for sf in ["monolithicSparse", "streamOptimized", "twoGbMaxExtentSparse", "monolithicFlat", "twoGbMaxExtentFlat"] {
        let v = d.path(&format!("{sf}.vmdk"));
        let (rc, _, err) = fv(&["convert", "-q", "-O", "vmdk", "--subformat", sf, s(&raw), s(&v)]);
        assert_eq!(rc, 0, "{sf}: {err}");
        let (rc, out, _) = fv(&["compare", "-q", s(&raw), s(&v)]);
        assert_eq!((rc, out.trim()), (0, "Images are identical."), "{sf}");
        let (rc, out, _) = fv(&["check", s(&v)]);
        assert_eq!(rc, 0, "{sf}: {out}");
        let back = d.path(&format!("{sf}.raw"));
        let (rc, _, err) = fv(&["convert", "-q", "-O", "raw", s(&v), s(&back)]);
        assert_eq!(rc, 0, "{err}");
        assert!(std::fs::read(&back).unwrap() == std::fs::read(&raw).unwrap(), "{sf} round trip");
    }
    // VMDK -> VMDK
    let (rc, _, err) =
        fv(&["convert", "-q", "-s", "monolithicSparse", s(&d.path("streamOptimized.vmdk")), s(&d.path("s2m.vmdk"))]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(fv(&["compare", "-q", s(&raw), s(&d.path("s2m.vmdk"))]).0, 0);
    // compare exit codes: 1 mismatch, 2 open error
    let other = d.path("other.raw");
    let mut b = std::fs::read(&raw).unwrap();
    b[5_000_000] ^= 1;
    std::fs::write(&other, b).unwrap();
    let (rc, out, _) = fv(&["compare", "-q", s(&raw), s(&other)]);
    assert_eq!(rc, 1);
    assert_eq!(out.trim(), format!("Content mismatch at offset {}!", 5_000_000 / 512 * 512));
    assert_eq!(fv(&["compare", "-q", s(&raw), s(&d.path("missing.vmdk"))]).0, 2);
    // snapshot, map, commit
    let base = d.path("monolithicSparse.vmdk");
    let child = d.path("child.vmdk");
    let (rc, _, err) = fv(&["snapshot", "--zeroed-grain", s(&base), s(&child)]);
    assert_eq!(rc, 0, "{err}");
    {
        let c = vmdk::Image::open_rw(&child).unwrap();
        c.write_at(&[0xEE; 100_000], 1 << 20).unwrap();
        c.write_zeroes(0, 64 << 10).unwrap();
    }
    let (rc, out, _) = fv(&["map", "--output", "json", s(&child)]);
    assert_eq!(rc, 0);
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    let kinds: Vec<&str> = m.as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"data") && kinds.contains(&"parent") && kinds.contains(&"zero"), "{kinds:?}");
    let child_raw = d.path("child.raw");
    assert_eq!(fv(&["convert", "-q", "-O", "raw", s(&child), s(&child_raw)]).0, 0);
    let (rc, out, err) = fv(&["commit", "-q", s(&child)]);
    assert_eq!(rc, 0, "{out}{err}");
    assert_eq!(fv(&["compare", "-q", s(&child_raw), s(&base)]).0, 0, "base after commit");
    assert_eq!(fv(&["compare", "-q", s(&child_raw), s(&child)]).0, 0, "child after commit");
    assert_eq!(fv(&["check", s(&base)]).0, 0);
    if have_qemu("test_verbs_end_to_end: qemu cross-check") {
        assert_eq!(qemu_img(&["check", s(&base)]).0, 0);
        assert_eq!(qemu_img(&["compare", "-f", "raw", "-F", "vmdk", s(&child_raw), s(&child)]).0, 0);
    }
}

#[test]
fn test_check_leaks_and_repair() {
    use std::os::unix::fs::FileExt;
    let d = Scratch::new("cli-check");
    let p = d.path("l.vmdk");
    assert_eq!(fv(&["create", s(&p), "8M"]).0, 0);
    {
        let i = vmdk::Image::open_rw(&p).unwrap();
        i.write_at(&[7; 200_000], 0).unwrap();
    }
    // A leaked grain at the tail (as after a crash between grain write and table update).
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&p).unwrap();
    let len = f.metadata().unwrap().len();
    f.write_all_at(&[9; 65536], len).unwrap();
    let (rc, out, _) = fv(&["check", s(&p)]);
    assert_eq!(rc, 3, "{out}");
    let (rc, out, _) = fv(&["check", "--repair", s(&p)]);
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("Repaired"), "{out}");
    // A table mismatch where the primary entry is invalid and the redundant copy is good.
    let mut b = [0u8; 512];
    f.read_exact_at(&mut b, 0).unwrap();
    let h = vmdk::header::SparseHeader::parse(&b).unwrap();
    let mut e = [0u8; 4];
    f.read_exact_at(&mut e, h.gd_offset * 512).unwrap();
    let gt = u64::from(u32::from_le_bytes(e));
    f.write_all_at(&0x0FFF_FFFFu32.to_le_bytes(), gt * 512 + 4).unwrap();
    let (rc, out, _) = fv(&["check", "--output", "json", s(&p)]);
    assert_eq!(rc, 2, "{out}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(j["check-errors"].as_u64().unwrap() >= 1);
    let (rc, out, _) = fv(&["check", "-r", s(&p)]);
    assert_eq!(rc, 0, "{out}");
    let i = vmdk::Image::open(&p).unwrap();
    let mut r = vec![0u8; 200_000];
    i.read_at(&mut r, 0).unwrap();
    assert!(r.iter().all(|&x| x == 7), "repair restored the data");
    if have_qemu("test_check_leaks_and_repair") {
        assert_eq!(qemu_img(&["check", s(&p)]).0, 0);
    }
}

#[test]
fn test_info_honours_rdonly_noaccess_zero_extents() {
    let d = Scratch::new("cli-access");
    std::fs::File::create(d.path("a-flat.vmdk")).unwrap().set_len(8 << 20).unwrap();
    assert_eq!(fv(&["create", s(&d.path("b.vmdk")), "8M"]).0, 0);
    let desc = "# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\ncreateType=\"monolithicFlat\"\n\n\
                RW 16384 FLAT \"a-flat.vmdk\" 0\nRDONLY 16384 SPARSE \"b.vmdk\"\nRW 2048 ZERO\nNOACCESS 2048 ZERO\n";
    let p = d.path("mixed.vmdk");
    std::fs::write(&p, desc).unwrap();
    let (rc, out, err) = fv(&["info", "--output", "json", s(&p)]);
    assert_eq!(rc, 0, "{err}");
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(j["virtual-size"], (16384 + 16384 + 2048 + 2048) * 512);
    let acc: Vec<&str> = j["extents"].as_array().unwrap().iter().map(|e| e["access"].as_str().unwrap()).collect();
    assert_eq!(acc, ["RW", "RDONLY", "RW", "NOACCESS"]);
    let (rc, out, _) = fv(&["map", s(&p)]);
    assert_eq!(rc, 0);
    assert!(out.contains("noaccess") && out.contains("zero"), "{out}");
    // Reading the NOACCESS extent fails clearly (convert cannot silently drop it, unlike qemu-img).
    let (rc, _, err) = fv(&["convert", "-q", "-O", "raw", s(&p), s(&d.path("out.raw"))]);
    assert_eq!(rc, 1);
    assert!(err.contains("NOACCESS"), "{err}");
}

#[test]
fn test_interrupted_commit_keeps_child_view() {
    let d = Scratch::new("cli-commit-kill");
    let base = d.path("base.vmdk");
    let child = d.path("child.vmdk");
    assert_eq!(fv(&["create", s(&base), "48M"]).0, 0);
    {
        let b = vmdk::Image::open_rw(&base).unwrap();
        b.write_at(&vec![0xAA; 48 << 20], 0).unwrap();
    }
    assert_eq!(fv(&["snapshot", "--zeroed-grain", s(&base), s(&child)]).0, 0);
    {
        let c = vmdk::Image::open_rw(&child).unwrap();
        let mut rng = common::Rng(3);
        for i in 0..12u64 {
            let mut buf = vec![0u8; 2 << 20];
            rng.fill(&mut buf);
            c.write_at(&buf, i * (4 << 20) + 12345).unwrap();
        }
        c.write_zeroes(1 << 20, 1 << 20).unwrap();
    }
    let expected = d.path("expected.raw");
    assert_eq!(fv(&["convert", "-q", "-O", "raw", s(&child), s(&expected)]).0, 0);
    let want = std::fs::read(&expected).unwrap();
    let mut rng = common::Rng(99);
    let mut mismatches = 0;
    let mut killed = 0;
    for round in 0..10 {
        let r = d.path(&format!("r{round}"));
        std::fs::create_dir(&r).unwrap();
        std::fs::copy(&base, r.join("base.vmdk")).unwrap();
        std::fs::copy(&child, r.join("child.vmdk")).unwrap();
        let mut p = Command::new(env!("CARGO_BIN_EXE_ferrovisor"))
            .args(["disk", "commit", "-q", s(&r.join("child.vmdk"))])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(rng.below(120)));
        let _ = p.kill();
        if std::os::unix::process::ExitStatusExt::signal(&p.wait().unwrap()) == Some(9) {
            killed += 1;
        }
        match vmdk::Image::open(r.join("child.vmdk")) {
            Ok(c) => {
                let mut got = vec![0u8; want.len()];
                c.read_at(&mut got, 0).unwrap();
                assert!(got == want, "round {round}: the child's view changed");
            }
            // Only possible if the kill fell between renewing the parent's CID and rewriting the
            // child's parentCID (two small descriptor writes): a clear error, no data changed.
            Err(vmdk::Error::CidMismatch { .. }) => mismatches += 1,
            Err(e) => panic!("round {round}: {e}"),
        }
        let rep = vmdk::check(&r.join("base.vmdk"), false).unwrap();
        assert!(rep.corruptions.is_empty(), "round {round}: {:?}", rep.corruptions);
        if have_qemu("interrupted commit") {
            assert_eq!(qemu_img(&["check", s(&r.join("base.vmdk"))]).0, 0);
        }
    }
    println!("{killed} of 10 commits killed mid-run, {mismatches} CID mismatches");
    assert!(mismatches <= 1, "{mismatches} rounds left a CID mismatch");
}

/// Issue 11 item 8: an I/O error names the OS error once.
#[test]
fn test_io_error_printed_once() {
    let d = Scratch::new("cli-once");
    let missing = d.path("missing.vmdk");
    for args in [
        vec!["info", s(&missing)],
        vec!["convert", "-q", s(&missing), "/dev/null"],
        vec!["map", s(&missing)],
        vec!["compare", "-q", s(&missing), "/dev/null"],
        vec!["check", s(&missing)],
    ] {
        let (rc, _, err) = fv(&args);
        assert_ne!(rc, 0, "{args:?}");
        assert_eq!(err.matches("No such file or directory").count(), 1, "{args:?}: {err}");
    }
    let (_, _, err) = fv(&["create", s(&d.path("no/dir/x.vmdk")), "1M"]);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

/// Issue 11 item 8: without -O, only a *.vmdk destination becomes a VMDK (qemu-img defaults to
/// raw); a .raw or .img destination never silently becomes a VMDK.
#[test]
fn test_convert_output_format_from_name() {
    let d = Scratch::new("cli-convert-fmt");
    let src = d.path("src.vmdk");
    assert_eq!(fv(&["create", s(&src), "4M"]).0, 0);
    for name in ["out.raw", "out.img", "out.bin"] {
        let out = d.path(name);
        let (rc, _, err) = fv(&["convert", "-q", s(&src), s(&out)]);
        assert_eq!(rc, 0, "{name}: {err}");
        let (_, o, _) = fv(&["info", s(&out)]);
        assert!(o.contains("file format: raw"), "{name}: {o}");
        assert_eq!(std::fs::metadata(&out).unwrap().len(), 4 << 20, "{name}");
    }
    let (rc, _, err) = fv(&["convert", "-q", s(&src), s(&d.path("out.vmdk"))]);
    assert_eq!(rc, 0, "{err}");
    assert!(fv(&["info", s(&d.path("out.vmdk"))]).1.contains("file format: vmdk"));
    // A subformat without -O for a non-.vmdk name is refused, not guessed.
    let (rc, _, err) = fv(&["convert", "-q", "-s", "streamOptimized", s(&src), s(&d.path("o2.img"))]);
    assert_eq!(rc, 1, "{err}");
    assert!(!d.path("o2.img").exists());
    // Explicit -O vmdk is obeyed.
    let (rc, _, err) = fv(&["convert", "-q", "-O", "vmdk", s(&src), s(&d.path("o3.img"))]);
    assert_eq!(rc, 0, "{err}");
    assert!(fv(&["info", s(&d.path("o3.img"))]).1.contains("file format: vmdk"));
}

/// Issue 11 item 8: other image formats are named, not called raw. Oracle: qemu-img creates them.
#[test]
fn test_info_names_foreign_formats() {
    if !have_qemu("test_info_names_foreign_formats") {
        return;
    }
    let d = Scratch::new("cli-foreign");
    for (fmt, name) in [("qcow2", "qcow2"), ("qed", "qed"), ("vdi", "vdi"), ("vhdx", "vhdx"), ("vpc", "vpc")] {
        let p = d.path(&format!("x.{fmt}"));
        let (rc, out) = qemu_img(&["create", "-q", "-f", fmt, s(&p), "16M"]);
        assert_eq!(rc, 0, "{out}");
        let (rc, o, err) = fv(&["info", s(&p)]);
        assert_eq!(rc, 1, "{fmt}: {o}");
        assert!(err.contains(&format!("unsupported format {name}")), "{fmt}: {err}");
        let (rc, _, err) = fv(&["convert", "-q", s(&p), s(&d.path("o.raw"))]);
        assert_eq!(rc, 1, "{fmt}: {err}");
    }
}

/// Issue 11 item 8: `disk create` takes the units `run -m` takes (one parser, src/size.rs).
#[test]
fn test_create_size_units() {
    let d = Scratch::new("cli-units");
    for (i, (arg, bytes)) in
        [("1T", 1u64 << 40), ("2GiB", 2 << 30), ("3MB", 3 << 20), ("1.5K", 1536), ("1 TiB", 1 << 40)]
            .into_iter()
            .enumerate()
    {
        let p = d.path(&format!("u{i}.vmdk"));
        let (rc, _, err) = fv(&["create", "-s", "monolithicFlat", s(&p), arg]);
        assert_eq!(rc, 0, "{arg}: {err}");
        let (_, out, _) = fv(&["info", "--output", "json", s(&p)]);
        let j: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(j["virtual-size"], bytes.div_ceil(512) * 512, "{arg}");
    }
    let (rc, _, err) = fv(&["create", s(&d.path("bad.vmdk")), "12X"]);
    assert_eq!(rc, 1);
    assert!(err.contains("is not a size"), "{err}");
}

/// Issue 11 item 2 through the CLI: a copy converts to its own content, and the original can go.
#[test]
fn test_copied_image_through_cli() {
    let d = Scratch::new("cli-copy");
    let a = d.path("a.vmdk");
    let raw = d.path("in.raw");
    common::mixed_raw(&raw, 4 << 20, &[0, 1 << 20], 3);
    assert_eq!(fv(&["convert", "-q", "-O", "vmdk", s(&raw), s(&a)]).0, 0);
    let b = d.path("b.vmdk");
    std::fs::copy(&a, &b).unwrap();
    std::fs::remove_file(&a).unwrap();
    let (rc, out, err) = fv(&["compare", "-q", s(&raw), s(&b)]);
    assert_eq!(rc, 0, "{out}{err}");
    let (rc, out, _) = fv(&["check", s(&b)]);
    assert_eq!(rc, 0, "{out}");
    assert!(out.contains("Note:") && out.contains("a.vmdk"), "{out}");
}

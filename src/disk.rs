//! `ferrovisor disk`: VMDK and raw image tools (create, info, check, convert, snapshot, commit,
//! compare, map). Exit codes of `check` and `compare` follow qemu-img.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::json;
use vmdk::{AnyImage, CreateOptions, Image, MapKind, Subformat, Target};

/// Arguments of `ferrovisor disk`.
#[derive(Debug, Args)]
#[command(
    about = "Disk image tools: VMDK (every hosted subformat, delta links) and raw",
    long_about = "Disk image tools for VMDK and raw images.\n\nVMDK subformats: monolithicSparse, monolithicFlat, \
                  twoGbMaxExtentSparse, twoGbMaxExtentFlat, streamOptimized. Delta links (snapshots) of any depth are \
                  followed; RDONLY, NOACCESS and ZERO extents are honoured."
)]
pub struct DiskArgs {
    #[command(subcommand)]
    cmd: DiskCmd,
}

#[derive(Debug, Subcommand)]
enum DiskCmd {
    /// Create an empty VMDK image (or a delta child with --backing).
    Create(CreateArgs),
    /// Show the descriptor, extents and allocation of an image.
    Info(InfoArgs),
    /// Check an image's tables; exit 0 clean, 2 corruptions, 3 leaks only, 1 could not check.
    Check(CheckArgs),
    /// Convert between raw and VMDK, or between VMDK subformats (input format detected).
    Convert(ConvertArgs),
    /// Create a delta child (snapshot) whose unwritten sectors read through to PARENT.
    Snapshot(SnapshotArgs),
    /// Merge a delta child's own data into its parent (the child stays valid).
    Commit(CommitArgs),
    /// Compare the guest-visible content of two images; exit 0 identical, 1 different, 2 open error, 4 read error.
    Compare(CompareArgs),
    /// Show which ranges are data, zeroed, read through to a parent, or unallocated.
    Map(MapArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Human,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Fmt {
    Raw,
    Vmdk,
}

#[derive(Debug, Args)]
#[command(after_help = "SIZE is a number with an optional unit K, M, G, T (or KiB..TiB, KB..TB), all powers of 1024; \
                        a bare number is bytes (as qemu-img). `run -m` takes the same units.\n\
                        Examples:\n  ferrovisor disk create disk.vmdk 10G\n  \
                        ferrovisor disk create --subformat twoGbMaxExtentFlat --adapter-type lsilogic big.vmdk 100G\n  \
                        ferrovisor disk create --backing base.vmdk delta.vmdk")]
struct CreateArgs {
    /// Layout: monolithicSparse, monolithicFlat, twoGbMaxExtentSparse, twoGbMaxExtentFlat, streamOptimized.
    #[arg(long, short = 's', default_value = "monolithicSparse")]
    subformat: String,
    /// ddb.adapterType: ide, buslogic, lsilogic, legacyESX, pvscsi.
    #[arg(long, default_value = "ide")]
    adapter_type: String,
    /// ddb.virtualHWVersion.
    #[arg(long, default_value = "4")]
    hwversion: String,
    /// Use zeroed-grain table entries (version 2 sparse extents; zero writes then take no space).
    #[arg(long)]
    zeroed_grain: bool,
    /// Make a delta child of this VMDK (size defaults to the parent's).
    #[arg(long, short = 'b')]
    backing: Option<PathBuf>,
    /// Image to create (must not exist).
    file: PathBuf,
    /// Virtual size.
    size: Option<String>,
}

#[derive(Debug, Args)]
struct InfoArgs {
    /// human or json.
    #[arg(long, value_enum, default_value = "human")]
    output: Output,
    /// Image (VMDK descriptor or monolithic file; raw files are reported as raw).
    file: PathBuf,
}

#[derive(Debug, Args)]
#[command(after_help = "Checks for: table pointers past the end of the file or into the header, grains that \
                        overlap each other or the tables, disagreement between the grain directory/tables and \
                        their redundant copies, leaked space, short flat extent files.\n\
                        --repair does only what loses nothing: restores a table entry from its valid redundant \
                        copy and resynchronises the copies, truncates a leaked tail, rewrites descriptor extent \
                        lines that disagree with the sparse headers (the headers win). It never makes a file \
                        longer: a short flat extent file is reported, not extended (a mistyped offset in the \
                        descriptor must not become gigabytes of zeros behind a clean report).\n\
                        Exit status (as qemu-img check): 0 clean, 1 the check could not run, 2 corruptions, \
                        3 leaks only.")]
struct CheckArgs {
    /// Repair what is safe to repair.
    #[arg(long, short = 'r')]
    repair: bool,
    /// human or json.
    #[arg(long, value_enum, default_value = "human")]
    output: Output,
    /// Image to check.
    file: PathBuf,
}

#[derive(Debug, Args)]
#[command(after_help = "Output format: -O raw or -O vmdk. Without -O, a destination ending in .vmdk is a VMDK and \
                        anything else is raw (qemu-img's default); --subformat without -O needs a .vmdk destination.\n\
                        Examples:\n  ferrovisor disk convert -O vmdk --subformat streamOptimized disk.raw disk.vmdk\n  \
                        ferrovisor disk convert -O raw disk.vmdk disk.raw\n  \
                        ferrovisor disk convert -O vmdk --subformat monolithicFlat in.vmdk out.vmdk\n\
                        A delta chain is flattened: the output holds the guest-visible content.")]
struct ConvertArgs {
    /// Input format (default: detected; VMDK by magic or descriptor, anything else is raw).
    #[arg(long, short = 'f', value_enum)]
    format: Option<Fmt>,
    /// Output format (default: vmdk for a destination named *.vmdk, otherwise raw).
    #[arg(long = "output-format", short = 'O', value_enum)]
    output_format: Option<Fmt>,
    /// VMDK subformat of the output (default monolithicSparse).
    #[arg(long, short = 's')]
    subformat: Option<String>,
    /// ddb.adapterType of the output (default: the input's, else ide).
    #[arg(long)]
    adapter_type: Option<String>,
    /// Use zeroed-grain entries in a sparse output.
    #[arg(long)]
    zeroed_grain: bool,
    /// zlib level 0-9 of streamOptimized grains (qemu-img uses 6).
    #[arg(long, default_value_t = vmdk::stream::DEFAULT_LEVEL, value_parser = clap::value_parser!(u32).range(0..=9))]
    compression_level: u32,
    /// Compression threads for streamOptimized output (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// No progress bar.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Input image.
    src: PathBuf,
    /// Output image (must not exist, except a raw output which is overwritten).
    dst: PathBuf,
}

#[derive(Debug, Args)]
struct SnapshotArgs {
    /// Sparse subformat of the child: monolithicSparse or twoGbMaxExtentSparse.
    #[arg(long, short = 's', default_value = "monolithicSparse")]
    subformat: String,
    /// Use zeroed-grain entries in the child (zero writes take no space and hide the parent).
    #[arg(long)]
    zeroed_grain: bool,
    /// The image to snapshot (becomes the read-only parent; do not write to it afterwards or the
    /// child's parentCID no longer matches).
    parent: PathBuf,
    /// The new delta child.
    child: PathBuf,
}

#[derive(Debug, Args)]
#[command(after_help = "Copies every grain the child itself holds (data and zeroed grains) into its \
                        parent, then updates the child's parentCID to the parent's new CID, so both stay \
                        usable and the child's content is unchanged.")]
struct CommitArgs {
    /// No progress bar.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// The delta child.
    child: PathBuf,
}

#[derive(Debug, Args)]
#[command(after_help = "Like qemu-img compare: a size difference is allowed when the longer image's tail is \
                        zero. Exit status 0 identical, 1 content mismatch, 2 an image could not be opened, \
                        4 an error while reading.")]
struct CompareArgs {
    /// Format of the first image (default: detected).
    #[arg(short = 'f', value_enum)]
    format_a: Option<Fmt>,
    /// Format of the second image (default: detected).
    #[arg(short = 'F', value_enum)]
    format_b: Option<Fmt>,
    /// No progress bar.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// First image.
    a: PathBuf,
    /// Second image.
    b: PathBuf,
}

#[derive(Debug, Args)]
#[command(after_help = "Kinds: data (stored at chain depth N: 0 = this image), zero (zeroed grain or ZERO \
                        extent), unallocated (reads as zeros), noaccess (NOACCESS extent).")]
struct MapArgs {
    /// human or json.
    #[arg(long, value_enum, default_value = "human")]
    output: Output,
    /// Image.
    file: PathBuf,
}

/// Runs a disk subcommand; returns the process exit status.
pub fn run(args: DiskArgs) -> anyhow::Result<i32> {
    // Like other Unix tools, end quietly when the reader of our output goes away (`| head`)
    // instead of failing a print.
    // SAFETY: restores the default disposition of SIGPIPE before any thread is started here; no
    // handler code runs, the process simply ends on a write to a closed pipe.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    match args.cmd {
        DiskCmd::Create(a) => create(a),
        DiskCmd::Info(a) => info(a),
        DiskCmd::Check(a) => check(a),
        DiskCmd::Convert(a) => convert(a),
        DiskCmd::Snapshot(a) => {
            let sf: Subformat = a.subformat.parse()?;
            vmdk::snapshot(&a.parent, &a.child, sf, a.zeroed_grain)
                .with_context(|| format!("cannot create snapshot {}", a.child.display()))?;
            println!("Created delta {} on top of {}", a.child.display(), a.parent.display());
            Ok(0)
        }
        DiskCmd::Commit(a) => {
            let img = Image::open(&a.child)?;
            let bar = bar(img.size(), a.quiet, "commit");
            drop(img);
            let st =
                vmdk::commit(&a.child, &|n| bar.inc(n)).with_context(|| format!("commit of {}", a.child.display()))?;
            bar.finish_and_clear();
            println!(
                "Image committed: {} bytes of data and {} bytes of zeros written to the parent (new CID {:08x}).",
                st.data_bytes, st.zero_bytes, st.parent_cid
            );
            Ok(0)
        }
        DiskCmd::Compare(a) => compare(a),
        DiskCmd::Map(a) => map(a),
    }
}

/// Sizes of `disk create`: a bare number is bytes (as qemu-img); the parser is shared with `run -m`.
fn parse_size(s: &str) -> anyhow::Result<u64> {
    crate::size::parse_size(s, 1).map_err(anyhow::Error::msg)
}

fn bar(total: u64, quiet: bool, what: &str) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(total);
    b.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {percent:>3}% {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b.set_message(what.to_string());
    b
}

fn create(a: CreateArgs) -> anyhow::Result<i32> {
    let sf: Subformat = a.subformat.parse()?;
    let size = match (&a.size, &a.backing) {
        (Some(s), _) => parse_size(s)?,
        (None, Some(p)) => Image::open(p)?.size(),
        (None, None) => bail!("a size is needed (e.g. 10G)"),
    };
    let mut o = CreateOptions::new(sf, size);
    o.adapter = a.adapter_type;
    o.hw_version = a.hwversion;
    o.zeroed_grain = a.zeroed_grain;
    o.parent = a.backing;
    vmdk::create(&a.file, &o).with_context(|| format!("cannot create {}", a.file.display()))?;
    println!("Formatting '{}', fmt=vmdk size={} subformat={}", a.file.display(), size, sf.as_str());
    Ok(0)
}

fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.3} {}", U[i]).replace(".000", "")
    }
}

fn info(a: InfoArgs) -> anyhow::Result<i32> {
    // A broken backing chain should not hide the image itself: show it, and say what is wrong.
    let opened = match AnyImage::open(&a.file, false) {
        Err(
            e @ (vmdk::Error::ParentNotFound { .. }
            | vmdk::Error::CidMismatch { .. }
            | vmdk::Error::ParentLoop { .. }
            | vmdk::Error::ChainTooDeep(_)
            | vmdk::Error::Parent { .. }),
        ) => {
            eprintln!("ferrovisor: warning: backing chain unusable: {e}");
            AnyImage::Vmdk(Image::open_with(&a.file, vmdk::OpenOptions { writable: false, no_parent: true })?)
        }
        r => r?,
    };
    let img = match opened {
        AnyImage::Raw(r) => {
            let size = vmdk::BlockDevice::len(&r);
            if a.output == Output::Json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"filename": a.file, "format": "raw", "virtual-size": size}))?
                );
            } else {
                println!("image: {}\nfile format: raw\nvirtual size: {} ({size} bytes)", a.file.display(), human(size));
            }
            return Ok(0);
        }
        AnyImage::Vmdk(i) => i,
    };
    let d = img.descriptor();
    let ext = img.extent_info();
    // Space actually used on the host (allocated blocks), as qemu-img's "disk size".
    let disk_size: u64 = {
        use std::os::unix::fs::MetadataExt;
        let used = |p: &Path| std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0);
        let mut seen = std::collections::HashSet::new();
        let mut t = 0;
        for e in &ext {
            if let Some(p) = &e.path {
                if seen.insert(p.clone()) {
                    t += used(p);
                }
            }
        }
        if vmdk::image::probe(&a.file)? == vmdk::Probe::Descriptor {
            t += used(&a.file);
        }
        t
    };
    let allocated = img.allocated_bytes()?;
    let chain: Vec<String> = {
        let mut v = Vec::new();
        let mut p = img.parent_path();
        while let Some(pp) = p {
            v.push(pp.display().to_string());
            p = Image::open(&pp).ok().and_then(|i| i.parent_path());
        }
        v
    };
    let exts: Vec<serde_json::Value> = ext
        .iter()
        .map(|e| {
            let mut j = json!({
                "access": e.line.access.as_str(),
                "sectors": e.line.sectors,
                "virtual-size": e.line.sectors * 512,
                "type": e.line.kind.as_str(),
                "filename": e.path.as_ref().map(|p| p.display().to_string()),
                "file-size": e.file_size,
            });
            if e.line.kind == vmdk::ExtentKind::Flat {
                j["offset"] = json!(e.line.offset);
            }
            if let Some(h) = &e.header {
                j["version"] = json!(h.version);
                j["flags"] = json!(format!("{:#x}", h.flags));
                j["cluster-size"] = json!(h.grain_size * 512);
                j["compressed"] = json!(h.compressed());
                j["zeroed-grain"] = json!(h.zeroed_grain());
                j["redundant-gd"] = json!(h.has_rgd());
                j["gd-at-end"] = json!(h.compressed() && h.rgd_offset == 0);
            }
            j
        })
        .collect();
    if a.output == Output::Json {
        let j = json!({
            "filename": a.file,
            "format": "vmdk",
            "virtual-size": img.size(),
            "actual-size": disk_size,
            "allocated-size": allocated,
            "create-type": d.create_type,
            "cid": format!("{:08x}", d.cid),
            "parent-cid": format!("{:08x}", d.parent_cid),
            "parent-filename-hint": d.parent_hint,
            "backing-chain": chain,
            "adapter-type": d.ddb_get("ddb.adapterType"),
            "hw-version": d.ddb_get("ddb.virtualHWVersion"),
            "ddb": d.ddb.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "extents": exts,
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(0);
    }
    println!("image: {}", a.file.display());
    println!("file format: vmdk");
    println!("virtual size: {} ({} bytes)", human(img.size()), img.size());
    println!("disk size: {}", human(disk_size));
    println!("allocated in this image: {}", human(allocated));
    println!("create type: {}", d.create_type);
    println!("cid: {:08x}", d.cid);
    println!("parent cid: {:08x}", d.parent_cid);
    if let Some(h) = &d.parent_hint {
        println!("parent file name hint: {h}");
        for (i, p) in chain.iter().enumerate() {
            println!("backing chain [{}]: {p}", i + 1);
        }
    }
    for (k, v) in &d.ddb {
        println!("{k}: {v}");
    }
    println!("extents:");
    for (i, e) in ext.iter().enumerate() {
        print!("  [{i}] {} {} sectors {}", e.line.access.as_str(), e.line.sectors, e.line.kind.as_str());
        if let Some(p) = &e.path {
            print!(" {} ({} on disk)", p.display(), human(e.file_size));
        }
        if e.line.kind == vmdk::ExtentKind::Flat {
            print!(" offset {}", e.line.offset);
        }
        if let Some(h) = &e.header {
            print!(
                "\n      version {} flags {:#x} grain {} compressed {} zeroed-grain {}",
                h.version,
                h.flags,
                human(h.grain_size * 512),
                h.compressed(),
                h.zeroed_grain()
            );
        }
        println!();
    }
    Ok(0)
}

fn check(a: CheckArgs) -> anyhow::Result<i32> {
    let rep = match vmdk::check(&a.file, a.repair) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ferrovisor: check of {} could not run: {e}", a.file.display());
            return Ok(1);
        }
    };
    let code = rep.exit_code();
    if a.output == Output::Json {
        let j = json!({
            "filename": a.file,
            "format": "vmdk",
            "check-errors": rep.corruptions.len(),
            "corruptions": rep.corruptions,
            "leaks": rep.leaks,
            "repaired": rep.repaired,
            "notes": rep.notes,
            "allocated-clusters": rep.allocated_grains,
            "exit-code": code,
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
        return Ok(code);
    }
    for r in &rep.repaired {
        println!("Repaired: {r}");
    }
    for n in &rep.notes {
        println!("Note: {n}");
    }
    for c in &rep.corruptions {
        println!("ERROR: {c}");
    }
    for l in &rep.leaks {
        println!("Leaked: {l}");
    }
    match code {
        0 => println!("No errors were found on the image."),
        2 => println!(
            "\n{} errors were found on the image.\nData may be corrupted, or further writes to the image may corrupt it.",
            rep.corruptions.len()
        ),
        _ => println!(
            "\n{} leaks were found on the image.\nThis means waste of disk space, but no harm to data.",
            rep.leaks.len()
        ),
    }
    println!("{} allocated clusters.", rep.allocated_grains);
    Ok(code)
}

fn open_input(p: &Path, f: Option<Fmt>) -> anyhow::Result<AnyImage> {
    Ok(match f {
        None => AnyImage::open(p, false)?,
        Some(f) => AnyImage::open_as(p, f == Fmt::Raw, false)?,
    })
}

/// The output format of `convert`: -O if given, else from the destination's name; a destination
/// not named *.vmdk never silently becomes a VMDK.
fn output_format(a: &ConvertArgs) -> anyhow::Result<Fmt> {
    let is_vmdk_name = a.dst.extension().is_some_and(|e| e.eq_ignore_ascii_case("vmdk"));
    Ok(match (a.output_format, &a.subformat) {
        (Some(Fmt::Raw), Some(_)) => bail!("--subformat applies to VMDK output, not -O raw"),
        (Some(f), _) => {
            if f == Fmt::Vmdk && !is_vmdk_name {
                eprintln!("ferrovisor: note: writing a VMDK to {} as asked by -O vmdk", a.dst.display());
            }
            f
        }
        (None, _) if is_vmdk_name => Fmt::Vmdk,
        (None, Some(_)) => {
            bail!("--subformat given but {} is not named *.vmdk: say -O vmdk to write a VMDK there", a.dst.display())
        }
        (None, None) => Fmt::Raw,
    })
}

fn convert(a: ConvertArgs) -> anyhow::Result<i32> {
    let src = open_input(&a.src, a.format).with_context(|| format!("cannot open {}", a.src.display()))?;
    let output_format = output_format(&a)?;
    if a.dst.exists() && output_format == Fmt::Vmdk {
        bail!("{} already exists; refusing to overwrite it", a.dst.display());
    }
    if std::fs::canonicalize(&a.dst).ok() == std::fs::canonicalize(&a.src).ok() && a.dst.exists() {
        bail!("source and destination are the same file");
    }
    let target = match output_format {
        Fmt::Raw => Target::Raw,
        Fmt::Vmdk => {
            let sf: Subformat = a.subformat.as_deref().unwrap_or("monolithicSparse").parse()?;
            let mut o = CreateOptions::new(sf, 0);
            let from_src = match &src {
                AnyImage::Vmdk(i) => i.descriptor().ddb_get("ddb.adapterType").map(str::to_string),
                AnyImage::Raw(_) => None,
            };
            o.adapter = a
                .adapter_type
                .clone()
                .or(from_src)
                .filter(|x| vmdk::ops::ADAPTERS.contains(&x.as_str()))
                .unwrap_or_else(|| "ide".into());
            o.zeroed_grain = a.zeroed_grain;
            o.compression_level = a.compression_level;
            o.threads = a.threads;
            Target::Vmdk(o)
        }
    };
    let total: u64 = src.data_ranges()?.iter().map(|r| r.1).sum();
    let b = bar(total, a.quiet, "convert");
    let r = vmdk::convert(&src, &a.dst, &target, &|n| b.inc(n));
    b.finish_and_clear();
    if let Err(e) = r {
        // Do not leave a half-written output behind that looks like an image.
        if output_format == Fmt::Vmdk {
            let _ = std::fs::remove_file(&a.dst);
        }
        return Err(anyhow::Error::new(e).context(format!("convert {} -> {}", a.src.display(), a.dst.display())));
    }
    Ok(0)
}

fn compare(a: CompareArgs) -> anyhow::Result<i32> {
    let open = |p: &Path, f| match open_input(p, f) {
        Ok(i) => Some(i),
        Err(e) => {
            eprintln!("ferrovisor: could not open {}: {e:#}", p.display());
            None
        }
    };
    let (Some(x), Some(y)) = (open(&a.a, a.format_a), open(&a.b, a.format_b)) else { return Ok(2) };
    let b = bar(x.dev().len().max(y.dev().len()), a.quiet, "compare");
    let r = vmdk::compare_images(&x, &y, &|n| b.inc(n));
    b.finish_and_clear();
    match r {
        Ok(None) => {
            println!("Images are identical.");
            Ok(0)
        }
        Ok(Some(off)) => {
            println!("Content mismatch at offset {off}!");
            Ok(1)
        }
        Err(e) => {
            // qemu-img compare: 4 = error while reading.
            eprintln!("ferrovisor: error while comparing: {e}");
            Ok(4)
        }
    }
}

fn map(a: MapArgs) -> anyhow::Result<i32> {
    let img = Image::open(&a.file).with_context(|| format!("cannot open {}", a.file.display()))?;
    let m = img.map()?;
    let kind = |k: MapKind| match k {
        MapKind::Data { depth } => (if depth == 0 { "data" } else { "parent" }, Some(depth)),
        MapKind::Zero { depth } => ("zero", Some(depth)),
        MapKind::Unallocated => ("unallocated", None),
        MapKind::NoAccess => ("noaccess", None),
    };
    if a.output == Output::Json {
        let v: Vec<_> = m
            .iter()
            .map(|r| {
                let (k, d) = kind(r.kind);
                json!({"start": r.start, "length": r.len, "kind": k, "depth": d,
                       "data": matches!(r.kind, MapKind::Data{..}), "zero": !matches!(r.kind, MapKind::Data{..} | MapKind::NoAccess)})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!("{:<20} {:<20} {:<12} depth", "Offset", "Length", "Kind");
    for r in m {
        let (k, d) = kind(r.kind);
        println!("{:<#20x} {:<#20x} {:<12} {}", r.start, r.len, k, d.map_or("-".into(), |d| d.to_string()));
    }
    Ok(0)
}

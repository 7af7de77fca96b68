//! Test support shared by the integration tests of every crate (included with `#[path]`):
//! reporting a skipped test where the user sees it, and fetching Debian's SeaBIOS.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root: the nearest directory above this crate that holds `scripts/`.
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors().find(|d| d.join("scripts/fetch-seabios.sh").exists()).unwrap_or(here).to_path_buf()
}

/// Reports a skipped test where the user sees it: standard error, and the run's skip log
/// (`FERRO_SKIP_LOG`, set by `scripts/test`, which prints a summary of it at the end).
pub fn report_skip(what: &str) {
    eprintln!("skipped: {what}");
    if let Some(log) = std::env::var_os("FERRO_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(log) {
            let _ = writeln!(f, "{what}");
        }
    }
}

/// Path of Debian's bios.bin: `$FERRO_SEABIOS`, or fetched by scripts/fetch-seabios.sh into
/// target/guest-cache/seabios. In CI a failed fetch fails the test; elsewhere the test named
/// `who` is reported skipped and `None` returned.
pub fn seabios(who: &str) -> Option<PathBuf> {
    if let Ok(p) = std::env::var("FERRO_SEABIOS") {
        return Some(PathBuf::from(p));
    }
    let root = workspace_root();
    let dir = root.join("target/guest-cache/seabios");
    let bios = dir.join("bios.bin");
    if !bios.exists() {
        let status = Command::new("bash").arg(root.join("scripts/fetch-seabios.sh")).arg(&dir).status();
        if !matches!(status, Ok(s) if s.success()) {
            assert!(std::env::var_os("CI").is_none(), "cannot fetch Debian's seabios package (required in CI)");
            report_skip(&format!("{who}: cannot fetch Debian's seabios package (apt-get download seabios failed)"));
            return None;
        }
    }
    Some(bios)
}

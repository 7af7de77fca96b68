//! Debian's stock Linux kernel (linux-image-amd64, 6.1) booted as a user boots it, with
//! `ferrovisor run --kernel --initrd --append`, to a busybox user space built from Debian's
//! busybox-static by scripts/fetch-linux-guest.sh. The workloads' results in the guest must equal
//! what the same busybox binary prints natively on this host.
//!
//! The guest kit is fetched into target/guest-cache/linux; in CI that must work, elsewhere the
//! tests skip (and `scripts/test` says so).

use std::path::{Path, PathBuf};
use std::process::Command;

#[path = "support/mod.rs"]
mod support;
use support::report_skip;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The guest kit directory for `arch` (amd64 or i386), fetched on first use.
fn guest_kit(arch: &str) -> Option<PathBuf> {
    let dir = root().join(if arch == "amd64" {
        "target/guest-cache/linux".to_owned()
    } else {
        format!("target/guest-cache/linux-{arch}")
    });
    let status = Command::new("bash").arg(root().join("scripts/fetch-linux-guest.sh")).arg(&dir).arg(arch).status();
    if matches!(status, Ok(s) if s.success()) && dir.join("vmlinux").exists() {
        return Some(dir);
    }
    assert!(std::env::var_os("CI").is_none(), "cannot build the Linux guest kit (required in CI)");
    report_skip("tests/linux_boot.rs: cannot build the Linux guest kit from Debian packages");
    None
}

/// Boots the kit's vmlinux and initramfs with `append` under at most `max_insns` instructions,
/// and checks that user space was reached. Returns the run's output, its console and, for
/// failure messages, the run's exit status, its standard error and the console's last 40 lines.
///
/// The RTC starts at the host's time, as for a user, but passed explicitly and named in failure
/// messages: the guest's path depends on it (the run is otherwise deterministic), so a failure
/// is repeated with `FERRO_TEST_RTC_BASE=<seconds>` (stop 16's CI failed at one time of day
/// only).
fn boot(kit: &Path, max_insns: &str, append: &str, env: &[(&str, &str)]) -> (std::process::Output, String, String) {
    let rtc = std::env::var("FERRO_TEST_RTC_BASE").unwrap_or_else(|_| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("host clock");
        now.as_secs().to_string()
    });
    let out = Command::new(env!("CARGO_BIN_EXE_ferrovisor"))
        .args(["run", "-m", "512M", "--serial", "stdio", "--max-insns", max_insns, "--rtc-base", &rtc])
        .envs(env.iter().copied())
        .arg("--kernel")
        .arg(kit.join("vmlinux"))
        .arg("--initrd")
        .arg(kit.join("initramfs.cpio.gz"))
        .args(["--append", append])
        .output()
        .expect("run ferrovisor");
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    let last40: String =
        console.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
    let tail = format!(
        "exit status: {} (--rtc-base {rtc}, env {env:?}; repeat with FERRO_TEST_RTC_BASE={rtc})\nstderr:\n{}\nconsole (last 40 lines):\n{last40}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(console.contains("FERROVISOR-USERSPACE-OK"), "no user space; {tail}");
    (out, console, tail)
}

/// The "W-..." lines of `text`.
fn results(text: &str) -> Vec<String> {
    text.lines().filter(|l| l.starts_with("W-")).map(str::to_owned).collect()
}

#[test]
fn test_linux_pvh_boots_to_userspace_and_workloads_match_host() {
    let Some(kit) = guest_kit("amd64") else { return };
    // The same workloads natively, with the same busybox binary.
    let tmp = std::env::temp_dir().join(format!("ferro-linux-native-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let native = Command::new(kit.join("busybox"))
        .arg("sh")
        .arg(kit.join("work.sh"))
        .env("BB", kit.join("busybox"))
        .env("TMPDIR", &tmp)
        .output()
        .expect("run busybox natively");
    std::fs::remove_dir_all(&tmp).ok();
    let expected = results(&String::from_utf8_lossy(&native.stdout));
    assert_eq!(expected.len(), 6, "native workloads: {}", String::from_utf8_lossy(&native.stdout));

    let (out, console, tail) = boot(&kit, "60000000000", "console=ttyS0 nokaslr ferro.run=work", &[]);
    assert_eq!(results(&console), expected, "guest workloads differ from the host's; {tail}");
    assert!(console.contains("FERROVISOR-DONE"), "{tail}");
    assert_eq!(out.status.code(), Some(0), "poweroff ends the run with 0; {tail}");
}

/// Debian's 32-bit kernel (linux-image-686-pae, PAE paging) through its PVH entry, with an i386
/// busybox user space. The translator's helper-call check is on (`FERRO_JIT_CLOBBER=1`: every
/// call from generated code returns with the caller-saved registers poisoned), so generated
/// code that keeps a value in one of them across a call fails here on every run.
#[test]
fn test_linux_32bit_pae_kernel_boots_to_userspace() {
    let Some(kit) = guest_kit("i386") else { return };
    let (out, _, tail) = boot(&kit, "30000000000", "console=ttyS0 nokaslr", &[("FERRO_JIT_CLOBBER", "1")]);
    assert_eq!(out.status.code(), Some(0), "{tail}");
}

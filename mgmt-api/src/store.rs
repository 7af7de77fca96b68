//! The data directory: one directory per VM with its configuration, snapshots and logs. Every
//! file the daemon writes is written atomically (temporary file, fsync, rename, fsync of the
//! directory), so a daemon killed at any instant leaves either the old or the new content.
//!
//! ```text
//! DATA/vms/ID/config.json            the VmConfig
//! DATA/vms/ID/state.json             the last state and reason the daemon reported
//! DATA/vms/ID/vm.pid                 the running VM process: {"pid", "start_time"} (removed
//!                                    when the daemon reaps it)
//! DATA/vms/ID/snapshots/NAME.json    SnapshotInfo (status in_progress → complete)
//! DATA/vms/ID/snapshots/NAME.fvsnap  the snapshot (written by the VM process, atomically too)
//! DATA/vms/ID/serial.log             COM1 output
//! DATA/vms/ID/vm.log                 the VM process's standard error
//! DATA/vms/ID/qmp.sock               the VM process's QMP socket
//! ```

use crate::model::{SnapshotInfo, SnapshotStatus, VmConfig, VmState};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The data directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// Writes `bytes` to `path` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    // A name of its own per write: two writers of one file never share a temporary file.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{seq}.tmp", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

impl Store {
    /// Opens (creating) the data directory.
    pub fn open(root: &Path) -> std::io::Result<Store> {
        std::fs::create_dir_all(root.join("vms"))?;
        Ok(Store { root: root.to_path_buf() })
    }

    /// The directory of VM `id`.
    pub fn vm_dir(&self, id: &str) -> PathBuf {
        self.root.join("vms").join(id)
    }

    /// The snapshot directory of VM `id`.
    pub fn snapshot_dir(&self, id: &str) -> PathBuf {
        self.vm_dir(id).join("snapshots")
    }

    /// Saves a configuration.
    pub fn save_config(&self, c: &VmConfig) -> std::io::Result<()> {
        let dir = self.vm_dir(&c.name);
        std::fs::create_dir_all(dir.join("snapshots"))?;
        write_atomic(&dir.join("config.json"), &serde_json::to_vec_pretty(c).map_err(std::io::Error::other)?)
    }

    /// Every stored configuration (unreadable ones are skipped with a log line).
    pub fn load_configs(&self) -> Vec<VmConfig> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.root.join("vms")) else { return out };
        let mut dirs: Vec<_> = rd.flatten().map(|e| e.path()).collect();
        dirs.sort();
        for d in dirs {
            let p = d.join("config.json");
            match std::fs::read(&p).map(|b| serde_json::from_slice::<VmConfig>(&b)) {
                Ok(Ok(c)) => out.push(c),
                Ok(Err(e)) => log::error!("{}: {e}", p.display()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => log::error!("{}: {e}", p.display()),
            }
        }
        out
    }

    /// Records the state the daemon reports for `id` (a VM deleted meanwhile is left deleted).
    pub fn save_state(&self, id: &str, state: VmState, reason: &str) -> std::io::Result<()> {
        let dir = self.vm_dir(id);
        if !dir.join("config.json").exists() {
            return Ok(());
        }
        let v = SavedState { state, reason: reason.to_string() };
        write_atomic(&dir.join("state.json"), &serde_json::to_vec(&v).map_err(std::io::Error::other)?)
    }

    /// The last recorded state of `id`, if any.
    pub fn load_state(&self, id: &str) -> Option<SavedState> {
        let b = std::fs::read(self.vm_dir(id).join("state.json")).ok()?;
        serde_json::from_slice(&b).ok()
    }

    /// Records the VM process of `id`.
    pub fn save_pid(&self, id: &str, p: &PidFile) -> std::io::Result<()> {
        write_atomic(&self.vm_dir(id).join("vm.pid"), &serde_json::to_vec(p).map_err(std::io::Error::other)?)
    }

    /// Forgets the VM process of `id` (it was reaped).
    pub fn clear_pid(&self, id: &str) {
        let _ = std::fs::remove_file(self.vm_dir(id).join("vm.pid"));
    }

    /// The VM process recorded for `id` (removing the record): after a restart, one the old daemon
    /// started and never saw end. The pid alone proves nothing (pids are reused).
    pub fn take_pid(&self, id: &str) -> Option<PidFile> {
        let p = self.vm_dir(id).join("vm.pid");
        let b = std::fs::read(&p).ok()?;
        let _ = std::fs::remove_file(&p);
        Some(serde_json::from_slice(&b).unwrap_or(PidFile { pid: 0, start_time: 0 }))
    }

    /// Removes a VM's directory.
    pub fn delete_vm(&self, id: &str) -> std::io::Result<()> {
        std::fs::remove_dir_all(self.vm_dir(id))
    }

    /// Records a snapshot's metadata.
    pub fn save_snapshot_info(&self, id: &str, s: &SnapshotInfo) -> std::io::Result<()> {
        let dir = self.snapshot_dir(id);
        std::fs::create_dir_all(&dir)?;
        write_atomic(
            &dir.join(format!("{}.json", s.name)),
            &serde_json::to_vec_pretty(s).map_err(std::io::Error::other)?,
        )
    }

    /// The snapshot file of `name`.
    pub fn snapshot_file(&self, id: &str, name: &str) -> PathBuf {
        self.snapshot_dir(id).join(format!("{name}.fvsnap"))
    }

    /// A VM's snapshots, by name.
    pub fn snapshots(&self, id: &str) -> Vec<SnapshotInfo> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.snapshot_dir(id)) else { return out };
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") && !e.file_name().to_string_lossy().starts_with('.') {
                if let Ok(Ok(mut s)) = std::fs::read(&p).map(|b| serde_json::from_slice::<SnapshotInfo>(&b)) {
                    s.size = std::fs::metadata(self.snapshot_file(id, &s.name)).map(|m| m.len()).unwrap_or(0);
                    out.push(s);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// After a restart: snapshots still marked in progress were interrupted.
    pub fn recover_snapshots(&self, id: &str) {
        for mut s in self.snapshots(id) {
            if s.status == SnapshotStatus::InProgress {
                s.status = SnapshotStatus::Incomplete;
                s.error = Some("interrupted (the daemon stopped while it was being saved)".into());
                if let Err(e) = self.save_snapshot_info(id, &s) {
                    log::error!("snapshot {id}/{}: {e}", s.name);
                }
            }
        }
    }
}

/// A VM's last reported state, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    /// The state.
    pub state: VmState,
    /// Why.
    pub reason: String,
}

/// A VM process as recorded: its pid and its start time (field 22 of `/proc/PID/stat`, clock
/// ticks since boot), which together name one process even when the pid is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PidFile {
    /// The process id (0: unreadable record).
    pub pid: u32,
    /// Its start time.
    pub start_time: u64,
}

/// The start time of process `pid` (`/proc/PID/stat` field 22), if it exists and is not a zombie.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 is index 19.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

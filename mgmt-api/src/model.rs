//! The API's request and response bodies. Every type here is in the OpenAPI document.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A VM's configuration, as created (`POST /v1/vms`). File paths are relative to the daemon's
/// image directory (`--images-dir`); absolute paths and `..` are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// The VM's id: 1 to 64 of `a-z`, `0-9`, `-`, `_`, starting with a letter or digit.
    #[schema(example = "web-1")]
    pub name: String,
    /// Guest RAM in MiB (1 to 3072).
    #[schema(minimum = 1, maximum = 3072, example = 256)]
    pub memory_mib: u32,
    /// IDE disks, primary master first (at most 4): VMDK (any subformat) or raw.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// PC firmware to boot (e.g. SeaBIOS's bios.bin).
    #[serde(default)]
    pub firmware: Option<String>,
    /// A kernel to boot directly instead of firmware, as `ferrovisor run --kernel` does: a Linux
    /// bzImage, an ELF vmlinux with a PVH note, or a Multiboot kernel.
    #[serde(default)]
    pub kernel: Option<String>,
    /// The kernel's command line.
    #[serde(default)]
    pub cmdline: Option<String>,
    /// An initial RAM disk for a Linux kernel.
    #[serde(default)]
    pub initrd: Option<String>,
    /// A flat real-mode image loaded at 0x7C00 instead of firmware or a kernel.
    #[serde(default)]
    pub flat: Option<String>,
    /// Where COM1 goes.
    #[serde(default)]
    pub serial: SerialMode,
}

/// One IDE disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Image path relative to the image directory.
    #[schema(example = "debian.vmdk")]
    pub path: String,
    /// Open read-only.
    #[serde(default)]
    pub read_only: bool,
}

/// Where the serial console goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SerialMode {
    /// To the VM's serial log (`GET /v1/vms/{id}/serial`).
    #[default]
    Log,
    /// Discarded.
    None,
}

/// The lifecycle state (libvirt's model: created, running ⇄ paused, stopped, crashed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    /// Defined, never started (or stopped and not restarted).
    Created,
    /// The guest runs.
    Running,
    /// The guest is paused.
    Paused,
    /// The VM process ended normally (guest power-off, stop).
    Stopped,
    /// The VM process died abnormally (killed, crashed).
    Crashed,
}

/// A VM as the daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VmInfo {
    /// The id (the configuration's name).
    pub id: String,
    /// The state.
    pub state: VmState,
    /// Why it is in that state (e.g. `guest-shutdown`, `killed by signal 9`, `daemon-restart`).
    pub reason: String,
    /// The VM process, while one runs.
    pub pid: Option<u32>,
    /// The configuration.
    pub config: VmConfig,
}

/// A snapshot request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    /// The snapshot's name (same rules as a VM id).
    #[schema(example = "before-upgrade")]
    pub name: String,
}

/// Whether a snapshot can be restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotStatus {
    /// Being written.
    InProgress,
    /// Written and usable.
    Complete,
    /// The save failed or was interrupted (daemon or VM killed): not restorable.
    Incomplete,
}

/// A snapshot of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SnapshotInfo {
    /// Name.
    pub name: String,
    /// Status.
    pub status: SnapshotStatus,
    /// Creation time, Unix seconds.
    pub created: u64,
    /// File size in bytes (0 while absent).
    pub size: u64,
    /// Why it is incomplete, if it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A disk of a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DiskInfo {
    /// IDE index (0 primary master .. 3 secondary slave).
    pub index: u32,
    /// The configured image.
    pub path: String,
    /// The image the VM writes now (a snapshot delta after snapshots), if known.
    pub current: Option<String>,
    /// Size in bytes of the configured image file.
    pub file_size: u64,
    /// Read-only.
    pub read_only: bool,
}

/// An error: a stable machine-readable code and a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Stable code: `invalid_json`, `invalid_field`, `invalid_id`, `not_found`, `conflict`,
    /// `payload_too_large`, `not_running`, `vm_error`, `internal`.
    #[schema(example = "invalid_field")]
    pub code: String,
    /// What went wrong.
    pub message: String,
}

/// The daemon's version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct VersionInfo {
    /// Ferrovisor version.
    pub version: String,
    /// API version.
    pub api: String,
}

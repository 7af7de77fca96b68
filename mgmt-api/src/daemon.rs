//! The daemon: the REST routes, the VM table and the VM processes.
//!
//! Each VM runs in its own `ferrovisor run` process with a QMP socket in its directory; the
//! daemon drives it over QMP and watches it with `wait`. A VM process that dies marks only that
//! VM `crashed`.
//!
//! Daemon restart (libvirt's model for domains without autostart: they come back shut off):
//! - every configuration is loaded again from the data directory;
//! - a VM whose process was running (or paused) when the daemon died is `stopped`, reason
//!   `daemon-restart`; the others keep the state and reason last reported (`created`,
//!   `stopped`, `crashed`), which the daemon records in `state.json` at every change;
//! - VM processes get `PR_SET_PDEATHSIG` (SIGKILL), so none normally outlives the daemon. The
//!   daemon records each process it starts as its pid and start time (`vm.pid`); after a restart
//!   a recorded process that still exists (same pid, same start time, the same `ferrovisor`
//!   binary) escaped that and is killed before the VM is listed, so it never runs twice on the
//!   same disks. A recorded pid that now names another process (pids are reused) is never
//!   signalled, and no pid from before the restart is ever reported.
//!
//! Locking: the VM table is a `std::sync::Mutex` held only for short bookkeeping; operations on
//! one VM are serialized by that VM's `tokio::sync::Mutex` (held across awaits), never the table.

use crate::model::*;
use crate::parse::{self, parse_id};
use crate::qmp::Qmp;
use crate::store::Store;
use crate::ApiError;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;
use tokio_stream::StreamExt;

/// How long a VM process that was just started has to open its QMP socket.
const SPAWN_WAIT: Duration = Duration::from_secs(30);

/// How the daemon is set up.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The data directory (configurations, snapshots, logs).
    pub data_dir: PathBuf,
    /// Where VM image paths are resolved (and confined).
    pub images_dir: PathBuf,
    /// The `ferrovisor` binary that runs each VM.
    pub vmm: PathBuf,
}

struct Vm {
    config: VmConfig,
    state: VmState,
    reason: String,
    pid: Option<u32>,
    /// Serializes operations on this VM.
    op: Arc<tokio::sync::Mutex<()>>,
}

impl Vm {
    fn info(&self) -> VmInfo {
        VmInfo {
            id: self.config.name.clone(),
            state: self.state,
            reason: self.reason.clone(),
            pid: self.pid,
            config: self.config.clone(),
        }
    }
}

/// The daemon's shared state.
pub struct Daemon {
    cfg: DaemonConfig,
    store: Store,
    vms: Mutex<BTreeMap<String, Vm>>,
    events: broadcast::Sender<String>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon").field("cfg", &self.cfg).finish()
    }
}

type Shared = Arc<Daemon>;
type ApiResult<T> = Result<T, ApiError>;

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Daemon {
    /// Opens the data directory and loads every stored VM (all `stopped` after a restart; in
    /// progress snapshots become `incomplete`).
    pub fn open(cfg: DaemonConfig) -> std::io::Result<Shared> {
        let store = Store::open(&cfg.data_dir)?;
        let (events, _) = broadcast::channel(1024);
        let mut vms = BTreeMap::new();
        for c in store.load_configs() {
            store.recover_snapshots(&c.name);
            let (state, reason) = recover_state(&store, &cfg.vmm, &c.name);
            if let Err(e) = store.save_state(&c.name, state, &reason) {
                log::error!("{}: recording the state: {e}", c.name);
            }
            let vm = Vm { state, reason, pid: None, op: Arc::default(), config: c };
            vms.insert(vm.config.name.clone(), vm);
        }
        Ok(Arc::new(Daemon { cfg, store, vms: Mutex::new(vms), events }))
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Vm>> {
        self.vms.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn emit(&self, vm: &str, event: &str, detail: serde_json::Value) {
        let _ = self.events.send(json!({"vm": vm, "event": event, "detail": detail, "timestamp": now()}).to_string());
    }

    fn set_state(&self, id: &str, state: VmState, reason: &str) {
        {
            // Recorded under the table lock, so the file ends with the state the table ends with.
            let mut t = self.table();
            if let Some(v) = t.get_mut(id) {
                v.state = state;
                v.reason = reason.to_string();
            }
            if let Err(e) = self.store.save_state(id, state, reason) {
                log::error!("{id}: recording the state: {e}");
            }
        }
        self.emit(id, "state", json!({"state": state, "reason": reason}));
    }

    /// The VM's operation lock and state (404 for an unknown id).
    fn lookup(&self, id: &str) -> ApiResult<(Arc<tokio::sync::Mutex<()>>, VmInfo)> {
        let t = self.table();
        let v = t.get(id).ok_or_else(|| ApiError::not_found(&format!("VM '{id}'")))?;
        Ok((v.op.clone(), v.info()))
    }

    fn qmp_sock(&self, id: &str) -> PathBuf {
        self.store.vm_dir(id).join("qmp.sock")
    }

    async fn qmp(&self, id: &str) -> ApiResult<Qmp> {
        self.qmp_within(id, Duration::from_secs(10)).await
    }

    async fn qmp_within(&self, id: &str, wait: Duration) -> ApiResult<Qmp> {
        Qmp::connect(&self.qmp_sock(id), wait).await.map_err(ApiError::vm)
    }

    /// Starts the VM process (optionally from a snapshot file).
    async fn spawn_vm(self: &Arc<Self>, c: &VmConfig, snapshot: Option<PathBuf>, reason: &str) -> ApiResult<()> {
        let dir = self.store.vm_dir(&c.name);
        let img = |p: &str| self.cfg.images_dir.join(p);
        let sock = self.qmp_sock(&c.name);
        let _ = std::fs::remove_file(&sock);
        let mut cmd = tokio::process::Command::new(&self.cfg.vmm);
        cmd.arg("run").arg("-q").arg("-m").arg(format!("{}M", c.memory_mib));
        cmd.arg("--serial").arg(match c.serial {
            SerialMode::Log => "stdio",
            SerialMode::None => "none",
        });
        for d in &c.disks {
            cmd.arg("--disk").arg(img(&d.path));
        }
        if c.disks.iter().any(|d| d.read_only) {
            cmd.arg("--read-only");
        }
        if let Some(f) = &c.firmware {
            cmd.arg("--bios").arg(img(f));
        } else if let Some(k) = &c.kernel {
            cmd.arg("--kernel").arg(img(k));
            if let Some(i) = &c.initrd {
                cmd.arg("--initrd").arg(img(i));
            }
            if let Some(a) = &c.cmdline {
                cmd.arg("--append").arg(a);
            }
        } else if let Some(f) = &c.flat {
            cmd.arg("--flat").arg(img(f));
        }
        if let Some(s) = snapshot {
            cmd.arg("--snapshot-load").arg(s);
        }
        cmd.arg("--name").arg(&c.name);
        cmd.arg("--qmp").arg(format!("unix:{},server,wait=off", sock.display()));
        cmd.arg("--snapshot-dir").arg(self.store.snapshot_dir(&c.name));
        let open_log = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join(name))
                .map_err(|e| ApiError::internal(format!("{name}: {e}")))
        };
        cmd.stdout(open_log("serial.log")?).stderr(open_log("vm.log")?).stdin(std::process::Stdio::null());
        // The death signal is tied to the forking thread: a tokio worker, which lives as long as
        // the daemon. A daemon that died before prctl took effect is caught by the getppid check.
        let daemon_pid = std::process::id();
        // SAFETY: prctl(PR_SET_PDEATHSIG) and getppid are async-signal-safe and touch no memory
        // of the parent; the closure runs in the forked child before exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if libc::getppid() as u32 != daemon_pid {
                    return Err(std::io::Error::other("the daemon exited"));
                }
                Ok(())
            });
        }
        let mut child =
            cmd.spawn().map_err(|e| ApiError::internal(format!("cannot start {}: {e}", self.cfg.vmm.display())))?;
        let pid = child.id();
        if let Some(p) = pid {
            let rec = crate::store::PidFile { pid: p, start_time: crate::store::process_start_time(p).unwrap_or(0) };
            if let Err(e) = self.store.save_pid(&c.name, &rec) {
                log::error!("{}: recording the VM process: {e}", c.name);
            }
        }
        if let Some(v) = self.table().get_mut(&c.name) {
            v.pid = pid;
        }
        // Running from now on, until the watcher sees the process end (which may be at once).
        self.set_state(&c.name, VmState::Running, reason);
        let me = self.clone();
        let id = c.name.clone();
        tokio::spawn(async move {
            let st = child.wait().await;
            let (state, reason) = match st {
                Ok(s) if s.success() => (VmState::Stopped, "guest-shutdown".to_string()),
                Ok(s) => match std::os::unix::process::ExitStatusExt::signal(&s) {
                    Some(sig) => (VmState::Crashed, format!("killed by signal {sig}")),
                    None => (VmState::Stopped, format!("exit status {}", s.code().unwrap_or(-1))),
                },
                Err(e) => (VmState::Crashed, format!("wait: {e}")),
            };
            let stale = {
                let mut t = me.table();
                match t.get_mut(&id) {
                    Some(v) if v.pid == pid => {
                        v.pid = None;
                        me.store.clear_pid(&id);
                        false
                    }
                    _ => true,
                }
            };
            if !stale {
                me.set_state(&id, state, &reason);
            }
        });
        // Wait until it answers QMP, so the next request finds it ready. A new process on a
        // loaded host can take seconds to open its socket: allow 30 s, as libvirt allows a new
        // QEMU's monitor. A guest that powers off at once ends its process before that, maybe
        // in the middle of the QMP greeting (connection reset or closed): that start succeeded,
        // once the waiter above has recorded the exit.
        let gone = || self.table().get(&c.name).is_none_or(|v| v.pid.is_none());
        let t = tokio::time::Instant::now();
        loop {
            match self.qmp_within(&c.name, Duration::from_millis(200)).await {
                Ok(mut q) => {
                    let _ = q.command("query-status", json!({})).await;
                    return Ok(());
                }
                Err(_) if gone() => return Ok(()),
                Err(e) if t.elapsed() >= SPAWN_WAIT => {
                    let log = std::fs::read_to_string(dir.join("vm.log")).unwrap_or_default();
                    let last = log.lines().last().unwrap_or_default().to_string();
                    return Err(ApiError::vm(format!("the VM process did not come up: {} {last}", e.body.message)));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

/// The state a stored VM is listed in after a daemon restart (see the module doc), after making
/// sure no VM process of the previous daemon still runs.
fn recover_state(store: &Store, vmm: &std::path::Path, id: &str) -> (VmState, String) {
    let was_running = match store.take_pid(id) {
        Some(p) => {
            kill_orphan(vmm, id, p);
            true
        }
        None => false,
    };
    match store.load_state(id) {
        _ if was_running => (VmState::Stopped, "daemon-restart".into()),
        Some(s) if matches!(s.state, VmState::Running | VmState::Paused) => (VmState::Stopped, "daemon-restart".into()),
        Some(s) => (s.state, s.reason),
        // A data directory from before state.json: started once means stopped now.
        None if store.vm_dir(id).join("started").exists() => (VmState::Stopped, "daemon-restart".into()),
        None => (VmState::Created, "defined".into()),
    }
}

/// Kills the recorded VM process `p` of `id` if it is still that process (same start time, the
/// `vmm` binary) and waits until it is gone; anything else with that pid is left alone.
fn kill_orphan(vmm: &std::path::Path, id: &str, p: crate::store::PidFile) {
    use crate::store::process_start_time;
    let same = |p: crate::store::PidFile| {
        p.pid > 1
            && process_start_time(p.pid) == Some(p.start_time)
            && std::fs::read_link(format!("/proc/{}/exe", p.pid))
                .ok()
                .zip(std::fs::canonicalize(vmm).ok())
                .is_some_and(|(a, b)| a == b)
    };
    if !same(p) {
        return;
    }
    log::warn!("{id}: VM process {} outlived the previous daemon; killing it", p.pid);
    // SAFETY: kill(2) on a pid whose start time and executable were just checked to be the VM
    // process the previous daemon recorded; no memory is involved.
    unsafe {
        libc::kill(p.pid as libc::pid_t, libc::SIGKILL);
    }
    let t = std::time::Instant::now();
    while process_start_time(p.pid) == Some(p.start_time) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn path_id(p: Result<Path<String>, PathRejection>) -> ApiResult<String> {
    let Path(id) = p.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", e.body_text()))?;
    parse_id(&id).map(str::to_string)
}

fn path_ids(p: Result<Path<(String, String)>, PathRejection>) -> ApiResult<(String, String)> {
    let Path((a, b)) = p.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_id", e.body_text()))?;
    Ok((parse_id(&a)?.to_string(), parse_id(&b)?.to_string()))
}

fn body(b: Result<Bytes, BytesRejection>) -> ApiResult<Bytes> {
    b.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(parse::MAX_BODY + 1)
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", e.body_text())
        }
    })
}

fn require_running(info: &VmInfo) -> ApiResult<()> {
    if matches!(info.state, VmState::Running | VmState::Paused) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_running",
            format!("VM '{}' is {:?}, not running", info.id, info.state),
        ))
    }
}

/// The daemon's version.
#[utoipa::path(get, path = "/v1/version", responses((status = 200, body = VersionInfo)))]
pub async fn version() -> Json<VersionInfo> {
    Json(VersionInfo { version: env!("CARGO_PKG_VERSION").into(), api: "v1".into() })
}

/// Creates a VM from its configuration (it is not started).
#[utoipa::path(post, path = "/v1/vms", request_body = VmConfig,
    responses((status = 201, body = VmInfo), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody)))]
pub async fn create_vm(
    State(d): State<Shared>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<VmInfo>)> {
    let c = parse::parse_vm_config(&body(b)?, &d.cfg.images_dir)?;
    let info = {
        let mut t = d.table();
        if t.contains_key(&c.name) {
            return Err(ApiError::conflict(format!("VM '{}' exists", c.name)));
        }
        d.store.save_config(&c).map_err(|e| ApiError::internal(format!("saving the configuration: {e}")))?;
        let vm =
            Vm { config: c.clone(), state: VmState::Created, reason: "defined".into(), pid: None, op: Arc::default() };
        let info = vm.info();
        t.insert(c.name.clone(), vm);
        info
    };
    d.emit(&info.id, "created", json!({}));
    Ok((StatusCode::CREATED, Json(info)))
}

/// Lists the VMs.
#[utoipa::path(get, path = "/v1/vms", responses((status = 200, body = [VmInfo])))]
pub async fn list_vms(State(d): State<Shared>) -> Json<Vec<VmInfo>> {
    Json(d.table().values().map(Vm::info).collect())
}

/// One VM.
#[utoipa::path(get, path = "/v1/vms/{id}", params(("id" = String, Path, description = "VM id")),
    responses((status = 200, body = VmInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_vm(State(d): State<Shared>, p: Result<Path<String>, PathRejection>) -> ApiResult<Json<VmInfo>> {
    let id = path_id(p)?;
    Ok(Json(d.lookup(&id)?.1))
}

/// Deletes a VM that is not running (its configuration, snapshots and logs; not its images).
#[utoipa::path(delete, path = "/v1/vms/{id}", params(("id" = String, Path, description = "VM id")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_vm(State(d): State<Shared>, p: Result<Path<String>, PathRejection>) -> ApiResult<StatusCode> {
    let id = path_id(p)?;
    let (op, info) = d.lookup(&id)?;
    let _g = op.lock().await;
    if d.table().get(&id).is_some_and(|v| v.pid.is_some()) || matches!(info.state, VmState::Running | VmState::Paused) {
        return Err(ApiError::conflict(format!("VM '{id}' is running: stop it first")));
    }
    d.table().remove(&id);
    d.store.delete_vm(&id).map_err(|e| ApiError::internal(format!("removing {id}: {e}")))?;
    d.emit(&id, "deleted", json!({}));
    Ok(StatusCode::NO_CONTENT)
}

/// Starts the VM process.
#[utoipa::path(post, path = "/v1/vms/{id}/start", params(("id" = String, Path, description = "VM id")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn start_vm(State(d): State<Shared>, p: Result<Path<String>, PathRejection>) -> ApiResult<StatusCode> {
    let id = path_id(p)?;
    let (op, info) = d.lookup(&id)?;
    let _g = op.lock().await;
    if d.table().get(&id).is_some_and(|v| v.pid.is_some()) {
        return Err(ApiError::conflict(format!("VM '{id}' is already running")));
    }
    d.spawn_vm(&info.config, None, "started").await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn qmp_action(
    d: &Shared,
    p: Result<Path<String>, PathRejection>,
    cmd: &str,
    after: Option<(VmState, &str)>,
) -> ApiResult<StatusCode> {
    let id = path_id(p)?;
    let (op, info) = d.lookup(&id)?;
    let _g = op.lock().await;
    require_running(&info)?;
    d.qmp(&id).await?.command(cmd, json!({})).await.map_err(ApiError::vm)?;
    if let Some((s, why)) = after {
        d.set_state(&id, s, why);
    } else {
        d.emit(&id, cmd, json!({}));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Pauses the guest.
#[utoipa::path(post, path = "/v1/vms/{id}/pause", params(("id" = String, Path, description = "VM id")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn pause_vm(State(d): State<Shared>, p: Result<Path<String>, PathRejection>) -> ApiResult<StatusCode> {
    qmp_action(&d, p, "stop", Some((VmState::Paused, "paused"))).await
}

/// Resumes the guest.
#[utoipa::path(post, path = "/v1/vms/{id}/resume", params(("id" = String, Path, description = "VM id")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn resume_vm(State(d): State<Shared>, p: Result<Path<String>, PathRejection>) -> ApiResult<StatusCode> {
    qmp_action(&d, p, "cont", Some((VmState::Running, "resumed"))).await
}

/// Resets the machine (as the reset button).
#[utoipa::path(post, path = "/v1/vms/{id}/reset", params(("id" = String, Path, description = "VM id")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn reset_vm(State(d): State<Shared>, p: Result<Path<String>, PathRejection>) -> ApiResult<StatusCode> {
    qmp_action(&d, p, "system_reset", None).await
}

/// Powers the VM off (hard) and ends its process.
#[utoipa::path(post, path = "/v1/vms/{id}/stop", params(("id" = String, Path, description = "VM id")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn stop_vm(State(d): State<Shared>, p: Result<Path<String>, PathRejection>) -> ApiResult<StatusCode> {
    let id = path_id(p)?;
    let (op, info) = d.lookup(&id)?;
    let _g = op.lock().await;
    require_running(&info)?;
    let quit = match d.qmp(&id).await {
        Ok(mut q) => q.command("quit", json!({})).await.is_ok(),
        Err(_) => false,
    };
    for _ in 0..500 {
        if d.table().get(&id).is_none_or(|v| v.pid.is_none()) {
            break;
        }
        if !quit {
            if let Some(pid) = d.table().get(&id).and_then(|v| v.pid) {
                // SAFETY: kill(2) on a pid of our own child (not reaped yet: the watcher clears
                // `pid` when it reaps it), no memory is involved.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    d.set_state(&id, VmState::Stopped, "stopped");
    Ok(StatusCode::NO_CONTENT)
}

/// Snapshots the running VM (memory, devices and disks, VMware's model: the disks are frozen and
/// the VM continues on new deltas).
#[utoipa::path(post, path = "/v1/vms/{id}/snapshots", params(("id" = String, Path, description = "VM id")), request_body = SnapshotRequest,
    responses((status = 201, body = SnapshotInfo), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_snapshot(
    State(d): State<Shared>,
    p: Result<Path<String>, PathRejection>,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<(StatusCode, Json<SnapshotInfo>)> {
    let id = path_id(p)?;
    let req = parse::parse_snapshot_request(&body(b)?)?;
    let (op, info) = d.lookup(&id)?;
    let _g = op.lock().await;
    require_running(&info)?;
    if d.store.snapshots(&id).iter().any(|s| s.name == req.name) {
        return Err(ApiError::conflict(format!("snapshot '{}' exists", req.name)));
    }
    let mut s = SnapshotInfo {
        name: req.name.clone(),
        status: SnapshotStatus::InProgress,
        created: now(),
        size: 0,
        error: None,
    };
    d.store.save_snapshot_info(&id, &s).map_err(|e| ApiError::internal(e.to_string()))?;
    let r = match d.qmp(&id).await {
        Ok(mut q) => {
            q.job(
                "snapshot-save",
                json!({"job-id": format!("save-{}", req.name), "tag": req.name, "vmstate": "disk0", "devices": []}),
            )
            .await
        }
        Err(e) => Err(e.body.message),
    };
    // The daemon checks what the VM process wrote (magic, version, every section's CRC).
    let r = match r {
        Ok(()) => {
            let f = d.store.snapshot_file(&id, &s.name);
            tokio::task::spawn_blocking(move || machine::snapshot::read_file(&f).map(|_| ()).map_err(|e| e.to_string()))
                .await
                .unwrap_or_else(|e| Err(e.to_string()))
        }
        Err(e) => Err(e),
    };
    match r {
        Ok(()) => s.status = SnapshotStatus::Complete,
        Err(e) => {
            s.status = SnapshotStatus::Incomplete;
            s.error = Some(e);
        }
    }
    d.store.save_snapshot_info(&id, &s).map_err(|e| ApiError::internal(e.to_string()))?;
    s.size = std::fs::metadata(d.store.snapshot_file(&id, &s.name)).map(|m| m.len()).unwrap_or(0);
    d.emit(&id, "snapshot", json!({"name": s.name, "status": s.status}));
    if let Some(e) = &s.error {
        return Err(ApiError::vm(format!("snapshot failed: {e}")));
    }
    Ok((StatusCode::CREATED, Json(s)))
}

/// A VM's snapshots.
#[utoipa::path(get, path = "/v1/vms/{id}/snapshots", params(("id" = String, Path, description = "VM id")),
    responses((status = 200, body = [SnapshotInfo]), (status = 404, body = ErrorBody)))]
pub async fn list_snapshots(
    State(d): State<Shared>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Vec<SnapshotInfo>>> {
    let id = path_id(p)?;
    d.lookup(&id)?;
    Ok(Json(d.store.snapshots(&id)))
}

fn find_snapshot(d: &Daemon, id: &str, name: &str) -> ApiResult<SnapshotInfo> {
    d.store
        .snapshots(id)
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| ApiError::not_found(&format!("snapshot '{name}' of VM '{id}'")))
}

/// Restores a complete snapshot: into the running VM process, or by starting one from it.
#[utoipa::path(post, path = "/v1/vms/{id}/snapshots/{name}/restore",
    params(("id" = String, Path, description = "VM id"), ("name" = String, Path, description = "snapshot name")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn restore_snapshot(
    State(d): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<StatusCode> {
    let (id, name) = path_ids(p)?;
    let (op, info) = d.lookup(&id)?;
    let _g = op.lock().await;
    let s = find_snapshot(&d, &id, &name)?;
    if s.status != SnapshotStatus::Complete {
        return Err(ApiError::conflict(format!("snapshot '{name}' is {:?}: it cannot be restored", s.status)));
    }
    if d.table().get(&id).is_some_and(|v| v.pid.is_some()) {
        let mut q = d.qmp(&id).await?;
        q.job(
            "snapshot-load",
            json!({"job-id": format!("load-{name}"), "tag": name, "vmstate": "disk0", "devices": []}),
        )
        .await
        .map_err(ApiError::vm)?;
        // A restored VM runs (Firecracker's resume_vm), whether it was paused or not.
        q.command("cont", json!({})).await.map_err(ApiError::vm)?;
        d.set_state(&id, VmState::Running, &format!("restored {name}"));
    } else {
        d.spawn_vm(&info.config, Some(d.store.snapshot_file(&id, &name)), &format!("restored {name}")).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Deletes a snapshot (the frozen disk images stay: later deltas depend on them).
#[utoipa::path(delete, path = "/v1/vms/{id}/snapshots/{name}",
    params(("id" = String, Path, description = "VM id"), ("name" = String, Path, description = "snapshot name")),
    responses((status = 204), (status = 404, body = ErrorBody)))]
pub async fn delete_snapshot(
    State(d): State<Shared>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> ApiResult<StatusCode> {
    let (id, name) = path_ids(p)?;
    let (op, _) = d.lookup(&id)?;
    let _g = op.lock().await;
    find_snapshot(&d, &id, &name)?;
    let _ = std::fs::remove_file(d.store.snapshot_file(&id, &name));
    std::fs::remove_file(d.store.snapshot_dir(&id).join(format!("{name}.json")))
        .map_err(|e| ApiError::internal(e.to_string()))?;
    d.emit(&id, "snapshot-deleted", json!({ "name": name }));
    Ok(StatusCode::NO_CONTENT)
}

/// The VM's disks.
#[utoipa::path(get, path = "/v1/vms/{id}/disks", params(("id" = String, Path, description = "VM id")),
    responses((status = 200, body = [DiskInfo]), (status = 404, body = ErrorBody)))]
pub async fn disks(State(d): State<Shared>, p: Result<Path<String>, PathRejection>) -> ApiResult<Json<Vec<DiskInfo>>> {
    let id = path_id(p)?;
    let (op, info) = d.lookup(&id)?;
    let _g = op.lock().await;
    let mut current: BTreeMap<u32, String> = BTreeMap::new();
    if d.table().get(&id).is_some_and(|v| v.pid.is_some()) {
        if let Ok(mut q) = d.qmp(&id).await {
            if let Ok(serde_json::Value::Array(a)) = q.command("query-block", json!({})).await {
                for (i, b) in a.iter().enumerate() {
                    if let Some(f) = b["inserted"]["file"].as_str() {
                        current.insert(i as u32, f.to_string());
                    }
                }
            }
        }
    }
    Ok(Json(
        info.config
            .disks
            .iter()
            .enumerate()
            .map(|(i, c)| DiskInfo {
                index: i as u32,
                path: c.path.clone(),
                current: current.get(&(i as u32)).cloned(),
                file_size: std::fs::metadata(d.cfg.images_dir.join(&c.path)).map(|m| m.len()).unwrap_or(0),
                read_only: c.read_only,
            })
            .collect(),
    ))
}

/// Query of the serial log.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct SerialQuery {
    /// Start at this byte offset of the log.
    pub offset: Option<u64>,
}

/// The serial console's log (COM1), as bytes.
#[utoipa::path(get, path = "/v1/vms/{id}/serial", params(("id" = String, Path, description = "VM id"), SerialQuery),
    responses((status = 200, content_type = "text/plain", body = String), (status = 404, body = ErrorBody)))]
pub async fn serial(
    State(d): State<Shared>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<SerialQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let id = path_id(p)?;
    let Query(q) = q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", e.body_text()))?;
    d.lookup(&id)?;
    let log = std::fs::read(d.store.vm_dir(&id).join("serial.log")).unwrap_or_default();
    let off = usize::try_from(q.offset.unwrap_or(0)).unwrap_or(usize::MAX).min(log.len());
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], log[off..].to_vec()).into_response())
}

/// Server-sent events: every state change, snapshot and action, as JSON `{vm, event, detail,
/// timestamp}`.
#[utoipa::path(get, path = "/v1/events", responses((status = 200, content_type = "text/event-stream", body = String)))]
pub async fn events(
    State(d): State<Shared>,
) -> Sse<impl tokio_stream::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let rx = d.events.subscribe();
    let stream = tokio_stream::wrappers::BroadcastStream::new(rx)
        .filter_map(|m| m.ok())
        .map(|m| Ok(Event::default().event("vm").data(m)));
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
}

/// The routes.
pub fn router(d: Shared) -> Router {
    Router::new()
        .route("/v1/version", get(version))
        .route("/v1/vms", get(list_vms).post(create_vm))
        .route("/v1/vms/{id}", get(get_vm).delete(delete_vm))
        .route("/v1/vms/{id}/start", post(start_vm))
        .route("/v1/vms/{id}/pause", post(pause_vm))
        .route("/v1/vms/{id}/resume", post(resume_vm))
        .route("/v1/vms/{id}/reset", post(reset_vm))
        .route("/v1/vms/{id}/stop", post(stop_vm))
        .route("/v1/vms/{id}/snapshots", get(list_snapshots).post(create_snapshot))
        .route("/v1/vms/{id}/snapshots/{name}", axum::routing::delete(delete_snapshot))
        .route("/v1/vms/{id}/snapshots/{name}/restore", post(restore_snapshot))
        .route("/v1/vms/{id}/disks", get(disks))
        .route("/v1/vms/{id}/serial", get(serial))
        .route("/v1/events", get(events))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(parse::MAX_BODY))
        .with_state(d)
}

/// Where the API listens.
#[derive(Debug, Clone)]
pub enum Bind {
    /// A Unix socket (the default: `DATA/api.sock`).
    Unix(PathBuf),
    /// A loopback TCP address.
    Tcp(std::net::SocketAddr),
}

impl std::fmt::Display for Bind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bind::Unix(p) => write!(f, "unix socket {}", p.display()),
            Bind::Tcp(a) => write!(f, "tcp {a}"),
        }
    }
}

/// Serves until the process ends.
pub async fn serve(cfg: DaemonConfig, bind: Bind) -> std::io::Result<()> {
    let d = Daemon::open(cfg)?;
    let app = router(d);
    match bind {
        Bind::Unix(p) => {
            let _ = std::fs::remove_file(&p);
            let l = tokio::net::UnixListener::bind(&p)?;
            axum::serve(l, app).await
        }
        Bind::Tcp(a) => {
            if !a.ip().is_loopback() {
                return Err(std::io::Error::other(format!("{a}: only loopback addresses are allowed")));
            }
            let l = tokio::net::TcpListener::bind(a).await?;
            axum::serve(l, app).await
        }
    }
}

//! The VM run loop with management: QMP (QEMU Machine Protocol, `docs/interop/qmp-spec.rst`)
//! on a Unix or TCP socket, snapshot jobs, and the end-of-run snapshot and state dump.
//!
//! Threads: one accepts connections, one per client reads and parses its commands; the machine
//! stays on the calling thread, which runs the guest in slices and executes queued commands only
//! between slices, so their guest-visible effects enter at run-slice boundaries. Replies and
//! events are written by the machine thread directly (a mutex per client), so a reply is on the
//! wire before the next slice starts.

use crate::vm::{self, Disks, MgmtArgs};
use anyhow::{bail, Context};
use base::Persist;
use machine::snapshot::MachineState;
use machine::{Exit, Machine, MachineConfig};
use serde_json::{json, Map, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Guest instructions per run slice between command checks.
const SLICE: u64 = 2_000_000;

/// One connected QMP client.
struct Client {
    out: Mutex<Box<dyn Write + Send>>,
    /// Capabilities negotiated: events flow, commands run.
    negotiated: AtomicBool,
    alive: AtomicBool,
}

impl Client {
    fn send(&self, v: &Value) {
        if !self.alive.load(Ordering::Relaxed) {
            return;
        }
        let mut line = v.to_string();
        line.push_str("\r\n");
        let mut o = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if o.write_all(line.as_bytes()).and_then(|()| o.flush()).is_err() {
            self.alive.store(false, Ordering::Relaxed);
        }
    }
}

/// A command for the machine thread.
struct Request {
    client: Arc<Client>,
    id: Option<Value>,
    name: String,
    args: Map<String, Value>,
}

/// The clients and the way to the machine thread.
struct Hub {
    clients: Mutex<Vec<Arc<Client>>>,
    tx: Mutex<Sender<Request>>,
    name: Option<String>,
}

fn timestamp() -> Value {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    json!({"seconds": d.as_secs(), "microseconds": d.subsec_micros()})
}

impl Hub {
    fn event(&self, name: &str, data: Option<Value>) {
        let mut ev = json!({"event": name, "timestamp": timestamp()});
        if let Some(d) = data {
            ev["data"] = d;
        }
        let mut cs = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        cs.retain(|c| c.alive.load(Ordering::Relaxed));
        for c in cs.iter() {
            if c.negotiated.load(Ordering::Relaxed) {
                c.send(&ev);
            }
        }
    }
}

fn error(class: &str, desc: impl Into<String>, id: &Option<Value>) -> Value {
    let mut v = json!({"error": {"class": class, "desc": desc.into()}});
    if let Some(id) = id {
        v["id"] = id.clone();
    }
    v
}

fn ok(ret: Value, id: &Option<Value>) -> Value {
    let mut v = json!({ "return": ret });
    if let Some(id) = id {
        v["id"] = id.clone();
    }
    v
}

/// Argument types QMP commands take.
#[derive(Clone, Copy)]
enum Ty {
    Str,
    StrList,
}

/// The commands and their arguments (name, type, required).
fn command_args(name: &str) -> Option<&'static [(&'static str, Ty, bool)]> {
    Some(match name {
        "qmp_capabilities" => &[("enable", Ty::StrList, false)],
        "query-status" | "query-version" | "query-name" | "query-cpus-fast" | "query-block" | "stop" | "cont"
        | "system_reset" | "system_powerdown" | "quit" | "query-jobs" | "query-commands" => &[],
        "snapshot-save" => &[
            ("job-id", Ty::Str, true),
            ("tag", Ty::Str, true),
            ("vmstate", Ty::Str, true),
            ("devices", Ty::StrList, true),
        ],
        "snapshot-load" => &[
            ("job-id", Ty::Str, true),
            ("tag", Ty::Str, true),
            ("vmstate", Ty::Str, true),
            ("devices", Ty::StrList, true),
        ],
        "snapshot-delete" => &[("job-id", Ty::Str, true), ("tag", Ty::Str, true), ("devices", Ty::StrList, true)],
        "job-dismiss" => &[("id", Ty::Str, true)],
        "human-monitor-command" => &[("command-line", Ty::Str, true), ("cpu-index", Ty::Str, false)],
        _ => return None,
    })
}

/// QMP's strict argument check: unknown, missing and mistyped arguments are refused before any
/// side effect.
fn check_args(name: &str, args: &Map<String, Value>) -> Result<(), String> {
    let Some(spec) = command_args(name) else { return Ok(()) };
    for k in args.keys() {
        if !spec.iter().any(|(n, _, _)| n == k) {
            return Err(format!("Parameter '{k}' is unexpected"));
        }
    }
    for &(n, ty, required) in spec {
        match args.get(n) {
            None if required => return Err(format!("Parameter '{n}' is missing")),
            None => {}
            Some(v) => {
                let good = match ty {
                    Ty::Str => v.is_string(),
                    Ty::StrList => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
                };
                if !(good || (n == "cpu-index" && v.is_i64())) {
                    let want = match ty {
                        Ty::Str => "string",
                        Ty::StrList => "array",
                    };
                    return Err(format!("Invalid parameter type for '{n}', expected: {want}"));
                }
            }
        }
    }
    Ok(())
}

/// Handles one client connection until it closes.
fn serve_client(hub: Arc<Hub>, reader: Box<dyn std::io::Read + Send>, writer: Box<dyn Write + Send>) {
    let client =
        Arc::new(Client { out: Mutex::new(writer), negotiated: AtomicBool::new(false), alive: AtomicBool::new(true) });
    hub.clients.lock().unwrap_or_else(|e| e.into_inner()).push(client.clone());
    client.send(&json!({"QMP": {"version": version(), "capabilities": []}}));
    let mut reader = reader;
    // Clients need not end a command with a newline (qemu.qmp does not): parse the byte stream.
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut messages: std::collections::VecDeque<Result<Value, String>> = std::collections::VecDeque::new();
    loop {
        let v = match messages.pop_front() {
            Some(Ok(v)) => v,
            Some(Err(e)) => {
                client.send(&error("GenericError", e, &None));
                continue;
            }
            None => {
                let n = match reader.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                // A control character resynchronizes a confused parser (qmp-spec "Forcing the
                // JSON parser into known-good state").
                if let Some(p) = buf.iter().rposition(|&b| b == 0x1B || b == 0xFF || b == 0x04) {
                    buf.drain(..=p);
                }
                loop {
                    let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
                    match it.next() {
                        None => {
                            buf.clear();
                            break;
                        }
                        Some(Ok(v)) => {
                            let used = it.byte_offset();
                            buf.drain(..used);
                            messages.push_back(Ok(v));
                        }
                        Some(Err(e)) if e.is_eof() && buf.len() < (1 << 20) => break,
                        Some(Err(e)) => {
                            // Skip to the end of the offending line (or everything) and go on.
                            let cut = buf.iter().position(|&b| b == b'\n').map_or(buf.len(), |p| p + 1);
                            buf.drain(..cut);
                            messages.push_back(Err(format!("JSON parse error, {e}")));
                        }
                    }
                }
                continue;
            }
        };
        let Value::Object(mut obj) = v else {
            client.send(&error("GenericError", "QMP input must be a JSON object", &None));
            continue;
        };
        let id = obj.remove("id");
        if obj.contains_key("exec-oob") {
            client.send(&error(
                "GenericError",
                "Please enable out-of-band first for the session during capabilities negotiation",
                &id,
            ));
            continue;
        }
        let Some(name) = obj.remove("execute") else {
            client.send(&error("GenericError", "QMP input lacks member 'execute'", &id));
            continue;
        };
        let Value::String(name) = name else {
            client.send(&error("GenericError", "QMP input member 'execute' must be a string", &id));
            continue;
        };
        let args = match obj.remove("arguments") {
            None => Map::new(),
            Some(Value::Object(m)) => m,
            Some(_) => {
                client.send(&error("GenericError", "QMP input member 'arguments' must be an object", &id));
                continue;
            }
        };
        if let Some(k) = obj.keys().next() {
            client.send(&error("GenericError", format!("QMP input member '{k}' is unexpected"), &id));
            continue;
        }
        let negotiated = client.negotiated.load(Ordering::Relaxed);
        if name == "qmp_capabilities" {
            if negotiated {
                client.send(&error(
                    "CommandNotFound",
                    "Capabilities negotiation is already complete, command ignored",
                    &id,
                ));
            } else if let Err(e) = check_args(&name, &args) {
                client.send(&error("GenericError", e, &id));
            } else if args.get("enable").and_then(Value::as_array).is_some_and(|a| !a.is_empty()) {
                client.send(&error("GenericError", "Capability 'oob' not available", &id));
            } else {
                client.negotiated.store(true, Ordering::Relaxed);
                client.send(&ok(json!({}), &id));
            }
            continue;
        }
        if !negotiated {
            client.send(&error("CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'", &id));
            continue;
        }
        if command_args(&name).is_none() {
            client.send(&error("CommandNotFound", format!("The command {name} has not been found"), &id));
            continue;
        }
        if let Err(e) = check_args(&name, &args) {
            client.send(&error("GenericError", e, &id));
            continue;
        }
        match name.as_str() {
            "query-version" => client.send(&ok(version(), &id)),
            "query-name" => {
                let v = hub.name.as_ref().map_or(json!({}), |n| json!({ "name": n }));
                client.send(&ok(v, &id));
            }
            "query-commands" => {
                let names = [
                    "qmp_capabilities",
                    "query-status",
                    "query-version",
                    "query-name",
                    "query-cpus-fast",
                    "query-block",
                    "stop",
                    "cont",
                    "system_reset",
                    "system_powerdown",
                    "quit",
                    "query-jobs",
                    "query-commands",
                    "snapshot-save",
                    "snapshot-load",
                    "snapshot-delete",
                    "job-dismiss",
                    "human-monitor-command",
                ];
                client.send(&ok(Value::Array(names.iter().map(|n| json!({ "name": n })).collect()), &id));
            }
            _ => {
                let tx = hub.tx.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if tx.send(Request { client: client.clone(), id: id.clone(), name, args }).is_err() {
                    client.send(&error("GenericError", "the VM has ended", &id));
                    break;
                }
            }
        }
    }
    client.alive.store(false, Ordering::Relaxed);
}

fn version() -> Value {
    json!({"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": format!("ferrovisor {}", env!("CARGO_PKG_VERSION"))})
}

/// A parsed `--qmp` address.
enum Listen {
    Unix(PathBuf),
    Tcp(String),
}

fn parse_spec(spec: &str) -> anyhow::Result<Listen> {
    let mut parts = spec.split(',');
    let addr = parts.next().unwrap_or_default();
    for opt in parts {
        match opt {
            "server" | "server=on" | "wait=off" | "nowait" => {}
            "wait=on" | "wait" => bail!("--qmp {spec}: wait=on is not supported (use wait=off)"),
            o => bail!("--qmp {spec}: unknown option '{o}' (expected server, wait=off)"),
        }
    }
    if let Some(p) = addr.strip_prefix("unix:") {
        if p.is_empty() {
            bail!("--qmp {spec}: empty socket path");
        }
        Ok(Listen::Unix(PathBuf::from(p)))
    } else if let Some(hp) = addr.strip_prefix("tcp:") {
        // QMP has no authentication: whoever connects controls the VM. Only this host may.
        use std::net::ToSocketAddrs;
        let addrs: Vec<_> =
            hp.to_socket_addrs().with_context(|| format!("--qmp {spec}: bad address '{hp}'"))?.collect();
        if addrs.is_empty() || addrs.iter().any(|a| !a.ip().is_loopback()) {
            bail!("--qmp {spec}: only loopback addresses are allowed (e.g. tcp:127.0.0.1:4444)");
        }
        Ok(Listen::Tcp(hp.to_string()))
    } else {
        bail!("--qmp {spec}: expected unix:PATH,server,wait=off or tcp:HOST:PORT,server,wait=off")
    }
}

/// Starts the listener; connections are served on their own threads.
fn listen(spec: &str, hub: Arc<Hub>) -> anyhow::Result<()> {
    match parse_spec(spec)? {
        Listen::Unix(path) => {
            let _ = std::fs::remove_file(&path);
            let l = std::os::unix::net::UnixListener::bind(&path)
                .with_context(|| format!("cannot listen on {}", path.display()))?;
            std::thread::spawn(move || {
                for s in l.incoming().flatten() {
                    let hub = hub.clone();
                    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
                    if let Ok(w) = s.try_clone() {
                        std::thread::spawn(move || serve_client(hub, Box::new(s), Box::new(w)));
                    }
                }
            });
        }
        Listen::Tcp(addr) => {
            let l = std::net::TcpListener::bind(&addr).with_context(|| format!("cannot listen on {addr}"))?;
            std::thread::spawn(move || {
                for s in l.incoming().flatten() {
                    let hub = hub.clone();
                    let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
                    let _ = s.set_nodelay(true);
                    if let Ok(w) = s.try_clone() {
                        std::thread::spawn(move || serve_client(hub, Box::new(s), Box::new(w)));
                    }
                }
            });
        }
    }
    Ok(())
}

/// A snapshot job as `query-jobs` shows it.
struct Job {
    id: String,
    kind: &'static str,
    status: &'static str,
    error: Option<String>,
}

/// The VM under management.
struct Vm {
    m: Machine,
    disks: Disks,
    host: MachineConfig,
    running: bool,
    status: &'static str,
    jobs: Vec<Job>,
    snapshot_dir: PathBuf,
    /// The state at power-on: a reset of a machine without firmware returns to it.
    power_on: MachineState,
    quit: bool,
}

fn job_event(hub: &Hub, id: &str, status: &str) {
    hub.event("JOB_STATUS_CHANGE", Some(json!({"id": id, "status": status})));
}

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && !tag.starts_with('.')
}

impl Vm {
    fn snapshot_path(&self, tag: &str) -> PathBuf {
        self.snapshot_dir.join(format!("{tag}.fvsnap"))
    }

    fn block_info(&self) -> Value {
        let mut v = Vec::new();
        for (i, p) in self.disks.paths.iter().enumerate() {
            let Some(p) = p else { continue };
            let (fmt, size) = match vmdk::AnyImage::open(p, false) {
                Ok(img) => (if matches!(img, vmdk::AnyImage::Vmdk(_)) { "vmdk" } else { "raw" }, img.dev().len()),
                Err(_) => ("unknown", 0),
            };
            let file = p.display().to_string();
            v.push(json!({
                "device": format!("ide{}-hd{}", i / 2, i % 2),
                "qdev": format!("/machine/unattached/device[{}]", 10 + i),
                "locked": false,
                "removable": false,
                "type": "unknown",
                "io-status": "ok",
                "inserted": {
                    "file": file,
                    "node-name": format!("#block{:03}", 100 + i),
                    "ro": self.disks.read_only,
                    "drv": fmt,
                    "encrypted": false,
                    "detect_zeroes": "off",
                    "bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0,
                    "write_threshold": 0,
                    "cache": {"writeback": true, "direct": false, "no-flush": false},
                    "image": {"filename": file, "format": fmt, "virtual-size": size},
                },
            }));
        }
        Value::Array(v)
    }

    /// Runs a snapshot job to its end (at this run-slice boundary), with the status events.
    fn job(&mut self, hub: &Hub, id: String, kind: &'static str, work: impl FnOnce(&mut Vm) -> anyhow::Result<()>) {
        job_event(hub, &id, "created");
        job_event(hub, &id, "running");
        let r = work(self);
        job_event(hub, &id, "waiting");
        job_event(hub, &id, "pending");
        job_event(hub, &id, "concluded");
        self.jobs.push(Job { id, kind, status: "concluded", error: r.err().map(|e| format!("{e:#}")) });
    }

    /// Executes one command at a run-slice boundary.
    fn execute(&mut self, hub: &Hub, req: Request) {
        let Request { client, id, name, args } = req;
        let s = |k: &str| args.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
        let reply = match name.as_str() {
            "query-status" => ok(json!({"status": self.status, "running": self.running, "singlestep": false}), &id),
            "query-cpus-fast" => ok(
                json!([{
                    "cpu-index": 0,
                    "qom-path": "/machine/unattached/device[0]",
                    "thread-id": std::process::id(),
                    "props": {"socket-id": 0, "core-id": 0, "thread-id": 0},
                    "target": "x86_64",
                }]),
                &id,
            ),
            "query-block" => ok(self.block_info(), &id),
            "stop" => {
                if self.running {
                    self.running = false;
                    self.status = "paused";
                    hub.event("STOP", None);
                }
                ok(json!({}), &id)
            }
            "cont" => {
                if !self.running {
                    self.running = true;
                    self.status = "running";
                    hub.event("RESUME", None);
                }
                ok(json!({}), &id)
            }
            "system_reset" => {
                self.m.request_reset();
                hub.event("RESET", Some(json!({"guest": false, "reason": "host-qmp-system-reset"})));
                ok(json!({}), &id)
            }
            "system_powerdown" => {
                // The ACPI power button of the PIIX4 PM: the guest decides (an ACPI OS shuts
                // down; firmware alone ignores it), as with QEMU.
                self.m.press_power_button();
                hub.event("POWERDOWN", None);
                ok(json!({}), &id)
            }
            "quit" => {
                self.quit = true;
                client.send(&ok(json!({}), &id));
                hub.event("SHUTDOWN", Some(json!({"guest": false, "reason": "host-qmp-quit"})));
                return;
            }
            "query-jobs" => ok(
                Value::Array(
                    self.jobs
                        .iter()
                        .map(|j| {
                            let mut v = json!({"id": j.id, "type": j.kind, "status": j.status,
                                               "current-progress": 1, "total-progress": 1});
                            if let Some(e) = &j.error {
                                v["error"] = json!(e);
                            }
                            v
                        })
                        .collect(),
                ),
                &id,
            ),
            "job-dismiss" => {
                let jid = s("id");
                match self.jobs.iter().position(|j| j.id == jid) {
                    Some(i) => {
                        self.jobs.remove(i);
                        job_event(hub, &jid, "null");
                        ok(json!({}), &id)
                    }
                    None => error("GenericError", format!("Job not found: '{jid}'"), &id),
                }
            }
            "snapshot-save" | "snapshot-load" | "snapshot-delete" => {
                let jid = s("job-id");
                let tag = s("tag");
                if self.jobs.iter().any(|j| j.id == jid) {
                    error("GenericError", format!("Job ID '{jid}' already in use"), &id)
                } else if !valid_tag(&tag) {
                    error("GenericError", format!("Invalid snapshot tag '{tag}' (letters, digits, '-', '_', '.')"), &id)
                } else {
                    client.send(&ok(json!({}), &id));
                    let path = self.snapshot_path(&tag);
                    match name.as_str() {
                        "snapshot-save" => self.job(hub, jid, "snapshot-save", |vm| {
                            vm::save(&mut vm.m, &mut vm.disks, &path, &tag).map(|_| ())
                        }),
                        "snapshot-load" => self.job(hub, jid, "snapshot-load", |vm| {
                            let (m, d) = vm::restore(
                                &path,
                                vm.host.clone(),
                                &Disks { read_only: vm.disks.read_only, ..Default::default() },
                            )?;
                            let stdin = vm.m.take_serial_input_source();
                            vm.m = m;
                            if let Some(rx) = stdin {
                                vm.m.connect_serial_input(rx);
                            }
                            vm.disks = d;
                            Ok(())
                        }),
                        _ => self.job(hub, jid, "snapshot-delete", |_| {
                            std::fs::remove_file(&path).with_context(|| format!("Snapshot '{tag}' not found"))
                        }),
                    }
                    return;
                }
            }
            "human-monitor-command" => {
                let line = s("command-line");
                let words: Vec<&str> = line.split_whitespace().collect();
                let out = match words.as_slice() {
                    ["info", "status"] => format!("VM status: {}\r\n", self.status),
                    ["info", "name"] => hub.name.as_ref().map(|n| format!("{n}\r\n")).unwrap_or_default(),
                    ["info", "version"] => format!("7.2.0 (ferrovisor {})\r\n", env!("CARGO_PKG_VERSION")),
                    [] => String::new(),
                    [cmd, ..] => format!("unknown command: '{cmd}'\r\n"),
                };
                ok(json!(out), &id)
            }
            other => error("CommandNotFound", format!("The command {other} has not been found"), &id),
        };
        client.send(&reply);
    }
}

/// Runs the VM: plain (to its end, then the optional snapshot and state dump) or managed over
/// QMP. Returns the process exit status.
pub fn run_vm(
    m: Machine,
    disks: Disks,
    host: MachineConfig,
    mgmt: &MgmtArgs,
    max_insns: Option<u64>,
    quiet: bool,
) -> anyhow::Result<i32> {
    let start = Instant::now();
    let Some(spec) = &mgmt.qmp else {
        if mgmt.paused {
            bail!("-S (start paused) needs --qmp to be continued");
        }
        let mut m = m;
        let mut disks = disks;
        let exit = m.run(max_insns);
        report(&m, start, quiet);
        finish(&mut m, &mut disks, mgmt)?;
        return Ok(crate::run::exit_status(exit));
    };
    let (tx, rx) = channel();
    let hub = Arc::new(Hub { clients: Mutex::new(Vec::new()), tx: Mutex::new(tx), name: mgmt.name.clone() });
    listen(spec, hub.clone())?;
    let power_on = m.save();
    let mut vm = Vm {
        m,
        disks,
        host,
        running: !mgmt.paused,
        status: if mgmt.paused { "prelaunch" } else { "running" },
        jobs: Vec::new(),
        snapshot_dir: mgmt.snapshot_dir.clone().unwrap_or_else(|| PathBuf::from(".")),
        power_on,
        quit: false,
    };
    let limit = max_insns.map(|n| vm.m.instructions().saturating_add(n));
    let exit = loop {
        let wait = if vm.running { None } else { Some(Duration::from_millis(50)) };
        drain(&mut vm, &hub, &rx, wait);
        if vm.quit {
            break None;
        }
        if !vm.running {
            continue;
        }
        let mut budget = SLICE;
        if let Some(l) = limit {
            let now = vm.m.instructions();
            if now >= l {
                break Some(Exit::InstructionLimit);
            }
            budget = budget.min(l - now);
        }
        match vm.m.run(Some(budget)) {
            Exit::InstructionLimit => {}
            Exit::Reset if !vm.power_on.config.no_reboot && vm.power_on.bios.is_none() => {
                // No firmware to reboot into: back to the power-on state.
                let (m, _) = vm::restore_state(&vm.power_on, vm.host.clone(), &vm.disks, Path::new("power-on"))?;
                let stdin = vm.m.take_serial_input_source();
                vm.m = m;
                if let Some(rx) = stdin {
                    vm.m.connect_serial_input(rx);
                }
            }
            e => {
                let reason = match e {
                    Exit::Reset | Exit::TripleFault => "guest-reset",
                    _ => "guest-shutdown",
                };
                hub.event("SHUTDOWN", Some(json!({"guest": true, "reason": reason})));
                break Some(e);
            }
        }
    };
    report(&vm.m, start, quiet);
    finish(&mut vm.m, &mut vm.disks, mgmt)?;
    if let Ok(Listen::Unix(p)) = parse_spec(spec) {
        let _ = std::fs::remove_file(p);
    }
    Ok(match exit {
        None => 0,
        Some(e) => crate::run::exit_status(e),
    })
}

/// Executes queued commands; waits up to `wait` for the first one when given.
fn drain(vm: &mut Vm, hub: &Hub, rx: &Receiver<Request>, wait: Option<Duration>) {
    if let Some(w) = wait {
        match rx.recv_timeout(w) {
            Ok(r) => vm.execute(hub, r),
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
        }
    }
    while let Ok(r) = rx.try_recv() {
        vm.execute(hub, r);
        if vm.quit {
            return;
        }
    }
}

fn report(m: &Machine, start: Instant, quiet: bool) {
    if !quiet {
        let secs = start.elapsed().as_secs_f64();
        let n = m.instructions();
        eprintln!("ferrovisor: {n} guest instructions in {secs:.3} s ({:.1} MIPS)", n as f64 / secs.max(1e-9) / 1e6);
    }
}

/// The end-of-run snapshot and state dump.
fn finish(m: &mut Machine, disks: &mut Disks, mgmt: &MgmtArgs) -> anyhow::Result<()> {
    if let Some(f) = &mgmt.snapshot_save {
        let tag = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "snapshot".into());
        vm::save(m, disks, f, &tag)?;
    }
    if let Some(f) = &mgmt.state_out {
        vm::write_state(m, f)?;
    }
    Ok(())
}

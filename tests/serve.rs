//! `ferrovisor serve`: the management daemon as a client sees it over its Unix socket.
//! Lifecycle, crash isolation, restart, a schema-derived bad-request fuzz, 20 concurrent
//! clients, and a daemon killed in the middle of a snapshot.

use mgmt_api::client::{request, Endpoint, Reply};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Daemon {
    child: Child,
    ep: Endpoint,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn data_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferro-serve-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("images")).unwrap();
    // A guest that spins forever, and one disk.
    std::fs::write(d.join("images/spin.bin"), [0xEB, 0xFE]).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferrovisor"))
        .args(["disk", "create"])
        .arg(d.join("images/d.vmdk"))
        .arg("8M")
        .output()
        .unwrap();
    assert!(out.status.success());
    d
}

fn start_daemon(data: &Path) -> Daemon {
    let sock = data.join("api.sock");
    let _ = std::fs::remove_file(&sock);
    let child = Command::new(env!("CARGO_BIN_EXE_ferrovisor"))
        .arg("serve")
        .arg("--data-dir")
        .arg(data)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let ep = Endpoint::Unix(sock.clone());
    let t = Instant::now();
    while request(&ep, "GET", "/v1/version", None).is_err() {
        assert!(t.elapsed() < Duration::from_secs(20), "the daemon did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
    Daemon { child, ep }
}

fn call(d: &Daemon, method: &str, path: &str, body: Option<Value>) -> Reply {
    let b = body.map(|v| serde_json::to_vec(&v).unwrap());
    let r = request(&d.ep, method, path, b.as_deref()).unwrap();
    if r.status >= 400 {
        // Shown with a failed assertion: the daemon's reason for an unexpected refusal.
        eprintln!("{method} {path}: {} {}", r.status, String::from_utf8_lossy(&r.body));
    }
    r
}

fn spin_vm(name: &str) -> Value {
    json!({"name": name, "memory_mib": 16, "flat": "spin.bin"})
}

fn wait_state(d: &Daemon, id: &str, want: &str) -> Value {
    let t = Instant::now();
    loop {
        let v = call(d, "GET", &format!("/v1/vms/{id}"), None).json();
        if v["state"] == want {
            return v;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{id} never became {want}: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn kill(pid: u64, sig: i32) {
    // SAFETY: kill(2) on a pid this test read from the daemon (a VM process it started).
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

#[test]
fn test_serve_lifecycle_crash_isolation_snapshots_restart() {
    let data = data_dir("life");
    let mut d = start_daemon(&data);
    // An event stream, opened before anything happens.
    let sse = std::os::unix::net::UnixStream::connect(data.join("api.sock")).unwrap();
    sse.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    (&sse).write_all(b"GET /v1/events HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut sse = BufReader::new(sse);

    let mut a = spin_vm("a");
    a["disks"] = json!([{"path": "d.vmdk"}]);
    assert_eq!(call(&d, "POST", "/v1/vms", Some(a)).status, 201);
    assert_eq!(call(&d, "POST", "/v1/vms", Some(spin_vm("b"))).status, 201);
    // The demo guest (no image): prints its banner on the serial console and powers off.
    assert_eq!(call(&d, "POST", "/v1/vms", Some(json!({"name": "demo", "memory_mib": 16}))).status, 201);
    assert_eq!(call(&d, "POST", "/v1/vms", Some(spin_vm("a"))).status, 409);
    for id in ["a", "b", "demo"] {
        assert_eq!(call(&d, "POST", &format!("/v1/vms/{id}/start"), None).status, 204, "{id}");
    }
    wait_state(&d, "demo", "stopped");
    let serial = call(&d, "GET", "/v1/vms/demo/serial", None);
    assert_eq!(serial.status, 200);
    assert!(String::from_utf8_lossy(&serial.body).starts_with(test_roms::DEMO_BANNER));
    assert_eq!(call(&d, "GET", "/v1/vms/demo/serial?offset=5", None).body, serial.body[5..]);

    // Pause, snapshot, resume, restore.
    assert_eq!(call(&d, "POST", "/v1/vms/a/pause", None).status, 204);
    assert_eq!(call(&d, "GET", "/v1/vms/a", None).json()["state"], "paused");
    let s = call(&d, "POST", "/v1/vms/a/snapshots", Some(json!({"name": "s1"})));
    assert_eq!(s.status, 201, "{}", String::from_utf8_lossy(&s.body));
    assert_eq!(s.json()["status"], "complete");
    let f = data.join("vms/a/snapshots/s1.fvsnap");
    machine::snapshot::read_file(&f).expect("the snapshot file checks out");
    assert_eq!(call(&d, "POST", "/v1/vms/a/resume", None).status, 204);
    let disks = call(&d, "GET", "/v1/vms/a/disks", None).json();
    assert!(disks[0]["current"].as_str().unwrap().ends_with("d.s1.vmdk"), "{disks}");
    let list = call(&d, "GET", "/v1/vms/a/snapshots", None).json();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(call(&d, "POST", "/v1/vms/a/snapshots/s1/restore", None).status, 204);
    assert_eq!(call(&d, "GET", "/v1/vms/a", None).json()["state"], "running");
    assert_eq!(call(&d, "POST", "/v1/vms/a/reset", None).status, 204);

    // Kill b's process: b is crashed, a and the daemon go on.
    let pid = call(&d, "GET", "/v1/vms/b", None).json()["pid"].as_u64().unwrap();
    kill(pid, libc::SIGKILL);
    let b = wait_state(&d, "b", "crashed");
    assert_eq!(b["reason"], "killed by signal 9");
    assert_eq!(call(&d, "POST", "/v1/vms/a/pause", None).status, 204);
    assert_eq!(call(&d, "POST", "/v1/vms/a/resume", None).status, 204);
    assert_eq!(call(&d, "POST", "/v1/vms/b/pause", None).status, 409);
    // A crashed VM starts again.
    assert_eq!(call(&d, "POST", "/v1/vms/b/start", None).status, 204);
    assert_eq!(call(&d, "POST", "/v1/vms/b/stop", None).status, 204);
    assert_eq!(call(&d, "DELETE", "/v1/vms/a", None).status, 409, "a running VM is not deleted");
    assert_eq!(call(&d, "DELETE", "/v1/vms/a/snapshots/s1", None).status, 204);
    assert_eq!(call(&d, "DELETE", "/v1/vms/a/snapshots/s1", None).status, 404);

    // The events arrived on the stream.
    let mut seen = String::new();
    let t = Instant::now();
    while !seen.contains("killed by signal 9") {
        let mut line = String::new();
        sse.read_line(&mut line).unwrap();
        seen.push_str(&line);
        assert!(t.elapsed() < Duration::from_secs(20), "events so far:\n{seen}");
    }
    assert!(seen.contains("event: vm") && seen.contains("\"snapshot\"") && seen.contains("\"paused\""), "{seen}");

    // Restart: every configuration is back.
    let before = call(&d, "GET", "/v1/vms", None).json();
    let _ = d.child.kill();
    let _ = d.child.wait();
    drop(d);
    let d = start_daemon(&data);
    let after = call(&d, "GET", "/v1/vms", None).json();
    let configs = |v: &Value| v.as_array().unwrap().iter().map(|x| x["config"].clone()).collect::<Vec<_>>();
    assert_eq!(configs(&after), configs(&before));
    for v in after.as_array().unwrap() {
        assert!(v["pid"].is_null(), "{v}");
        assert_ne!(v["state"], "running");
    }
    assert_eq!(call(&d, "GET", "/v1/vms/a", None).json()["reason"], "daemon-restart");
    drop(d);
    std::fs::remove_dir_all(&data).ok();
}

/// `/proc/PID/stat` field 22 (start time in clock ticks since boot), or None once the process
/// is gone or a zombie.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    if rest[0] == "Z" {
        return None;
    }
    rest[19].parse().ok()
}

/// After a restart, `GET /v1/vms` tells the truth: VMs that were running are stopped
/// (`daemon-restart`, libvirt's shut-off), the others keep their last state. A VM process that
/// outlived the old daemon is killed before anything else can start that VM again, and a
/// recorded pid that now belongs to some other process is never signalled.
#[test]
fn test_serve_restart_lists_vms_truthfully_and_never_trusts_a_stale_pid() {
    let data = data_dir("restart");
    let mut d = start_daemon(&data);
    for id in ["run", "paused", "stopped", "orphan", "fresh"] {
        assert_eq!(call(&d, "POST", "/v1/vms", Some(spin_vm(id))).status, 201);
    }
    for id in ["run", "paused", "stopped"] {
        assert_eq!(call(&d, "POST", &format!("/v1/vms/{id}/start"), None).status, 204);
    }
    assert_eq!(call(&d, "POST", "/v1/vms/paused/pause", None).status, 204);
    assert_eq!(call(&d, "POST", "/v1/vms/stopped/stop", None).status, 204);
    let run_pid = call(&d, "GET", "/v1/vms/run", None).json()["pid"].as_u64().unwrap() as u32;
    let _ = d.child.kill();
    let _ = d.child.wait();
    drop(d);
    // The VM processes die with the daemon.
    let t = Instant::now();
    while start_time(run_pid).is_some() {
        assert!(t.elapsed() < Duration::from_secs(20), "VM process {run_pid} outlived the daemon");
        std::thread::sleep(Duration::from_millis(10));
    }
    // "run" was recorded with a pid that now belongs to an unrelated process (a reused pid).
    let mut bystander = Command::new("sleep").arg("60").spawn().unwrap();
    let by = bystander.id();
    std::fs::write(
        data.join("vms/run/vm.pid"),
        json!({"pid": by, "start_time": start_time(by).unwrap() + 1}).to_string(),
    )
    .unwrap();
    // "orphan" has a VM process that escaped the death signal (started here by hand).
    let mut escaped = Command::new(env!("CARGO_BIN_EXE_ferrovisor"))
        .args(["run", "-q", "--serial", "none", "--flat"])
        .arg(data.join("images/spin.bin"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let esc = escaped.id();
    std::fs::write(
        data.join("vms/orphan/vm.pid"),
        json!({"pid": esc, "start_time": start_time(esc).unwrap()}).to_string(),
    )
    .unwrap();

    let d = start_daemon(&data);
    let list = call(&d, "GET", "/v1/vms", None).json();
    let got: Vec<(String, String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            assert!(v["pid"].is_null(), "no pid from before the restart is reported: {v}");
            (
                v["id"].as_str().unwrap().into(),
                v["state"].as_str().unwrap().into(),
                v["reason"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want = [
        ("fresh", "created", "defined"),
        ("orphan", "stopped", "daemon-restart"),
        ("paused", "stopped", "daemon-restart"),
        ("run", "stopped", "daemon-restart"),
        ("stopped", "stopped", "stopped"),
    ];
    let want: Vec<(String, String, String)> =
        want.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect();
    assert_eq!(got, want);
    // The escaped VM process was killed; the bystander was not touched.
    let st = escaped.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(libc::SIGKILL), "{st:?}");
    assert!(bystander.try_wait().unwrap().is_none(), "a process with a stale pid was signalled");
    let _ = bystander.kill();
    let _ = bystander.wait();
    // And the VMs start again.
    assert_eq!(call(&d, "POST", "/v1/vms/run/start", None).status, 204);
    assert_eq!(call(&d, "GET", "/v1/vms/run", None).json()["state"], "running");
    assert_eq!(call(&d, "POST", "/v1/vms/run/stop", None).status, 204);
    drop(d);
    std::fs::remove_dir_all(&data).ok();
}

/// Every property of a schema object with a value of another JSON type.
fn wrong_types(schema: &Value) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (k, p) in schema["properties"].as_object().unwrap() {
        let ty = p["type"].as_str().or_else(|| p["type"][0].as_str()).unwrap_or("object");
        let bad = match ty {
            "string" => vec![json!(5), json!([]), json!({})],
            "integer" | "number" => vec![json!("5"), json!(true), json!([1])],
            "boolean" => vec![json!("yes"), json!(1)],
            "array" => vec![json!("x"), json!({"path": "d.vmdk"})],
            _ => vec![json!(5), json!([])],
        };
        for b in bad {
            out.push((k.clone(), b));
        }
    }
    out
}

#[test]
fn test_serve_schema_derived_bad_requests_get_4xx_and_leave_vms_alone() {
    let data = data_dir("fuzz");
    let d = start_daemon(&data);
    assert_eq!(call(&d, "POST", "/v1/vms", Some(spin_vm("keep"))).status, 201);
    assert_eq!(call(&d, "POST", "/v1/vms/keep/start", None).status, 204);
    let before = call(&d, "GET", "/v1/vms", None).json();

    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("mgmt-api/openapi.json")).unwrap(),
    )
    .unwrap();
    let schema = &doc["components"]["schemas"]["VmConfig"];
    let good = json!({"name": "x1", "memory_mib": 16, "flat": "spin.bin", "disks": [{"path": "d.vmdk"}]});
    let mut cases: Vec<(String, String, Vec<u8>)> = Vec::new();
    let post = |b: Value| ("POST".to_string(), "/v1/vms".to_string(), serde_json::to_vec(&b).unwrap());
    for r in schema["required"].as_array().unwrap() {
        let mut b = good.clone();
        b.as_object_mut().unwrap().remove(r.as_str().unwrap());
        cases.push(post(b));
    }
    for (k, v) in wrong_types(schema) {
        let mut b = good.clone();
        b[k] = v;
        cases.push(post(b));
    }
    for n in [json!(0), json!(-1), json!(3073), json!(4294967296u64), json!(1e30), json!(18446744073709551615u64)] {
        let mut b = good.clone();
        b["memory_mib"] = n;
        cases.push(post(b));
    }
    for p in ["../d.vmdk", "/etc/passwd", "a/../../x", "..", "", "images/../../etc/shadow"] {
        for field in ["disks", "firmware", "kernel", "flat"] {
            let mut b = good.clone();
            if field == "disks" {
                b["disks"] = json!([{ "path": p }]);
            } else {
                b.as_object_mut().unwrap().remove("flat");
                b[field] = json!(p);
            }
            cases.push(post(b));
        }
    }
    for body in [&b"{"[..], b"not json", b"[]", b"null", b"{\"name\": \"x1\", \"memory_mib\": 16, \"name\": 5}"] {
        cases.push(("POST".into(), "/v1/vms".into(), body.to_vec()));
    }
    cases.push(("POST".into(), "/v1/vms".into(), vec![b' '; 200_000]));
    let mut big = good.clone();
    big["cmdline"] = json!("x".repeat(100_000));
    cases.push(post(big));
    for (m, p) in [
        ("GET", "/v1/vms/nope"),
        ("POST", "/v1/vms/nope/start"),
        ("POST", "/v1/vms/nope/snapshots"),
        ("DELETE", "/v1/vms/nope"),
        ("GET", "/v1/vms/Bad%20Id"),
        ("GET", "/v1/vms/..%2F..%2Fetc"),
        ("POST", "/v1/vms/keep/snapshots/nope/restore"),
        ("POST", "/v1/vms/keep/start"),
        ("GET", "/v1/vms/keep/serial?offset=-1"),
        ("PUT", "/v1/vms"),
        ("GET", "/v1/nothing"),
    ] {
        cases.push((m.into(), p.into(), Vec::new()));
    }
    for b in [json!({}), json!({"name": "../x"}), json!({"name": 5}), json!({"name": "s", "extra": 1})] {
        cases.push(("POST".into(), "/v1/vms/keep/snapshots".into(), serde_json::to_vec(&b).unwrap()));
    }
    assert!(cases.len() > 60, "{}", cases.len());
    for (m, p, b) in &cases {
        let r = request(&d.ep, m, p, if b.is_empty() && m != "POST" { None } else { Some(b) }).unwrap();
        let shown = String::from_utf8_lossy(&b[..b.len().min(120)]).into_owned();
        assert!((400..500).contains(&r.status), "{m} {p} {shown}: {} {}", r.status, String::from_utf8_lossy(&r.body));
        let v = r.json();
        assert!(v["code"].is_string() && !v["message"].as_str().unwrap_or("").is_empty(), "{m} {p} {shown}: {v}");
    }
    // Nothing changed.
    let after = call(&d, "GET", "/v1/vms", None).json();
    assert_eq!(after, before);
    assert_eq!(after[0]["state"], "running");
    drop(d);
    std::fs::remove_dir_all(&data).ok();
}

#[test]
fn test_serve_20_concurrent_clients_lose_nothing() {
    let data = data_dir("load");
    let d = start_daemon(&data);
    const CLIENTS: usize = 20;
    const PER: usize = 10;
    let ep = d.ep.clone();
    let start = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let ep = ep.clone();
            std::thread::spawn(move || {
                let mut ok = 0;
                for i in 0..PER {
                    let name = format!("c{c}-{i}");
                    let body = serde_json::to_vec(&json!({"name": name, "memory_mib": 16})).unwrap();
                    let r = request(&ep, "POST", "/v1/vms", Some(&body)).unwrap();
                    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
                    let r = request(&ep, "GET", &format!("/v1/vms/{name}"), None).unwrap();
                    assert_eq!(r.json()["id"], name.as_str());
                    let r = request(&ep, "GET", "/v1/vms", None).unwrap();
                    assert_eq!(r.status, 200);
                    if i % 2 == 1 {
                        let r = request(&ep, "DELETE", &format!("/v1/vms/{name}"), None).unwrap();
                        assert_eq!(r.status, 204);
                    }
                    ok += 1;
                }
                ok
            })
        })
        .collect();
    let done: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let secs = start.elapsed().as_secs_f64();
    eprintln!("load: {} requests from {CLIENTS} clients in {secs:.2} s", done * 3 + done / 2);
    assert_eq!(done, CLIENTS * PER);
    let list = call(&d, "GET", "/v1/vms", None).json();
    let names: std::collections::BTreeSet<String> =
        list.as_array().unwrap().iter().map(|v| v["id"].as_str().unwrap().to_string()).collect();
    let want: std::collections::BTreeSet<String> =
        (0..CLIENTS).flat_map(|c| (0..PER).filter(|i| i % 2 == 0).map(move |i| format!("c{c}-{i}"))).collect();
    assert_eq!(names, want);
    // And they are on disk.
    let on_disk = std::fs::read_dir(data.join("vms")).unwrap().count();
    assert_eq!(on_disk, want.len());
    drop(d);
    std::fs::remove_dir_all(&data).ok();
}

#[test]
fn test_serve_daemon_killed_mid_snapshot() {
    let data = data_dir("crash");
    let mut d = start_daemon(&data);
    let mut a = spin_vm("a");
    a["disks"] = json!([{"path": "d.vmdk"}]);
    assert_eq!(call(&d, "POST", "/v1/vms", Some(a)).status, 201);
    assert_eq!(call(&d, "POST", "/v1/vms", Some(spin_vm("b"))).status, 201);
    assert_eq!(call(&d, "POST", "/v1/vms/a/start", None).status, 204);
    let before = call(&d, "GET", "/v1/vms", None).json();
    // Freeze the VM process so the snapshot is certainly in progress when the daemon dies.
    let pid = call(&d, "GET", "/v1/vms/a", None).json()["pid"].as_u64().unwrap();
    kill(pid, libc::SIGSTOP);
    let ep = d.ep.clone();
    let t = std::thread::spawn(move || request(&ep, "POST", "/v1/vms/a/snapshots", Some(br#"{"name":"mid"}"#)));
    let meta = data.join("vms/a/snapshots/mid.json");
    let start = Instant::now();
    while !meta.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "the snapshot never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = d.child.kill();
    let _ = d.child.wait();
    kill(pid, libc::SIGKILL);
    let _ = t.join();
    drop(d);
    let d = start_daemon(&data);
    let after = call(&d, "GET", "/v1/vms", None).json();
    let configs = |v: &Value| v.as_array().unwrap().iter().map(|x| x["config"].clone()).collect::<Vec<_>>();
    assert_eq!(configs(&after), configs(&before), "every configuration is intact");
    let snaps = call(&d, "GET", "/v1/vms/a/snapshots", None).json();
    assert_eq!(snaps[0]["name"], "mid");
    assert_eq!(snaps[0]["status"], "incomplete", "{snaps}");
    assert!(!data.join("vms/a/snapshots/mid.fvsnap").exists());
    let r = call(&d, "POST", "/v1/vms/a/snapshots/mid/restore", None);
    assert_eq!(r.status, 409, "an incomplete snapshot is not restored");
    // The VM works after the restart.
    assert_eq!(call(&d, "POST", "/v1/vms/a/start", None).status, 204);
    let s = call(&d, "POST", "/v1/vms/a/snapshots", Some(json!({"name": "after"})));
    assert_eq!(s.status, 201, "{}", String::from_utf8_lossy(&s.body));
    drop(d);
    std::fs::remove_dir_all(&data).ok();
}

/// Measurement (not run by default): GET requests per second from 20 concurrent clients, one
/// connection per request. `cargo test --release --test serve measure_ -- --ignored --nocapture`
#[test]
#[ignore]
fn measure_api_requests_per_second() {
    let data = data_dir("rps");
    let d = start_daemon(&data);
    assert_eq!(call(&d, "POST", "/v1/vms", Some(spin_vm("m"))).status, 201);
    let start = Instant::now();
    let threads: Vec<_> = (0..20)
        .map(|_| {
            let ep = d.ep.clone();
            std::thread::spawn(move || {
                for _ in 0..500 {
                    assert_eq!(request(&ep, "GET", "/v1/vms/m", None).unwrap().status, 200);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    eprintln!("API: 10000 GET /v1/vms/m from 20 clients in {secs:.2} s = {:.0} requests/s", 10000.0 / secs);
    drop(d);
    std::fs::remove_dir_all(&data).ok();
}

#[test]
fn test_vm_cli_client_talks_to_the_daemon() {
    let data = data_dir("cli");
    let d = start_daemon(&data);
    let sock = data.join("api.sock");
    let vm = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ferrovisor")).arg("vm").arg("--socket").arg(&sock).args(args).output().unwrap()
    };
    let cfg = data.join("c.json");
    std::fs::write(&cfg, serde_json::to_vec(&spin_vm("cli1")).unwrap()).unwrap();
    let out = vm(&["create", cfg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["state"], "created");
    assert!(vm(&["start", "cli1"]).status.success());
    let out = vm(&["list"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["state"], "running", "{v}");
    assert!(vm(&["snapshot", "cli1", "s"]).status.success());
    let v: Value = serde_json::from_slice(&vm(&["snapshots", "cli1"]).stdout).unwrap();
    assert_eq!(v[0]["status"], "complete");
    // Errors: the code and message, status 1.
    let out = vm(&["get", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("404 (not_found)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(vm(&["stop", "cli1"]).status.success());
    assert!(vm(&["delete", "cli1"]).status.success());
    drop(d);
    std::fs::remove_dir_all(&data).ok();
}

/// The API on a loopback TCP port (`--tcp`) instead of the Unix socket; any other address is
/// refused with a clear error.
#[test]
fn test_serve_over_loopback_tcp() {
    let data = data_dir("tcp");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new(env!("CARGO_BIN_EXE_ferrovisor"))
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args(["--tcp", &format!("127.0.0.1:{port}")])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let ep = Endpoint::Tcp(format!("127.0.0.1:{port}"));
    let t = Instant::now();
    while request(&ep, "GET", "/v1/version", None).is_err() {
        assert!(t.elapsed() < Duration::from_secs(20), "the daemon did not come up on TCP");
        std::thread::sleep(Duration::from_millis(20));
    }
    let d = Daemon { child, ep };
    assert_eq!(call(&d, "POST", "/v1/vms", Some(spin_vm("t"))).status, 201);
    assert_eq!(call(&d, "GET", "/v1/vms/t", None).json()["state"], "created");
    assert_eq!(call(&d, "GET", "/v1/vms/nope", None).status, 404);
    drop(d);

    let mut bad = Command::new(env!("CARGO_BIN_EXE_ferrovisor"))
        .args(["serve", "--data-dir"])
        .arg(&data)
        .args(["--tcp", "0.0.0.0:0"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = bad.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(20) {
            let _ = bad.kill();
            panic!("the daemon served on 0.0.0.0");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut bad.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(err.contains("only loopback addresses are allowed"), "{err}");
    std::fs::remove_dir_all(&data).ok();
}

/// A VM booted from a kernel (`kernel`, `cmdline`, as `run --kernel` boots it): the Multiboot
/// benchmark guest runs in its VM process, prints its checksum on the serial log (the host
/// computes the same value) and exits through the exit port, which the daemon reports.
#[test]
fn test_serve_vm_boots_a_kernel() {
    let data = data_dir("kernel");
    std::fs::write(data.join("images/bench.bin"), test_roms::bench_guest(1)).unwrap();
    let d = start_daemon(&data);
    let cfg = json!({"name": "k", "memory_mib": 32, "kernel": "bench.bin", "cmdline": "quiet"});
    let r = call(&d, "POST", "/v1/vms", Some(cfg));
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(call(&d, "POST", "/v1/vms/k/start", None).status, 204);
    let v = wait_state(&d, "k", "stopped");
    let status = i32::from(test_roms::PASS) << 1 | 1;
    assert_eq!(v["reason"], format!("exit status {status}"), "{v}");
    let serial = String::from_utf8_lossy(&call(&d, "GET", "/v1/vms/k/serial", None).body).to_lowercase();
    let want = format!("{:08x}", test_roms::bench_reference(1));
    assert!(serial.contains(&want), "checksum {want} not in the serial log: {serial:?}");
    drop(d);
    std::fs::remove_dir_all(&data).ok();
}

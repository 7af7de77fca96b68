//! `ferrovisor serve` (the management daemon) and `ferrovisor vm` (its command-line client).

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use mgmt_api::client::{request, Endpoint};
use mgmt_api::daemon::{Bind, DaemonConfig};
use std::path::PathBuf;

/// Arguments of `ferrovisor serve`.
#[derive(Debug, Args)]
#[command(after_help = "\
The REST API is described by mgmt-api/openapi.json (print it with --print-openapi). Each VM runs in
its own `ferrovisor run` process; one that crashes or is killed marks only that VM `crashed`.

Restart: configurations live in DATA/vms/ID/config.json (written atomically) and survive a restart.
VM processes end with the daemon; after a restart the VMs that were running or paused are listed
`stopped` (reason `daemon-restart`) and are started again with POST /v1/vms/ID/start; the others
keep their last state. A snapshot the daemon was writing when it died is listed `incomplete`.

A VM configuration (POST /v1/vms; paths are relative to the images directory):
  {\"name\": \"web\", \"memory_mib\": 256, \"firmware\": \"bios.bin\", \"disks\": [{\"path\": \"disk.vmdk\"}]}
  {\"name\": \"lx\", \"memory_mib\": 512, \"kernel\": \"vmlinuz\", \"initrd\": \"initrd.gz\",
   \"cmdline\": \"console=ttyS0\"}

Errors are JSON {\"code\", \"message\"} with a 4xx status for anything the client sent.

Example:
  ferrovisor serve --data-dir /var/lib/ferrovisor &
  curl --unix-socket /var/lib/ferrovisor/api.sock http://localhost/v1/vms
  ferrovisor vm --socket /var/lib/ferrovisor/api.sock list")]
pub struct ServeArgs {
    /// Data directory (configurations, snapshots, logs).
    #[arg(long, value_name = "DIR", default_value = "ferrovisor-data")]
    data_dir: PathBuf,
    /// Directory that VM image paths are relative to (default: DATA/images).
    #[arg(long, value_name = "DIR")]
    images_dir: Option<PathBuf>,
    /// The API's Unix socket (default: DATA/api.sock).
    #[arg(long, value_name = "PATH", conflicts_with = "tcp")]
    socket: Option<PathBuf>,
    /// Listen on a loopback TCP address instead (e.g. 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    tcp: Option<std::net::SocketAddr>,
    /// Print the OpenAPI document and exit.
    #[arg(long)]
    print_openapi: bool,
}

/// Runs the daemon.
pub fn serve(a: ServeArgs) -> anyhow::Result<i32> {
    if a.print_openapi {
        print!("{}", mgmt_api::openapi::json());
        return Ok(0);
    }
    std::fs::create_dir_all(&a.data_dir).with_context(|| format!("cannot create {}", a.data_dir.display()))?;
    let data_dir = a.data_dir.canonicalize()?;
    let images_dir = a.images_dir.unwrap_or_else(|| data_dir.join("images"));
    std::fs::create_dir_all(&images_dir).with_context(|| format!("cannot create {}", images_dir.display()))?;
    let cfg = DaemonConfig { data_dir: data_dir.clone(), images_dir, vmm: std::env::current_exe()? };
    let bind = match a.tcp {
        Some(t) => Bind::Tcp(t),
        None => Bind::Unix(a.socket.unwrap_or_else(|| data_dir.join("api.sock"))),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(mgmt_api::daemon::serve(cfg, bind.clone())).with_context(|| format!("cannot serve on {bind}"))?;
    Ok(0)
}

/// Arguments of `ferrovisor vm`.
#[derive(Debug, Args)]
#[command(after_help = "\
Each command is one request to the daemon (`ferrovisor serve`); the answer is printed as JSON
(`serial` prints the console log as it is).

Exit status: 0 success; 1 the daemon refused the request (printed as `STATUS (code): message`,
e.g. `404 (not_found): VM 'x' not found`) or cannot be reached; 2 bad command line.

Example:
  echo '{\"name\":\"web\",\"memory_mib\":256,\"firmware\":\"bios.bin\",\"disks\":[{\"path\":\"disk.vmdk\"}]}' \\
    | ferrovisor vm create -
  ferrovisor vm start web
  ferrovisor vm snapshot web before-upgrade
  ferrovisor vm restore web before-upgrade
  ferrovisor vm stop web")]
pub struct VmArgs {
    /// The daemon's Unix socket (default: $FERROVISOR_API or ferrovisor-data/api.sock).
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
    /// The daemon's TCP address instead.
    #[arg(long, value_name = "ADDR", global = true, conflicts_with = "socket")]
    tcp: Option<String>,
    #[command(subcommand)]
    cmd: VmCmd,
}

#[derive(Debug, Subcommand)]
enum VmCmd {
    /// List the VMs.
    List,
    /// Show one VM.
    Get { id: String },
    /// Create a VM from a JSON configuration file ('-' for standard input).
    Create { config: PathBuf },
    /// Start a VM.
    Start { id: String },
    /// Power a VM off.
    Stop { id: String },
    /// Pause a VM.
    Pause { id: String },
    /// Resume a VM.
    Resume { id: String },
    /// Reset a VM.
    Reset { id: String },
    /// Delete a stopped VM.
    Delete { id: String },
    /// Snapshot a running VM.
    Snapshot { id: String, name: String },
    /// List a VM's snapshots.
    Snapshots { id: String },
    /// Restore a snapshot.
    Restore { id: String, name: String },
    /// Delete a snapshot.
    DeleteSnapshot { id: String, name: String },
    /// A VM's disks.
    Disks { id: String },
    /// Print a VM's serial log.
    Serial { id: String },
}

/// Runs a client command; prints the JSON answer.
pub fn vm(a: VmArgs) -> anyhow::Result<i32> {
    let ep = match (a.tcp, a.socket) {
        (Some(t), _) => Endpoint::Tcp(t),
        (None, Some(s)) => Endpoint::Unix(s),
        (None, None) => Endpoint::Unix(
            std::env::var_os("FERROVISOR_API").map(PathBuf::from).unwrap_or_else(|| "ferrovisor-data/api.sock".into()),
        ),
    };
    let body;
    let (method, path, b): (&str, String, Option<&[u8]>) = match &a.cmd {
        VmCmd::List => ("GET", "/v1/vms".into(), None),
        VmCmd::Get { id } => ("GET", format!("/v1/vms/{id}"), None),
        VmCmd::Create { config } => {
            body = if config.as_os_str() == "-" {
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)?;
                v
            } else {
                std::fs::read(config).with_context(|| format!("cannot read {}", config.display()))?
            };
            ("POST", "/v1/vms".into(), Some(&body[..]))
        }
        VmCmd::Start { id } => ("POST", format!("/v1/vms/{id}/start"), None),
        VmCmd::Stop { id } => ("POST", format!("/v1/vms/{id}/stop"), None),
        VmCmd::Pause { id } => ("POST", format!("/v1/vms/{id}/pause"), None),
        VmCmd::Resume { id } => ("POST", format!("/v1/vms/{id}/resume"), None),
        VmCmd::Reset { id } => ("POST", format!("/v1/vms/{id}/reset"), None),
        VmCmd::Delete { id } => ("DELETE", format!("/v1/vms/{id}"), None),
        VmCmd::Snapshot { id, name } => {
            body = serde_json::to_vec(&serde_json::json!({ "name": name }))?;
            ("POST", format!("/v1/vms/{id}/snapshots"), Some(&body[..]))
        }
        VmCmd::Snapshots { id } => ("GET", format!("/v1/vms/{id}/snapshots"), None),
        VmCmd::Restore { id, name } => ("POST", format!("/v1/vms/{id}/snapshots/{name}/restore"), None),
        VmCmd::DeleteSnapshot { id, name } => ("DELETE", format!("/v1/vms/{id}/snapshots/{name}"), None),
        VmCmd::Disks { id } => ("GET", format!("/v1/vms/{id}/disks"), None),
        VmCmd::Serial { id } => ("GET", format!("/v1/vms/{id}/serial"), None),
    };
    let r = request(&ep, method, &path, b).with_context(|| format!("cannot reach the daemon at {ep}"))?;
    if matches!(a.cmd, VmCmd::Serial { .. }) && r.status == 200 {
        std::io::Write::write_all(&mut std::io::stdout(), &r.body)?;
        return Ok(0);
    }
    if r.status >= 400 {
        let v = r.json();
        bail!("{} ({}): {}", r.status, v["code"].as_str().unwrap_or("?"), v["message"].as_str().unwrap_or(""));
    }
    if !r.body.is_empty() {
        println!("{}", serde_json::to_string_pretty(&r.json())?);
    }
    Ok(0)
}

//! The OpenAPI 3 document, generated from the handlers' annotations and the body types. The
//! committed copy is `mgmt-api/openapi.json`; `tests/openapi.rs` fails when they differ.

use crate::daemon;
use crate::model::*;
use utoipa::OpenApi;

/// The API description.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Ferrovisor management API",
        version = "1",
        description = "Many VMs, each in its own process. \
        HTTP/1.1 with JSON on a Unix socket (default DATA/api.sock) or a loopback TCP port. Errors are JSON \
        {code, message} with a stable code; client errors are 4xx."
    ),
    paths(
        daemon::version,
        daemon::create_vm,
        daemon::list_vms,
        daemon::get_vm,
        daemon::delete_vm,
        daemon::start_vm,
        daemon::pause_vm,
        daemon::resume_vm,
        daemon::reset_vm,
        daemon::stop_vm,
        daemon::create_snapshot,
        daemon::list_snapshots,
        daemon::restore_snapshot,
        daemon::delete_snapshot,
        daemon::disks,
        daemon::serial,
        daemon::events,
    ),
    components(schemas(
        VmConfig,
        DiskConfig,
        SerialMode,
        VmState,
        VmInfo,
        SnapshotRequest,
        SnapshotStatus,
        SnapshotInfo,
        DiskInfo,
        ErrorBody,
        VersionInfo
    ))
)]
pub struct ApiDoc;

/// The document as pretty JSON (what is committed).
pub fn json() -> String {
    let mut s = ApiDoc::openapi().to_pretty_json().unwrap_or_default();
    s.push('\n');
    s
}

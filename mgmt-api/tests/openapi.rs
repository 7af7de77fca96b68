//! The committed OpenAPI document is the one the code generates (Firecracker's swagger check).
//! Regenerate with `ferrovisor serve --print-openapi > mgmt-api/openapi.json`.

#[test]
fn test_openapi_committed_matches_code() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let committed = std::fs::read_to_string(&path).expect("mgmt-api/openapi.json is committed");
    let generated = mgmt_api::openapi::json();
    assert!(
        committed == generated,
        "mgmt-api/openapi.json is stale: run `ferrovisor serve --print-openapi > mgmt-api/openapi.json`"
    );
}

#[test]
fn test_openapi_is_openapi3_and_describes_every_route() {
    let v: serde_json::Value = serde_json::from_str(&mgmt_api::openapi::json()).unwrap();
    assert!(v["openapi"].as_str().unwrap().starts_with("3."), "{}", v["openapi"]);
    let paths = v["paths"].as_object().unwrap();
    for (p, methods) in [
        ("/v1/vms", &["get", "post"][..]),
        ("/v1/vms/{id}", &["get", "delete"]),
        ("/v1/vms/{id}/start", &["post"]),
        ("/v1/vms/{id}/pause", &["post"]),
        ("/v1/vms/{id}/resume", &["post"]),
        ("/v1/vms/{id}/reset", &["post"]),
        ("/v1/vms/{id}/stop", &["post"]),
        ("/v1/vms/{id}/snapshots", &["get", "post"]),
        ("/v1/vms/{id}/snapshots/{name}", &["delete"]),
        ("/v1/vms/{id}/snapshots/{name}/restore", &["post"]),
        ("/v1/vms/{id}/disks", &["get"]),
        ("/v1/vms/{id}/serial", &["get"]),
        ("/v1/events", &["get"]),
    ] {
        for m in methods {
            assert!(paths.get(p).and_then(|x| x.get(*m)).is_some(), "{m} {p} is not in the document");
        }
    }
    // The VmConfig schema requires what the parser requires.
    let req = &v["components"]["schemas"]["VmConfig"]["required"];
    assert_eq!(req, &serde_json::json!(["name", "memory_mib"]));
}

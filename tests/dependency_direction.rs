//! Imports only run downward (style.md 6.1). This test reads every workspace member's
//! Cargo.toml and fails on an edge that is not allowed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// For each crate, the workspace crates it may depend on (any dependency table).
const ALLOWED: &[(&str, &[&str])] = &[
    ("base", &[]),
    ("vmdk", &[]),
    ("test-roms", &[]),
    ("mmu", &["base"]),
    ("devices", &["base", "mmu"]),
    ("cpu", &["base", "mmu"]),
    ("jit", &["base", "mmu", "cpu"]),
    ("machine", &["base", "mmu", "cpu", "jit", "devices", "vmdk", "test-roms"]),
    ("mgmt-api", &["machine"]),
    ("ferrovisor", &["machine", "mgmt-api", "test-roms", "base", "vmdk"]),
];

fn member_dirs(root: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let v: toml::Table = text.parse().unwrap();
    v["workspace"]["members"].as_array().unwrap().iter().map(|m| m.as_str().unwrap().to_string()).collect()
}

fn internal_deps(manifest: &Path, internal: &BTreeSet<String>) -> (String, BTreeSet<String>) {
    let text = std::fs::read_to_string(manifest).unwrap();
    let v: toml::Table = text.parse().unwrap();
    let name = v["package"]["name"].as_str().unwrap().to_string();
    let mut deps = BTreeSet::new();
    for table in ["dependencies", "dev-dependencies", "build-dependencies"] {
        if let Some(t) = v.get(table).and_then(|t| t.as_table()) {
            for k in t.keys() {
                if internal.contains(k) {
                    deps.insert(k.clone());
                }
            }
        }
    }
    (name, deps)
}

#[test]
fn test_workspace_dependency_direction() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dirs = member_dirs(root);
    let mut manifests: Vec<_> = dirs.iter().map(|d| root.join(d).join("Cargo.toml")).collect();
    manifests.push(root.join("Cargo.toml"));
    let internal: BTreeSet<String> = manifests
        .iter()
        .map(|m| {
            let v: toml::Table = std::fs::read_to_string(m).unwrap().parse().unwrap();
            v["package"]["name"].as_str().unwrap().to_string()
        })
        .collect();
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut errors = Vec::new();
    for m in &manifests {
        let (name, deps) = internal_deps(m, &internal);
        let Some(ok) = allowed.get(name.as_str()) else {
            errors.push(format!("crate {name} has no entry in the allowed-dependency table"));
            continue;
        };
        for d in deps {
            if !ok.contains(&d.as_str()) {
                errors.push(format!("{name} must not depend on {d}"));
            }
        }
    }
    assert!(errors.is_empty(), "dependency direction violated:\n{}", errors.join("\n"));
}

#[test]
fn test_only_top_level_crates_depend_on_machine() {
    for (name, deps) in ALLOWED {
        if deps.contains(&"machine") {
            assert!(matches!(*name, "ferrovisor" | "mgmt-api" | "benches"), "{name} may not depend on machine");
        }
    }
}

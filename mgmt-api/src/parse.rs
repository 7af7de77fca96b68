//! Pure request parsing and validation (no server, no I/O), unit-tested on their own
//! (Firecracker's `parsed_request.rs` habit).

use crate::model::{SnapshotRequest, VmConfig};
use crate::ApiError;
use std::path::{Component, Path, PathBuf};

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;
/// Most IDE disks.
pub const MAX_DISKS: usize = 4;

/// Whether `s` is a valid VM or snapshot name.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && s.as_bytes()[0].is_ascii_alphanumeric()
}

/// Checks an id from a URL path.
pub fn parse_id(s: &str) -> Result<&str, ApiError> {
    if valid_name(s) {
        Ok(s)
    } else {
        Err(ApiError::invalid_id(s))
    }
}

/// A path inside `root`: relative, no `..`, no root or prefix components.
pub fn contained_path(root: &Path, field: &str, p: &str) -> Result<PathBuf, ApiError> {
    if p.is_empty() || p.len() > 1024 || p.contains('\0') {
        return Err(ApiError::field(field, "must be a non-empty relative path of at most 1024 bytes"));
    }
    let rel = Path::new(p);
    for c in rel.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            _ => {
                return Err(ApiError::field(
                    field,
                    "must be relative to the image directory, without '..' or a leading '/'",
                ))
            }
        }
    }
    Ok(root.join(rel))
}

fn json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.len() > MAX_BODY {
        return Err(ApiError::too_large(body.len()));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::json(&e))
}

/// Parses and validates a VM configuration.
pub fn parse_vm_config(body: &[u8], images: &Path) -> Result<VmConfig, ApiError> {
    let c: VmConfig = json(body)?;
    validate_vm_config(&c, images)?;
    Ok(c)
}

/// Validates a VM configuration (also used for configurations read back from disk).
pub fn validate_vm_config(c: &VmConfig, images: &Path) -> Result<(), ApiError> {
    if !valid_name(&c.name) {
        return Err(ApiError::field("name", "must be 1 to 64 of a-z, 0-9, '-', '_', starting with a letter or digit"));
    }
    if !(1..=3072).contains(&c.memory_mib) {
        return Err(ApiError::field("memory_mib", "must be between 1 and 3072"));
    }
    if c.disks.len() > MAX_DISKS {
        return Err(ApiError::field("disks", "at most 4 IDE disks"));
    }
    for (i, d) in c.disks.iter().enumerate() {
        contained_path(images, &format!("disks[{i}].path"), &d.path)?;
    }
    let boots = [c.firmware.is_some(), c.kernel.is_some(), c.flat.is_some()].iter().filter(|&&b| b).count();
    if boots > 1 {
        return Err(ApiError::field("firmware", "give at most one of firmware, kernel and flat"));
    }
    for (field, v) in [("firmware", &c.firmware), ("kernel", &c.kernel), ("initrd", &c.initrd), ("flat", &c.flat)] {
        if let Some(p) = v {
            contained_path(images, field, p)?;
        }
    }
    if c.initrd.is_some() && c.kernel.is_none() {
        return Err(ApiError::field("initrd", "only with kernel"));
    }
    if c.cmdline.is_some() && c.kernel.is_none() {
        return Err(ApiError::field("cmdline", "only with kernel"));
    }
    if c.cmdline.as_ref().is_some_and(|s| s.len() > 2047 || s.contains('\0')) {
        return Err(ApiError::field("cmdline", "at most 2047 bytes, no NUL"));
    }
    Ok(())
}

/// Parses a snapshot request.
pub fn parse_snapshot_request(body: &[u8]) -> Result<SnapshotRequest, ApiError> {
    let r: SnapshotRequest = json(body)?;
    if !valid_name(&r.name) {
        return Err(ApiError::field("name", "must be 1 to 64 of a-z, 0-9, '-', '_', starting with a letter or digit"));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images() -> PathBuf {
        PathBuf::from("/srv/images")
    }

    #[test]
    fn test_parse_vm_config_minimal_and_defaults() {
        let c = parse_vm_config(br#"{"name":"a1","memory_mib":64}"#, &images()).unwrap();
        assert_eq!(c.name, "a1");
        assert!(c.disks.is_empty());
        assert_eq!(c.serial, crate::model::SerialMode::Log);
    }

    #[test]
    fn test_parse_vm_config_refusals_carry_codes() {
        for (body, code, needle) in [
            (&br#"{"name":"a1"}"#[..], "invalid_json", "memory_mib"),
            (br#"{"name":"a1","memory_mib":"64"}"#, "invalid_json", "invalid type"),
            (br#"{"name":"a1","memory_mib":99999999999999}"#, "invalid_json", "invalid value"),
            (br#"{"name":"a1","memory_mib":4096}"#, "invalid_field", "memory_mib"),
            (br#"{"name":"A B","memory_mib":64}"#, "invalid_field", "name"),
            (br#"{"name":"a1","memory_mib":64,"bogus":1}"#, "invalid_json", "unknown field"),
            (br#"{"name":"a1","memory_mib":64,"disks":[{"path":"../etc/passwd"}]}"#, "invalid_field", "disks[0].path"),
            (br#"{"name":"a1","memory_mib":64,"disks":[{"path":"/etc/passwd"}]}"#, "invalid_field", "disks[0].path"),
            (br#"{"name":"a1","memory_mib":64,"firmware":"a/../../b"}"#, "invalid_field", "firmware"),
            (br#"{"name":"a1","memory_mib":64,"firmware":"a","flat":"b"}"#, "invalid_field", "at most one"),
            (br#"{"name":"a1","memory_mib":64,"initrd":"i.gz"}"#, "invalid_field", "initrd: only with kernel"),
            (br#"{"name":"a1","memory_mib":64,"kernel":"k","initrd":"/etc/passwd"}"#, "invalid_field", "initrd"),
            (b"{\"name\":", "invalid_json", "EOF"),
            (b"[1,2]", "invalid_json", "invalid type"),
        ] {
            let e = parse_vm_config(body, &images()).unwrap_err();
            assert_eq!(e.body.code, code, "{}: {}", String::from_utf8_lossy(body), e.body.message);
            assert!(e.body.message.contains(needle), "{}: {}", String::from_utf8_lossy(body), e.body.message);
            assert!(e.status.is_client_error());
        }
    }

    #[test]
    fn test_parse_oversized_body_is_413() {
        let body = vec![b' '; MAX_BODY + 1];
        let e = parse_vm_config(&body, &images()).unwrap_err();
        assert_eq!(e.status.as_u16(), 413);
        assert_eq!(e.body.code, "payload_too_large");
    }

    #[test]
    fn test_contained_path_stays_inside() {
        assert_eq!(contained_path(&images(), "p", "x/y.vmdk").unwrap(), PathBuf::from("/srv/images/x/y.vmdk"));
        for bad in ["", "..", "a/..", "/abs", "a/../../b", "a\0b"] {
            assert!(contained_path(&images(), "p", bad).is_err(), "{bad:?}");
        }
    }
}

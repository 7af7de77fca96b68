//! The text descriptor: header keys, extent lines and the disk database (DDB).
//!
//! The parser keeps every key it does not interpret (in order) so that a descriptor survives a
//! parse/write round trip, which matters when only the CID is updated.

use crate::error::{Error, Result};

/// Largest descriptor we parse (bytes). Real ones are well under 4 KiB.
pub const MAX_DESCRIPTOR_BYTES: usize = 1 << 20;
/// Largest number of extent lines accepted.
pub const MAX_EXTENTS: usize = 65536;
/// Largest total disk size accepted, in sectors (2^47 bytes = 128 TiB).
pub const MAX_DISK_SECTORS: u64 = 1 << 38;
/// parentCID value meaning "no parent".
pub const NO_PARENT_CID: u32 = 0xFFFF_FFFF;

/// Access mode of an extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read-write.
    Rw,
    /// Read-only: writes are refused.
    RdOnly,
    /// No access at all: reads and writes are refused.
    NoAccess,
}

impl Access {
    /// Descriptor keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Rw => "RW",
            Access::RdOnly => "RDONLY",
            Access::NoAccess => "NOACCESS",
        }
    }
}

/// Type of an extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentKind {
    /// Raw data in a file at an offset.
    Flat,
    /// Hosted sparse extent (KDMV header), including streamOptimized.
    Sparse,
    /// No file; reads as zeros.
    Zero,
    /// ESX VMFS flat extent (no offset); treated like FLAT.
    Vmfs,
}

impl ExtentKind {
    /// Descriptor keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            ExtentKind::Flat => "FLAT",
            ExtentKind::Sparse => "SPARSE",
            ExtentKind::Zero => "ZERO",
            ExtentKind::Vmfs => "VMFS",
        }
    }
}

/// One extent line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentLine {
    /// Access mode.
    pub access: Access,
    /// Size in sectors.
    pub sectors: u64,
    /// Extent type.
    pub kind: ExtentKind,
    /// File name, relative to the descriptor's directory (None for ZERO).
    pub file: Option<String>,
    /// Offset in sectors within the file (FLAT only).
    pub offset: u64,
}

impl ExtentLine {
    fn to_line(&self) -> String {
        match (&self.file, self.kind) {
            (None, _) => format!("{} {} {}", self.access.as_str(), self.sectors, self.kind.as_str()),
            (Some(f), ExtentKind::Flat) => {
                format!("{} {} {} \"{}\" {}", self.access.as_str(), self.sectors, self.kind.as_str(), f, self.offset)
            }
            (Some(f), _) => format!("{} {} {} \"{}\"", self.access.as_str(), self.sectors, self.kind.as_str(), f),
        }
    }
}

/// A parsed descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    /// `version=` (1, 2 or 3).
    pub version: u32,
    /// Content ID.
    pub cid: u32,
    /// Parent content ID ([`NO_PARENT_CID`] without parent).
    pub parent_cid: u32,
    /// `createType`.
    pub create_type: String,
    /// `parentFileNameHint` (delta links).
    pub parent_hint: Option<String>,
    /// Other header keys (`encoding`, `isNativeSnapshot`, ...), in order, values verbatim.
    pub other: Vec<(String, String)>,
    /// Extent lines in order.
    pub extents: Vec<ExtentLine>,
    /// DDB entries (`ddb.` prefix included), in order, values unquoted.
    pub ddb: Vec<(String, String)>,
}

fn unquote(s: &str) -> &str {
    let s = s.trim();
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        &s[1..s.len() - 1]
    } else {
        s
    }
}

fn bad(line: usize, reason: impl Into<String>) -> Error {
    Error::BadDescriptor { line, reason: reason.into() }
}

fn parse_hex32(v: &str, line: usize, key: &str) -> Result<u32> {
    u32::from_str_radix(unquote(v), 16).map_err(|_| bad(line, format!("{key} value {v:?} is not 8 hex digits")))
}

/// Splits an extent line into fields; a quoted file name may contain spaces.
fn split_fields(s: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('"') {
            let end = r.find('"')?;
            out.push(r[..end].to_string());
            rest = r[end + 1..].trim_start();
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            if rest[..end].contains('"') {
                return None; // a quote inside an unquoted field
            }
            out.push(rest[..end].to_string());
            rest = rest[end..].trim_start();
        }
    }
    Some(out)
}

/// A decimal number of digits only: `str::parse` would also take a sign (`+5`), which no VMDK
/// writer produces and which has let a mangled size pass as a small one.
fn parse_decimal(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

fn parse_extent(s: &str, line: usize) -> Result<ExtentLine> {
    let f = split_fields(s).ok_or_else(|| bad(line, "misplaced or unterminated quote in extent line"))?;
    let access = match f[0].as_str() {
        "RW" => Access::Rw,
        "RDONLY" => Access::RdOnly,
        "NOACCESS" => Access::NoAccess,
        other => return Err(bad(line, format!("unknown extent access {other:?}"))),
    };
    let sectors: u64 =
        f.get(1).and_then(|v| parse_decimal(v)).ok_or_else(|| bad(line, "extent size is missing or not a number"))?;
    let kind = match f.get(2).map(String::as_str) {
        Some("FLAT") => ExtentKind::Flat,
        Some("SPARSE") => ExtentKind::Sparse,
        Some("ZERO") => ExtentKind::Zero,
        Some("VMFS") => ExtentKind::Vmfs,
        Some(t @ ("VMFSSPARSE" | "VMFSRDM" | "VMFSRAW" | "SESPARSE")) => {
            return Err(Error::Unsupported { path: "descriptor".into(), reason: format!("extent type {t}") })
        }
        Some(t) => return Err(bad(line, format!("unknown extent type {t:?}"))),
        None => return Err(bad(line, "extent type missing")),
    };
    if sectors == 0 || sectors > MAX_DISK_SECTORS {
        return Err(bad(line, format!("absurd extent size {sectors} sectors")));
    }
    let file = f.get(3).cloned();
    if kind == ExtentKind::Zero {
        if f.len() > 3 {
            return Err(bad(line, "ZERO extent must not name a file"));
        }
    } else if file.as_deref().is_none_or(str::is_empty) {
        return Err(bad(line, "extent file name missing"));
    }
    let offset = match (kind, f.get(4)) {
        (ExtentKind::Flat, Some(o)) => parse_decimal(o).ok_or_else(|| bad(line, format!("bad extent offset {o:?}")))?,
        (ExtentKind::Flat, None) => 0,
        (_, Some(_)) => return Err(bad(line, "only FLAT extents take an offset")),
        (_, None) => 0,
    };
    if f.len() > 5 {
        return Err(bad(line, "trailing fields in extent line"));
    }
    if offset > MAX_DISK_SECTORS {
        return Err(bad(line, "absurd extent offset"));
    }
    Ok(ExtentLine { access, sectors, kind, file, offset })
}

impl Descriptor {
    /// Parses descriptor text (NUL padding after the text is ignored).
    pub fn parse(bytes: &[u8]) -> Result<Descriptor> {
        Descriptor::parse_opt(bytes, true)
    }

    /// [`Descriptor::parse`]; an embedded descriptor may have no extent lines (the file is its
    /// own extent whatever the descriptor says, as in qemu-img).
    pub(crate) fn parse_opt(bytes: &[u8], require_extents: bool) -> Result<Descriptor> {
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let bytes = &bytes[..end];
        if bytes.len() > MAX_DESCRIPTOR_BYTES {
            return Err(bad(0, format!("descriptor too large ({} bytes)", bytes.len())));
        }
        let text = std::str::from_utf8(bytes).map_err(|e| bad(0, format!("not UTF-8 text ({e})")))?;
        let mut version = None;
        let mut cid = None;
        let mut parent_cid = NO_PARENT_CID;
        let mut create_type = None;
        let mut parent_hint = None;
        let mut other = Vec::new();
        let mut extents = Vec::new();
        let mut ddb = Vec::new();
        let mut total: u64 = 0;
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            if l.starts_with("RW ") || l.starts_with("RDONLY ") || l.starts_with("NOACCESS ") {
                if extents.len() >= MAX_EXTENTS {
                    return Err(bad(line, "too many extents"));
                }
                let e = parse_extent(l, line)?;
                total = total.saturating_add(e.sectors);
                if total > MAX_DISK_SECTORS {
                    return Err(bad(line, "total disk size is absurd"));
                }
                extents.push(e);
                continue;
            }
            let Some((k, v)) = l.split_once('=') else {
                return Err(bad(line, format!("unrecognised line {:?}", truncate(l))));
            };
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() || k.contains(char::is_whitespace) {
                return Err(bad(line, format!("bad key {:?}", truncate(k))));
            }
            if k.starts_with("ddb.") {
                ddb.push((k.to_string(), unquote(v).to_string()));
                continue;
            }
            match k {
                "version" => {
                    let n: u32 = unquote(v).parse().map_err(|_| bad(line, format!("bad version {v:?}")))?;
                    if !(1..=3).contains(&n) {
                        return Err(bad(line, format!("unsupported descriptor version {n}")));
                    }
                    version = Some(n);
                }
                "CID" => cid = Some(parse_hex32(v, line, "CID")?),
                "parentCID" => parent_cid = parse_hex32(v, line, "parentCID")?,
                "createType" => create_type = Some(unquote(v).to_string()),
                "parentFileNameHint" => parent_hint = Some(unquote(v).to_string()),
                _ => other.push((k.to_string(), v.to_string())),
            }
        }
        let version = version.ok_or_else(|| bad(0, "no version= line"))?;
        let create_type = create_type.ok_or_else(|| bad(0, "no createType= line"))?;
        if extents.is_empty() && require_extents {
            return Err(bad(0, "no extent lines"));
        }
        if parent_cid != NO_PARENT_CID && parent_hint.is_none() {
            return Err(bad(0, "parentCID set but no parentFileNameHint"));
        }
        if parent_hint.as_deref().is_some_and(str::is_empty) {
            return Err(bad(0, "empty parentFileNameHint"));
        }
        Ok(Descriptor {
            version,
            cid: cid.unwrap_or(0xFFFF_FFFE),
            parent_cid,
            create_type,
            parent_hint,
            other,
            extents,
            ddb,
        })
    }

    /// Total size in sectors.
    pub fn sectors(&self) -> u64 {
        self.extents.iter().map(|e| e.sectors).sum()
    }

    /// Looks up a DDB value.
    pub fn ddb_get(&self, key: &str) -> Option<&str> {
        self.ddb.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Sets (or adds) a DDB value.
    pub fn ddb_set(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.ddb.iter_mut().find(|(k, _)| k == key) {
            Some(e) => e.1 = value,
            None => self.ddb.push((key.to_string(), value)),
        }
    }

    /// Serialises in the layout qemu and VMware write.
    pub fn to_text(&self) -> String {
        let mut s = String::from("# Disk DescriptorFile\n");
        s += &format!("version={}\n", self.version);
        for (k, v) in self.other.iter().filter(|(k, _)| k == "encoding") {
            s += &format!("{k}={v}\n");
        }
        s += &format!("CID={:08x}\n", self.cid);
        s += &format!("parentCID={:08x}\n", self.parent_cid);
        for (k, v) in self.other.iter().filter(|(k, _)| k != "encoding") {
            s += &format!("{k}={v}\n");
        }
        s += &format!("createType=\"{}\"\n", self.create_type);
        if let Some(h) = &self.parent_hint {
            s += &format!("parentFileNameHint=\"{h}\"\n");
        }
        s += "\n# Extent description\n";
        for e in &self.extents {
            s += &e.to_line();
            s.push('\n');
        }
        s += "\n# The Disk Data Base\n#DDB\n\n";
        for (k, v) in &self.ddb {
            s += &format!("{k} = \"{v}\"\n");
        }
        s
    }

    /// A fresh descriptor with the DDB qemu writes (geometry from the size and adapter).
    pub fn new(create_type: &str, sectors: u64, adapter: &str, hw_version: &str) -> Descriptor {
        let heads: u64 = if adapter == "ide" { 16 } else { 255 };
        let cylinders = sectors / (63 * heads);
        Descriptor {
            version: 1,
            cid: new_cid(),
            parent_cid: NO_PARENT_CID,
            create_type: create_type.to_string(),
            parent_hint: None,
            other: Vec::new(),
            extents: Vec::new(),
            ddb: vec![
                ("ddb.virtualHWVersion".into(), hw_version.into()),
                ("ddb.geometry.cylinders".into(), cylinders.to_string()),
                ("ddb.geometry.heads".into(), heads.to_string()),
                ("ddb.geometry.sectors".into(), "63".into()),
                ("ddb.adapterType".into(), adapter.into()),
                ("ddb.toolsVersion".into(), "2147483647".into()),
            ],
        }
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(60).collect()
}

/// A new random content ID (never 0xFFFFFFFF or 0xFFFFFFFE).
pub fn new_cid() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    loop {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        h.write_u32(std::process::id());
        let v = h.finish() as u32;
        if v < 0xFFFF_FFFE {
            return v;
        }
    }
}

/// Whether bytes look like a text descriptor (qemu's probe: comments/blank lines, then `version=`).
pub fn looks_like_descriptor(head: &[u8]) -> bool {
    let end = head.iter().position(|&b| b == 0).unwrap_or(head.len());
    let Ok(text) = std::str::from_utf8(&head[..end]).or_else(|e| std::str::from_utf8(&head[..e.valid_up_to()])) else {
        return false;
    };
    for l in text.lines() {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        return l.starts_with("version=");
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU: &str = "# Disk DescriptorFile\nversion=1\nCID=52b8a3c1\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentFlat\"\n\n# Extent description\nRW 4194304 FLAT \"t-f001.vmdk\" 0\nRDONLY 2048 SPARSE \"my disk.vmdk\"\nNOACCESS 100 ZERO\n\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.adapterType = \"ide\"\n";

    #[test]
    fn test_parse_roundtrip() {
        let d = Descriptor::parse(QEMU.as_bytes()).unwrap();
        assert_eq!(d.cid, 0x52b8a3c1);
        assert_eq!(d.extents.len(), 3);
        assert_eq!(d.extents[1].file.as_deref(), Some("my disk.vmdk"));
        assert_eq!(d.extents[2].kind, ExtentKind::Zero);
        assert_eq!(d.sectors(), 4194304 + 2048 + 100);
        assert_eq!(d.ddb_get("ddb.adapterType"), Some("ide"));
        let d2 = Descriptor::parse(d.to_text().as_bytes()).unwrap();
        assert_eq!(d, d2);
    }

    #[test]
    fn test_garbage_rejected() {
        for bad in [
            &b"hello world"[..],
            b"version=1\ncreateType=\"x\"\n",
            b"version=9\nCID=1\ncreateType=\"x\"\nRW 1 FLAT \"a\" 0\n",
            b"version=1\nCID=zz\ncreateType=\"x\"\nRW 1 FLAT \"a\" 0\n",
            b"version=1\ncreateType=\"x\"\nRW 99999999999999999999 FLAT \"a\" 0\n",
            b"version=1\ncreateType=\"x\"\nRW 10 FLAT \"a\n",
            b"version=1\ncreateType=\"x\"\nRW 10 SPARSE \"a\" 7\n",
            b"\xff\xfe",
            b"version=1\ncreateType=\"x\"\nRW 10 FLAT FF\"a\" 0\n",
            b"version=1\ncreateType=\"x\"\nRW +5 SPARSE \"a\"\n",
            b"version=1\ncreateType=\"x\"\nRW 5 FLAT \"a\" +0\n",
            b"version=1\ncreateType=\"x\"\nRW 5 FLAT \"a\" -0\n",
        ] {
            assert!(Descriptor::parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(looks_like_descriptor(b"# Disk DescriptorFile\nversion=1\n"));
        assert!(!looks_like_descriptor(b"\x7fELF"));
    }
}

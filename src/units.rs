//! Size arguments, spelled the same way everywhere on the command line: a number with an
//! optional unit `K`/`M`/`G`/`T`, `KiB`..`TiB` or `KB`..`TB` (all binary: 1K = 1024, as QEMU and
//! qemu-img read them), or `B` for bytes. Without a unit the caller's default applies (MiB for
//! `run -m`, as QEMU's `-m`).

/// Parses `s` as a size in bytes; `default_unit` multiplies a number given without a unit.
pub fn parse_size(s: &str, default_unit: u64) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("iB").or_else(|| t.strip_suffix("ib")).unwrap_or(t);
    let t = match t.len() {
        2.. if t.ends_with(['B', 'b']) && t[..t.len() - 1].ends_with(|c: char| "KMGTkmgt".contains(c)) => {
            &t[..t.len() - 1]
        }
        _ => t,
    };
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        Some('B') => (&t[..t.len() - 1], 1),
        _ => (t, default_unit),
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a size (a whole number with an optional unit: 512M, 2G, 1T, 4096B)"))?;
    n.checked_mul(mult).ok_or_else(|| format!("size '{s}' is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_units_spellings_agree() {
        const M: u64 = 1 << 20;
        for s in ["1T", "1t", "1TiB", "1TB", "1024G", "1048576M"] {
            assert_eq!(parse_size(s, M), Ok(1 << 40), "{s}");
        }
        assert_eq!(parse_size("128", M), Ok(128 << 20));
        assert_eq!(parse_size("640k", M), Ok(640 << 10));
        assert_eq!(parse_size("4096B", M), Ok(4096));
        assert_eq!(parse_size("512MiB", M), Ok(512 << 20));
        assert!(parse_size("lots", M).is_err());
        assert!(parse_size("99999999999T", M).is_err());
        assert!(parse_size("", M).is_err());
    }
}

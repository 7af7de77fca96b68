//! The one size parser of the command line: `run -m` and `disk create` accept the same units.
//!
//! A size is a decimal number (a fraction is allowed: `1.5G`) with an optional unit, case
//! insensitive: `B`; `K`, `M`, `G`, `T`; `KiB` ... `TiB`; `KB` ... `TB`. Every unit is a power
//! of 1024, as in QEMU and qemu-img (`KB` is accepted as a spelling of `KiB`). A bare number is
//! in the caller's default unit: MiB for `run -m` (QEMU's `-m`), bytes for `disk create`
//! (qemu-img's size).

/// Largest size accepted (1 PiB): far beyond any disk or RAM this emulator can use, and small
/// enough that every later multiplication by a sector or page size stays in range.
pub const MAX_SIZE: u64 = 1 << 50;

/// Parses `s`; a bare number is multiplied by `bare_unit`. Zero is refused.
pub fn parse_size(s: &str, bare_unit: u64) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = (&t[..split], t[split..].trim());
    let mul: u64 = match unit.to_ascii_lowercase().as_str() {
        "" => bare_unit,
        "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(not_a_size(s)),
    };
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') || frac.len() > 18 {
        return Err(not_a_size(s));
    }
    let too_large = || format!("size '{s}' is too large (at most 1 PiB)");
    let int: u64 = if int.is_empty() { 0 } else { int.parse().map_err(|_| too_large())? };
    let mut v = int.checked_mul(mul).ok_or_else(too_large)?;
    if !frac.is_empty() {
        // Exact: frac / 10^digits of the unit, rounded down to a byte.
        let f: u128 = frac.parse().map_err(|_| not_a_size(s))?;
        let extra = f * u128::from(mul) / 10u128.pow(frac.len() as u32);
        v = v.checked_add(extra as u64).ok_or_else(too_large)?;
    }
    if v > MAX_SIZE {
        return Err(too_large());
    }
    if v == 0 {
        return Err(format!("size '{s}' must be greater than zero"));
    }
    Ok(v)
}

fn not_a_size(s: &str) -> String {
    format!("'{s}' is not a size (e.g. 512M, 1.5G, 2GiB, 1T; units K, M, G, T, KiB..TiB, KB..TB, all powers of 1024)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_units() {
        const M: u64 = 1 << 20;
        for (s, bytes) in [
            ("4096", 4096),
            ("100b", 100),
            ("1.5K", 1536),
            ("640k", 640 << 10),
            ("512m", 512 * M),
            ("3MB", 3 * M),
            ("2GiB", 2 << 30),
            ("10G", 10 << 30),
            ("1T", 1 << 40),
            ("1 TiB", 1 << 40),
            ("1tb", 1 << 40),
            (".5M", M / 2),
        ] {
            assert_eq!(parse_size(s, 1), Ok(bytes), "{s}");
        }
        assert_eq!(parse_size("128", M), Ok(128 * M), "a bare number takes the caller's unit");
        for bad in ["x", "-1G", "+1G", "1X", "1..5G", ".", "", "0", "0M", "99999999T", "1e3", "1G5"] {
            assert!(parse_size(bad, 1).is_err(), "{bad:?}");
        }
    }
}

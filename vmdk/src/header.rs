//! The hosted sparse extent header (`SparseExtentHeader`, 512 bytes, little-endian, packed).
//!
//! ```text
//! off  size field
//! 0x00  4   magicNumber "KDMV"
//! 0x04  4   version (1..=3)
//! 0x08  4   flags
//! 0x0C  8   capacity (sectors)
//! 0x14  8   grainSize (sectors)
//! 0x1C  8   descriptorOffset (sectors)
//! 0x24  8   descriptorSize (sectors)
//! 0x2C  4   numGTEsPerGT
//! 0x30  8   rgdOffset
//! 0x38  8   gdOffset (GD_AT_END = u64::MAX)
//! 0x40  8   overHead
//! 0x48  1   uncleanShutdown
//! 0x49  4   '\n' ' ' '\r' '\n'
//! 0x4D  2   compressAlgorithm
//! ```

/// Sector size in bytes.
pub const SECTOR: u64 = 512;
/// "KDMV" as a little-endian u32.
pub const MAGIC: u32 = 0x564D_444B;
/// gdOffset value meaning "the GD is at the end (read the footer)".
pub const GD_AT_END: u64 = u64::MAX;
/// Flag: newline-detection bytes are valid.
pub const FLAG_NL_DETECT: u32 = 0x1;
/// Flag: a redundant GD exists.
pub const FLAG_RGD: u32 = 0x2;
/// Flag: zeroed-grain GTEs (value 1) are used.
pub const FLAG_ZEROED_GRAIN: u32 = 0x4;
/// Flag: grains are compressed.
pub const FLAG_COMPRESSED: u32 = 0x10000;
/// Flag: grain and metadata markers are present.
pub const FLAG_MARKERS: u32 = 0x20000;
/// Known flag bits.
pub const KNOWN_FLAGS: u32 = FLAG_NL_DETECT | FLAG_RGD | FLAG_ZEROED_GRAIN | FLAG_COMPRESSED | FLAG_MARKERS;
/// Largest grain we accept, in sectors (32 MiB): bounds every per-grain allocation.
pub const MAX_GRAIN_SECTORS: u64 = 1 << 16;
/// Largest number of GTEs per GT we accept (qemu's limit).
pub const MAX_GTES_PER_GT: u32 = 512;
/// Largest capacity we accept, in sectors (the 2^32-sector offset limit times a generous factor: 64 TiB).
pub const MAX_CAPACITY_SECTORS: u64 = 1 << 37;

/// Parsed sparse extent header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SparseHeader {
    /// Format version (1, 2 or 3).
    pub version: u32,
    /// Flag bits.
    pub flags: u32,
    /// Capacity in sectors.
    pub capacity: u64,
    /// Grain size in sectors.
    pub grain_size: u64,
    /// Embedded descriptor offset (sectors, 0 = none).
    pub desc_offset: u64,
    /// Embedded descriptor size (sectors).
    pub desc_size: u64,
    /// GTEs per grain table.
    pub num_gtes_per_gt: u32,
    /// Redundant GD offset (sectors).
    pub rgd_offset: u64,
    /// GD offset (sectors) or [`GD_AT_END`].
    pub gd_offset: u64,
    /// Sectors before the first grain.
    pub overhead: u64,
    /// Unclean shutdown byte.
    pub unclean_shutdown: u8,
    /// Newline detection bytes.
    pub nl_chars: [u8; 4],
    /// Compression algorithm (0 none, 1 deflate).
    pub compress_algorithm: u16,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

impl SparseHeader {
    /// Parses the first 512 bytes. Checks the magic and that the fields are self-consistent; the checks
    /// against the file length are in [`SparseHeader::validate_layout`]. Returns a reason on error.
    pub fn parse(b: &[u8]) -> Result<SparseHeader, String> {
        if b.len() < 512 {
            return Err(format!("truncated header ({} bytes, need 512)", b.len()));
        }
        if u32_at(b, 0) != MAGIC {
            return Err(format!("bad magic {:08x}", u32_at(b, 0)));
        }
        let h = SparseHeader {
            version: u32_at(b, 4),
            flags: u32_at(b, 8),
            capacity: u64_at(b, 0x0C),
            grain_size: u64_at(b, 0x14),
            desc_offset: u64_at(b, 0x1C),
            desc_size: u64_at(b, 0x24),
            num_gtes_per_gt: u32_at(b, 0x2C),
            rgd_offset: u64_at(b, 0x30),
            gd_offset: u64_at(b, 0x38),
            overhead: u64_at(b, 0x40),
            unclean_shutdown: b[0x48],
            nl_chars: [b[0x49], b[0x4A], b[0x4B], b[0x4C]],
            compress_algorithm: u16::from_le_bytes([b[0x4D], b[0x4E]]),
        };
        h.check_fields()?;
        Ok(h)
    }

    fn check_fields(&self) -> Result<(), String> {
        if self.version == 0 || self.version > 3 {
            return Err(format!("unsupported version {}", self.version));
        }
        let unknown = self.flags & !KNOWN_FLAGS;
        if unknown & 0xFFFF_0000 != 0 {
            return Err(format!("unknown incompatible flags {:#x}", unknown & 0xFFFF_0000));
        }
        if self.flags & FLAG_MARKERS != 0 && self.flags & FLAG_COMPRESSED == 0 {
            return Err("markers flag without compression flag".into());
        }
        if self.flags & FLAG_COMPRESSED != 0 && self.compress_algorithm != 1 {
            return Err(format!("unsupported compression algorithm {}", self.compress_algorithm));
        }
        if self.flags & FLAG_COMPRESSED == 0 && self.compress_algorithm > 1 {
            return Err(format!("unsupported compression algorithm {}", self.compress_algorithm));
        }
        if self.flags & FLAG_NL_DETECT != 0 && self.nl_chars != *b"\n \r\n" {
            return Err("newline detection bytes corrupted (file transferred in text mode?)".into());
        }
        if self.grain_size == 0 || !self.grain_size.is_power_of_two() || self.grain_size > MAX_GRAIN_SECTORS {
            return Err(format!("invalid grain size {} sectors", self.grain_size));
        }
        if self.num_gtes_per_gt == 0
            || !self.num_gtes_per_gt.is_power_of_two()
            || self.num_gtes_per_gt > MAX_GTES_PER_GT
        {
            return Err(format!("invalid numGTEsPerGT {}", self.num_gtes_per_gt));
        }
        if self.capacity > MAX_CAPACITY_SECTORS {
            return Err(format!("absurd capacity {} sectors", self.capacity));
        }
        // Offsets must be addressable by 32-bit GTEs (2 TiB) unless they are the GD_AT_END marker.
        Ok(())
    }

    /// Whether grains are compressed.
    pub fn compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0 || self.compress_algorithm == 1
    }
    /// Whether grain markers are present.
    pub fn markers(&self) -> bool {
        self.flags & FLAG_MARKERS != 0
    }
    /// Whether a redundant GD is present.
    pub fn has_rgd(&self) -> bool {
        self.flags & FLAG_RGD != 0 && self.rgd_offset != 0
    }
    /// Whether zeroed-grain GTEs are allowed.
    pub fn zeroed_grain(&self) -> bool {
        self.flags & FLAG_ZEROED_GRAIN != 0
    }
    /// Sectors covered by one grain table.
    pub fn gt_coverage(&self) -> u64 {
        self.grain_size * u64::from(self.num_gtes_per_gt)
    }
    /// Number of GD entries.
    pub fn gd_entries(&self) -> u64 {
        self.capacity.div_ceil(self.gt_coverage())
    }
    /// Size of the GD in sectors.
    pub fn gd_sectors(&self) -> u64 {
        (self.gd_entries() * 4).div_ceil(SECTOR)
    }
    /// Size of one GT in sectors.
    pub fn gt_sectors(&self) -> u64 {
        (u64::from(self.num_gtes_per_gt) * 4).div_ceil(SECTOR)
    }

    /// Checks the metadata areas against the file length (bounds every allocation made from the header).
    pub fn validate_layout(&self, file_len: u64) -> Result<(), String> {
        let file_sectors = file_len.div_ceil(SECTOR);
        let gd_sectors = self.gd_sectors();
        let check_gd = |name: &str, off: u64| -> Result<(), String> {
            if off == 0 {
                return Err(format!("{name} offset 0 points into the header"));
            }
            let end = off.checked_add(gd_sectors).ok_or_else(|| format!("{name} offset overflows"))?;
            if end > file_sectors {
                return Err(format!(
                    "{name} (sectors {off}..{end}) lies past the end of the file ({file_sectors} sectors); capacity {} too large?",
                    self.capacity
                ));
            }
            Ok(())
        };
        if self.gd_offset != GD_AT_END {
            check_gd("grain directory", self.gd_offset)?;
        }
        if self.has_rgd() && !(self.compressed() && self.gd_offset == GD_AT_END) {
            check_gd("redundant grain directory", self.rgd_offset)?;
        }
        if self.desc_offset != 0 {
            if self.desc_size > 4096 {
                return Err(format!("embedded descriptor size {} sectors is absurd", self.desc_size));
            }
            if self.desc_offset.checked_add(self.desc_size).is_none_or(|e| e > file_sectors) {
                return Err("embedded descriptor lies past the end of the file".into());
            }
        }
        Ok(())
    }

    /// Serialises to 512 bytes.
    pub fn to_bytes(&self) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..12].copy_from_slice(&self.flags.to_le_bytes());
        b[0x0C..0x14].copy_from_slice(&self.capacity.to_le_bytes());
        b[0x14..0x1C].copy_from_slice(&self.grain_size.to_le_bytes());
        b[0x1C..0x24].copy_from_slice(&self.desc_offset.to_le_bytes());
        b[0x24..0x2C].copy_from_slice(&self.desc_size.to_le_bytes());
        b[0x2C..0x30].copy_from_slice(&self.num_gtes_per_gt.to_le_bytes());
        b[0x30..0x38].copy_from_slice(&self.rgd_offset.to_le_bytes());
        b[0x38..0x40].copy_from_slice(&self.gd_offset.to_le_bytes());
        b[0x40..0x48].copy_from_slice(&self.overhead.to_le_bytes());
        b[0x48] = self.unclean_shutdown;
        b[0x49..0x4D].copy_from_slice(&self.nl_chars);
        b[0x4D..0x4F].copy_from_slice(&self.compress_algorithm.to_le_bytes());
        b
    }

    /// A fresh header as qemu writes it (version 1, flags 0x3), before layout fields are filled in.
    pub fn new(capacity: u64, grain_size: u64) -> SparseHeader {
        SparseHeader {
            version: 1,
            flags: FLAG_NL_DETECT | FLAG_RGD,
            capacity,
            grain_size,
            desc_offset: 0,
            desc_size: 0,
            num_gtes_per_gt: 512,
            rgd_offset: 0,
            gd_offset: 0,
            overhead: 0,
            unclean_shutdown: 0,
            nl_chars: *b"\n \r\n",
            compress_algorithm: 0,
        }
    }
}

/// A streamOptimized marker header (the first 16 bytes of a metadata marker, or 12 of a grain marker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// `lba` of a grain marker or `numSectors` of a metadata marker.
    pub val: u64,
    /// Compressed size (> 0 for grain markers, 0 for metadata markers).
    pub size: u32,
    /// Metadata marker type (only when size == 0).
    pub kind: u32,
}

/// Metadata marker types.
pub const MARKER_EOS: u32 = 0;
/// GT marker.
pub const MARKER_GT: u32 = 1;
/// GD marker.
pub const MARKER_GD: u32 = 2;
/// Footer marker.
pub const MARKER_FOOTER: u32 = 3;

impl Marker {
    /// Parses 16 bytes.
    pub fn parse(b: &[u8]) -> Marker {
        Marker { val: u64_at(b, 0), size: u32_at(b, 8), kind: u32_at(b, 12) }
    }
    /// A metadata marker sector.
    pub fn metadata(num_sectors: u64, kind: u32) -> [u8; 512] {
        let mut b = [0u8; 512];
        b[0..8].copy_from_slice(&num_sectors.to_le_bytes());
        b[12..16].copy_from_slice(&kind.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_header_roundtrip() {
        let mut h = SparseHeader::new(204800, 128);
        h.desc_offset = 1;
        h.desc_size = 20;
        h.rgd_offset = 21;
        h.gd_offset = 38;
        h.overhead = 128;
        let b = h.to_bytes();
        assert_eq!(&b[0..4], b"KDMV");
        assert_eq!(SparseHeader::parse(&b).unwrap(), h);
        h.validate_layout(128 * 512).unwrap();
        assert!(h.validate_layout(30 * 512).is_err());
    }

    #[test]
    fn test_header_rejects_bad_fields() {
        let good = SparseHeader::new(2048, 128).to_bytes();
        let mut b = good;
        b[0] = b'X';
        assert!(SparseHeader::parse(&b).is_err());
        let mut b = good;
        b[0x0A] = 0x40; // flag 0x400000
        assert!(SparseHeader::parse(&b).unwrap_err().contains("incompatible"));
        let mut b = good;
        b[0x14] = 3;
        assert!(SparseHeader::parse(&b).is_err());
        assert!(SparseHeader::parse(&good[..100]).is_err());
    }
}

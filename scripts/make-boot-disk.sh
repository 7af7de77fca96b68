#!/usr/bin/env bash
# make-boot-disk.sh OUTDIR [KITDIR]
#
# Builds bootable PC disks from Debian packages, without root or loop mounts: a boot loader boots
# the Linux guest kit's bzImage with its initramfs (KITDIR, default target/guest-cache/linux,
# made by scripts/fetch-linux-guest.sh, which this script does not run), with `console=ttyS0
# nokaslr`. Both disks have an MBR partition table with one active FAT16 partition at sector
# 2048, made with mkfs.fat (dosfstools), holding the kit's vmlinuz and initramfs.cpio.gz (as
# /vmlinuz and /initrd.gz, copied in with mcopy) and SYSLINUX (installed with the mtools-based
# `syslinux --install --offset`). Neither boot loader is told to use COM1 itself: SeaBIOS copies
# the BIOS video console to COM1 (sercon), and both outputs would interleave.
#   OUTDIR/boot.img          raw disk whose MBR code is syslinux-common's mbr.bin: MBR -> SYSLINUX
#   OUTDIR/boot.vmdk         the same disk as a monolithicSparse VMDK (`ferrovisor disk convert`)
#   OUTDIR/boot-stream.vmdk  the same disk as a streamOptimized VMDK
#   OUTDIR/boot-split.vmdk   the same disk as a twoGbMaxExtentSparse VMDK (its extent is
#                            boot-split-s001.vmdk)
#   OUTDIR/boot-grub.img     the same partition with GRUB 2 in the MBR instead: grub-pc-bin's
#                            boot.img, and at sector 1 a core.img made by grub-mkimage with an
#                            embedded configuration that runs `linux` and `initrd` (GRUB's 32-bit
#                            entry into the kernel), as grub-bios-setup would install them
#   OUTDIR/boot-grub.vmdk    that disk as a monolithicSparse VMDK
#   OUTDIR/versions.txt      the package versions of the tools used
# The ferrovisor binary is $FERROVISOR (default: target/release/ferrovisor of this checkout).
# syslinux, mtools, dosfstools and GRUB are used from the system when installed; otherwise their
# Debian packages are fetched with `apt-get download` and unpacked with `dpkg-deb -x` into
# OUTDIR/.tools. Outputs are rebuilt when this script, the kernel or the initramfs change, and
# reused otherwise.
set -euo pipefail
export LC_ALL=C
# Fixed file times in the FAT (mtools; mkfs.fat --invariant), so the same inputs give the same raw
# images (the VMDKs differ only in their random content IDs).
export SOURCE_DATE_EPOCH=1704067200
OUT=${1:?usage: make-boot-disk.sh OUTDIR [KITDIR]}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KIT=${2:-$ROOT/target/guest-cache/linux}
FERROVISOR=${FERROVISOR:-$ROOT/target/release/ferrovisor}
log() { echo "make-boot-disk: $*" >&2; }
for f in vmlinuz initramfs.cpio.gz; do
  [ -s "$KIT/$f" ] || { log "missing $KIT/$f (run scripts/fetch-linux-guest.sh first)"; exit 1; }
done
[ -x "$FERROVISOR" ] || { log "no ferrovisor binary at $FERROVISOR (set FERROVISOR)"; exit 1; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
TOOLS=$OUT/.tools
WORK=$OUT/.work

stamp=$(cat "$0" "$KIT/vmlinuz" "$KIT/initramfs.cpio.gz" | sha256sum | cut -c1-16)
outputs=(boot.img boot.vmdk boot-stream.vmdk boot-split.vmdk boot-split-s001.vmdk boot-grub.img boot-grub.vmdk)
have=1
for f in "${outputs[@]}"; do [ -s "$OUT/$f" ] || have=0; done
if [ $have = 1 ] &&
  [ "$(cat "$OUT/.stamp" 2>/dev/null)" = "$stamp" ]; then
  log "up to date in $OUT"
  exit 0
fi
rm -rf "$WORK"
mkdir -p "$WORK" "$TOOLS"

# --- the tools: installed ones, or Debian's packages unpacked into $TOOLS ---------------------
updated=0
unpack() { # PKG: downloads the package and unpacks it into $TOOLS (once)
  [ -e "$TOOLS/.done-$1" ] && return 0
  if ! (cd "$WORK" && apt-get download -q -o APT::Sandbox::User=root "$1" >&2); then
    [ $updated = 1 ] || { apt-get update -qq >&2 || log "apt-get update reported errors (continuing)"; updated=1; }
    (cd "$WORK" && apt-get download -q -o APT::Sandbox::User=root "$1" >&2)
  fi
  local deb
  deb=$(ls "$WORK/$1"_*.deb | head -n1)
  dpkg-deb -x "$deb" "$TOOLS"
  echo "$1 $(dpkg-deb -f "$deb" Version)" >> "$TOOLS/versions.txt"
  rm -f "$deb"
  touch "$TOOLS/.done-$1"
}
export PATH=$TOOLS/usr/bin:$TOOLS/usr/sbin:$TOOLS/sbin:$TOOLS/bin:$PATH:/usr/sbin:/sbin
command -v mcopy >/dev/null 2>&1 || unpack mtools
command -v mkfs.fat >/dev/null 2>&1 || unpack dosfstools
command -v syslinux >/dev/null 2>&1 || unpack syslinux
MBR=
for d in /usr/lib/syslinux/mbr "$TOOLS/usr/lib/syslinux/mbr"; do
  [ -s "$d/mbr.bin" ] && { MBR=$d/mbr.bin; break; }
done
if [ -z "$MBR" ]; then
  unpack syslinux-common
  MBR=$TOOLS/usr/lib/syslinux/mbr/mbr.bin
fi
[ -s "$MBR" ] || { log "no mbr.bin in syslinux-common"; exit 1; }
command -v grub-mkimage >/dev/null 2>&1 || unpack grub-common
GRUB=
for d in /usr/lib/grub/i386-pc "$TOOLS/usr/lib/grub/i386-pc"; do
  [ -s "$d/boot.img" ] && [ -s "$d/kernel.img" ] && { GRUB=$d; break; }
done
if [ -z "$GRUB" ]; then
  unpack grub-pc-bin
  GRUB=$TOOLS/usr/lib/grub/i386-pc
fi
[ -s "$GRUB/boot.img" ] || { log "no boot.img in grub-pc-bin"; exit 1; }
if ! grub-mkimage --version >/dev/null 2>&1; then
  # Its one library that a minimal system may lack (the others are libc, lzma, udev, selinux).
  unpack libdevmapper1.02.1
  export LD_LIBRARY_PATH=$TOOLS/lib/x86_64-linux-gnu:$TOOLS/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  grub-mkimage --version >/dev/null || { log "grub-mkimage does not run (missing libraries?)"; exit 1; }
fi
{ # (sed, not head: a writer cut off by head fails the pipeline under pipefail)
  syslinux --version 2>&1 | sed -n 1p
  mcopy --version 2>&1 | sed -n 1p
  mkfs.fat --help 2>&1 | sed -n 1p
  grub-mkimage --version 2>&1 | sed -n 1p
  cat "$TOOLS/versions.txt" 2>/dev/null || true
} > "$OUT/versions.txt"

# --- the disk ---------------------------------------------------------------------------------
# A 64 MiB disk; the partition starts at sector 2048 (1 MiB) and fills the rest.
START=2048
TOTAL=$((64 * 2048))
SECTORS=$((TOTAL - START))
IMG=$WORK/boot.img
truncate -s $((TOTAL * 512)) "$IMG"
# The MBR: syslinux's boot code (440 bytes) and a partition table with one active FAT16 (LBA)
# partition. The CHS fields use the 16-head, 63-sector geometry; the boot code reads by LBA (EDD).
python3 - "$IMG" "$MBR" $START $SECTORS <<'PY'
import struct, sys
img, mbr, start, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
code = open(mbr, "rb").read()
assert len(code) <= 440, "mbr.bin is larger than the MBR's code area"
def chs(lba, heads=16, spt=63):
    c, r = divmod(lba, heads * spt)
    if c > 1023:
        return bytes([0xFE, 0xFF, 0xFF])
    h, s = divmod(r, spt)
    return bytes([h, ((c >> 2) & 0xC0) | (s + 1), c & 0xFF])
entry = bytes([0x80]) + chs(start) + bytes([0x0E]) + chs(start + count - 1) + struct.pack("<II", start, count)
with open(img, "r+b") as f:
    f.write(code)
    f.seek(440)
    f.write(struct.pack("<IH", 0x46455252, 0))  # disk signature
    f.write(entry + bytes(48))
    f.write(b"\x55\xaa")
PY
mkfs.fat -F 16 --invariant -n FERROBOOT -i 46455252 -h $START --offset $START "$IMG" $((SECTORS / 2)) >&2

cat > "$WORK/syslinux.cfg" <<'CFG'
SAY FERROVISOR-SYSLINUX: booting Linux
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL /vmlinuz
  INITRD /initrd.gz
  APPEND console=ttyS0 nokaslr
CFG
part="$IMG@@$((START * 512))"
mcopy -i "$part" "$WORK/syslinux.cfg" ::/syslinux.cfg
mcopy -i "$part" "$KIT/vmlinuz" ::/vmlinuz
mcopy -i "$part" "$KIT/initramfs.cpio.gz" ::/initrd.gz
syslinux --install --offset $((START * 512)) "$IMG"
mdir -i "$part" ::/ >&2


# GRUB: boot.img's code in the MBR (its partition table and signature stay) loads the core
# image from sector 1 (boot.img's default); the core image's first sector (diskboot.img) lists
# the sectors of the rest, which grub-mkimage fills in for sector 2 onwards.
cat > "$WORK/grub.cfg" <<'CFG'
set root=(hd0,msdos1)
echo FERROVISOR-GRUB: booting Linux
linux /vmlinuz console=ttyS0 nokaslr
initrd /initrd.gz
boot
CFG
grub-mkimage -d "$GRUB" -O i386-pc -o "$WORK/core.img" -c "$WORK/grub.cfg" -p '(hd0,msdos1)/boot/grub' \
  biosdisk part_msdos fat linux echo boot
cp "$IMG" "$WORK/boot-grub.img"
python3 - "$WORK/boot-grub.img" "$GRUB/boot.img" "$WORK/core.img" $START <<'PY'
import struct, sys
img, boot, core, start = sys.argv[1], open(sys.argv[2], "rb").read(), open(sys.argv[3], "rb").read(), int(sys.argv[4])
assert len(boot) == 512 and struct.unpack_from("<Q", boot, 0x5C)[0] == 1, "boot.img does not load sector 1"
sectors = (len(core) + 511) // 512
assert 1 + sectors <= start, "core.img does not fit before the partition"
start_lba, length = struct.unpack_from("<QH", core, 0x200 - 12)
assert (start_lba, length) == (2, sectors - 1), f"unexpected diskboot blocklist {start_lba},{length}"
with open(img, "r+b") as f:
    f.write(boot[:440])
    f.seek(512)
    f.write(core)
PY

"$FERROVISOR" disk convert -q -O vmdk "$IMG" "$WORK/boot.vmdk"
"$FERROVISOR" disk convert -q -O vmdk --subformat streamOptimized "$IMG" "$WORK/boot-stream.vmdk"
"$FERROVISOR" disk convert -q -O vmdk --subformat twoGbMaxExtentSparse "$IMG" "$WORK/boot-split.vmdk"
"$FERROVISOR" disk convert -q -O vmdk "$WORK/boot-grub.img" "$WORK/boot-grub.vmdk"
for f in "${outputs[@]}"; do
  rm -f "$OUT/$f"
  mv "$WORK/$f" "$OUT/$f"
done
echo "$stamp" > "$OUT/.stamp"
rm -rf "$WORK"
log "ready in $OUT"

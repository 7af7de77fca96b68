#!/usr/bin/env bash
# make-boot-disk.sh OUTDIR [KITDIR]
#
# Builds a bootable PC disk from Debian packages, without root or loop mounts: SYSLINUX boots
# the Linux guest kit's bzImage with its initramfs (KITDIR, default target/guest-cache/linux,
# made by scripts/fetch-linux-guest.sh, which this script does not run).
#   OUTDIR/boot.img    raw disk: syslinux-common's mbr.bin and an MBR partition table holding one
#                      active FAT16 partition at sector 2048, made with mkfs.fat (dosfstools), with
#                      SYSLINUX installed by the mtools-based `syslinux --install --offset`, a
#                      syslinux.cfg (serial console on COM1, `console=ttyS0 nokaslr`), and the
#                      kit's vmlinuz and initramfs.cpio.gz copied in with mcopy
#   OUTDIR/boot.vmdk   the same disk as a monolithicSparse VMDK (`ferrovisor disk convert`)
#   OUTDIR/boot-stream.vmdk  the same disk as a streamOptimized VMDK
#   OUTDIR/boot-split.vmdk   the same disk as a twoGbMaxExtentSparse VMDK (its extent is
#                            boot-split-s001.vmdk)
#   OUTDIR/versions.txt      the package versions of the tools used
# The ferrovisor binary is $FERROVISOR (default: target/release/ferrovisor of this checkout).
# syslinux, mtools and dosfstools are used from the system when installed; otherwise their Debian
# packages are fetched with `apt-get download` and unpacked with `dpkg-deb -x` into OUTDIR/.tools.
# Outputs are rebuilt when this script, the kernel or the initramfs change, and reused otherwise.
set -euo pipefail
export LC_ALL=C
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
if [ -s "$OUT/boot.img" ] && [ -s "$OUT/boot.vmdk" ] && [ -s "$OUT/boot-stream.vmdk" ] &&
  [ -s "$OUT/boot-split.vmdk" ] && [ -s "$OUT/boot-split-s001.vmdk" ] &&
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
{
  syslinux --version 2>&1 | head -n1
  mcopy --version 2>&1 | head -n1
  mkfs.fat --help 2>&1 | head -n1
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
    f.write(struct.pack("<IH", 0x46455252, 0))  # disk signature "RREF"
    f.write(entry + bytes(48))
    f.write(b"\x55\xaa")
PY
mkfs.fat -F 16 -n FERROBOOT -i 46455252 -h $START --offset $START "$IMG" $((SECTORS / 2)) >&2

cat > "$WORK/syslinux.cfg" <<'CFG'
SERIAL 0 115200
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

"$FERROVISOR" disk convert -q -O vmdk "$IMG" "$WORK/boot.vmdk"
"$FERROVISOR" disk convert -q -O vmdk --subformat streamOptimized "$IMG" "$WORK/boot-stream.vmdk"
"$FERROVISOR" disk convert -q -O vmdk --subformat twoGbMaxExtentSparse "$IMG" "$WORK/boot-split.vmdk"
rm -f "$OUT"/boot*.vmdk "$OUT/boot.img"
mv "$WORK"/boot*.vmdk "$IMG" "$OUT"/
echo "$stamp" > "$OUT/.stamp"
rm -rf "$WORK"
log "ready in $OUT"

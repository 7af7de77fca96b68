#!/usr/bin/env bash
# fetch-linux-guest.sh OUTDIR [amd64|i386]
#
# Builds the Linux test guest from Debian 12 packages (amd64: linux-image-amd64; i386:
# linux-image-686-pae and an i386 busybox, which needs `dpkg --add-architecture i386`, done here
# when run as root), without root otherwise:
#   OUTDIR/vmlinuz            Debian's stock kernel (the linux-image-*-amd64 that linux-image-amd64
#                             depends on; override with KERNEL_PKG=...)
#   OUTDIR/vmlinux            the uncompressed ELF inside it (boots through its PVH note)
#   OUTDIR/initramfs.cpio.gz  busybox-static and an /init that prints FERROVISOR-USERSPACE-OK,
#                             runs the command given by `ferro.run=` on the kernel command line
#                             (a script in /ferro), and powers off
#   OUTDIR/busybox            the same busybox binary, for native comparisons
#   OUTDIR/work.sh            the workloads (/ferro/work in the guest; `ferro.run=work`), which
#                             print "W-..." result lines; natively: BB=OUTDIR/busybox sh work.sh
#   OUTDIR/versions.txt       the package versions used
# Only apt-get download, dpkg-deb, xz, gzip and python3 are used. Outputs that exist are kept;
# the initramfs is rebuilt when this script changes.
set -euo pipefail
export LC_ALL=C
OUT=${1:?usage: fetch-linux-guest.sh OUTDIR [amd64|i386]}
ARCH=${2:-amd64}
case $ARCH in
  amd64) META=linux-image-amd64; SUFFIX= ;;
  i386) META=linux-image-686-pae:i386; SUFFIX=:i386
    if ! dpkg --print-foreign-architectures | grep -qx i386; then
      dpkg --add-architecture i386 || { echo "fetch-linux-guest: cannot enable i386 packages (run as root once)" >&2; exit 1; }
      # A mirror mid-sync makes update report a failed index (exit 100) although the lists it
      # needs arrived; what matters is whether the packages resolve below.
      apt-get update -qq >&2 || echo "fetch-linux-guest: apt-get update reported errors (continuing)" >&2
    fi ;;
  *) echo "fetch-linux-guest: unknown architecture $ARCH" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$OUT/.work
mkdir -p "$WORK"
log() { echo "fetch-linux-guest: $*" >&2; }

updated=0
download() { # PKG -> path of the .deb in $WORK
  local f
  f=$(ls "$WORK/${1%%:*}"_*.deb 2>/dev/null | head -n1 || true)
  if [ -z "$f" ]; then
    if ! (cd "$WORK" && apt-get download -q -o APT::Sandbox::User=root "$1" >&2); then
      [ $updated = 1 ] || { apt-get update -qq >&2 || true; updated=1; }
      (cd "$WORK" && apt-get download -q -o APT::Sandbox::User=root "$1" >&2)
    fi
    f=$(ls "$WORK/${1%%:*}"_*.deb | head -n1)
  fi
  echo "$f"
}

if [ ! -s "$OUT/vmlinuz" ]; then
  pkg=${KERNEL_PKG:-}
  if [ -z "$pkg" ]; then
    pkg=$(apt-cache depends "$META" 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}' || true)
    if [ -z "$pkg" ]; then
      apt-get update -qq >&2 || true; updated=1
      pkg=$(apt-cache depends "$META" | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    fi
  fi
  [ -n "$pkg" ] || { log "cannot resolve Debian's kernel package"; exit 1; }
  pkg=${pkg%%:*}
  log "kernel package $pkg"
  deb=$(download "$pkg$SUFFIX")
  kver=${pkg#linux-image-}
  dpkg-deb --fsys-tarfile "$deb" | tar -x -O "./boot/vmlinuz-$kver" > "$OUT/vmlinuz.tmp"
  mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
  echo "$pkg $(dpkg-deb -f "$deb" Version)" >> "$OUT/versions.txt"
  rm -f "$deb"
fi

if [ ! -s "$OUT/vmlinux" ]; then
  # The bzImage payload is one xz stream holding the ELF vmlinux.
  off=$( { grep -abo $'\xfd7zXZ' "$OUT/vmlinuz" || true; } | head -n1 | cut -d: -f1)
  [ -n "$off" ] || { log "no xz payload in vmlinuz"; exit 1; }
  { tail -c +$((off + 1)) "$OUT/vmlinuz" || true; } | xz -dc --single-stream > "$OUT/vmlinux.tmp"
  mv "$OUT/vmlinux.tmp" "$OUT/vmlinux"
fi

if [ ! -x "$OUT/busybox" ]; then
  deb=$(download "busybox-static$SUFFIX")
  mkdir -p "$WORK/bb"
  dpkg-deb -x "$deb" "$WORK/bb"
  cp "$WORK/bb/bin/busybox" "$OUT/busybox"
  chmod 755 "$OUT/busybox"
  echo "busybox-static $(dpkg-deb -f "$deb" Version)" >> "$OUT/versions.txt"
  rm -rf "$WORK/bb" "$deb"
fi

stamp=$(sha256sum "$0" "$OUT/busybox" | sha256sum | cut -c1-16)
if [ ! -s "$OUT/initramfs.cpio.gz" ] || [ "$(cat "$WORK/stamp" 2>/dev/null)" != "$stamp" ]; then
  log "building initramfs.cpio.gz"
  python3 - "$OUT/busybox" "$OUT/initramfs.cpio.gz" <<'PY'
import gzip, subprocess, sys
busybox, out = sys.argv[1], sys.argv[2]
WORK = r'''#!/bin/sh
# Deterministic workloads; every result line starts with W-. BB is the busybox binary.
BB=${BB:-/bin/busybox}
T=${TMPDIR:-/tmp}
$BB seq 1 300000 > $T/ferro.dat
echo "W-SEQ $($BB wc -c < $T/ferro.dat)"
echo "W-SHA256 $($BB sha256sum < $T/ferro.dat | $BB cut -c1-64)"
echo "W-GZIP $($BB gzip -c < $T/ferro.dat | $BB sha256sum | $BB cut -c1-64)"
echo "W-AWK $($BB awk '{ s = (s * 31 + $1 * $1) % 1000003 } END { print s }' $T/ferro.dat)"
echo "W-SORT $($BB sort -r $T/ferro.dat | $BB sha256sum | $BB cut -c1-64)"
i=0
while [ $i -lt 500 ]; do $BB true; i=$((i + 1)); done
echo "W-FORKEXEC $i"
$BB rm -f $T/ferro.dat
'''
INIT = r'''#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
echo FERROVISOR-USERSPACE-OK
for o in $(cat /proc/cmdline); do
  case $o in ferro.run=*) r=${o#ferro.run=}; [ -x /ferro/$r ] && /ferro/$r;; esac
done
echo FERROVISOR-DONE
poweroff -f
'''
entries = []  # (name, mode, data, major, minor)
def d(name): entries.append((name, 0o040755, b"", 0, 0))
for n in ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "proc", "sys", "dev", "tmp", "etc", "ferro"]:
    d(n)
entries.append(("bin/busybox", 0o100755, open(busybox, "rb").read(), 0, 0))
applets = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True).stdout.split()
for a in sorted(set(applets)):
    if a == "bin/busybox":
        continue
    depth = a.count("/")
    entries.append((a, 0o120777, ("../" * depth + "bin/busybox").encode(), 0, 0))
entries.append(("init", 0o100755, INIT.encode(), 0, 0))
entries.append(("ferro/work", 0o100755, WORK.encode(), 0, 0))
open(out.rsplit("/", 1)[0] + "/work.sh", "w").write(WORK)
entries.append(("etc/passwd", 0o100644, b"root:x:0:0:root:/root:/bin/sh\n", 0, 0))
entries.append(("dev/console", 0o020600, b"", 5, 1))
entries.append(("dev/null", 0o020666, b"", 1, 3))
entries.append(("dev/ttyS0", 0o020600, b"", 4, 64))
def hdr(ino, name, mode, size, major, minor):
    nb = name.encode() + b"\0"
    f = [ino, mode, 0, 0, 1, 0, size, 0, 0, major, minor, len(nb), 0]
    h = b"070701" + b"".join(b"%08X" % v for v in f)
    return h + nb + b"\0" * ((4 - (len(h) + len(nb)) % 4) % 4)
buf = bytearray()
for ino, (name, mode, data, ma, mi) in enumerate(entries, 1):
    buf += hdr(ino, name, mode, len(data), ma, mi) + data + b"\0" * ((4 - len(data) % 4) % 4)
buf += hdr(len(entries) + 1, "TRAILER!!!", 0, 0, 0, 0)
with open(out + ".tmp", "wb") as f:
    f.write(gzip.compress(bytes(buf), 9, mtime=0))
import os
os.replace(out + ".tmp", out)
PY
  echo "$stamp" > "$WORK/stamp"
fi
log "ready in $OUT"

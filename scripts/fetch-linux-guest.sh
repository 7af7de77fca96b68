#!/usr/bin/env bash
# fetch-linux-guest.sh OUTDIR [amd64|i386] [disk]
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
# With `disk`, also:
#   OUTDIR/modules/           the disk drivers ata_piix, sd_mod, virtio_pci, virtio_blk and the
#                             modules they depend on (from each .ko's modinfo depends=), from the
#                             same kernel package as vmlinuz, uncompressed, and load-order
#   OUTDIR/initramfs-disk.cpio.gz  the initramfs plus /lib/modules: `ferro.mods=1` loads the
#                             drivers; `ferro.run=disk` loads them, hashes and writes disks (see
#                             DISK below). The plain initramfs carries no modules.
# Only apt-get download, dpkg-deb, xz, gzip and python3 are used. Outputs that exist are kept;
# the initramfs is rebuilt when this script changes.
set -euo pipefail
export LC_ALL=C
OUT=${1:?usage: fetch-linux-guest.sh OUTDIR [amd64|i386]}
ARCH=${2:-amd64}
case ${3:-} in disk) DISK=1 ;; "") DISK=0 ;; *) echo "fetch-linux-guest: unknown variant $3" >&2; exit 2 ;; esac
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

# The kernel package: the one recorded when vmlinuz was fetched (the modules must come from the
# same build as the kernel), else the one linux-image-amd64 (or -686-pae) depends on now.
kernel_pkg() {
  local pkg=${KERNEL_PKG:-}
  if [ -z "$pkg" ] && [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/versions.txt" ]; then
    pkg=$(awk '/^linux-image-[0-9]/{print $1; exit}' "$OUT/versions.txt")
  fi
  if [ -z "$pkg" ]; then
    pkg=$(apt-cache depends "$META" 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}' || true)
    if [ -z "$pkg" ]; then
      apt-get update -qq >&2 || true; updated=1
      pkg=$(apt-cache depends "$META" | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
    fi
  fi
  [ -n "$pkg" ] || { log "cannot resolve Debian's kernel package"; exit 1; }
  echo "${pkg%%:*}"
}

# The disk modules (Debian builds them as modules), extracted with their dependencies into
# OUTDIR/modules in load order (OUTDIR/modules/load-order), for initramfs-disk.cpio.gz.
DISK_MODULES="ata_piix sd_mod virtio_pci virtio_blk"
if [ ! -s "$OUT/vmlinuz" ] || { [ "$DISK" = 1 ] && [ ! -s "$OUT/modules/load-order" ]; }; then
  pkg=$(kernel_pkg)
  log "kernel package $pkg"
  deb=$(download "$pkg$SUFFIX" || true)
  if [ ! -f "$deb" ]; then
    [ -s "$OUT/vmlinuz" ] && [ -z "${KERNEL_PKG:-}" ] || { log "cannot download $pkg"; exit 1; }
    # The archive has moved on from the kernel fetched earlier: start over with the current one.
    log "$pkg is no longer available; fetching the current kernel instead"
    rm -f "$OUT/vmlinuz" "$OUT/vmlinux"
    sed -i '/^linux-image-[0-9]/d' "$OUT/versions.txt"
    pkg=$(kernel_pkg)
    log "kernel package $pkg"
    deb=$(download "$pkg$SUFFIX" || true)
    [ -f "$deb" ] || { log "cannot download $pkg"; exit 1; }
  fi
  kver=${pkg#linux-image-}
  # One pass over the package's data: the kernel image, the list of built-in modules and the
  # module subtrees the disk drivers and their dependencies live in.
  dpkg-deb --fsys-tarfile "$deb" | python3 /dev/fd/3 "$kver" "$OUT" "$DISK_MODULES" "$DISK" 3<<'PY'
import lzma, os, shutil, sys, tarfile
kver, out, wanted, required = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4] == "1"
kdir = f"lib/modules/{kver}/"
subtrees = [kdir + "kernel/" + d for d in
            ("drivers/ata/", "drivers/scsi/", "drivers/virtio/", "drivers/block/", "lib/", "crypto/",
             "block/", "arch/x86/crypto/")]
mods, builtin, image = {}, set(), None
with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as t:
    for m in t:
        name = m.name[2:] if m.name.startswith("./") else m.name
        if not m.isfile():
            continue
        if name == f"boot/vmlinuz-{kver}":
            image = t.extractfile(m).read()
        elif name == kdir + "modules.builtin":
            builtin = {os.path.basename(l.strip()).split(".ko")[0].replace("-", "_")
                       for l in t.extractfile(m).read().decode().splitlines()}
        elif any(name.startswith(s) for s in subtrees) and (name.endswith(".ko") or name.endswith(".ko.xz")):
            data = t.extractfile(m).read()
            if name.endswith(".xz"):
                data = lzma.decompress(data)  # busybox insmod reads plain .ko only
            mods[os.path.basename(name).split(".ko")[0].replace("-", "_")] = (os.path.basename(name).split(".ko")[0], data)
if image is None:
    sys.exit(f"boot/vmlinuz-{kver} is not in the package")
if not os.path.exists(f"{out}/vmlinuz"):
    with open(f"{out}/vmlinuz.tmp", "wb") as f:
        f.write(image)
    os.replace(f"{out}/vmlinuz.tmp", f"{out}/vmlinuz")
def depends(data):
    # The .modinfo section holds NUL-separated key=value strings; "depends=" names the modules
    # this one needs (modules.dep is generated by depmod at install time, not shipped).
    for field in data.split(b"\0"):
        if field.startswith(b"depends="):
            return [d.replace("-", "_") for d in field[8:].decode().split(",") if d]
    return []
order, seen = [], set()
def resolve(m):
    m = m.replace("-", "_")
    if m in seen:
        return
    seen.add(m)
    if m not in mods:
        if m in builtin:
            return
        print(f"fetch-linux-guest: module {m} is neither in the package's "
              f"{' '.join(s[len(kdir):] for s in subtrees)} nor built in", file=sys.stderr)
        sys.exit(1 if required else 0)
    for d in depends(mods[m][1]):
        resolve(d)
    order.append(m)
for m in wanted:
    resolve(m)
tmp = f"{out}/modules.tmp"
shutil.rmtree(tmp, ignore_errors=True)
os.makedirs(tmp)
for m in order:
    with open(f"{tmp}/{mods[m][0]}.ko", "wb") as f:
        f.write(mods[m][1])
with open(f"{tmp}/load-order", "w") as f:
    f.write("".join(f"{mods[m][0]}.ko\n" for m in order))
shutil.rmtree(f"{out}/modules", ignore_errors=True)
os.replace(tmp, f"{out}/modules")
PY
  grep -q "^$pkg " "$OUT/versions.txt" 2>/dev/null || echo "$pkg $(dpkg-deb -f "$deb" Version)" >> "$OUT/versions.txt"
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
disk_args=()
dstamp=
if [ "$DISK" = 1 ]; then
  disk_args=("$OUT/modules" "$OUT/initramfs-disk.cpio.gz")
  dstamp=$(sha256sum "$0" "$OUT/busybox" "$OUT/modules/"* | sha256sum | cut -c1-16)
fi
if [ ! -s "$OUT/initramfs.cpio.gz" ] || [ "$(cat "$WORK/stamp" 2>/dev/null)" != "$stamp" ] ||
   { [ "$DISK" = 1 ] && { [ ! -s "$OUT/initramfs-disk.cpio.gz" ] || [ "$(cat "$WORK/stamp-disk" 2>/dev/null)" != "$dstamp" ]; }; }; then
  log "building initramfs.cpio.gz${disk_args:+ and initramfs-disk.cpio.gz}"
  python3 - "$OUT/busybox" "$OUT/initramfs.cpio.gz" "${disk_args[@]}" <<'PY'
import gzip, os, subprocess, sys
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
# The disk drivers (initramfs-disk.cpio.gz only), loaded in dependency order: by `ferro.mods=1`
# or by the disk workload, never in a plain boot.
MODS = r'''#!/bin/sh
[ -e /tmp/ferro.mods ] && exit 0
: > /tmp/ferro.mods
[ -f /lib/modules/load-order ] || { echo "D-NO-MODULES (boot initramfs-disk.cpio.gz)"; exit 1; }
# Requests for modules that are not here (crypto algorithms, ...) need no helper.
echo /bin/true > /proc/sys/kernel/modprobe
while read -r m; do insmod /lib/modules/$m || echo "D-INSMOD-FAILED $m"; done < /lib/modules/load-order
'''
# `ferro.run=disk`: for each device of `ferro.disks=sda,vda,...` (waited for: the drivers probe
# asynchronously), the sha256 of the whole device; then for each of `ferro.write=vda,...` the
# text of `seq 1 20000` written at byte offset 1 MiB and synced; then each ATA device's transfer
# mode (D-XFER 1.0 MWDMA2) and the kernel's lines about the ATA and virtio disks. D-TIME lines
# give each step's guest (virtual) time in microseconds.
DISK = r'''#!/bin/sh
us() { t=$EPOCHREALTIME; echo ${t%.*}${t#*.}; }
t0=$(us)
/ferro/mods
echo "D-TIME insmod $(($(us) - t0))"
opt() { for o in $(cat /proc/cmdline); do case $o in "ferro.$1="*) echo "${o#*=}" | tr , ' ';; esac; done; }
for d in $(opt disks); do
  t0=$(us)
  n=0
  while [ ! -b /dev/$d ] && [ $n -lt 3000 ]; do usleep 10000; n=$((n + 1)); done
  t1=$(us)
  if [ -b /dev/$d ]; then echo "D-SHA256 $d $(sha256sum < /dev/$d | cut -c1-64)"; else echo "D-MISSING $d"; fi
  echo "D-TIME $d-wait $((t1 - t0)) $d-sha256 $(($(us) - t1))"
done
seq 1 20000 > /tmp/ferro.pat
for d in $(opt write); do
  t0=$(us)
  dd if=/tmp/ferro.pat of=/dev/$d bs=4096 seek=256 conv=fsync 2>/dev/null && sync && echo "D-WROTE $d $(wc -c < /tmp/ferro.pat)"
  echo "D-TIME $d-write $(($(us) - t0))"
done
# The transfer mode libata chose for each ATA device (the probe does not log it).
for f in /sys/class/ata_device/*/xfer_mode; do [ -f $f ] && echo "D-XFER ${f#/sys/class/ata_device/dev} $(cat $f)"; done | sed 's,/xfer_mode,,'
dmesg | grep -E 'ata[0-9]|virtio_blk' | sed 's/^/D-LOG /'
'''
INIT = r'''#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t tmpfs tmpfs /tmp
echo FERROVISOR-USERSPACE-OK
for o in $(cat /proc/cmdline); do
  case $o in ferro.mods=1) /ferro/mods;; esac
done
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
entries.append(("ferro/mods", 0o100755, MODS.encode(), 0, 0))
entries.append(("ferro/disk", 0o100755, DISK.encode(), 0, 0))
# `ferro.run=panic`: a kernel panic (with `panic=-1` on the command line the kernel reboots).
entries.append(("ferro/panic", 0o100755, b"#!/bin/sh\necho c > /proc/sysrq-trigger\n", 0, 0))
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
def cpio_gz(entries, first_ino):
    buf = bytearray()
    for ino, (name, mode, data, ma, mi) in enumerate(entries, first_ino):
        buf += hdr(ino, name, mode, len(data), ma, mi) + data + b"\0" * ((4 - len(data) % 4) % 4)
    buf += hdr(first_ino + len(entries), "TRAILER!!!", 0, 0, 0, 0)
    return gzip.compress(bytes(buf), 9, mtime=0)
def write(path, data):
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)
base = cpio_gz(entries, 1)
write(out, base)
if len(sys.argv) > 3:
    # The disk variant: the same archive followed by a second one holding lib/modules (the
    # kernel unpacks concatenated archives in order).
    mdir = sys.argv[3]
    names = open(mdir + "/load-order").read().split()
    mods = [("lib", 0o040755, b"", 0, 0), ("lib/modules", 0o040755, b"", 0, 0)]
    mods += [("lib/modules/" + n, 0o100644, open(mdir + "/" + n, "rb").read(), 0, 0) for n in names + ["load-order"]]
    write(sys.argv[4], base + cpio_gz(mods, len(entries) + 2))
PY
  echo "$stamp" > "$WORK/stamp"
  [ "$DISK" = 0 ] || echo "$dstamp" > "$WORK/stamp-disk"
fi
log "ready in $OUT"

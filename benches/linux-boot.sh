#!/usr/bin/env bash
# benches/linux-boot.sh [KIT_DIR]
#
# Boots Debian's stock kernel (PVH vmlinux) with the busybox initramfs under Ferrovisor and under
# QEMU's TCG in one run, and prints the boot-to-marker time and each workload's time for both,
# with the ratios. The guest kit comes from scripts/fetch-linux-guest.sh (built if missing).
# QEMU is qemu-system-x86_64 (apt-get install -y qemu-system-x86). Times are wall-clock seconds
# measured on the host from the console output's arrival, so both are measured the same way.
# ENGINE=jit|interp selects Ferrovisor's engine (default: its own default).
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${1:-target/guest-cache/linux}
bash scripts/fetch-linux-guest.sh "$KIT" >&2
cargo build --release -q
FERRO=target/release/ferrovisor
QEMU=${QEMU:-qemu-system-x86_64}
command -v "$QEMU" >/dev/null || { echo "linux-boot: $QEMU not found (apt-get install -y qemu-system-x86)" >&2; exit 1; }
APPEND="console=ttyS0 nokaslr ferro.run=work panic=-1"

# timeline NAME CMD...: runs CMD, stamping every console line with the seconds since the start.
timeline() {
  local name=$1; shift
  local t0; t0=$(date +%s.%N)
  "$@" 2>/dev/null | while IFS= read -r line; do
    printf '%s %s\n' "$(echo "$(date +%s.%N) - $t0" | bc)" "$line"
  done > "target/linux-boot-$name.log"
}

engine_args=()
[ -n "${ENGINE:-}" ] && engine_args=(--engine "$ENGINE")
timeline ferrovisor "$FERRO" run -q -m 512M "${engine_args[@]}" --kernel "$KIT/vmlinux" \
  --initrd "$KIT/initramfs.cpio.gz" --append "$APPEND"
timeline qemu "$QEMU" -accel tcg -smp 1 -m 512 -no-reboot -nographic -nic none -monitor none \
  -serial stdio -display none -kernel "$KIT/vmlinux" -initrd "$KIT/initramfs.cpio.gz" -append "$APPEND"

# stamp LOG PATTERN: the time of the first line matching PATTERN.
stamp() { awk -v p="$2" 'index($0, p) { print $1; exit }' "$1"; }
printf '%-14s %12s %12s %8s\n' phase ferrovisor qemu-tcg ratio
prev_f=0; prev_q=0
for mark in FERROVISOR-USERSPACE-OK W-SEQ W-SHA256 W-GZIP W-AWK W-SORT W-FORKEXEC FERROVISOR-DONE; do
  f=$(stamp target/linux-boot-ferrovisor.log "$mark"); q=$(stamp target/linux-boot-qemu.log "$mark")
  if [ -z "$f" ] || [ -z "$q" ]; then echo "$mark: missing (see target/linux-boot-*.log)"; continue; fi
  df=$(echo "$f - $prev_f" | bc); dq=$(echo "$q - $prev_q" | bc)
  label=$mark; [ "$mark" = FERROVISOR-USERSPACE-OK ] && label=boot
  printf '%-14s %12.2f %12.2f %8.2f\n' "$label" "$df" "$dq" "$(echo "$df / $dq" | bc -l)"
  prev_f=$f; prev_q=$q
done
printf '%-14s %12.2f %12.2f %8.2f\n' total "$prev_f" "$prev_q" "$(echo "$prev_f / $prev_q" | bc -l)"

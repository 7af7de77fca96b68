#!/usr/bin/env bash
# Times the Multiboot benchmark guest (test-roms bench_guest: integer loop, hash, insertion
# sort, recursion; prints a checksum) under ferrovisor's interpreter, ferrovisor's JIT and
# QEMU's TCG, in one run, checks that all three print the checksum computed on the host, and
# prints each time and the ratios.
#
#   benches/guest-bench.sh [SCALE]     (default 10; SCALE multiplies the work)
#
# Needs qemu-system-i386 (apt-get install qemu-system-x86). Each engine runs REPS times
# (default 3, env REPS); the best time counts. QEMU's time includes its start-up; the line
# "qemu (empty)" times QEMU on a guest that exits at once, for reference.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${1:-10}
REPS=${REPS:-3}
command -v qemu-system-i386 >/dev/null || { echo "qemu-system-i386 not found (apt-get install qemu-system-x86)"; exit 1; }
cargo build --release --bin ferrovisor >&2
W=$(mktemp -d /tmp/guest-bench.XXXXXX)
want=$(cargo run -q --release -p test-roms --example bench_guest -- "$W/bench.bin" "$SCALE")
cargo run -q --release -p test-roms --example bench_guest -- "$W/bench0.bin" 1 >/dev/null
FV="$PWD/target/release/ferrovisor"
QEMU=(qemu-system-i386 -accel tcg -m 16 -display none -serial stdio -device isa-debug-exit,iobase=0xf4,iosize=4)

best() { # best wall time (s) of REPS runs of "$@"; checks the checksum in the output
  local b="" t0 t1 out
  for _ in $(seq "$REPS"); do
    t0=$(date +%s.%N)
    out=$("$@" 2>/dev/null || true)
    t1=$(date +%s.%N)
    if [ "$(printf '%s' "$out" | tr -d '\r' | head -n1)" != "$want" ]; then
      echo "wrong output from $*: '$out' (want $want)" >&2
      exit 1
    fi
    local t; t=$(echo "$t1 - $t0" | bc -l)
    if [ -z "$b" ] || [ "$(echo "$t < $b" | bc -l)" = 1 ]; then b=$t; fi
  done
  echo "$b"
}

insns=$( ("$FV" run --engine interp --multiboot "$W/bench.bin" -m 16 2>&1 >/dev/null || true) | sed -n 's/^ferrovisor: \([0-9]*\) guest instructions.*/\1/p')
ti=$(best "$FV" run -q --engine interp --multiboot "$W/bench.bin" -m 16)
tj=$(best "$FV" run -q --engine jit --multiboot "$W/bench.bin" -m 16)
# The JIT without its in-code lookup of the next block (every RET to the dispatcher).
tj0=$(FERRO_JIT_LOOKUP=0 best "$FV" run -q --engine jit --multiboot "$W/bench.bin" -m 16)
tq=$(best "${QEMU[@]}" -kernel "$W/bench.bin")
want0=$want
want=$(cargo run -q --release -p test-roms --example bench_guest -- "$W/bench0.bin" 1)
tq0=$(best "${QEMU[@]}" -kernel "$W/bench0.bin")
want=$want0
printf 'benchmark guest, scale %s: %s guest instructions, checksum %s\n' "$SCALE" "$insns" "$want"
printf '  interp       %8.3f s  %7.1f MIPS\n' "$ti" "$(echo "$insns / $ti / 1000000" | bc -l)"
printf '  jit          %8.3f s  %7.1f MIPS\n' "$tj" "$(echo "$insns / $tj / 1000000" | bc -l)"
printf '  jit, lookup off (FERRO_JIT_LOOKUP=0) %8.3f s  %7.1f MIPS\n' "$tj0" "$(echo "$insns / $tj0 / 1000000" | bc -l)"
printf '  qemu tcg     %8.3f s\n' "$tq"
printf '  qemu (scale 1, start-up included) %.3f s\n' "$tq0"
printf '  jit/interp speed-up  %6.2fx\n' "$(echo "$ti / $tj" | bc -l)"
printf '  jit time / qemu time %6.2f  (lookup off: %.2f)\n' "$(echo "$tj / $tq" | bc -l)" "$(echo "$tj0 / $tq" | bc -l)"
rm -rf "$W"

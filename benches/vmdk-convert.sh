#!/usr/bin/env bash
# Converts a 1 GiB raw image with mixed content (zeros, random, text; some zeros as file holes)
# to streamOptimized and to monolithicSparse and back, with ferrovisor and with qemu-img in the
# same run, and prints each time and the ratio ferrovisor/qemu-img (lower is better).
#
#   benches/vmdk-convert.sh [WORKDIR]      (default: a fresh directory under /tmp)
#
# Needs qemu-img (qemu-utils), python3 and bc. Builds ferrovisor in release mode first.
# Each conversion runs REPS times (default 3, env REPS); the best time counts.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v qemu-img >/dev/null || { echo "qemu-img not found (apt-get install qemu-utils)"; exit 1; }
cargo build --release --bin ferrovisor >&2
FV="$PWD/target/release/ferrovisor"
W=${1:-$(mktemp -d /tmp/vmdk-bench.XXXXXX)}
mkdir -p "$W"
REPS=${REPS:-3}
SRC="$W/mixed.raw"

if [ ! -f "$SRC" ]; then
  echo "generating $SRC (1 GiB: 1/4 random, 1/4 text, 1/4 written zeros, 1/4 holes, in 8 MiB stripes)" >&2
  python3 - "$SRC" <<'PY'
import os, random, sys
path = sys.argv[1]
MIB = 1 << 20
stripe = 8 * MIB
rng = random.Random(42)
words = ("the of and to in is that for it as was with be by on not he this are or his from at which "
         "but have an they you were her she there been one all we their has would when if so no disk "
         "grain table sector extent descriptor parent child snapshot vmdk ferrovisor qemu").split()
def text(n):
    out = bytearray()
    while len(out) < n:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(5, 15))).capitalize() + ".\n"
        out += line.encode()
    return bytes(out[:n])
with open(path, "wb") as f:
    f.truncate(1 << 30)
    for i in range((1 << 30) // stripe):
        kind = i % 4
        f.seek(i * stripe)
        if kind == 0:
            f.write(os.urandom(stripe))
        elif kind == 1:
            para = text(MIB)
            for _ in range(stripe // MIB):
                f.write(para[rng.randint(0, 1000):] + para[:0])
        elif kind == 2:
            f.write(b"\0" * stripe)
        # kind 3: hole
PY
  truncate -s 1G "$SRC"
fi

best() { # best wall time in seconds of "$@" over REPS runs; removes outputs between runs
  local out=$1; shift
  local b=
  for _ in $(seq "$REPS"); do
    rm -f "$out" "${out%.vmdk}"-*.vmdk
    sync
    local t0 t1
    t0=$(date +%s.%N)
    "$@" >/dev/null
    t1=$(date +%s.%N)
    local t
    t=$(echo "$t1 - $t0" | bc -l)
    if [ -z "$b" ] || [ "$(echo "$t < $b" | bc -l)" = 1 ]; then b=$t; fi
  done
  echo "$b"
}

printf "%-34s %10s %10s %8s\n" "conversion" "ferrovisor" "qemu-img" "ratio"
row() { # name ferro_time qemu_time
  printf "%-34s %9.2fs %9.2fs %7.2fx\n" "$1" "$2" "$3" "$(echo "$2 / $3" | bc -l)"
}

for sf in streamOptimized monolithicSparse; do
  tf=$(best "$W/f-$sf.vmdk" "$FV" disk convert -q -O vmdk --subformat "$sf" "$SRC" "$W/f-$sf.vmdk")
  tq=$(best "$W/q-$sf.vmdk" qemu-img convert -f raw -O vmdk -o subformat="$sf" "$SRC" "$W/q-$sf.vmdk")
  row "raw -> $sf" "$tf" "$tq"
  # Back to raw, each tool from the other's image is not fair; each from its own.
  tf=$(best "$W/f-$sf.raw" "$FV" disk convert -q -O raw "$W/f-$sf.vmdk" "$W/f-$sf.raw")
  tq=$(best "$W/q-$sf.raw" qemu-img convert -f vmdk -O raw "$W/q-$sf.vmdk" "$W/q-$sf.raw")
  row "$sf -> raw" "$tf" "$tq"
  # Cross-checks: every output is identical to the source and passes qemu-img check.
  qemu-img check -q "$W/f-$sf.vmdk"
  qemu-img compare -q -f raw -F vmdk "$SRC" "$W/f-$sf.vmdk"
  qemu-img compare -q -f raw -F raw "$SRC" "$W/f-$sf.raw"
  printf "  sizes: ferrovisor %s, qemu-img %s\n" "$(du -h "$W/f-$sf.vmdk" | cut -f1)" "$(du -h "$W/q-$sf.vmdk" | cut -f1)"
done
echo "outputs verified with qemu-img check/compare; work directory $W"

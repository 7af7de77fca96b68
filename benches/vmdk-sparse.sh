#!/usr/bin/env bash
# Issue 11 item 5: cost of `disk compare` and `disk convert` on (nearly) empty images must grow
# with the allocated data, not the virtual size. Times ferrovisor and qemu-img on:
#   - 64 GiB empty monolithicFlat vs 64 GiB empty monolithicFlat (compare)
#   - 2 TiB empty twoGbMaxExtentFlat vs 2 TiB empty monolithicSparse (compare)
#   - 2.2 GiB twoGbMaxExtentFlat with 1 MiB of data -> raw (convert)
#
#   benches/vmdk-sparse.sh [WORKDIR] [FERROVISOR]
#
# Needs qemu-img and qemu-io (qemu-utils). Builds ferrovisor in release mode unless FERROVISOR is given. Each command runs
# with a 120 s timeout (a timeout prints "timeout").
set -euo pipefail
cd "$(dirname "$0")/.."
command -v qemu-img >/dev/null || { echo "qemu-img not found (apt-get install qemu-utils)"; exit 1; }
W=${1:-$(mktemp -d /tmp/vmdk-sparse.XXXXXX)}
FV=${2:-}
if [ -z "$FV" ]; then
  cargo build --release --bin ferrovisor >&2
  FV="$PWD/target/release/ferrovisor"
fi
mkdir -p "$W"
cd "$W"
rm -rf ./*
t() { # label cmd...
  local s e rc
  s=$(date +%s.%N)
  set +e
  timeout 120 "${@:2}" >/dev/null 2>&1
  rc=$?
  set -e
  e=$(date +%s.%N)
  if [ $rc -eq 124 ]; then printf '%-44s timeout (>120 s)\n' "$1"; else printf '%-44s %6.2f s (exit %d)\n' "$1" "$(echo "$e - $s" | bc)" "$rc"; fi
}
qemu-img create -q -f vmdk -o subformat=monolithicFlat a64.vmdk 64G
qemu-img create -q -f vmdk -o subformat=monolithicFlat b64.vmdk 64G
qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentFlat a2t.vmdk 2T
qemu-img create -q -f vmdk -o subformat=monolithicSparse b2t.vmdk 2040G
qemu-img create -q -f vmdk -o subformat=twoGbMaxExtentFlat c22.vmdk 2252M
qemu-io -f vmdk -c 'write -P 0x5a 1G 1M' c22.vmdk >/dev/null
t "ferrovisor compare 64G flat empty" "$FV" disk compare -q a64.vmdk b64.vmdk
t "qemu-img   compare 64G flat empty" qemu-img compare a64.vmdk b64.vmdk
t "ferrovisor compare 2T flat vs 2040G sparse" "$FV" disk compare -q a2t.vmdk b2t.vmdk
t "qemu-img   compare 2T flat vs 2040G sparse" qemu-img compare a2t.vmdk b2t.vmdk
t "ferrovisor convert 2.2G twoGbMaxExtentFlat" "$FV" disk convert -q -O raw c22.vmdk c22.fv.raw
t "qemu-img   convert 2.2G twoGbMaxExtentFlat" qemu-img convert -O raw c22.vmdk c22.q.raw
cmp c22.fv.raw c22.q.raw && echo "convert outputs identical"

#!/usr/bin/env bash
# fetch-seabios.sh OUTDIR
# Downloads Debian's seabios package and extracts bios.bin and bios-256k.bin into OUTDIR.
# Uses only apt-get download (with one apt-get update if the package is not found) and dpkg-deb.
# Idempotent: does nothing when OUTDIR/bios.bin exists.
set -euo pipefail
out=${1:?usage: fetch-seabios.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
[ -s "$out/bios.bin" ] && exit 0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
dl() { apt-get download -q -o APT::Sandbox::User=root seabios >&2; }
if ! dl 2>/dev/null; then
  echo "fetch-seabios: apt-get update" >&2
  apt-get update -qq >&2 || true
  dl
fi
deb=$(ls seabios_*.deb | head -n1)
dpkg-deb -x "$deb" x
cp x/usr/share/seabios/bios.bin x/usr/share/seabios/bios-256k.bin "$out/"
echo "${deb}" > "$out/VERSION"
echo "fetch-seabios: $(cat "$out/VERSION") -> $out" >&2

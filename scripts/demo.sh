#!/usr/bin/env bash
# Snapshot a real disk image into the default store and rebuild it, byte for byte.
# Builds blocksnap, makes a 1 GiB sparse ext4 image from this machine's /usr/share/doc (or takes
# the image you pass), snapshots it, restores it and compares.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"
cargo build --release -q -p blocksnap-cli
bs=target/release/blocksnap
work=$(mktemp -d "${TMPDIR:-/tmp}/blocksnap-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
image=${1:-}
if [ -z "$image" ]; then
  image=$work/disk.img
  truncate -s 1G "$image"
  mkfs.ext4 -q -F -d /usr/share/doc "$image"
fi
run() { printf '+ %s\n' "$*" >&2; "$@"; }
# Each run's image is another disk: it gets a volume of its own (a volume is one disk's chain).
volume=demo-${work##*.}
run $bs snapshot create "$image" --volume "$volume"
id=$($bs --json snapshot list --volume "$volume" | sed -n 's/.*"id": "\(snap-[0-9a-f]*\)".*/\1/p' | tail -n 1)
run $bs snapshot restore "$id" "$work/restored.img"
run cmp "$image" "$work/restored.img"
echo "restored $id byte-identical ($(du -h --apparent-size "$work/restored.img" | cut -f1) apparent, $(du -h "$work/restored.img" | cut -f1) allocated)"

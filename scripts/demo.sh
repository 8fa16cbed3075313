#!/usr/bin/env bash
# blocksnap in two minutes: snapshot a real disk image, change it, snapshot it again (only the
# change is stored), see the changed blocks, rebuild it and compare it byte for byte.
#
#   scripts/demo.sh [IMAGE]
#
# Builds blocksnap (release), then works in a temporary directory: its own store, its own
# identity (the secret key) and cache, and, without IMAGE, a 1 GiB sparse ext4 image made from
# this machine's /usr/share/doc. Your default store and identities are not touched. IMAGE, if
# given, is only read (it is snapshotted and restored, never changed). Everything the demo
# wrote is removed at the end; BLOCKSNAP_DEMO_KEEP=1 keeps it and says where it is.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/sbin:/sbin"

image=${1:-}
if [ -n "$image" ] && [ ! -r "$image" ]; then
  echo "demo: cannot read $image" >&2
  exit 2
fi
if [ -z "$image" ] && ! command -v mkfs.ext4 >/dev/null; then
  echo "demo: mkfs.ext4 is needed to make a disk image (apt-get install e2fsprogs), or give an IMAGE" >&2
  exit 2
fi

say() { printf '\n== %s\n' "$*" >&2; }
run() { printf '+ %s\n' "$*" >&2; "$@"; }
# Bytes for people, as blocksnap writes them: 512 B, 48.8 MiB.
human() {
  awk -v n="$1" 'BEGIN { split("B KiB MiB GiB TiB", u, " "); i = 1
    while (n >= 1024 && i < 5) { n /= 1024; i++ }
    if (i == 1) printf "%d B\n", n; else printf "%.1f %s\n", n, u[i] }'
}
# A number field of the one JSON document in file $1.
field() { sed -n "s/^  \"$2\": \([0-9.]*\),\{0,1\}\$/\1/p" "$1" | head -n 1; }
# Its `seconds`, to two places.
secs() { awk -v s="$(field "$1" seconds)" 'BEGIN { printf "%.2f\n", s }'; }
text_field() { sed -n "s/^  \"$2\": \"\(.*\)\",\{0,1\}\$/\1/p" "$1" | head -n 1; }

say "building blocksnap (release; the first build takes a few minutes)"
run cargo build --release -p blocksnap-cli
bs=$PWD/target/release/blocksnap

work=$(mktemp -d "${TMPDIR:-/tmp}/blocksnap-demo.XXXXXX")
finish() {
  if [ "${BLOCKSNAP_DEMO_KEEP:-}" = 1 ]; then
    echo
    echo "kept the demo's store, identity and images in $work (remove them with: rm -rf '$work')"
  else
    rm -rf "$work"
    echo
    echo "removed the demo's store, identity and images ($work)"
  fi
}
trap finish EXIT
# The demo's own store, identity and index cache, inside $work.
export BLOCKSNAP_STORE=$work/store
export XDG_CONFIG_HOME=$work/config XDG_CACHE_HOME=$work/cache XDG_DATA_HOME=$work/data
unset BLOCKSNAP_ACCOUNT BLOCKSNAP_IDENTITY

say "a new store in $work/store (its identity in $work/config)"
run "$bs" init --account demo

ours=
if [ -z "$image" ]; then
  image=$work/disk.img
  say "a 1 GiB sparse ext4 disk image holding /usr/share/doc"
  truncate -s 1G "$image"
  run mkfs.ext4 -q -F -d /usr/share/doc "$image"
  ours=1
fi
size=$(stat -c %s "$image")

say "snapshot the disk"
run "$bs" --json snapshot create "$image" --volume disk >"$work/first.json"
first=$(text_field "$work/first.json" id)
echo "$first: read $(human "$(field "$work/first.json" bytes_read)"), stored $(human "$(field "$work/first.json" bytes_stored)") in $(secs "$work/first.json") s"

second=
if [ -n "$ours" ] && command -v debugfs >/dev/null; then
  say "change the disk: write a 4 MiB file into the filesystem (debugfs), then snapshot it again"
  head -c 4194304 /dev/urandom >"$work/new.bin"
  run debugfs -w -R "write $work/new.bin /new.bin" "$image" >/dev/null
  run "$bs" --json snapshot create "$image" --volume disk >"$work/second.json"
  second=$(text_field "$work/second.json" id)
  echo "$second: read $(human "$(field "$work/second.json" bytes_read)"), stored $(human "$(field "$work/second.json" bytes_stored)") (only what changed) in $(secs "$work/second.json") s"
  say "what changed between the two snapshots, in 4 KiB blocks"
  run "$bs" snapshot diff "$first" "$second"
fi

last=${second:-$first}
say "rebuild the disk from the store and compare it with the original"
run "$bs" --json snapshot restore "$last" "$work/restored.img" >"$work/restore.json"
run cmp "$image" "$work/restored.img"
identical=byte-identical

say "figures"
printf '%-22s %s, of which %s allocated\n' "disk" "$(human "$size")" "$(human "$(du -B1 "$image" | cut -f1)")"
printf '%-22s read %s, stored %s, in %s s\n' "first snapshot" \
  "$(human "$(field "$work/first.json" bytes_read)")" \
  "$(human "$(field "$work/first.json" bytes_stored)")" "$(secs "$work/first.json")"
if [ -n "$second" ]; then
  printf '%-22s read %s, stored %s, in %s s\n' "snapshot after change" \
    "$(human "$(field "$work/second.json" bytes_read)")" \
    "$(human "$(field "$work/second.json" bytes_stored)")" "$(secs "$work/second.json")"
fi
printf '%-22s %s\n' "store on disk" "$(human "$(du -sb "$work/store" | cut -f1)")"
printf '%-22s wrote %s in %s s: %s to the disk (cmp)\n' "restore" \
  "$(human "$(field "$work/restore.json" bytes_written)")" "$(secs "$work/restore.json")" "$identical"

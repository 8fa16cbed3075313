#!/usr/bin/env bash
# `serve nbd` throughput against `snapshot restore`, on the same snapshot, in the same run.
#
# Usage: benches/nbd.sh [WORKDIR]
#   BLOCKSNAP=path  the blocksnap binary (default: target/release/blocksnap of this
#                   repository, else blocksnap on PATH)
#   ROUNDS=N        timed rounds (default 3), restore and NBD in turn within a round; the
#                   table gives the median wall time of each, and every round's ratio
#   KEEP=1          keep the work directory
#   DROP_CACHES=1   write back and drop the page cache first (root): a cache full of other
#                   files makes qemu-img's page-cache writes reclaim as they go (measured: 0.7 s
#                   of its system time in a 1 s convert, against 0.2 s after a drop)
#
# Builds disk.img: a 1 GiB sparse ext4 image (mkfs.ext4 -d) holding ~300-400 MB of this
# machine's files (/usr/lib/python3, /usr/share/doc, /usr/bin, ... as in benches/compare.sh),
# snapshots it into a new encrypted store (defaults), restores it once to warm the page cache,
# then times, each round:
#   restore: blocksnap snapshot restore SNAP out-restore.img && sync
#   nbd:     qemu-img convert -f raw -O raw nbd://127.0.0.1:PORT/SNAP out-nbd.raw, then sync
#            (timed twice: when qemu-img returns, its output in the page cache, and after the
#            sync; restore fsyncs its output itself, overlapped with decoding)
#   nbd -t none -W: the same convert writing with O_DIRECT and out of order, then sync: the
#            durable copy made as restore makes it, written while it is read
#   nbd null: the same convert into qemu's null-co driver: what the server alone delivers,
#            with no output file written
# against one `blocksnap serve nbd SNAP --listen 127.0.0.1:0` started per round. Both outputs
# are compared with disk.img by cmp. Throughput is the image's data bytes (what both read and
# write: holes are skipped by both) per wall second. Prints a Markdown table on stdout.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
KEEP=${KEEP:-0}
ROUNDS=${ROUNDS:-3}
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "nbd.sh: ROUNDS must be a positive number" >&2; exit 2; }
log() { echo "== $*" >&2; }
die() { echo "nbd.sh: $*" >&2; exit 1; }

export PATH="$PATH:/usr/sbin:/sbin"
for tool in mkfs.ext4 qemu-img python3; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install e2fsprogs qemu-utils python3)"
done
BLOCKSNAP=${BLOCKSNAP:-}
if [ -z "$BLOCKSNAP" ]; then
    if [ -x "$repo/target/release/blocksnap" ]; then BLOCKSNAP=$repo/target/release/blocksnap
    else BLOCKSNAP=$(command -v blocksnap) || die "no blocksnap binary: cargo build --release"; fi
fi

work=${1:-$(mktemp -d /var/tmp/blocksnap-nbd-bench.XXXXXX)}
mkdir -p "$work"
server=
cleanup() {
    if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
    if [ "$KEEP" != 1 ]; then rm -rf "$work"; else echo "kept $work" >&2; fi
}
trap cleanup EXIT
cd "$work"
export LC_ALL=C XDG_CONFIG_HOME=$work/config XDG_CACHE_HOME=$work/cache XDG_DATA_HOME=$work/data
rm -rf src store config cache data ./*.img ./*.raw ./*.log
if [ "${DROP_CACHES:-0}" = 1 ]; then
    sync
    echo 3 >/proc/sys/vm/drop_caches || die "DROP_CACHES=1 needs root"
fi
bs() { "$BLOCKSNAP" --store "$work/store" --quiet "$@"; }

# ------------------------------------------------------------------ the image
candidates=(/usr/lib/python3.11 /usr/share/man /usr/share/doc /usr/lib/gcc /usr/bin
    /usr/share/locale /usr/share/vim /usr/share/perl /usr/lib/git-core /usr/share/i18n
    /usr/share/icons /usr/lib/python3 /usr/sbin /usr/libexec /etc)
total=0
mkdir src
for d in "${candidates[@]}"; do
    [ -d "$d" ] && [ -r "$d" ] || continue
    mb=$(du -sm "$d" 2>/dev/null | cut -f1) || continue
    [ $((total + mb)) -le 400 ] || continue
    mkdir -p "$(dirname "src$d")"
    cp -a "$d" "src$d" 2>/dev/null || true
    total=$((total + mb))
    [ "$total" -lt 320 ] || break
done
[ "$total" -ge 200 ] || die "found only $total MB of files to copy"
truncate -s 1G disk.img
mkfs.ext4 -q -F -d src disk.img
rm -rf src
data_bytes=$(($(stat -c %b disk.img) * 512))
log "disk.img: 1 GiB, $data_bytes bytes allocated"

bs init >/dev/null
snap=$(bs --json snapshot create disk.img --volume disk | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
log "snapshot $snap"
bs snapshot restore "$snap" warm.img >/dev/null   # warm the page cache for both
rm -f warm.img

seconds() { python3 -c 'import time; print(time.monotonic())'; }
results=()
for round in $(seq "$ROUNDS"); do
    rm -f out-restore.img out-nbd.raw
    t0=$(seconds)
    bs snapshot restore "$snap" out-restore.img >/dev/null && sync
    t1=$(seconds)
    cmp disk.img out-restore.img || die "the restore differs from disk.img"

    rm -f serve.json
    "$BLOCKSNAP" --store "$work/store" --json serve nbd "$snap" --listen 127.0.0.1:0 \
        >serve.json 2>"serve-$round.log" &
    server=$!
    for _ in $(seq 100); do
        python3 -c 'import json,sys; json.load(open("serve.json"))' 2>/dev/null && break
        sleep 0.1
    done
    addr=$(python3 -c 'import json; print(json.load(open("serve.json"))["listen"])')
    t2=$(seconds)
    qemu-img convert -f raw -O raw "nbd://$addr/$snap" out-nbd.raw
    t3=$(seconds)
    sync
    t4=$(seconds)
    cmp disk.img out-nbd.raw || die "the NBD copy differs from disk.img"
    # Durable as it goes, as restore is: the output written with O_DIRECT (-t none), several
    # requests in flight and out of order (-W), then sync.
    rm -f out-nbd.raw
    t5=$(seconds)
    qemu-img convert -f raw -O raw -t none -W "nbd://$addr/$snap" out-nbd.raw
    sync
    t6=$(seconds)
    size=$(stat -c %s disk.img)
    t7=$(seconds)
    qemu-img convert -f raw -n "nbd://$addr/$snap" --target-image-opts "driver=null-co,size=$size"
    t8=$(seconds)
    kill "$server"; wait "$server" 2>/dev/null || true; server=
    cmp disk.img out-nbd.raw || die "the direct NBD copy differs from disk.img"
    results+=("$(python3 -c "print(f'{$t1-$t0:.3f} {$t3-$t2:.3f} {$t4-$t2:.3f} {$t6-$t5:.3f} {$t8-$t7:.3f}')")")
    log "round $round: restore, nbd, nbd+sync, nbd -t none -W +sync, nbd null (s): ${results[-1]}"
done

printf '%s\n' "${results[@]}" | python3 -c '
import statistics, sys
data = int(sys.argv[1])
rounds = [tuple(map(float, l.split())) for l in sys.stdin if l.strip()]
r, n, d, o, z0 = (statistics.median(col) for col in zip(*rounds))
mb = data / 1e6
print("| | median wall s | MB/s of data | of restore |")
print("|---|---:|---:|---:|")
print(f"| `snapshot restore` (synced: it fsyncs) | {r:.2f} | {mb / r:.0f} | 100% |")
print(f"| `qemu-img convert nbd://` (returned) | {n:.2f} | {mb / n:.0f} | {r / n:.0%} |")
print(f"| `qemu-img convert nbd://` then `sync` | {d:.2f} | {mb / d:.0f} | {r / d:.0%} |")
print(f"| `qemu-img convert -t none -W nbd://` then `sync` | {o:.2f} | {mb / o:.0f} | {r / o:.0%} |")
print(f"| `qemu-img convert nbd://` into `null-co` (the server alone) | {z0:.2f} | {mb / z0:.0f} | {r / z0:.0%} |")
print()
print("rounds (returned / synced / direct / null): "
      + ", ".join(f"{x / y:.0%}/{x / z:.0%}/{x / w:.0%}/{x / v:.0%}" for x, y, z, w, v in rounds))
' "$data_bytes"

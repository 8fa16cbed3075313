#!/usr/bin/env bash
# A large sparse disk holding little data: snapshot and restore time against the data alone.
#
# Usage: benches/sparse.sh [WORKDIR]
#   BLOCKSNAP=path  the blocksnap binary (default: target/release/blocksnap, else on PATH)
#   SIZE=64G        the disk's apparent size (truncate's syntax; default 64G)
#   DATA_MB=16      megabytes of random data in it, in 1 MiB pieces spread evenly (default 16)
#   ROUNDS=N        timed rounds (default 3), medians reported
#   KEEP=1          keep the work directory
#
# Each round: a fresh store, `snapshot create` of the sparse disk, then `snapshot restore` of it
# to a new file, each timed until `sync` returns (page cache dropped before each when root),
# the restore compared with the disk where either holds data
# (SEEK_DATA; the rest reads as zeros in both). For scale, the same DATA_MB as a dense file of its
# own is snapshotted and restored too: the sparse disk should cost about what its data costs.
# Prints a Markdown table on stdout.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
SIZE=${SIZE:-64G}
DATA_MB=${DATA_MB:-16}
ROUNDS=${ROUNDS:-3}
KEEP=${KEEP:-0}
die() { echo "sparse.sh: $*" >&2; exit 1; }
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive number"
[[ "$DATA_MB" =~ ^[1-9][0-9]*$ ]] || die "DATA_MB must be a positive number"
if [ -z "${BLOCKSNAP:-}" ]; then
    if [ -x "$repo/target/release/blocksnap" ]; then BLOCKSNAP=$repo/target/release/blocksnap
    else BLOCKSNAP=$(command -v blocksnap) || die "no blocksnap binary: cargo build --release -p blocksnap-cli"; fi
fi
[ -x /usr/bin/time ] || die "/usr/bin/time is missing (apt-get install time)"
work=${1:-$(mktemp -d "${TMPDIR:-/var/tmp}/blocksnap-sparse.XXXXXX")}
mkdir -p "$work"
cleanup() { if [ "$KEEP" != 1 ]; then rm -rf "$work"; else echo "kept $work" >&2; fi; }
trap cleanup EXIT
cd "$work"
rm -rf store dense-store config cache ./*.img logs
mkdir logs
export XDG_CONFIG_HOME=$work/config XDG_CACHE_HOME=$work/cache

truncate -s "$SIZE" sparse.img
size=$(stat -c %s sparse.img)
python3 - "$size" "$DATA_MB" <<'EOF'
import os, sys
size, n = int(sys.argv[1]), int(sys.argv[2])
step = (size // n) & ~((1 << 20) - 1)
if step < (1 << 20):
    sys.exit("sparse.sh: DATA_MB does not fit in SIZE")
with open("sparse.img", "r+b") as sparse, open("dense.img", "wb") as dense:
    for i in range(n):
        piece = os.urandom(1 << 20)
        sparse.seek(i * step)
        sparse.write(piece)
        dense.write(piece)
EOF
echo "== sparse.img: $SIZE apparent, $(du -B1 sparse.img | cut -f1) bytes allocated; dense.img: $DATA_MB MiB" >&2

drop() { sync; (echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null || true; }
timed() { # NAME CMD...: wall seconds until sync, into logs/NAME.time
    local name=$1; shift
    /usr/bin/time -f '%e' -o "logs/$name.time" sh -c '"$@" >/dev/null && sync' sh "$@" \
        || die "$name failed"
}
# same A B: equal sizes, and equal bytes in every data range of either (found with SEEK_DATA and
# SEEK_HOLE: cmp would read a 1 TiB disk's zeros); what lies outside them reads as zeros in both.
same() {
    python3 - "$1" "$2" <<'PY'
import os, sys
def ranges(f):
    out, pos, end = [], 0, os.fstat(f).st_size
    while pos < end:
        try:
            start = os.lseek(f, pos, os.SEEK_DATA)
        except OSError:
            break
        stop = os.lseek(f, start, os.SEEK_HOLE)
        out.append((start, stop))
        pos = stop
    return out
a, b = (os.open(p, os.O_RDONLY) for p in sys.argv[1:3])
if os.fstat(a).st_size != os.fstat(b).st_size:
    sys.exit(1)
for start, stop in ranges(a) + ranges(b):
    while start < stop:
        n = min(stop - start, 8 << 20)
        if os.pread(a, n, start) != os.pread(b, n, start):
            sys.exit(1)
        start += n
PY
}
results=()
for round in $(seq "$ROUNDS"); do
    line=""
    for disk in sparse dense; do
        rm -rf "$disk-store" "restored-$disk.img"
        "$BLOCKSNAP" --store "$work/$disk-store" --quiet init >/dev/null
        drop
        timed "$disk-snap-$round" "$BLOCKSNAP" --store "$work/$disk-store" --quiet --json \
            snapshot create "$disk.img" --volume v
        id=$("$BLOCKSNAP" --store "$work/$disk-store" --json snapshot list \
            | python3 -c 'import json,sys; d=json.load(sys.stdin); d=d.get("snapshots", d) if isinstance(d, dict) else d; print(d[-1]["id"])')
        drop
        timed "$disk-restore-$round" "$BLOCKSNAP" --store "$work/$disk-store" --quiet \
            snapshot restore "$id" "restored-$disk.img"
        same "$disk.img" "restored-$disk.img" || die "the $disk restore differs"
        line+="$disk-snap=$(cat "logs/$disk-snap-$round.time") $disk-restore=$(cat "logs/$disk-restore-$round.time") "
        rm -f "restored-$disk.img"
    done
    results+=("$line")
    echo "== round $round: $line" >&2
done
printf '%s\n' "${results[@]}" | python3 -c '
import statistics, sys
rows = [dict(kv.split("=") for kv in l.split()) for l in sys.stdin if l.strip()]
med = {k: statistics.median(float(r[k]) for r in rows) for k in rows[0]}
size, data = sys.argv[1], sys.argv[2]
print(f"| {len(rows)} rounds, medians | snapshot s | restore s |")
print("|---|---:|---:|")
s, r, ds, dr = (med[k] for k in ("sparse-snap", "sparse-restore", "dense-snap", "dense-restore"))
print(f"| {size} sparse disk holding {data} MiB | {s:.2f} | {r:.2f} |")
print(f"| the same {data} MiB as a file of its own | {ds:.2f} | {dr:.2f} |")
' "$SIZE" "$DATA_MB"

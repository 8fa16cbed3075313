#!/usr/bin/env bash
# The dedup index as the store grows to ten million chunks: what the index costs (lookups and
# inserts per second, size on disk, open time, peak RSS at each step), and what a snapshot pays
# for it (the same data snapshotted into a store whose index holds ten million entries and into
# an empty one).
#
# Usage: benches/index-scale.sh [WORKDIR]
#   BLOCKSNAP=path    the blocksnap binary (default: target/release/blocksnap, else on PATH)
#   INDEX_SCALE=path  the index-scale binary (default: target/release/index-scale)
#   STEPS=0,1M,5M,10M the index sizes of part 1 (default 0,1M,5M,10M); STEPS=skip skips part 1
#   ENTRIES=10M       the index size of part 2's full store (default the last step, or 10M)
#   INDEX_FROM=dir    part 2's full index is a copy of this index directory (one that
#                     `index-scale --dir dir` filled) instead of a fill of ENTRIES
#   DATA_MB=2048      megabytes of random data each snapshot of part 2 stores (default 2048)
#   ROUNDS=3          rounds of part 2 (default 3), medians reported
#   DROP_CACHES=1     sync and drop the page cache before each timed snapshot (default 1 when
#                     root): the index is read from disk, as by the day's first command
#   KEEP=1            keep the work directory
#
# Part 1 is `index-scale` (benches/index_scale.rs): synthetic entries shaped like the store's.
# Part 2: two stores, "empty" (re-created each round) and "full" (its index cache filled with
# ENTRIES synthetic entries by `index-scale fill`, which point at packs that do not exist: no
# chunk of random data is among them, so every lookup misses, as for new data, and then the
# chunk is inserted). Each round snapshots a new random file into both (which one first
# alternates), then the same file again (every chunk a lookup that hits), timing each command
# and its peak RSS (GNU time). The last full-store snapshot is restored and compared byte for
# byte. Prints Markdown tables on stdout.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
STEPS=${STEPS:-0,1M,5M,10M}
if [ "$STEPS" = skip ]; then ENTRIES=${ENTRIES:-10M}; else ENTRIES=${ENTRIES:-${STEPS##*,}}; fi
INDEX_FROM=${INDEX_FROM:-}
DATA_MB=${DATA_MB:-2048}
ROUNDS=${ROUNDS:-3}
KEEP=${KEEP:-0}
if [ "$(id -u)" = 0 ]; then DROP_CACHES=${DROP_CACHES:-1}; else DROP_CACHES=${DROP_CACHES:-0}; fi
die() { echo "index-scale.sh: $*" >&2; exit 1; }
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive number"
[[ "$DATA_MB" =~ ^[1-9][0-9]*$ ]] || die "DATA_MB must be a positive number"
if [ -z "${BLOCKSNAP:-}" ]; then
    if [ -x "$repo/target/release/blocksnap" ]; then BLOCKSNAP=$repo/target/release/blocksnap
    else BLOCKSNAP=$(command -v blocksnap) || die "no blocksnap binary: cargo build --release -p blocksnap-cli"; fi
fi
INDEX_SCALE=${INDEX_SCALE:-$repo/target/release/index-scale}
[ -x "$INDEX_SCALE" ] || die "no index-scale binary: cargo build --release -p blocksnap-benches --bin index-scale"
[ -x /usr/bin/time ] || die "/usr/bin/time is missing (apt-get install time)"
work=${1:-$(mktemp -d "${TMPDIR:-/var/tmp}/blocksnap-index-scale.XXXXXX")}
mkdir -p "$work"
cleanup() { if [ "$KEEP" != 1 ]; then rm -rf "$work"; else echo "kept $work" >&2; fi; }
trap cleanup EXIT
cd "$work"
rm -rf part1 empty full logs ./*.img
mkdir logs

if [ "$STEPS" != skip ]; then
    echo "## The index alone ($(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores)"
    echo
    echo '```'
    "$INDEX_SCALE" --dir "$work/part1" --steps "$STEPS"
    echo '```'
    rm -rf part1
fi

drop() { sync; if [ "$DROP_CACHES" = 1 ]; then echo 3 >/proc/sys/vm/drop_caches; fi; }
# store NAME: XDG dirs of its own, so each store has its own index cache.
store_env() { export XDG_CONFIG_HOME=$work/$1/config XDG_CACHE_HOME=$work/$1/cache; }
new_store() { # NAME
    rm -rf "${work:?}/$1"
    mkdir -p "$work/$1"
    store_env "$1"
    "$BLOCKSNAP" --store "$work/$1/store" --quiet init >/dev/null
    # A first tiny snapshot creates the index cache.
    head -c 1048576 /dev/urandom >"$work/$1/seed.img"
    "$BLOCKSNAP" --store "$work/$1/store" --quiet snapshot create "$work/$1/seed.img" >/dev/null
}
index_dir() { ls -d "$work/$1"/cache/blocksnap/*/index; }
timed() { # STORE LABEL FILE: snapshot FILE into STORE, time and peak RSS into logs/LABEL
    store_env "$1"
    drop
    /usr/bin/time -f '%e %M' -o "logs/$2.time" \
        "$BLOCKSNAP" --store "$work/$1/store" --quiet --json snapshot create "$3" >"logs/$2.json" \
        || die "snapshot $2 failed"
}

echo
echo "## Snapshots: $DATA_MB MiB of new random data into an empty store and into one whose index holds $ENTRIES entries"
new_store full
full_index=$(index_dir full)
if [ -n "$INDEX_FROM" ]; then
    [ -d "$INDEX_FROM" ] || die "INDEX_FROM=$INDEX_FROM is not a directory"
    rm -rf "$full_index"
    cp -a "$INDEX_FROM" "$full_index"
    # The copy does not know the seed snapshot's pack: the next command adds it from its index
    # object, as for a pack another host wrote.
else
    "$INDEX_SCALE" fill "$full_index" "$ENTRIES" 2>&1 | sed 's/^/    /' >&2
fi
echo "full store's index: $(du -sm "$full_index" | cut -f1) MiB on disk" >&2
for r in $(seq 1 "$ROUNDS"); do
    python3 -c "import os,sys; f=open('data.img','wb'); [f.write(os.urandom(1<<20)) for _ in range(int(sys.argv[1]))]" "$DATA_MB"
    new_store empty
    if [ $((r % 2)) = 1 ]; then order="empty full"; else order="full empty"; fi
    for s in $order; do timed "$s" "$s-new-$r" data.img; done
    for s in $order; do timed "$s" "$s-again-$r" data.img; done
    echo "round $r ($order): $(for s in $order; do for k in new again; do echo -n "$s-$k $(cut -d' ' -f1 "logs/$s-$k-$r.time") s; "; done; done)" >&2
done

# The full store's last snapshot comes back byte for byte.
store_env full
id=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['id'])" "logs/full-new-$ROUNDS.json")
"$BLOCKSNAP" --store "$work/full/store" --quiet snapshot restore "$id" restored.img >/dev/null
cmp data.img restored.img || die "the restore of $id differs from its disk"
rm -f restored.img

python3 - "$ROUNDS" "$ENTRIES" <<'EOF'
import statistics, sys
rounds, entries = int(sys.argv[1]), sys.argv[2]
def med(label, field):
    return statistics.median(float(open(f"logs/{label}-{r}.time").read().split()[field]) for r in range(1, rounds + 1))
print()
print(f"| snapshot (median of {rounds}) | empty index | {entries} entries | ratio | peak RSS empty / full |")
print("|---|--:|--:|--:|--:|")
for kind, what in (("new", "new data (every lookup misses, every chunk inserted)"), ("again", "the same data again (every lookup hits)")):
    e, f = med(f"empty-{kind}", 0), med(f"full-{kind}", 0)
    re, rf = med(f"empty-{kind}", 1) / 1024, med(f"full-{kind}", 1) / 1024
    print(f"| {what} | {e:.2f} s | {f:.2f} s | {f / e:.2f} | {re:.0f} / {rf:.0f} MiB |")
EOF

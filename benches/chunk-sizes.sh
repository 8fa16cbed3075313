#!/usr/bin/env bash
# Measure blocksnap chunker configurations on a real ext4 image.
#
# Usage: benches/chunk-sizes.sh [WORKDIR]
#   BLOCKSNAP=path  the blocksnap binary (default: blocksnap on PATH, else
#                   target/release/blocksnap of this repository)
#   KEEP=1          keep the work directory (images, results.tsv, timings.tsv)
#   RUNS=N          time the first snapshot N times, report the median (default 3)
#
# Builds base.img (1 GiB sparse ext4 holding ~300-400 MB of this machine's
# files), derives changed.img from it with debugfs (files removed, added and
# replaced), then for each chunker configuration snapshots base.img and
# changed.img into a fresh store and prints a Markdown table on stdout.
# Progress goes to stderr. Needs: mkfs.ext4, debugfs, e2fsck, python3, jq.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
BLOCKSNAP=${BLOCKSNAP:-$(command -v blocksnap || echo "$repo/target/release/blocksnap")}
KEEP=${KEEP:-0}
MARKER=.blocksnap-chunk-bench

for tool in mkfs.ext4 debugfs e2fsck python3 jq; do
    command -v "$tool" >/dev/null || { echo "missing tool: $tool" >&2; exit 1; }
done
[ -x "$BLOCKSNAP" ] || { echo "blocksnap binary not found: $BLOCKSNAP (set BLOCKSNAP)" >&2; exit 1; }

if [ $# -ge 1 ]; then
    work=$1
    mkdir -p "$work"
    # Refuse to fill (and later delete) a directory that holds something else.
    if [ -n "$(ls -A "$work")" ] && [ ! -e "$work/$MARKER" ]; then
        echo "$work is not empty and not a previous work dir of this script" >&2
        exit 1
    fi
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/blocksnap-chunks.XXXXXX")
fi
work=$(cd "$work" && pwd)
touch "$work/$MARKER"
cleanup() { if [ "$KEEP" != 1 ]; then rm -rf "$work"; else echo "kept $work" >&2; fi; }
trap cleanup EXIT

log() { echo "== $*" >&2; }

export XDG_CONFIG_HOME="$work/config" XDG_DATA_HOME="$work/data" DEBUGFS_PAGER=__none__ LC_ALL=C
cd "$work"
rm -rf src stage stores config data base.img changed.img ./*.cmds ./*.txt ./*.tsv ./*.json

# ---------------------------------------------------------------- 1. base.img
# Whole directories in this order, each taken if it keeps the total under
# 400 MB; stop once 320 MB are reached.
candidates=(/usr/lib/python3.11 /usr/share/man /usr/share/doc /usr/lib/gcc
    /usr/bin /usr/share/locale /usr/share/vim /usr/share/perl /usr/lib/git-core
    /usr/share/i18n /usr/share/icons /usr/lib/python3 /usr/sbin /usr/libexec /etc)
mkdir src
used=()
total=0
for d in "${candidates[@]}"; do
    [ -d "$d" ] && [ -r "$d" ] || continue
    mb=$(du -sm "$d" 2>/dev/null | cut -f1) || continue
    [ $((total + mb)) -le 400 ] || continue
    dest="src${d}"
    mkdir -p "$(dirname "$dest")"
    cp -a "$d" "$dest" 2>/dev/null || true   # skip unreadable files
    used+=("$d")
    total=$((total + mb))
    [ "$total" -lt 320 ] || break
done
[ "$total" -ge 200 ] || { echo "found only $total MB of files to copy" >&2; exit 1; }
src_bytes=$(du -sb src | cut -f1)
src_files=$(find src -type f | wc -l)
log "source tree: ${used[*]} ($src_bytes bytes, $src_files files)"

truncate -s 1G base.img
mkfs.ext4 -q -F -d src base.img

# ---------------------------------------------------------------- 2. changed.img
cp --sparse=always base.img changed.img
mkdir stage

# Files of src that debugfs can name safely, with their sizes, sorted by path.
(cd src && find . -type f -size +0 -printf '%s %P\n') \
    | grep -E '^[0-9]+ [A-Za-z0-9._/+-]+$' | sort -k2 >existing.txt
# Pool for new content: files of this machine outside the copied directories.
pool_dirs=()
for d in "/usr/lib/$(uname -m)-linux-gnu" /usr/bin /usr/share/locale /usr/libexec /usr/sbin \
         /usr/share/fonts /usr/share/icons /usr/lib/python3 /usr/share/vim; do
    [ -d "$d" ] || continue
    skip=0
    for u in "${used[@]}"; do [ "$u" = "$d" ] && skip=1; done
    [ "$skip" = 1 ] || pool_dirs+=("$d")
done
{ find "${pool_dirs[@]}" -type f -readable -size +0 -printf '%s %p\n' 2>/dev/null || true; } \
    | sort -k2 >pool.txt

python3 - "$work" <<'PY'
import os, random, sys
work = sys.argv[1]
rng = random.Random(20240611)          # fixed seed: the same change on every run

def load(name):
    out = []
    for line in open(os.path.join(work, name)):
        size, path = line.rstrip("\n").split(" ", 1)
        out.append((int(size), path))
    return out

def spread(items, n):
    """n items evenly spaced through a sorted list (deterministic)."""
    if len(items) < n:
        sys.exit(f"not enough files to pick {n} from ({len(items)})")
    step = len(items) / n
    return [items[int(i * step + step / 2)] for i in range(n)]

existing = load("existing.txt")
pool = load("pool.txt")
KiB, MiB = 1024, 1024 * 1024

# 5 replaced files: larger files, rewritten as a new version of themselves.
big = [e for e in existing if 256 * KiB <= e[0] <= 8 * MiB]
replaced = spread(big, 5)
# 20 removed files, spread over the whole tree (mostly small, like the tree).
rest = [e for e in existing if e not in replaced]
removed = spread(rest, 20)

cmds, stat_present, stat_absent = [], [], []
summary = {"removed": 0, "added": 0, "replaced_old": 0, "replaced_new": 0}

for size, path in removed:
    cmds.append(f"rm /{path}")
    stat_absent.append("/" + path)
    summary["removed"] += size

# 18 added files of mixed sizes copied from the pool, plus 2 of random data;
# each goes into the directory of a removed file.
buckets = [(1, 16 * KiB, 6), (16 * KiB, 256 * KiB, 6), (256 * KiB, 4 * MiB, 5),
           (4 * MiB, 32 * MiB, 1)]
sources = []
for lo, hi, n in buckets:
    sources += spread([p for p in pool if lo <= p[0] < hi], n)
contents = [open(p, "rb").read() for _, p in sources]
contents += [rng.randbytes(1 * MiB), rng.randbytes(4 * MiB)]
# Content for the two wholly different replacements: pool files not used above.
fresh = spread([p for p in pool if 256 * KiB <= p[0] < 4 * MiB and p not in sources], 2)
for i, data in enumerate(contents):
    local = os.path.join(work, "stage", f"add-{i:02d}")
    open(local, "wb").write(data)
    directory = os.path.dirname(removed[i % len(removed)][1])
    name = f"added-{i:02d}.bin"
    cmds += [f"cd /{directory}", f"write {local} {name}", "cd /"]
    stat_present.append(f"/{directory}/{name}")
    summary["added"] += len(data)

# Replacements: 3 edited versions (a 4 KiB patch at 1/3, 1000 bytes inserted
# at 2/3, 8 KiB appended) and 2 with entirely different content.
for i, (size, path) in enumerate(replaced):
    old = open(os.path.join(work, "src", path), "rb").read()
    if i < 3:
        a, b = len(old) // 3, 2 * len(old) // 3
        new = (old[:a] + rng.randbytes(4096) + old[a + 4096:b]
               + rng.randbytes(1000) + old[b:] + rng.randbytes(8192))
    else:
        new = open(fresh[i - 3][1], "rb").read()[:size] + rng.randbytes(4096)
    local = os.path.join(work, "stage", f"replace-{i:02d}")
    open(local, "wb").write(new)
    directory, name = os.path.split(path)
    cmds += [f"rm /{path}", f"cd /{directory}", f"write {local} {name}", "cd /"]
    stat_present.append("/" + path)
    summary["replaced_old"] += size
    summary["replaced_new"] += len(new)

open(os.path.join(work, "change.cmds"), "w").write("\n".join(cmds) + "\n")
open(os.path.join(work, "check.cmds"), "w").write(
    "".join(f"stat {p}\n" for p in stat_present + stat_absent))
open(os.path.join(work, "change.txt"), "w").write(
    f"{len(removed)} {summary['removed']} {len(contents)} {summary['added']} "
    f"{len(replaced)} {summary['replaced_old']} {summary['replaced_new']} "
    f"{len(stat_present)} {len(stat_absent)}\n")
PY
read -r n_rm b_rm n_add b_add n_rep b_rep_old b_rep_new n_present n_absent <change.txt

debugfs -w -f change.cmds changed.img >debugfs.txt 2>&1
# debugfs exits 0 on failed commands: check the result instead.
debugfs -f check.cmds changed.img >check.txt 2>&1
found=$(grep -c '^Inode:' check.txt || true)
missing=$(grep -c 'File not found' check.txt || true)
if [ "$found" != "$n_present" ] || [ "$missing" != "$n_absent" ]; then
    echo "debugfs change did not apply: $found/$n_present present, $missing/$n_absent gone" >&2
    cat debugfs.txt >&2
    exit 1
fi
e2fsck -fn changed.img >/dev/null 2>&1 || { echo "changed.img fails e2fsck -fn" >&2; exit 1; }

counts=$(python3 - base.img changed.img <<'PY'
import sys
BS, STEP = 4096, 1 << 20
changed = new = 0
with open(sys.argv[1], "rb") as a, open(sys.argv[2], "rb") as b:
    while True:
        x, y = a.read(STEP), b.read(STEP)
        if not x and not y:
            break
        if x == y:
            continue
        for o in range(0, max(len(x), len(y)), BS):
            bx, by = x[o:o + BS], y[o:o + BS]
            if bx != by:
                changed += 1
                if bx.count(0) == len(bx):
                    new += 1
print(changed, new)
PY
)
read -r changed_blocks new_blocks <<<"$counts"
changed_bytes=$((changed_blocks * 4096))
apparent=$(stat -c %s base.img)
allocated=$(du -B1 base.img | cut -f1)
log "change: -$n_rm files, +$n_add files ($b_add bytes), $n_rep replaced; $changed_bytes bytes in changed 4 KiB blocks"

# ---------------------------------------------------------------- 3. snapshots
configs=("cdc 16KiB" "cdc 32KiB" "cdc 64KiB" "cdc 128KiB" "cdc 256KiB" "cdc 1MiB"
         "fixed 4KiB" "fixed 16KiB" "fixed 64KiB")
# Throughput is noisy on shared machines (the store fsyncs its packs), so the
# first snapshot is timed RUNS times, each into a fresh store, round-robin over
# the configurations; the table shows the median. Round 1 also takes the
# incremental snapshot; sizes and counts come from it.
RUNS=${RUNS:-3}
mkdir stores
printf 'chunker\tsize\tfirst_new\tchunks\tstored\tincr_new\tincr_stored\tincr_seconds\tmeta\n' >results.tsv
printf 'chunker\tsize\trun\tbytes_read\tseconds\n' >timings.tsv
for run in $(seq 1 "$RUNS"); do
    for cfg in "${configs[@]}"; do
        read -r kind size <<<"$cfg"
        store="stores/$kind-$size"
        log "run $run/$RUNS: $kind $size"
        rm -rf "$store"
        "$BLOCKSNAP" --store "$store" --quiet init --chunker "$kind" --chunk-size "$size" >/dev/null
        sync
        cat base.img >/dev/null
        "$BLOCKSNAP" --store "$store" --json --quiet snapshot create base.img --volume disk >first.json
        printf '%s\t%s\t%s\t%s\t%s\n' "$kind" "$size" "$run" \
            "$(jq -r .bytes_read first.json)" "$(jq -r .seconds first.json)" >>timings.tsv
        if [ "$run" = 1 ]; then
            sync
            cat changed.img >/dev/null
            "$BLOCKSNAP" --store "$store" --json --quiet snapshot create changed.img --volume disk >second.json
            id=$(jq -r .id second.json)
            meta=$(jq -r .extents.bytes "$store/snapshots/$id.json")
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$size" \
                "$(jq -r .bytes_new first.json)" "$(jq -r .chunks first.json)" \
                "$(jq -r .bytes_stored first.json)" "$(jq -r .bytes_new second.json)" \
                "$(jq -r .bytes_stored second.json)" "$(jq -r .seconds second.json)" \
                "$meta" >>results.tsv
        fi
        rm -rf "$store"
    done
done

# ---------------------------------------------------------------- table
cat <<EOF
- image: $apparent bytes apparent, $allocated bytes allocated; source tree $src_bytes bytes, $src_files files (${used[*]})
- change: $n_rm files removed ($b_rm bytes), $n_add files added ($b_add bytes), $n_rep files replaced ($b_rep_old -> $b_rep_new bytes)
- changed 4 KiB blocks: $changed_blocks ($changed_bytes bytes; $new_blocks of them were all zeros in base.img)

EOF
python3 - results.tsv timings.tsv "$changed_bytes" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
speeds = {}
for t in csv.DictReader(open(sys.argv[2]), delimiter="\t"):
    key = (t["chunker"], t["size"])
    speeds.setdefault(key, []).append(int(t["bytes_read"]) / float(t["seconds"]) / 1e6)
changed = int(sys.argv[3])
MB = 1e6
print("| chunker | size | first MB/s (median) | MB/s range | chunks | first stored MB "
      "| incr bytes_new MB | new / changed | incr stored MB | metadata bytes |")
print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|")
for r in rows:
    v = speeds[(r["chunker"], r["size"])]
    print(f"| {r['chunker']} | {r['size']} | {statistics.median(v):.0f} "
          f"| {min(v):.0f}-{max(v):.0f} "
          f"| {int(r['chunks'])} | {int(r['stored']) / MB:.1f} "
          f"| {int(r['incr_new']) / MB:.2f} | {int(r['incr_new']) / changed:.2f} "
          f"| {int(r['incr_stored']) / MB:.2f} | {int(r['meta'])} |")
PY

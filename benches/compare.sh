#!/usr/bin/env bash
# Compare blocksnap with restic and borg on a real ext4 disk image.
#
# Usage: benches/compare.sh [WORKDIR]
#   BLOCKSNAP=path  the blocksnap binary (default: target/release/blocksnap of
#                   this repository, else blocksnap on PATH)
#   KEEP=1          keep the work directory (images, repositories, logs, results.tsv)
#   ROUNDS=N        run every tool's three phases N times (default 3), fresh
#                   repositories each round, tools in turn within a round (who goes
#                   first rotates between rounds); the
#                   table gives the median of each figure, and the ratios of
#                   every round follow it (this VM's speed drifts by ±30%)
#   IMAGE=1g|8g|both  which disk (default both: the 1 GiB one, then the 8 GiB one, each
#                   with its own table, in WORKDIR/1g and WORKDIR/8g)
#   DATA_MB=N       megabytes of files in the 8 GiB disk (default 3000)
# After blocksnap's restore, each round also times `cp --sparse=always changed.img` (until
# sync): the disk's own limit for writing what the restore writes, in the same minute.
#
# 1g: base.img is a 1 GiB sparse ext4 (no partition table) holding ~300-400 MB of this
# machine's files; changed.img has files removed, added and replaced with debugfs, the same
# way as benches/chunk-sizes.sh.
# 8g: base.img is an 8 GiB sparse file with a GPT (sfdisk) and one partition holding an ext4
# made with mkfs.ext4 -d from DATA_MB of /usr; changed.img has about 19% of the files
# changed with debugfs: 6% removed, 8% replaced (half edited in place, half new content) and
# new files for 5% more.
# Then, for each tool in turn, with default
# settings and encryption on: an initial backup of the image, an incremental
# backup of the changed image under the same path, and a restore of the second
# backup, each timed with /usr/bin/time (wall seconds until the result is synced
# to disk, peak RSS, CPU seconds). Every restore
# is compared with changed.img by cmp. Prints a Markdown table on stdout;
# progress goes to stderr. Installs restic, borgbackup, e2fsprogs (and jq,
# time) with apt-get when missing.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
KEEP=${KEEP:-0}
ROUNDS=${ROUNDS:-3}
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: ROUNDS must be a positive number" >&2; exit 2; }
MARKER=.blocksnap-compare-bench

log() { echo "== $*" >&2; }
die() { echo "compare.sh: $*" >&2; exit 1; }

# ---------------------------------------------------------------- 0. tools
ensure_tools() {
    # command -> Debian package
    local -A pkg=([restic]=restic [borg]=borgbackup [mkfs.ext4]=e2fsprogs [debugfs]=e2fsprogs
                  [e2fsck]=e2fsprogs [jq]=jq [python3]=python3 [sfdisk]=fdisk)
    local missing=() c p
    for c in "${!pkg[@]}"; do
        command -v "$c" >/dev/null || missing+=("${pkg[$c]}")
    done
    [ -x /usr/bin/time ] || missing+=(time)
    [ ${#missing[@]} -gt 0 ] || return 0
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    local sudo=()
    if [ "$(id -u)" != 0 ]; then
        command -v sudo >/dev/null || die "need root or sudo to install: ${missing[*]}"
        sudo=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    # apt-get update only when a package has no install candidate yet.
    local need_update=0
    for p in "${missing[@]}"; do
        apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [^(]' || need_update=1
    done
    if [ "$need_update" = 1 ]; then
        log "apt-get update"
        "${sudo[@]}" apt-get update -q >&2
    fi
    log "apt-get install ${missing[*]}"
    "${sudo[@]}" apt-get install -y -q "${missing[@]}" >&2
}
IMAGE=${IMAGE:-both}
case $IMAGE in
1g|8g) ;;
both)
    # Each disk in its own work dir, by this script again: the 1 GiB table, then the 8 GiB one.
    if [ $# -ge 1 ]; then top=$1; mkdir -p "$top"; else top=$(mktemp -d "${TMPDIR:-/tmp}/blocksnap-compare.XXXXXX"); fi
    for img in 1g 8g; do
        echo "## The ${img^^}iB disk"
        echo
        IMAGE=$img bash "$0" "$top/$img" || exit
        echo
    done
    [ "$KEEP" = 1 ] || rmdir "$top" 2>/dev/null || true
    exit 0 ;;
*) die "IMAGE must be 1g, 8g or both" ;;
esac
DATA_MB=${DATA_MB:-3000}
[[ "$DATA_MB" =~ ^[1-9][0-9]*$ ]] || die "DATA_MB must be a positive number"

ensure_tools
export PATH="$PATH:/usr/sbin:/sbin"
for tool in restic borg mkfs.ext4 debugfs e2fsck python3 jq sfdisk; do
    command -v "$tool" >/dev/null || die "missing tool after install: $tool"
done

if [ -z "${BLOCKSNAP:-}" ]; then
    if [ -x "$repo/target/release/blocksnap" ]; then
        BLOCKSNAP=$repo/target/release/blocksnap
    else
        BLOCKSNAP=$(command -v blocksnap || true)
    fi
fi
[ -n "$BLOCKSNAP" ] && [ -x "$BLOCKSNAP" ] \
    || die "blocksnap binary not found (cargo build --release -p blocksnap-cli, or set BLOCKSNAP)"

# The binary's version string names no commit: report its mtime and whether
# the sources changed after it was built (then it is not HEAD's code).
bs_build="$BLOCKSNAP built $(date -u -r "$BLOCKSNAP" '+%Y-%m-%d %H:%M UTC')"
if head=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null); then
    if [ -n "$(find "$repo/crates" -name '*.rs' -newer "$BLOCKSNAP" -print -quit)" ]; then
        bs_build+="; older than sources of HEAD $head"
        log "warning: $BLOCKSNAP is older than the sources in $repo/crates"
    else
        bs_build+="; newer than every source file, HEAD $head"
    fi
fi

# ---------------------------------------------------------------- work dir
if [ $# -ge 1 ]; then
    work=$1
    mkdir -p "$work"
    # Refuse to fill (and later delete) a directory that holds something else.
    if [ -n "$(ls -A "$work")" ] && [ ! -e "$work/$MARKER" ]; then
        die "$work is not empty and not a previous work dir of this script"
    fi
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/blocksnap-compare.XXXXXX")
fi
work=$(cd "$work" && pwd)
touch "$work/$MARKER"
cleanup() { if [ "$KEEP" != 1 ]; then rm -rf "$work"; else echo "kept $work" >&2; fi; }
trap cleanup EXIT

export LC_ALL=C DEBUGFS_PAGER=__none__
cd "$work"
rm -rf src stage stg repos cache config data borghome restore logs \
    base.img changed.img ./*.cmds ./*.txt ./*.tsv ./*.json
mkdir logs

# ---------------------------------------------------------------- 1. base.img
# From benches/chunk-sizes.sh: whole directories in this order, each taken if
# it keeps the total under 400 MB; stop once 320 MB are reached.
build_base() {
    local candidates=(/usr/lib/python3.11 /usr/share/man /usr/share/doc /usr/lib/gcc
        /usr/bin /usr/share/locale /usr/share/vim /usr/share/perl /usr/lib/git-core
        /usr/share/i18n /usr/share/icons /usr/lib/python3 /usr/sbin /usr/libexec /etc)
    local d mb dest total=0
    mkdir src
    used=()
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
    [ "$total" -ge 200 ] || die "found only $total MB of files to copy"
    src_bytes=$(du -sb src | cut -f1)
    src_files=$(find src -type f | wc -l)
    log "source tree: ${used[*]} ($src_bytes bytes, $src_files files)"
    truncate -s 1G base.img
    mkfs.ext4 -q -F -d src base.img
}

# The 8 GiB disk: directories two levels under /usr (in name order) until DATA_MB, a GPT with
# one partition from 1 MiB to the end, ext4 in it made from them.
build_base_8g() {
    local kb d total=0 want=$((DATA_MB << 10))
    mkdir src
    used=()
    while read -r kb d; do
        [ $((total + kb)) -le $((want + want / 4)) ] || continue
        mkdir -p "src$(dirname "$d")"
        cp -a "$d" "src$d" 2>/dev/null || true
        used+=("$d")
        total=$((total + kb))
        [ "$total" -lt "$want" ] || break
    done < <(du -sk /usr/*/* 2>/dev/null | sort -k2)
    [ "$total" -ge $((want / 2)) ] || die "found only $((total >> 10)) MB of files under /usr"
    src_bytes=$(du -sb src | cut -f1)
    src_files=$(find src -type f | wc -l)
    log "source tree: ${#used[@]} directories under /usr ($src_bytes bytes, $src_files files)"
    truncate -s 8G base.img
    printf 'label: gpt\nstart=2048, type=L\n' | sfdisk -q base.img
    local start sectors
    read -r start sectors < <(sfdisk -J base.img | jq -r '.partitiontable.partitions[0] | "\(.start) \(.size)"')
    fs_offset=$((start * 512))
    mkfs.ext4 -q -F -d src -E offset=$fs_offset base.img "$((sectors / 2))k"
    used=("$(printf '%s\n' "${used[@]}" | cut -d/ -f3 | sort -u | tr '\n' ' ')under /usr")
}
fs_offset=0
# The ext4 of image $1 as e2fsprogs names it: the file, or the file at the partition's offset.
fs_of() { if [ "$fs_offset" = 0 ]; then echo "$1"; else echo "$1?offset=$fs_offset"; fi; }

# ---------------------------------------------------------------- 2. changed.img
# From benches/chunk-sizes.sh: 20 files removed, 20 added, 5 replaced (3
# edited in place, 2 with different content), with a fixed seed.
make_change() {
    cp --sparse=always base.img changed.img
    mkdir stage
    (cd src && find . -type f -size +0 -printf '%s %P\n') \
        | grep -E '^[0-9]+ [A-Za-z0-9._/+-]+$' | sort -k2 >existing.txt
    local pool_dirs=() d u skip
    for d in "/usr/lib/$(uname -m)-linux-gnu" /usr/bin /usr/share/locale /usr/libexec /usr/sbin \
             /usr/share/fonts /usr/share/icons /usr/lib/python3 /usr/share/vim; do
        [ -d "$d" ] || continue
        skip=0
        for u in "${used[@]}"; do [ "$u" = "$d" ] && skip=1; done
        [ "$skip" = 1 ] || pool_dirs+=("$d")
    done
    if [ "$IMAGE" = 8g ]; then
        : >pool.txt   # the 8 GiB disk's new files are derived from its own
    else
        { find "${pool_dirs[@]}" -type f -readable -size +0 -printf '%s %p\n' 2>/dev/null || true; } \
            | sort -k2 >pool.txt
    fi

    python3 - "$work" "$IMAGE" <<'PY'
import os, random, sys
work, image = sys.argv[1], sys.argv[2]
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

def renew(data):
    """A new version of a file: every 4 KiB block's first 16 bytes replaced, so no chunk of it
    is stored yet, and it compresses as the original does."""
    out = bytearray(data)
    for at in range(0, len(out), 4096):
        out[at:at + 16] = rng.randbytes(min(16, len(out) - at))
    return bytes(out)

def replace(i, size, path, new, cmds, stat_present, summary):
    """debugfs commands that replace file `path` (of `size` bytes) by `new`, staged as file i."""
    local = os.path.join(work, "stage", f"replace-{i:05d}")
    open(local, "wb").write(new)
    directory, name = os.path.split(path)
    cmds += [f"rm /{path}", f"cd /{directory}", f"write {local} {name}", "cd /"]
    stat_present.append("/" + path)
    summary["replaced_old"] += size
    summary["replaced_new"] += len(new)

def write_out(cmds, stat_present, stat_absent, n_removed, n_added, n_replaced, summary):
    """The change's debugfs commands, the stat commands that check it, and its counts."""
    open(os.path.join(work, "change.cmds"), "w").write("\n".join(cmds) + "\n")
    open(os.path.join(work, "check.cmds"), "w").write(
        "".join(f"stat {p}\n" for p in stat_present + stat_absent))
    open(os.path.join(work, "change.txt"), "w").write(
        f"{n_removed} {summary['removed']} {n_added} {summary['added']} "
        f"{n_replaced} {summary['replaced_old']} {summary['replaced_new']} "
        f"{len(stat_present)} {len(stat_absent)}\n")

if image == "8g":
    # About 19% of the files: 6% removed, 8% replaced, new files for 5% more.
    n = len(existing)
    mid = [e for e in existing if 4 * KiB <= e[0] <= 8 * MiB]
    replaced = spread(mid, n * 8 // 100)
    taken = set(replaced)
    rest = [e for e in existing if e not in taken]
    removed = spread(rest, n * 6 // 100)
    taken = set(removed)
    kept = [e for e in rest if e not in taken]
    models = spread(kept, n * 5 // 100)
    cmds, stat_present, stat_absent = [], [], []
    summary = {"removed": 0, "added": 0, "replaced_old": 0, "replaced_new": 0}
    os.makedirs(os.path.join(work, "stage"), exist_ok=True)
    for size, path in removed:
        cmds.append(f"rm /{path}")
        stat_absent.append("/" + path)
        summary["removed"] += size
    for i, (size, path) in enumerate(models):
        data = renew(open(os.path.join(work, "src", path), "rb").read())
        local = os.path.join(work, "stage", f"add-{i:05d}")
        open(local, "wb").write(data)
        directory = os.path.dirname(path)
        name = f"added-{i:05d}.bin"
        cmds += [f"cd /{directory}", f"write {local} {name}", "cd /"]
        stat_present.append(f"/{directory}/{name}")
        summary["added"] += len(data)
    for i, (size, path) in enumerate(replaced):
        old = open(os.path.join(work, "src", path), "rb").read()
        if i % 2 == 0:   # edited in place: a few KiB changed, the rest as it was
            a, b = len(old) // 3, 2 * len(old) // 3
            new = old[:a] + rng.randbytes(4096) + old[a + 4096:b] + rng.randbytes(1000) + old[b:]
        else:            # a new version of the whole file
            new = renew(old)
        replace(i, size, path, new, cmds, stat_present, summary)
    write_out(cmds, stat_present, stat_absent, len(removed), len(models), len(replaced), summary)
    sys.exit(0)

big = [e for e in existing if 256 * KiB <= e[0] <= 8 * MiB]
replaced = spread(big, 5)
rest = [e for e in existing if e not in replaced]
removed = spread(rest, 20)

cmds, stat_present, stat_absent = [], [], []
summary = {"removed": 0, "added": 0, "replaced_old": 0, "replaced_new": 0}

for size, path in removed:
    cmds.append(f"rm /{path}")
    stat_absent.append("/" + path)
    summary["removed"] += size

buckets = [(1, 16 * KiB, 6), (16 * KiB, 256 * KiB, 6), (256 * KiB, 4 * MiB, 5),
           (4 * MiB, 32 * MiB, 1)]
sources = []
for lo, hi, n in buckets:
    sources += spread([p for p in pool if lo <= p[0] < hi], n)
contents = [open(p, "rb").read() for _, p in sources]
contents += [rng.randbytes(1 * MiB), rng.randbytes(4 * MiB)]
fresh = spread([p for p in pool if 256 * KiB <= p[0] < 4 * MiB and p not in sources], 2)
for i, data in enumerate(contents):
    local = os.path.join(work, "stage", f"add-{i:02d}")
    open(local, "wb").write(data)
    directory = os.path.dirname(removed[i % len(removed)][1])
    name = f"added-{i:02d}.bin"
    cmds += [f"cd /{directory}", f"write {local} {name}", "cd /"]
    stat_present.append(f"/{directory}/{name}")
    summary["added"] += len(data)

for i, (size, path) in enumerate(replaced):
    old = open(os.path.join(work, "src", path), "rb").read()
    if i < 3:
        a, b = len(old) // 3, 2 * len(old) // 3
        new = (old[:a] + rng.randbytes(4096) + old[a + 4096:b]
               + rng.randbytes(1000) + old[b:] + rng.randbytes(8192))
    else:
        new = open(fresh[i - 3][1], "rb").read()[:size] + rng.randbytes(4096)
    replace(i, size, path, new, cmds, stat_present, summary)
write_out(cmds, stat_present, stat_absent, len(removed), len(contents), len(replaced), summary)
PY
    read -r n_rm b_rm n_add b_add n_rep b_rep_old b_rep_new n_present n_absent <change.txt

    debugfs -w -f change.cmds "$(fs_of changed.img)" >logs/debugfs.txt 2>&1
    # debugfs exits 0 on failed commands: check the result instead.
    debugfs -f check.cmds "$(fs_of changed.img)" >logs/check.txt 2>&1
    local found missing
    found=$(grep -c '^Inode:' logs/check.txt || true)
    missing=$(grep -c 'File not found' logs/check.txt || true)
    if [ "$found" != "$n_present" ] || [ "$missing" != "$n_absent" ]; then
        cat logs/debugfs.txt >&2
        die "debugfs change did not apply: $found/$n_present present, $missing/$n_absent gone"
    fi
    e2fsck -fn "$(fs_of changed.img)" >/dev/null 2>&1 || die "changed.img fails e2fsck -fn"
    rm -rf stage
    log "change: -$n_rm files ($b_rm bytes), +$n_add files ($b_add bytes), $n_rep replaced ($b_rep_old -> $b_rep_new bytes)"
}

log "building base.img ($IMAGE)"
if [ "$IMAGE" = 8g ]; then build_base_8g; else build_base; fi
log "building changed.img"
make_change

# All tools read the same file, stg/disk.img: a sparse copy of base.img for the
# initial backup, replaced by a sparse copy of changed.img for the incremental
# one, so restic and borg see the same path twice (and use the first backup as
# parent / files cache). The copies are made outside the timed commands.
mkdir stg
stage_image() { rm -f stg/disk.img; cp --sparse=always "$1" stg/disk.img; }
# Data size = allocated bytes (du -B1) of the file the tools read: the sparse
# copy, without the all-zero blocks mkfs leaves allocated in base.img.
apparent=$(stat -c %s base.img)
stage_image base.img
base_alloc=$(du -B1 stg/disk.img | cut -f1)
stage_image changed.img
changed_alloc=$(du -B1 stg/disk.img | cut -f1)

# ---------------------------------------------------------------- 3. cache policy
# One policy for every timed command: drop the page cache when we may (cold
# reads from disk), else read the input once so that every tool starts warm.
if (sync && echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null; then
    policy=drop
else
    policy=warm
fi
log "cache policy: $policy"
# prepare_cache FILE|DIR: what the next command reads.
prepare_cache() {
    sync
    if [ "$policy" = drop ]; then
        echo 3 >/proc/sys/vm/drop_caches
    else
        find "$1" -type f -exec cat {} + >/dev/null
    fi
}

# timed TOOL PHASE INPUT REPO -- CMD...: run CMD under /usr/bin/time, stdout to
# logs/TOOL-PHASE.out, record seconds, peak RSS, CPU seconds (user + system) and repository
# size.
printf 'round\ttool\tphase\tseconds\trss_kib\trepo_bytes\tcpu_s\n' >results.tsv
timed() {
    local tool=$1 phase=$2 input=$3 repodir=$4
    shift 5
    prepare_cache "$input"
    log "$tool $phase: $*"
    local l="$work/logs/$tool-$phase"
    # The time runs until the result is on disk (`sync` inside the timed command): blocksnap
    # fsyncs its packs and restored images, borg its segments, restic neither; timing each
    # tool up to durability compares the same work. Peak RSS is the largest process's.
    if ! /usr/bin/time -f '%e %M %U %S' -o "$l.time" sh -c '"$@" && sync' sh "$@" >"$l.out" 2>"$l.err"; then
        cat "$l.err" "$l.time" >&2
        die "$tool $phase failed"
    fi
    local secs rss usr sys
    read -r secs rss usr sys < <(tail -n 1 "$l.time")
    sync
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$tool" "$phase" "$secs" "$rss" \
        "$(du -sb "$repodir" | cut -f1)" "$(awk -v u="$usr" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')" \
        >>"$work/results.tsv"
}

failed=()
verify() { # TOOL FILE
    if cmp "$2" changed.img >"logs/$1-cmp.txt" 2>&1; then
        log "$1 restore: identical to changed.img"
    else
        echo "!! $1: restored image differs from changed.img: $(cat "logs/$1-cmp.txt")" >&2
        failed+=("$1")
    fi
    rm -f "$2"
}

run_blocksnap() {
    # ---------------------------------------------------------------- blocksnap
    export XDG_CONFIG_HOME="$work/config/$round" XDG_DATA_HOME="$work/data/$round"
    bs_store=$work/repos/blocksnap
    bs() { "$BLOCKSNAP" --store "$bs_store" --quiet "$@"; }
    bs init >logs/blocksnap-init.out
    stage_image base.img
    timed blocksnap initial stg "$bs_store" -- \
        "$BLOCKSNAP" --store "$bs_store" --quiet --json snapshot create stg/disk.img --volume disk
    stage_image changed.img
    timed blocksnap incremental stg "$bs_store" -- \
        "$BLOCKSNAP" --store "$bs_store" --quiet --json snapshot create stg/disk.img --volume disk
    bs_id=$(jq -r .id logs/blocksnap-incremental.out)
    timed blocksnap restore "$bs_store" "$bs_store" -- \
        "$BLOCKSNAP" --store "$bs_store" --quiet --json snapshot restore "$bs_id" restore/blocksnap.img
    verify blocksnap restore/blocksnap.img
    # The disk's own limit for writing the restored data, in the same minute: cp of the image
    # the restore rebuilt, holes kept, timed until sync like the restores.
    timed cp restore changed.img restore -- cp --sparse=always changed.img restore/cp.img
    rm -f restore/cp.img
}

run_restic() {
    # ---------------------------------------------------------------- restic
    export RESTIC_REPOSITORY=$work/repos/restic RESTIC_PASSWORD=x RESTIC_CACHE_DIR=$work/cache/restic
    restic init >logs/restic-init.out 2>&1
    restic_repo_version=$(restic cat config 2>/dev/null | jq -r .version)
    stage_image base.img
    timed restic initial stg "$RESTIC_REPOSITORY" -- restic backup --host bench "$work/stg/disk.img"
    stage_image changed.img
    timed restic incremental stg "$RESTIC_REPOSITORY" -- restic backup --host bench "$work/stg/disk.img"
    grep -q 'using parent snapshot' logs/restic-incremental.out \
        || log "warning: restic did not report a parent snapshot"
    timed restic restore "$RESTIC_REPOSITORY" "$RESTIC_REPOSITORY" -- \
        restic restore latest --target "$work/restore/restic"
    verify restic "$work/restore/restic$work/stg/disk.img"
    rm -rf restore/restic
}

run_borg() {
    # ---------------------------------------------------------------- borg
    export BORG_REPO=$work/repos/borg BORG_PASSPHRASE=x BORG_BASE_DIR=$work/borghome \
        BORG_DISPLAY_PASSPHRASE=no
    borg init -e repokey >logs/borg-init.out 2>&1
    # borg stores the path as given: run from stg so the archive holds "disk.img".
    stage_image base.img
    cd stg
    timed borg initial . "$BORG_REPO" -- borg create ::a disk.img
    cd "$work"
    stage_image changed.img
    cd stg
    timed borg incremental . "$BORG_REPO" -- borg create ::b disk.img
    cd "$work"
    mkdir restore/borg
    cd restore/borg
    timed borg restore "$BORG_REPO" "$BORG_REPO" -- borg extract --sparse ::b disk.img
    cd "$work"
    verify borg restore/borg/disk.img
    rm -rf restore/borg
}

# The tools take turns first: round 1 blocksnap restic borg, round 2 restic borg blocksnap, ...
# (whoever runs first meets the coldest caches and the least fragmented free space).
tools=(blocksnap restic borg)
for round in $(seq "$ROUNDS"); do
    log "round $round of $ROUNDS"
    rm -rf repos cache restore
    mkdir repos cache restore

    for i in 0 1 2; do
        tool=${tools[$(((i + round - 1) % 3))]}
        log "round $round: $tool"
        "run_$tool"
    done
done

# ---------------------------------------------------------------- table
cat <<EOF
- machine: $(nproc) CPUs ($(uname -m), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, kernel $(uname -r); $(date -u '+%Y-%m-%d %H:%M UTC')
- tools: $("$BLOCKSNAP" --version) ($bs_build), $(restic version | cut -d' ' -f1-2) (repository v$restic_repo_version), $(borg --version)
- image ($IMAGE): $apparent bytes apparent$( [ "$fs_offset" = 0 ] || echo ", GPT with one partition, ext4 at byte $fs_offset"); allocated (du -B1 of the sparse copy the tools read): base $base_alloc, changed $changed_alloc bytes; source tree $src_bytes bytes, $src_files files (${used[*]})
- change: $n_rm files removed ($b_rm bytes), $n_add added ($b_add bytes), $n_rep replaced ($b_rep_old -> $b_rep_new bytes)
- cache policy: $policy ($( [ "$policy" = drop ] && echo 'sync; echo 3 > /proc/sys/vm/drop_caches before every timed command' || echo 'input read once with cat before every timed command'))
- every time runs until the command's output is on disk: each timed command is \`CMD && sync\`
- MB/s = allocated bytes of the image (base for the initial row, changed for the others) / wall seconds; MB = 10^6 bytes; repo MB = du -sb of the repository after the command

EOF
python3 - results.tsv "$base_alloc" "$changed_alloc" <<'PY'
import csv, statistics, sys
runs = {}
for r in csv.DictReader(open(sys.argv[1]), delimiter="\t"):
    runs.setdefault((r["tool"], r["phase"]), []).append(r)
data = {"initial": int(sys.argv[2]), "incremental": int(sys.argv[3]), "restore": int(sys.argv[3])}
tools = ["blocksnap", "restic", "borg"]
phases = ["initial", "incremental", "restore"]
names = {"initial": "initial snapshot", "incremental": "incremental snapshot", "restore": "restore"}
rounds = len(runs[("blocksnap", "initial")])
def med(t, phase, field, conv=float):
    return statistics.median(conv(r[field]) for r in runs[(t, phase)])
head = ["phase", "data MB"]
for t in tools:
    head += [f"{t} s", f"{t} MB/s", f"{t} RSS MiB", f"{t} repo MB"]
for t in tools[1:]:
    head += [f"speed vs {t}", f"RSS vs {t}", f"repo vs {t}"]
print(f"Medians of {rounds} round(s):\n")
print("| " + " | ".join(head) + " |")
print("|---|" + "--:|" * (len(head) - 1))
for phase in phases:
    cells = [names[phase], f"{data[phase] / 1e6:.0f}"]
    v = {}
    for t in tools:
        s, rss, repo = med(t, phase, "seconds"), med(t, phase, "rss_kib", int), med(t, phase, "repo_bytes", int)
        v[t] = (s, rss, repo)
        cells += [f"{s:.2f}", f"{data[phase] / 1e6 / max(s, 0.01):.0f}",
                  f"{rss / 1024:.0f}", f"{repo / 1e6:.1f}"]
    b = v["blocksnap"]
    for t in tools[1:]:
        p = v[t]
        cells += [f"{p[0] / max(b[0], 0.01):.2f}x", f"{b[1] / p[1]:.2f}", f"{b[2] / p[2]:.2f}"]
    print("| " + " | ".join(cells) + " |")
growth = ", ".join(
    f"{t} {(med(t, 'incremental', 'repo_bytes', int) - med(t, 'initial', 'repo_bytes', int)) / 1e6:.1f} MB"
    for t in tools)
print(f"\nrepository growth from the incremental snapshot (medians): {growth}")
cp = [float(r["seconds"]) for r in runs.get(("cp", "restore"), [])]
if cp:
    bs = [float(r["seconds"]) for r in runs[("blocksnap", "restore")]]
    each = ", ".join(f"{c:.2f} / {b:.2f} s ({100 * c / max(b, 0.01):.0f}%)" for c, b in zip(cp, bs))
    print(f"\nrestore against `cp --sparse=always changed.img && sync` right after it (the disk's "
          f"limit for writing the same data): median cp {statistics.median(cp):.2f} s, blocksnap "
          f"{statistics.median(bs):.2f} s = {100 * statistics.median(cp) / max(statistics.median(bs), 0.01):.0f}% "
          f"of cp's speed; each round cp / blocksnap: {each}")
print("\nEvery round (seconds; speed vs restic and borg = their seconds / blocksnap's; CPU s = user +")
print("system seconds of the command, which show how fast the machine was in that minute):\n")
print("| phase | round | blocksnap s | restic s | borg s | blocksnap CPU s | restic CPU s | borg CPU s "
      "| speed vs restic | speed vs borg |")
print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
for phase in phases:
    for i in range(rounds):
        s = {t: float(runs[(t, phase)][i]["seconds"]) for t in tools}
        c = {t: float(runs[(t, phase)][i]["cpu_s"]) for t in tools}
        b = max(s["blocksnap"], 0.01)
        print(f"| {names[phase]} | {i + 1} | {s['blocksnap']:.2f} | {s['restic']:.2f} | "
              f"{s['borg']:.2f} | {c['blocksnap']:.2f} | {c['restic']:.2f} | {c['borg']:.2f} | "
              f"{s['restic'] / b:.2f}x | {s['borg'] / b:.2f}x |")
PY
echo
echo "speed vs X = X's wall time / blocksnap's (>1: blocksnap faster); RSS and repo vs X = blocksnap / X (<1: blocksnap smaller)."
echo "restic: default settings (restic 0.14 restore writes no holes: all $apparent bytes are written). borg: -e repokey, default compression lz4 and chunker; extract --sparse."

if [ ${#failed[@]} -gt 0 ]; then
    echo
    echo "**FAILED: restored image differs from changed.img for: ${failed[*]}**"
    die "restore verification failed for: ${failed[*]}"
fi

#!/usr/bin/env bash
# VM disk sources, measured: a qcow2 file against the raw file it came from, and a dirty-bitmap
# incremental against the full-read incremental and restic's, same change, same run.
#
# Usage: benches/vm.sh [WORKDIR]
#   BLOCKSNAP=path  the blocksnap binary (default: target/release/blocksnap, else on PATH)
#   SIZE=8G         the disk's virtual size (default 8G)
#   DATA_MB=N       megabytes of this machine's files put in its ext4 (default 1500)
#   CHANGE_PCT=N    percent of the virtual size the guest rewrites (default 1)
#   ROUNDS=N        timed rounds (default 3); the order of the variants rotates between rounds
#   KEEP=1          keep the work directory
#
# Builds base.raw (SIZE sparse, ext4 populated with mkfs.ext4 -d from /usr) and base.qcow2
# (qemu-img convert). Then:
#   first:  `snapshot create` of base.raw and of base.qcow2, each into a fresh store.
#   incremental: one store holds the first snapshot of vm.qcow2 (a copy of base.qcow2); a
#           persistent dirty bitmap b0 is added right after it (qemu-img bitmap --add), and the
#           guest's writes are made through qemu-io (CHANGE_PCT of SIZE, 1 MiB writes of random
#           data at random offsets), so the bitmap records them. Each round copies that store
#           (and its index cache) for each variant, then times the incremental of vm.qcow2:
#             full-qcow2: `snapshot create vm.qcow2` (reads every allocated cluster)
#             full-nbd:   `snapshot create nbd+unix:///vm?socket=S` of `qemu-nbd -r` (all data)
#             bitmap:     the same export with `--bitmap b0`, `--dirty-bitmap b0`
#             restic:     `restic backup` of the changed disk as raw, into a copy of a repository
#                         holding the raw base under the same path (restic reads the holes too)
# Every timing is wall seconds until `sync` returns (/usr/bin/time). The bitmap snapshot is
# restored once and compared with the changed disk by cmp. Prints Markdown tables on stdout.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
KEEP=${KEEP:-0}
SIZE=${SIZE:-8G}
DATA_MB=${DATA_MB:-1500}
CHANGE_PCT=${CHANGE_PCT:-1}
ROUNDS=${ROUNDS:-3}
MARKER=.blocksnap-vm-bench
log() { echo "== $*" >&2; }
die() { echo "vm.sh: $*" >&2; exit 1; }
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive number"
[[ "$DATA_MB" =~ ^[1-9][0-9]*$ ]] || die "DATA_MB must be a positive number"
[[ "$CHANGE_PCT" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "CHANGE_PCT must be a number"

export PATH="$PATH:/usr/sbin:/sbin"
missing=()
for c in restic:restic mkfs.ext4:e2fsprogs qemu-img:qemu-utils qemu-io:qemu-utils \
         qemu-nbd:qemu-utils jq:jq python3:python3; do
    command -v "${c%%:*}" >/dev/null || missing+=("${c#*:}")
done
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${missing[@]}" >&2 \
        || { apt-get update -q >&2; apt-get install -y -q "${missing[@]}" >&2; }
fi
if [ -z "${BLOCKSNAP:-}" ]; then
    if [ -x "$repo/target/release/blocksnap" ]; then BLOCKSNAP=$repo/target/release/blocksnap
    else BLOCKSNAP=$(command -v blocksnap) || die "no blocksnap binary: cargo build --release -p blocksnap-cli"; fi
fi

if [ $# -ge 1 ]; then
    work=$1
    mkdir -p "$work"
    if [ -n "$(ls -A "$work")" ] && [ ! -e "$work/$MARKER" ]; then
        die "$work is not empty and not a previous work dir of this script"
    fi
else
    work=$(mktemp -d "${TMPDIR:-/var/tmp}/blocksnap-vm.XXXXXX")
fi
work=$(cd "$work" && pwd)
touch "$work/$MARKER"
nbd_pid=
stop_nbd() {
    if [ -n "$nbd_pid" ]; then kill "$nbd_pid" 2>/dev/null || true; wait "$nbd_pid" 2>/dev/null || true; nbd_pid=; fi
}
cleanup() { stop_nbd; if [ "$KEEP" != 1 ]; then rm -rf "$work"; else echo "kept $work" >&2; fi; }
trap cleanup EXIT
cd "$work"
find . -mindepth 1 -maxdepth 1 ! -name "$MARKER" -exec rm -rf {} +
mkdir logs
export LC_ALL=C RESTIC_PASSWORD=bench

# ------------------------------------------------------------------ the disk
mkdir src
total=0
want=$((DATA_MB << 10))   # KiB
while read -r kb d; do
    [ $((total + kb)) -le $((want + want / 4)) ] || continue
    mkdir -p "src$(dirname "$d")"
    cp -a "$d" "src$d" 2>/dev/null || true
    total=$((total + kb))
    [ "$total" -lt "$want" ] || break
done < <(du -sk /usr/*/* 2>/dev/null | sort -k2)
[ "$total" -ge $((want / 2)) ] || die "found only $((total >> 10)) MB of files under /usr"
truncate -s "$SIZE" base.raw
mkfs.ext4 -q -F -d src base.raw
rm -rf src
qemu-img convert -f raw -O qcow2 base.raw base.qcow2
size_bytes=$(stat -c %s base.raw)
data_bytes=$(($(stat -c %b base.raw) * 512))
log "base.raw: $SIZE, $data_bytes bytes allocated; base.qcow2: $(stat -c %s base.qcow2) bytes"

# timed NAME CMD...: wall seconds until sync, into logs/NAME.time (one line: wall rss user sys)
timed() {
    local name=$1; shift
    /usr/bin/time -f '%e %M %U %S' -o "logs/$name.time" bash -c '"$@" && sync' bash "$@" \
        >"logs/$name.out" 2>"logs/$name.err" || { cat "logs/$name.err" >&2; die "$name failed"; }
}
wall() { cut -d' ' -f1 "logs/$1.time"; }
# Each store has its own cache and client directory (identity, what the client pinned): the
# copies of one store below are different clients' views of it.
bs() { local store=$1; shift; XDG_CACHE_HOME=$work/cache-$store XDG_CONFIG_HOME=$work/config-$store "$BLOCKSNAP" --store "$work/$store" --quiet "$@"; }
export -f bs
export work BLOCKSNAP
rotate() { local r=$1; shift; local a=("$@") n=$#; for i in $(seq 0 $((n - 1))); do echo "${a[$(((i + r) % n))]}"; done; }

# ------------------------------------------------------------------ first snapshots
results=()
for round in $(seq "$ROUNDS"); do
    line=""
    for v in $(rotate "$round" raw qcow2); do
        rm -rf "first-$v" "cache-first-$v" "config-first-$v"
        bs "first-$v" init >/dev/null
        sync
        timed "first-$v-$round" bs "first-$v" --json snapshot create "base.$v" --volume disk
        line+="$v=$(wall "first-$v-$round") "
    done
    results+=("$line")
    log "first, round $round: $line"
done
first_table=$(printf '%s\n' "${results[@]}" | python3 -c '
import statistics, sys
rows = [dict(kv.split("=") for kv in l.split()) for l in sys.stdin if l.strip()]
raw = statistics.median(float(r["raw"]) for r in rows)
q = statistics.median(float(r["qcow2"]) for r in rows)
print("| first snapshot of | median wall s | of raw |")
print("|---|---:|---:|")
print(f"| base.raw | {raw:.2f} | 100% |")
print(f"| base.qcow2 | {q:.2f} | {100 * q / raw:.0f}% |")
print()
print("rounds (raw/qcow2 s): " + ", ".join("%.2f/%.2f" % (float(r["raw"]), float(r["qcow2"])) for r in rows))
')
rm -rf first-* cache-first-* config-first-*

# ------------------------------------------------------------------ the change
cp --sparse=always base.qcow2 vm.qcow2
bs inc0 init >/dev/null
bs inc0 snapshot create vm.qcow2 --volume vm >/dev/null
qemu-img bitmap --add vm.qcow2 b0
writes=$(python3 -c "print(max(1, int($size_bytes * $CHANGE_PCT / 100) >> 20))")
python3 - "$size_bytes" "$writes" >change.cmds <<'EOF'
import os, random, sys
size, n = int(sys.argv[1]), int(sys.argv[2])
rng = random.Random(16)
offsets = rng.sample(range(size >> 20), n)
os.makedirs("rand", exist_ok=True)
for i, o in enumerate(sorted(offsets)):
    path = f"rand/{i}"
    with open(path, "wb") as f:
        f.write(os.urandom(1 << 20))
    print(f"write -q -s {path} {o << 20} 1M")
EOF
args=()
while read -r c; do args+=(-c "$c"); done <change.cmds
qemu-io -f qcow2 "${args[@]}" vm.qcow2
rm -rf rand
qemu-img convert -f qcow2 -O raw vm.qcow2 changed.raw
changed_bytes=$((writes << 20))
log "the guest rewrote $writes MiB at random offsets ($CHANGE_PCT% of $SIZE)"

# restic: the raw base under the path the changed disk takes later
mkdir -p rtree
cp --sparse=always base.raw rtree/disk.raw
restic init -q -r restic0 >/dev/null
(cd rtree && restic -q -r ../restic0 backup disk.raw >/dev/null)
rm -f rtree/disk.raw

export_start() {   # export_start [--bitmap b0]: qemu-nbd of vm.qcow2 on $work/nbd.sock
    rm -f nbd.sock
    qemu-nbd -r -f qcow2 -x vm -k "$work/nbd.sock" "$@" vm.qcow2 2>>logs/qemu-nbd.log &
    nbd_pid=$!
    for _ in $(seq 100); do [ -S nbd.sock ] && return 0; sleep 0.05; done
    die "qemu-nbd did not start (logs/qemu-nbd.log)"
}
results=()
for round in $(seq "$ROUNDS"); do
    line=""
    for v in $(rotate "$round" full-qcow2 full-nbd bitmap restic); do
        case $v in
        restic)
            rm -rf restic1; cp -a restic0 restic1
            cp --sparse=always changed.raw rtree/disk.raw
            sync
            /usr/bin/time -f '%e %M %U %S' -o "logs/inc-restic-$round.time" sh -c \
                'cd rtree && restic -q -r ../restic1 backup disk.raw && sync' \
                >"logs/inc-restic-$round.out" 2>"logs/inc-restic-$round.err" \
                || { cat "logs/inc-restic-$round.err" >&2; die "restic failed"; }
            rm -f rtree/disk.raw
            ;;
        *)
            rm -rf "inc-$v" "cache-inc-$v" "config-inc-$v"
            cp -a inc0 "inc-$v"; cp -a cache-inc0 "cache-inc-$v"; cp -a config-inc0 "config-inc-$v"
            sync   # the copy's dirty pages are not the timed command's to write
            case $v in
            full-qcow2) timed "inc-$v-$round" bs "inc-$v" --json snapshot create vm.qcow2 --volume vm ;;
            full-nbd)
                export_start
                timed "inc-$v-$round" bs "inc-$v" --json snapshot create "nbd+unix:///vm?socket=$work/nbd.sock" --volume vm
                stop_nbd ;;
            bitmap)
                export_start --bitmap b0
                timed "inc-$v-$round" bs "inc-$v" --json snapshot create "nbd+unix:///vm?socket=$work/nbd.sock" --volume vm --dirty-bitmap b0
                stop_nbd ;;
            esac
            ;;
        esac
        line+="$v=$(wall "inc-$v-$round") "
    done
    results+=("$line")
    log "incremental, round $round: $line"
done

# The bitmap snapshot restores to the changed disk.
snap=$(jq -r .id "logs/inc-bitmap-$ROUNDS.out")   # the store of the last round
bs inc-bitmap snapshot restore "$snap" restored.raw >/dev/null
cmp changed.raw restored.raw || die "the bitmap snapshot does not restore to the changed disk"
read_full=$(jq -r .bytes_read "logs/inc-full-nbd-1.out")
read_bitmap=$(jq -r .bytes_read "logs/inc-bitmap-1.out")
from_parent=$(jq -r .bytes_from_parent "logs/inc-bitmap-1.out")

inc_table=$(printf '%s\n' "${results[@]}" | python3 -c '
import statistics, sys
rows = [dict(kv.split("=") for kv in l.split()) for l in sys.stdin if l.strip()]
med = {k: statistics.median(float(r[k]) for r in rows) for k in rows[0]}
b = med["bitmap"]
print("| incremental | median wall s | bitmap faster by |")
print("|---|---:|---:|")
for k, label in [("bitmap", "blocksnap, --dirty-bitmap over NBD"), ("full-nbd", "blocksnap, full read over NBD"),
                 ("full-qcow2", "blocksnap, full read of the qcow2 file"), ("restic", "restic 0.14, raw file")]:
    print(f"| {label} | {med[k]:.2f} | {med[k] / b:.1f}x |")
print()
print("rounds: " + "; ".join(" ".join(f"{k}={float(v):.2f}" for k, v in r.items()) for r in rows))
')

echo "## VM disk sources ($(date -u '+%Y-%m-%d'), $(nproc) cores, $SIZE disk, $data_bytes bytes allocated, $ROUNDS rounds)"
echo
echo "$first_table"
echo
echo "Change: $writes MiB of random data in 1 MiB writes at random offsets through qemu-io ($CHANGE_PCT% of $SIZE), recorded by dirty bitmap b0."
echo "Bytes read: full read over NBD $read_full, bitmap $read_bitmap (taken from the parent unread: $from_parent); the bitmap snapshot restores byte-identical (cmp)."
echo
echo "$inc_table"

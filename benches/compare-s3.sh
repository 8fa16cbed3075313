#!/usr/bin/env bash
# Compare blocksnap with restic on one local S3 server (moto), same image, same run.
#
# Usage: benches/compare-s3.sh [WORKDIR]
#   BLOCKSNAP=path  the blocksnap binary (default: target/release/blocksnap, else on PATH)
#   MOTO=path       moto_server (default: $BLOCKSNAP_MOTO, else
#                   ~/.cache/blocksnap-ci/venv/bin/moto_server, as .ci/run installs it)
#   KEEP=1          keep the work directory
#   SIZE_MB=N       megabytes of files in the image (default 300)
#   ROUNDS=N        rounds (default 1), each into fresh buckets and caches; the tools' order
#                   alternates between rounds, and the table gives medians with each round's
#                   ratio
#
# Builds base.img (1 GiB sparse ext4 holding SIZE_MB of this machine's files) and changed.img
# (files removed, added and rewritten with debugfs). Starts one moto server on a free
# 127.0.0.1 port, with a bucket for each tool, and for each tool in turn: an initial backup of
# the image, an incremental backup of the changed image under the same path, and a restore of
# the second backup, each timed with /usr/bin/time (wall seconds until the result is synced,
# peak RSS, CPU seconds) and counted in requests (moto logs one line per request: the lines
# each phase added). Both tools encrypt, with default settings; restic writes to
# s3:http://127.0.0.1:PORT/restic-ROUND. Every restore is compared with changed.img by cmp. Prints a
# Markdown table on stdout; progress goes to stderr. Installs restic, e2fsprogs, jq and time
# with apt-get when missing.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
KEEP=${KEEP:-0}
SIZE_MB=${SIZE_MB:-300}
ROUNDS=${ROUNDS:-1}
MARKER=.blocksnap-compare-s3-bench
log() { echo "== $*" >&2; }
die() { echo "compare-s3.sh: $*" >&2; exit 1; }
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive number"

missing=()
for c in restic:restic mkfs.ext4:e2fsprogs debugfs:e2fsprogs jq:jq python3:python3; do
    command -v "${c%%:*}" >/dev/null || missing+=("${c#*:}")
done
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "${missing[@]}" >&2 || { apt-get update -q >&2; apt-get install -y -q "${missing[@]}" >&2; }
fi
export PATH="$PATH:/usr/sbin:/sbin"

if [ -z "${BLOCKSNAP:-}" ]; then
    if [ -x "$repo/target/release/blocksnap" ]; then BLOCKSNAP=$repo/target/release/blocksnap
    else BLOCKSNAP=$(command -v blocksnap || true); fi
fi
[ -n "$BLOCKSNAP" ] && [ -x "$BLOCKSNAP" ] || die "no blocksnap binary (cargo build --release -p blocksnap-cli)"
MOTO=${MOTO:-${BLOCKSNAP_MOTO:-$HOME/.cache/blocksnap-ci/venv/bin/moto_server}}
[ -x "$MOTO" ] || die "no moto_server at $MOTO (.ci/run installs it)"

if [ $# -ge 1 ]; then
    work=$1; mkdir -p "$work"
    if [ -n "$(ls -A "$work")" ] && [ ! -e "$work/$MARKER" ]; then
        die "$work is not empty and not a previous work dir of this script"
    fi
else
    work=$(mktemp -d "${TMPDIR:-/tmp}/blocksnap-compare-s3.XXXXXX")
fi
work=$(cd "$work" && pwd)
touch "$work/$MARKER"
moto_pid=
cleanup() {
    [ -z "$moto_pid" ] || kill "$moto_pid" 2>/dev/null || true
    [ -z "$moto_pid" ] || wait "$moto_pid" 2>/dev/null || true
    if [ "$KEEP" != 1 ]; then rm -rf "$work"; else echo "kept $work" >&2; fi
}
trap cleanup EXIT
export LC_ALL=C DEBUGFS_PAGER=__none__
cd "$work"
rm -rf src stg restore logs config* cache* data* ./*.img ./*.tsv ./*.cmds
mkdir logs stg restore

# ---------------------------------------------------------------- images
log "building base.img ($SIZE_MB MB of files)"
mkdir src
total=0
for d in /usr/lib/python3.11 /usr/share/man /usr/share/doc /usr/lib/gcc /usr/bin /usr/share/locale \
         /usr/share/vim /usr/share/perl /usr/lib/git-core /usr/share/i18n /usr/lib/python3 /usr/sbin /etc; do
    [ -d "$d" ] && [ -r "$d" ] || continue
    mb=$(du -sm "$d" 2>/dev/null | cut -f1) || continue
    [ $((total + mb)) -le $((SIZE_MB + SIZE_MB / 4)) ] || continue
    mkdir -p "src$(dirname "$d")"; cp -a "$d" "src$d" 2>/dev/null || true
    total=$((total + mb)); [ "$total" -lt "$SIZE_MB" ] || break
done
truncate -s 1G base.img
mkfs.ext4 -q -F -d src base.img
# The change: 20 files removed, 10 of 1 MiB random bytes added, 5 rewritten in the middle.
cp --sparse=always base.img changed.img
python3 - "$work" <<'PY'
import os, random, sys
work = sys.argv[1]; rng = random.Random(20261202)
files = sorted(os.path.relpath(os.path.join(d, f), os.path.join(work, "src"))
               for d, _, fs in os.walk(os.path.join(work, "src")) for f in fs
               if os.path.isfile(os.path.join(d, f)) and not os.path.islink(os.path.join(d, f)))
files = [f for f in files if all(c.isalnum() or c in "._/+-" for c in f)]
big = [f for f in files if os.path.getsize(os.path.join(work, "src", f)) > 256 << 10]
cmds = []
for f in rng.sample(files, 20):
    if f not in big: cmds.append(f"rm /{f}")
os.makedirs(os.path.join(work, "stage"), exist_ok=True)
for i in range(10):
    p = os.path.join(work, "stage", f"add{i}"); open(p, "wb").write(rng.randbytes(1 << 20))
    cmds.append(f"write {p} added-{i}.bin")
for i, f in enumerate(rng.sample(big, 5)):
    old = open(os.path.join(work, "src", f), "rb").read(); m = len(old) // 2
    p = os.path.join(work, "stage", f"rep{i}"); open(p, "wb").write(old[:m] + rng.randbytes(8192) + old[m + 8192:])
    d, n = os.path.split(f); cmds += [f"rm /{f}", f"cd /{d}", f"write {p} {n}", "cd /"]
open(os.path.join(work, "change.cmds"), "w").write("\n".join(cmds) + "\n")
PY
debugfs -w -f change.cmds changed.img >logs/debugfs.txt 2>&1
e2fsck -fn changed.img >/dev/null 2>&1 || die "changed.img fails e2fsck -fn"
rm -rf stage src
base_alloc=$(du -B1 base.img | cut -f1); changed_alloc=$(du -B1 changed.img | cut -f1)

# ---------------------------------------------------------------- moto
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$MOTO" -H 127.0.0.1 -p "$port" >logs/moto.log 2>&1 &
moto_pid=$!
for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null && break
    python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/')" 2>/dev/null && break
    sleep 0.2
done
export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_ALLOW_HTTP=true AWS_REGION=us-east-1 \
    AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_DEFAULT_REGION=us-east-1
# Requests moto logged so far (one werkzeug access line per request).
requests() { grep -cE '"(GET|PUT|POST|HEAD|DELETE) ' logs/moto.log || true; }

printf 'round\ttool\tphase\tseconds\trss_kib\tcpu_s\trequests\n' >results.tsv
timed() { # TOOL PHASE -- CMD...  (in round $round)
    local tool=$1 phase=$2; shift 3
    sync; (echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null || true
    log "round $round: $tool $phase: $*"
    local l="$work/logs/$tool-$phase-$round" before after
    before=$(requests)
    /usr/bin/time -f '%e %M %U %S' -o "$l.time" sh -c '"$@" && sync' sh "$@" >"$l.out" 2>"$l.err" \
        || { cat "$l.err" "$l.time" >&2; die "$tool $phase failed"; }
    after=$(requests)
    grep -E '"(GET|PUT|POST|HEAD|DELETE) ' logs/moto.log | sed -n "$((before + 1)),${after}p" >"$l.requests"
    local secs rss usr sys; read -r secs rss usr sys < <(tail -n 1 "$l.time")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$tool" "$phase" "$secs" "$rss" \
        "$(awk -v u="$usr" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')" $((after - before)) >>results.tsv
}
verify() { cmp "$2" changed.img >/dev/null || die "$1: the restored image differs from changed.img"; rm -f "$2"; }
stage() { rm -f stg/disk.img; cp --sparse=always "$1" stg/disk.img; }

# ---------------------------------------------------------------- the tools
run_blocksnap() {
    export XDG_CONFIG_HOME=$work/config-$round XDG_CACHE_HOME=$work/cache-$round XDG_DATA_HOME=$work/data-$round
    local bs=("$BLOCKSNAP" --store "s3://blocksnap-$round/store" --quiet --json)
    "${bs[@]}" init >"logs/blocksnap-init-$round.out"
    stage base.img
    timed blocksnap initial -- "${bs[@]}" snapshot create stg/disk.img --volume disk
    stage changed.img
    timed blocksnap incremental -- "${bs[@]}" snapshot create stg/disk.img --volume disk
    local id; id=$(jq -r .id "logs/blocksnap-incremental-$round.out")
    timed blocksnap restore -- "${bs[@]}" snapshot restore "$id" restore/blocksnap.img
    verify blocksnap restore/blocksnap.img
}
run_restic() {
    export RESTIC_REPOSITORY=s3:http://127.0.0.1:$port/restic-$round RESTIC_PASSWORD=x \
        RESTIC_CACHE_DIR=$work/cache-$round/restic
    restic init >"logs/restic-init-$round.out" 2>&1
    stage base.img
    timed restic initial -- restic backup --host bench "$work/stg/disk.img"
    stage changed.img
    timed restic incremental -- restic backup --host bench "$work/stg/disk.img"
    rm -rf "$work/restore/restic"
    timed restic restore -- restic restore latest --target "$work/restore/restic"
    verify restic "$work/restore/restic$work/stg/disk.img"
}
for round in $(seq "$ROUNDS"); do
    for b in blocksnap restic; do
        python3 -c "import urllib.request as u; u.urlopen(u.Request('http://127.0.0.1:$port/$b-$round', method='PUT'))"
    done
    if [ $((round % 2)) = 1 ]; then run_blocksnap; run_restic; else run_restic; run_blocksnap; fi
done

# ---------------------------------------------------------------- table
cat <<EOF
- machine: $(nproc) CPUs, $(free -g | awk '/^Mem:/ {print $2}') GiB RAM, kernel $(uname -r); $(date -u '+%Y-%m-%d %H:%M UTC')
- tools: $("$BLOCKSNAP" --version), $(restic version | cut -d' ' -f1-2), moto $("$(dirname "$MOTO")/python" -c 'import moto; print(moto.__version__)' 2>/dev/null || echo '?') on 127.0.0.1 (threaded, in memory)
- image: 1 GiB ext4, allocated base $base_alloc, changed $changed_alloc bytes; requests/GiB = requests / allocated GiB of the phase's image

EOF
python3 - results.tsv "$base_alloc" "$changed_alloc" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
base, changed = int(sys.argv[2]), int(sys.argv[3])
rounds = sorted({int(r["round"]) for r in rows})
by = {(int(r["round"]), r["tool"], r["phase"]): r for r in rows}
med = lambda tool, phase, key: statistics.median(float(by[(n, tool, phase)][key]) for n in rounds)
print(f"Medians of {len(rounds)} round(s):")
print()
print("| phase | tool | seconds | MB/s | peak RSS MiB | CPU s | requests | requests/GiB |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
for phase in ["initial", "incremental", "restore"]:
    size = base if phase == "initial" else changed
    for tool in ["blocksnap", "restic"]:
        s = med(tool, phase, "seconds")
        req = med(tool, phase, "requests")
        print(f"| {phase} | {tool} | {s:.1f} | {size / 1e6 / max(s, 0.01):.0f} | {med(tool, phase, 'rss_kib') / 1024:.0f} "
              f"| {med(tool, phase, 'cpu_s'):.2f} | {req:.0f} | {req / (size / 2**30):.0f} |")
print()
for phase in ["initial", "incremental", "restore"]:
    ratios = [float(by[(n, "restic", phase)]["seconds"]) / max(float(by[(n, "blocksnap", phase)]["seconds"]), 0.01) for n in rounds]
    reqs = ", ".join(f'{by[(n, "blocksnap", phase)]["requests"]} vs {by[(n, "restic", phase)]["requests"]}' for n in rounds)
    print(f"- {phase}: blocksnap {statistics.median(ratios):.2f}x restic's speed (median; rounds "
          + ", ".join(f"{x:.2f}" for x in ratios) + f"); requests blocksnap vs restic by round: {reqs}")
PY
# Requests by kind: method and the kind of object (the first path part under the store, a
# listing when the path ends at the bucket, .idx apart from packs).
echo
echo "Requests by kind in round 1 (method object-kind: count):"
echo
for tool in blocksnap restic; do
    for phase in initial incremental restore; do
        printf -- '- %s %s: ' "$tool" "$phase"
        python3 - "logs/$tool-$phase-1.requests" "$tool" <<'PY'
import collections, re, sys
from urllib.parse import urlsplit, parse_qs
tool = sys.argv[2]
kinds = collections.Counter()
for line in open(sys.argv[1]):
    m = re.search(r'"(GET|PUT|POST|HEAD|DELETE) (\S+) ', line)
    if not m:
        continue
    method, target = m.groups()
    u = urlsplit(target)
    parts = [p for p in u.path.split("/") if p]
    q = parse_qs(u.query, keep_blank_values=True)
    if len(parts) <= 1:
        pre = q["prefix"][0].split("/") if "prefix" in q else None
        skip = 1 if tool == "blocksnap" else 0   # blocksnap's objects are under store/
        kind = "list " + (pre[skip:skip + 1] or ["/"])[0] if pre is not None else "bucket"
        kinds[(method, kind.strip())] += 1
        continue
    rest = parts[2:] if tool == "blocksnap" else parts[1:]
    kind = rest[0] if rest else "?"
    if parts[-1].endswith(".idx"):
        kind = "idx"
    kinds[(method, kind)] += 1
print(", ".join(f"{m} {k}: {n}" for (m, k), n in sorted(kinds.items(), key=lambda x: -x[1])))
PY
    done
done

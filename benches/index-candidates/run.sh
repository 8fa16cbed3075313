#!/usr/bin/env bash
# Fills each engine to 1, 5 and 10 million entries and probes each step twice: page cache dropped
# (as root; the day's first command), then warm. Usage: benches/index-candidates/run.sh [WORKDIR]
#   ENGINES="sled redb fjall"  which engines, in this order
#   STEPS="1000000 5000000 10000000"
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
ENGINES=${ENGINES:-sled redb fjall}
STEPS=${STEPS:-1000000 5000000 10000000}
work=${1:-$(mktemp -d "${TMPDIR:-/var/tmp}/index-candidates.XXXXXX")}
(cd "$here" && cargo build --release --quiet)
bin=$here/target/release/index-candidates
drop() { sync; if [ "$(id -u)" = 0 ]; then echo 3 >/proc/sys/vm/drop_caches; fi; }
for kind in $ENGINES; do
    dir=$work/$kind
    rm -rf "$dir"
    held=0
    for step in $STEPS; do
        "$bin" fill "$kind" "$dir" "$held" "$step"
        held=$step
        drop
        echo -n "cold "; "$bin" probe "$kind" "$dir" "$held"
        held=$((held + 50000))
        echo -n "warm "; "$bin" probe "$kind" "$dir" "$held"
        held=$((held + 50000))
    done
    rm -rf "$dir"
done

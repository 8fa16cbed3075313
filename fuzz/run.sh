#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each): fuzz/run.sh [SECONDS]
# Needs cargo-fuzz (`cargo install cargo-fuzz`). The toolchain here is stable; cargo-fuzz needs
# nightly flags, which RUSTC_BOOTSTRAP=1 enables on a stable compiler.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# The checked-in seeds stay as they are; the corpus grows in target/ (ignored by git).
for src in fuzz_targets/*.rs; do
  t=$(basename "$src" .rs)
  work="target/corpus/$t"
  mkdir -p "$work"
  cp -n corpus/"$t"/* "$work"/
  echo "== $t ($secs s)"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "$work" -- -max_total_time="$secs" -max_len=65536
done

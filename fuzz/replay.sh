#!/usr/bin/env bash
# Builds every fuzz target on the stable toolchain (no cargo-fuzz, no sanitizer flags: libFuzzer
# is linked but the code is not instrumented) and runs each one over its checked-in seed corpus
# (fuzz/corpus/TARGET/*), once per file: the targets compile, and none panics on its seeds.
# CI runs this; fuzz/run.sh does the real (coverage-guided) fuzzing. Usage: fuzz/replay.sh
set -euo pipefail
cd "$(dirname "$0")"
cargo build --quiet --bins
for src in fuzz_targets/*.rs; do
  t=$(basename "$src" .rs)
  seeds=(corpus/"$t"/*)
  if [ ! -e "${seeds[0]}" ]; then
    echo "fuzz target $t has no seed corpus in fuzz/corpus/$t/" >&2
    exit 1
  fi
  # libFuzzer given files (not a directory) runs each once and exits non-zero on a crash.
  if ! log=$(target/debug/"$t" "${seeds[@]}" 2>&1); then
    printf '%s\n' "$log" >&2
    echo "fuzz target $t failed on its seed corpus" >&2
    exit 1
  fi
  echo "fuzz target $t: ${#seeds[@]} seeds replayed"
done

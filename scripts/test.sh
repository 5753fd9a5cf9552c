#!/usr/bin/env bash
# The test suite: installs what it needs, checks formatting and lints, runs every test.
# Root-only tests (network namespaces, TUN, nftables, dpkg) run when this runs as root and
# print "skipped: ..." otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo fmt --check
cargo clippy --all-targets -- -D warnings
# Benchmarks compile and run once in test mode (no timing).
cargo test --benches
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# Namespace tests share the machine: at most two tests at a time.
set +e
# --no-fail-fast: every test binary runs, so the summary counts the whole suite.
RUST_TEST_THREADS=2 cargo test --no-fail-fast --lib --bins --tests 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) passed.*/\1/' | paste -sd+ - | bc)
failed=$(grep -E '^test result:' "$log" | sed -E 's/.* ([0-9]+) failed.*/\1/' | paste -sd+ - | bc)
echo
echo "summary: ${passed:-0} passed, ${failed:-0} failed"
exit "$status"

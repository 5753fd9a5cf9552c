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
cargo build --bins
# Namespace tests share the machine: run test binaries one at a time, tests inside them in
# parallel where they use their own namespaces.
cargo test --all-targets -- --test-threads=2

#!/usr/bin/env bash
# Tunnel throughput, CPU per Gbit/s and RSS: our standalone userspace device next to
# wireguard-go and the bare veth, in one run of shared/tools/wg-bench.sh (medians of N).
# Usage: bench/run-wg-bench.sh [-r REPS] [-t SECS] [--wg-go PATH-TO-wireguard-go]
set -euo pipefail
cd "$(dirname "$0")/.."
reps=3; secs=10; wggo=()
while [ $# -gt 0 ]; do
  case "$1" in
    -r) reps="$2"; shift 2 ;;
    -t) secs="$2"; shift 2 ;;
    --wg-go) wggo=(--wg-go "$2"); shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
cargo build --release --bin netbird-agent
bin="$PWD/target/release/netbird-agent"
exec bash ../shared/tools/wg-bench.sh -r "$reps" -t "$secs" "${wggo[@]}" \
  --cmd-a "$bin wireguard -f \$WGB_IFACE" --cmd-b "$bin wireguard -f \$WGB_IFACE" \
  veth wireguard-go cmd

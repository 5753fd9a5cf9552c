#!/usr/bin/env bash
# run-wg-bench.sh - side-by-side WireGuard tunnel benchmark: our userspace device (standalone
# `netbird-agent wireguard`), wireguard-go and the bare veth, in network namespaces, with the
# shared harness wg-bench.sh (medians over repetitions, interleaved).
#
# Usage: bench/run-wg-bench.sh [-r REPS] [-t SECS] [--wg-go BIN] [--bin OURS] [-- extra wg-bench args]
#   --wg-go BIN   wireguard-go binary to compare against (e.g. a current upstream build made
#                 outside this repository); default: wireguard-go in PATH
#   --bin OURS    our binary; default: target/release/netbird-agent (built if missing)
#   WG_BENCH      path of wg-bench.sh; default: ../shared/tools/wg-bench.sh next to the repo
# Needs root, iperf3, jq, wg (wireguard-tools).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
REPS=3; SECS=10; WG_GO=""; OURS=""; EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    -r) REPS="$2"; shift 2;;
    -t) SECS="$2"; shift 2;;
    --wg-go) WG_GO="$2"; shift 2;;
    --bin) OURS="$2"; shift 2;;
    --) shift; EXTRA=("$@"); break;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0;;
    *) echo "unknown option $1" >&2; exit 2;;
  esac
done
BENCH=${WG_BENCH:-}
if [ -z "$BENCH" ]; then
  for c in "$here/../shared/tools/wg-bench.sh" "$here/shared/tools/wg-bench.sh" /work/shared/tools/wg-bench.sh; do
    [ -x "$c" ] && { BENCH=$c; break; }
  done
fi
[ -n "$BENCH" ] && [ -x "$BENCH" ] || { echo "wg-bench.sh not found (set WG_BENCH)" >&2; exit 1; }
if [ -z "$OURS" ]; then
  OURS="$here/target/release/netbird-agent"
  [ -x "$OURS" ] || (cd "$here" && cargo build --release)
fi
WG_GO=${WG_GO:-$(command -v wireguard-go || true)}
[ -x "$WG_GO" ] || { echo "wireguard-go not found (pass --wg-go)" >&2; exit 1; }

echo "# ours: $OURS"
echo "# wireguard-go: $WG_GO ($("$WG_GO" --version 2>/dev/null | head -1 || true))"
# One run, repetitions interleaved across modes; our device is mode "cmd".
exec "$BENCH" -r "$REPS" -t "$SECS" --wg-go "$WG_GO" \
  --cmd-a "$OURS wireguard --foreground \$WGB_IFACE" \
  --cmd-b "$OURS wireguard --foreground \$WGB_IFACE" "${EXTRA[@]}" cmd wireguard-go veth

#!/usr/bin/env bash
# Time from both agents started to the first ping reply across NAT (direct path), N runs of
# the built-in lab; prints every run and the median. Needs root and a release build:
#   cargo build --release --bin netbird-agent && bench/first-ping.sh 10
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-10}"
bin="${NB_AGENT_BIN:-target/release/netbird-agent}"
times=()
for i in $(seq 1 "$runs"); do
  out="$("$bin" lab --settle 0 --timeout 60 2>&1)"
  t="$(sed -n 's/.*across the tunnel, \([0-9.]*\)s after the agents were started.*/\1/p' <<<"$out")"
  if [ -z "$t" ]; then
    echo "run $i failed:"; echo "$out" | tail -20; exit 1
  fi
  echo "run $i: ${t} s"
  times+=("$t")
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "median of %d: %.2f s (min %.2f, max %.2f)\n", NR, m, a[1], a[NR]}'

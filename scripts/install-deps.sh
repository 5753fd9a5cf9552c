#!/usr/bin/env bash
# Installs what building, the tests and the lab need on a Debian machine (run as root).
# Safe to run again: apt-get skips what is already installed.
set -euo pipefail

packages=(
  ca-certificates curl build-essential pkg-config
  iproute2 iputils-ping nftables iperf3 dnsutils
  wireguard-go wireguard-tools coturn
  systemd dpkg-dev procps bc
)

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: not root; skipping apt-get (root-only tests will be skipped)" >&2
else
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
  fi
  # coturn's package starts nothing by itself here (no systemd as PID 1); tests run their own.
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    :
  else
    echo "install-deps: installing the Rust toolchain with rustup" >&2
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component clippy,rustfmt
  fi
fi

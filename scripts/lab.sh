#!/usr/bin/env bash
# The built-in lab: installs what it needs, builds the agent, then runs `netbird-agent lab`:
# testbed servers (management, signal, relay) in a WAN namespace, two peers each behind its
# own NAT router, daemons joined with a setup key, a ping across the tunnel, each status.
# Needs root. Everything it creates is removed when it ends (also on Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --bin netbird-agent
exec target/release/netbird-agent lab "$@"

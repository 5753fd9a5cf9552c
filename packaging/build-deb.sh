#!/usr/bin/env bash
# Builds netbird-agent_<version>_<arch>.deb from a built binary.
# Usage: packaging/build-deb.sh <path-to-netbird-agent-binary> <output-dir>
set -euo pipefail
bin="${1:?usage: build-deb.sh BINARY OUTDIR}"
out="${2:?usage: build-deb.sh BINARY OUTDIR}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)"
arch="$(dpkg --print-architecture)"
mkdir -p "$out"
# Stage next to the output, not in /tmp, which is small on some machines.
stage="$(mktemp -d "$out/.stage.XXXXXX")"
trap 'rm -rf "$stage"' EXIT

install -d -m 0755 "$stage/usr/bin"
# Ship a stripped binary (debug info stays with the build); strip while copying so the
# unstripped copy never lands in the stage.
if command -v objcopy >/dev/null 2>&1; then
  objcopy --strip-debug "$bin" "$stage/usr/bin/netbird-agent"
  chmod 0755 "$stage/usr/bin/netbird-agent"
else
  install -m 0755 "$bin" "$stage/usr/bin/netbird-agent"
fi
install -D -m 0644 "$root/systemd/netbird-agent.service" "$stage/lib/systemd/system/netbird-agent.service"
mkdir -p "$stage/usr/share/bash-completion/completions" "$stage/usr/share/zsh/vendor-completions" \
  "$stage/usr/share/fish/vendor_completions.d"
"$bin" completions bash > "$stage/usr/share/bash-completion/completions/netbird-agent"
"$bin" completions zsh > "$stage/usr/share/zsh/vendor-completions/_netbird-agent"
"$bin" completions fish > "$stage/usr/share/fish/vendor_completions.d/netbird-agent.fish"
install -d -m 0700 "$stage/var/lib/netbird-agent"
install -d -m 0755 "$stage/etc/netbird-agent"
install -D -m 0644 "$root/README.md" "$stage/usr/share/doc/netbird-agent/README.md"

mkdir -p "$stage/DEBIAN"
cat > "$stage/DEBIAN/control" <<CONTROL
Package: netbird-agent
Version: ${version}
Architecture: ${arch}
Maintainer: netbird-agent developers <noreply@netbird-agent.invalid>
Depends: iproute2, nftables
Recommends: wireguard-tools
Section: net
Priority: optional
Description: NetBird-compatible peer agent for Linux
 Joins a NetBird network with a setup key or SSO and keeps WireGuard tunnels to its peers,
 driven by up/down/status over a local socket and run as a systemd service.
CONTROL
for s in postinst prerm postrm; do
  install -m 0755 "$here/deb/$s" "$stage/DEBIAN/$s"
done
dpkg-deb --root-owner-group --build "$stage" "$out/netbird-agent_${version}_${arch}.deb" >/dev/null
echo "$out/netbird-agent_${version}_${arch}.deb"

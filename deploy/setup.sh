#!/usr/bin/env bash
# Installs what building and testing Skerry needs on a fresh Debian 12 machine. Idempotent:
# packages already present are not touched, so it costs a second on a prepared machine.
set -euo pipefail

# containerd + runc + CNI plugins run real containers (the cri runtime); busybox-static is what
# deploy/images/build.sh builds the registry-free images from; iproute2 for the pod networks;
# iptables for the tests that count and cut traffic on private ports and, with util-linux
# (nsenter), for the fault suite's network namespaces; curl for the quickstart's wait on the API;
# make for building jemalloc (cloudcore's allocator); nftables for edgecore's Service proxy and
# conntrack for its flush of a gone UDP endpoint's flows (both in its netns tests too).
packages=(make mosquitto protobuf-compiler ca-certificates procps containerd runc containernetworking-plugins busybox-static iproute2 iptables util-linux curl nftables conntrack)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The Debian package enables a system-wide mosquitto on 1883; tests start their own on private
# ports, and the quickstart uses cloudcore's embedded broker, so the system one is not needed.
# The Service proxy's tests fail under CI without these (never a silent skip): say so here first.
if [ "${CI:-}" = "true" ]; then
  for tool in nft conntrack; do
    command -v "$tool" >/dev/null || { echo "setup: $tool is missing after the install"; exit 1; }
  done
fi
command -v cargo >/dev/null || { echo "setup: cargo is required (https://rustup.rs)"; exit 1; }

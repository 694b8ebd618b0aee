#!/usr/bin/env bash
# CI: real network faults (tests/it/netfault.rs). Needs root, iproute2 and
# iptables; installs iptables if missing. Each test makes two network
# namespaces of its own joined by a veth link (10.200.0.0/30 inside them),
# runs the sidecar in one and a proxy to the development hub in the other,
# and injects faults on that link only. The tests delete their namespaces
# (and with them the link and every rule) when they end; this trap also
# deletes them if the run is killed.
#
# NETFAULT_OUTAGE_S (default 90) sets how long the partition lasts.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "netfault: needs root (ip netns, iptables)" >&2
  exit 1
fi
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}"
fi

export NETFAULT_PREFIX="acsnf$$"
cleanup() {
  for ns in $(ip netns list | awk '{print $1}' | grep "^${NETFAULT_PREFIX}-" || true); do
    ip netns del "$ns" || true
  done
}
trap cleanup EXIT INT TERM

# One at a time: the timings printed are for an otherwise idle link.
cargo test --locked --test it -- --ignored netfault_ --test-threads=1 --nocapture

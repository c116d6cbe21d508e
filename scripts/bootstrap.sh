#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian machine; does nothing when all is there.
#   scripts/bootstrap.sh          build + test needs (cmake for libz-ng-sys, cargo-nextest, iproute2
#                                 and nftables for the network-fault tests, promtool for the alerts)
#   scripts/bootstrap.sh --bench  also nginx, wrk and perf for `loadtest compare` and profiling, and
#                                 valgrind, h2load and curl for loadtest/bench/instructions.sh
set -euo pipefail

packages=()
command -v cmake >/dev/null 2>&1 || packages+=(cmake)
command -v cc >/dev/null 2>&1 || packages+=(build-essential)
# The network-fault tests build hosts out of network namespaces and cut links with nftables.
command -v ip >/dev/null 2>&1 || packages+=(iproute2)
command -v nft >/dev/null 2>&1 || packages+=(nftables)
# promtool checks and unit-tests the alert rules in k8s/monitoring.
command -v promtool >/dev/null 2>&1 || packages+=(prometheus)
if [ "${1:-}" = "--bench" ]; then
  command -v nginx >/dev/null 2>&1 || packages+=(nginx)
  command -v wrk >/dev/null 2>&1 || packages+=(wrk)
  command -v perf >/dev/null 2>&1 || packages+=(linux-perf)
  command -v valgrind >/dev/null 2>&1 || packages+=(valgrind)
  command -v h2load >/dev/null 2>&1 || packages+=(nghttp2-client)
  command -v curl >/dev/null 2>&1 || packages+=(curl)
fi

if [ "${#packages[@]}" -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "bootstrap: installing ${packages[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${packages[@]}" >/dev/null
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "bootstrap: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi

#!/usr/bin/env bash
# Every measurement of BENCHMARKS.md, with release builds, into bench-results/<UTC time>/.
# Takes about 30 minutes with the defaults; do not run it on a machine that is doing other work.
#
#   loadtest/bench/run-all.sh                 everything
#   ONLY="compare idle" loadtest/bench/run-all.sh
#   ONLY=instructions loadtest/bench/run-all.sh    Ir per request under callgrind (instructions.sh)
#   DURATION=5s ROUNDS=1 FAILOVER_RUNS=2 loadtest/bench/run-all.sh   a quicker pass
#
# Then: python3 loadtest/bench/summarize.py bench-results/<dir> > tables.md
set -euo pipefail
cd "$(dirname "$0")/../.."

ONLY="${ONLY:-instructions compare idle failover election}"
DURATION="${DURATION:-10s}"
ROUNDS="${ROUNDS:-2}"
FAILOVER_RUNS="${FAILOVER_RUNS:-5}"
IDLE="${IDLE:-10000}"

scripts/bootstrap.sh --bench
cargo build --release --bins
LT=target/release/loadtest
out="bench-results/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "cores: $(nproc)"
  echo "memory: $(free -h | awk '/^Mem:/ {print $2}')"
  echo "kernel: $(uname -r)"
  echo "nginx: $(nginx -v 2>&1)"
  echo "wrk: $(wrk --version 2>&1 | head -1)"
} > "$out/machine.txt"
cat "$out/machine.txt"

want() { [[ " $ONLY " == *" $1 "* ]]; }

if want instructions; then
  # Instructions per proxied request under callgrind, nginx vs rw-proxy, and wrk req/s and p99
  # in the same run: the count is what a performance change is judged by on a noisy machine.
  echo "== instructions (callgrind)" >&2
  loadtest/bench/instructions.sh "$out/instructions"
fi

if want compare; then
  # req/s and latency vs nginx, GET and PUT, and the overhead over a direct connection.
  echo "== compare ($DURATION x $ROUNDS rounds)" >&2
  "$LT" compare --connections 1,16,64,256 --methods GET,PUT --duration "$DURATION" \
    --rounds "$ROUNDS" --json > "$out/compare.json"
fi

if want idle; then
  # RSS of rw-proxy and nginx holding $IDLE idle client connections.
  ulimit -n "$(ulimit -Hn)" || true
  echo "== idle connections ($IDLE)" >&2
  "$LT" compare --targets nginx,rw-proxy --connections 1 --methods GET --duration 1s \
    --warmup 0s --no-wrk --idle "$IDLE" --json > "$out/idle.json"
fi

if want failover; then
  for fault in "kill writer" "hang writer" "unready writer" "switchover"; do
    name="${fault%% *}"
    for i in $(seq 1 "$FAILOVER_RUNS"); do
      echo "== failover --$fault (run $i)" >&2
      # A failed check is a result, not a reason to stop the other measurements.
      # shellcheck disable=SC2086
      "$LT" failover --${fault} --json > "$out/failover-$name-$i.json" || true
    done
  done
fi

if want election; then
  echo "== writer-election probing 100 and 500 nodes" >&2
  "$LT" election-bench --nodes 100,500 --duration 30s --json > "$out/election.json"
fi

echo "results in $out" >&2

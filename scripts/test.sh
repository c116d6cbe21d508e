#!/usr/bin/env bash
# The test command of README.md: set-up, then every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
cargo nextest run --workspace --no-fail-fast "$@"

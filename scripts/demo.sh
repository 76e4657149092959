#!/usr/bin/env bash
# Run the AGATA demo: makes sure .venv is ready, then `agata demo` with your arguments.
#
#   bash scripts/demo.sh [agata demo options...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
export FLWR_TELEMETRY_ENABLED="${FLWR_TELEMETRY_ENABLED:-0}"
exec .venv/bin/agata demo "$@"

#!/usr/bin/env bash
# Install hyperlab and run the quickstart search (ten small HyperLSTMs on Tiny Shakespeare, a few minutes
# on a laptop's CPUs); its runs land in ./hyperlab-runs (or $MLFLOW_TRACKING_URI). Extra arguments go to
# `hyperlab search`, e.g. `scripts/quickstart.sh --smoke-test`.
set -euo pipefail
cd "$(dirname "$0")/.."
"$(dirname "$0")/setup.sh"
exec "${PYTHON:-python}" -m hyperlab.cli search search_spaces/quickstart.yaml "$@"

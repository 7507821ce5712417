#!/usr/bin/env bash
# Install hyperlab with its test tools and run the tests: lint and the default suite (about ten minutes on
# two cores); `--all` then runs the long tests too (interruptions at many moments, a multi-node Ray cluster
# with an MLflow server on PostgreSQL and an S3-compatible server). System packages the tests use
# (Chromium for the figure test, PostgreSQL for the cluster's databases) are installed with apt-get where
# they are missing and this runs as root; without them those tests say why they skip.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
"$(dirname "$0")/setup.sh" --dev
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v initdb >/dev/null || [[ -x /usr/lib/postgresql/15/bin/initdb ]] || missing+=(postgresql)
if (( ${#missing[@]} )) && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
"$PYTHON" -m ruff check .
"$PYTHON" -m pytest -q
if [[ "${1:-}" == --all ]]; then
    "$PYTHON" -m pytest -q -m long
fi

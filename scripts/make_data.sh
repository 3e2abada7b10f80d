#!/usr/bin/env bash
# `make data`: fetch the training photos and prepare them into data/prepared/.
# Arguments are passed on to scripts/fetch_data.py (see --help), e.g. --pack or --with-stellarium.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/fetch_data.py "$@"

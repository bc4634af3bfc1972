#!/usr/bin/env bash
# Install streamtrain with its test extras into .venv and run the whole suite.
# Extra arguments go to pytest. The exit code is pytest's.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
ensure_venv test
exec .venv/bin/python -m pytest "$@"

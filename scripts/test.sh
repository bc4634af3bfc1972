#!/usr/bin/env bash
# Install streamtrain with its test extras into .venv and run the whole suite.
# Extra arguments go to pytest (after ours, so `-n 0` runs the tests in this process, for -s or
# --pdb). The exit code is pytest's.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
ensure_venv test
# The tests across hosts make them as network namespaces with iproute2's `ip` (as root, as in CI).
if ! command -v ip >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  { apt-get install -y -qq iproute2 || { apt-get update -qq && apt-get install -y -qq iproute2; }; } >/dev/null 2>&1 \
    || echo "warning: iproute2 could not be installed: the tests across hosts will be skipped" >&2
fi
# The live page's tests open it in a real browser: Debian's headless-capable Chromium.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }; } >/dev/null 2>&1 \
    || echo "warning: chromium could not be installed: the live page's browser tests will be skipped" >&2
fi
# Three worker processes on CI's two cores: many tests wait on the processes and servers they
# start, and work stealing keeps the long ones from ending the run alone (the report has its time).
exec .venv/bin/python -m pytest -n 3 --dist worksteal "$@"

#!/usr/bin/env bash
# Install streamtrain with its test extras into .venv and run the whole suite.
# Extra arguments go to pytest (after ours, so `-n 0` runs the tests in this process, for -s or
# --pdb). The exit code is pytest's.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
ensure_venv test
# The PyTorch batch iterator's tests need torch: its CPU build only (PyPI's torch is a CUDA build
# of several GB), from a local wheel or PyTorch's CPU index where pip can reach one; else they skip.
if ! .venv/bin/python -c 'import torch' >/dev/null 2>&1; then
  .venv/bin/python -m pip install --disable-pip-version-check -q 'torch==2.13.0+cpu' >>.venv/install.log 2>&1 \
    || echo "warning: no CPU build of torch 2.13.0 to install: the PyTorch tests will be skipped" >&2
fi
# Debian packages some tests need, installed where they can be (as root, as in CI); where one
# cannot, its tests are skipped, saying why.
debian_package() {  # COMMAND PACKAGE WHAT-IS-SKIPPED
  if ! command -v "$1" >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" \
        || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2"; }; } >/dev/null 2>&1 \
      || echo "warning: $2 could not be installed: $3 will be skipped" >&2
  fi
}
# The tests across hosts make them as network namespaces with iproute2's `ip`, and lose packets
# on their links with nftables' `nft`.
debian_package ip iproute2 "the tests across hosts"
debian_package nft nftables "the test of a lossy link"
# The live page's tests open it in a real browser: Debian's headless-capable Chromium.
debian_package chromium chromium "the live page's browser tests"
# Three worker processes on CI's two cores: many tests wait on the processes and servers they
# start, and work stealing keeps the long ones from ending the run alone (the report has its time).
exec .venv/bin/python -m pytest -n 3 --dist worksteal "$@"

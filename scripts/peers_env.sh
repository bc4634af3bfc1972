#!/usr/bin/env bash
# The benchmark's peers that cannot share streamtrain's environment (mosaicml-streaming pins an
# older numpy): a virtual environment of their own, .venv-peers, used by scripts/bench.py.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-peers
.venv-peers/bin/pip install -q mosaicml-streaming litdata vowpalwabbit h5py torch torchvision

#!/usr/bin/env bash
# The benchmark's peers that cannot share streamtrain's environment (mosaicml-streaming pins an
# older numpy): a virtual environment of their own, .venv-peers, used by scripts/bench.py.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-peers
# mosaicml-streaming imports torchvision, which fails to import beside the CPU wheel of torch
# 2.13.0 ("operator torchvision::nms does not exist"): the pair below imports together (a CUDA
# build that lies on this kind of machine's disk; it runs on the CPU). Unpinned, torch is a CUDA
# build of several GB from the index. pandas and pyarrow: the click benchmark's PyTorch recipe reads
# Parquet and hashes with pandas.
.venv-peers/bin/pip install -q mosaicml-streaming litdata vowpalwabbit h5py pandas pyarrow "torch==2.14.1" "torchvision==0.29.1"

#!/usr/bin/env bash
# Install streamtrain into .venv, then train on the bundled breast-cancer data, checkpoint,
# resume from the checkpoint, and evaluate on the held-out rows.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_venv.sh
ensure_venv plot

st=.venv/bin/streamtrain
run=runs/quickstart
rm -rf "$run"  # each quickstart starts from scratch, so it can be re-run
# The textbook recipe: 10 sigmoid hidden units, batch 32, learning rate 0.1, L2 0.01.
recipe=(data/breast_cancer.h5 --hidden 10 --activation sigmoid --optimizer sgd --lr 0.1 --lr-schedule constant
        --batch-size 32 --l2 0.01 --val-fraction 0.2
        --checkpoint-dir "$run")

echo "== train 30 epochs, checkpointing to $run"
"$st" train "${recipe[@]}" --epochs 30 --quiet
echo "== resume from the newest checkpoint and continue to 60 epochs"
"$st" train "${recipe[@]}" --epochs 60 --resume
echo "== evaluate on the 20% validation hold-out"
"$st" evaluate "$run" data/breast_cancer.h5 --split val

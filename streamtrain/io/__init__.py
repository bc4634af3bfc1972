"""Files streamtrain writes: checkpoints, predictions, atomically."""

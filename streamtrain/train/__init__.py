"""The training loop, its state, hooks and the trainer facade."""

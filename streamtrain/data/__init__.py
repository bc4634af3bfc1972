"""From a dataset to batches: shuffle plans, the loader and its sources, scaling."""

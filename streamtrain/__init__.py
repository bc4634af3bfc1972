"""streamtrain: train a two-layer neural network on datasets larger than memory.

The public names are imported on first use, so ``import streamtrain`` (and the command line's
start, which must install its signal handlers before anything slow) stays cheap.
"""

from __future__ import annotations

import importlib
import logging

from ._version import __version__

# The library logs through "streamtrain" and shows nothing unless the application sets logging up.
logging.getLogger("streamtrain").addHandler(logging.NullHandler())

# public name -> the module that defines it
_EXPORTS = {
    "open_dataset": "readers", "Dataset": "readers", "ArrayDataset": "readers",
    "Sampler": "data.sampling", "Loader": "data.loader", "BatchIterator": "batches", "Scaler": "data.scaling",
    "TwoLayerNet": "nn.network", "Trainer": "train.trainer", "TrainConfig": "config",
    "save_checkpoint": "io.checkpoint", "load_checkpoint": "io.checkpoint", "make_data": "synthetic",
    "StreamtrainError": "errors", "DataError": "errors", "CheckpointError": "errors", "ConfigError": "errors",
    "TrainingError": "errors", "Interrupted": "errors",
    # the scikit-learn estimators import scikit-learn (an optional extra)
    "StreamClassifier": "estimator", "StreamRegressor": "estimator",
    "MLflowLogger": "train.tracking",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'streamtrain' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(__all__)

"""streamtrain: train a two-layer neural network on datasets larger than memory."""

from ._version import __version__  # noqa: E402

from .batches import BatchIterator  # noqa: E402
from .checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from .config import TrainConfig  # noqa: E402
from .errors import CheckpointError, DataError, Interrupted, StreamtrainError, TrainingError  # noqa: E402
from .loader import Loader  # noqa: E402
from .nn.network import TwoLayerNet  # noqa: E402
from .readers import ArrayDataset, Dataset, open_dataset  # noqa: E402
from .sampling import Sampler  # noqa: E402
from .scaling import Scaler  # noqa: E402
from .synthetic import make_data  # noqa: E402
from .trainer import Trainer  # noqa: E402

__all__ = [
    "__version__", "open_dataset", "Dataset", "ArrayDataset", "Sampler", "Loader", "BatchIterator", "Scaler",
    "TwoLayerNet", "Trainer", "TrainConfig", "save_checkpoint", "load_checkpoint", "make_data",
    "StreamtrainError", "DataError", "CheckpointError", "TrainingError", "Interrupted",
]


def __getattr__(name):
    # The scikit-learn estimators import scikit-learn (an optional extra) only when asked for.
    if name in ("StreamClassifier", "StreamRegressor"):
        from . import estimator

        return getattr(estimator, name)
    raise AttributeError(f"module 'streamtrain' has no attribute {name!r}")

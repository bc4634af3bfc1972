"""The network, its math tables and its optimisers; knows nothing of files."""

from .functions import ACTIVATIONS, INITS, TASKS
from .network import TwoLayerNet
from .optim import OPTIMIZERS, make_optimizer

__all__ = ["ACTIVATIONS", "INITS", "TASKS", "OPTIMIZERS", "TwoLayerNet", "make_optimizer"]

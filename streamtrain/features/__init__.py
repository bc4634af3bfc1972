"""Column types and their encoders, applied once per chunk and vectorised: bounded mergeable
vocabularies (``vocab``) and the codes they give (``codes``), stable hashing (``hashing``).
A low layer: it imports only ``streamtrain.errors``.
"""

from __future__ import annotations

from .codes import Categories
from .hashing import bucket, hash64
from .vocab import Vocabulary

__all__ = ["Categories", "Vocabulary", "bucket", "hash64"]

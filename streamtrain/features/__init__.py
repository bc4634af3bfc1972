"""Column types and their encoders, applied once per chunk and vectorised: stable hashing
(``hashing``). A low layer: it imports only ``streamtrain.errors``.
"""

from __future__ import annotations

from .hashing import bucket, hash64

__all__ = ["bucket", "hash64"]

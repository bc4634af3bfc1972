"""Column types and their encoders, applied once per chunk and vectorised: schema inference
(``schema``), bounded mergeable vocabularies (``vocab``) and the codes they give (``codes``),
stable hashing (``hashing``), distinct counts (``distinct``), and the encoding of a table's columns
into the network's inputs (``encoding``), learned in one pass (``learn``). A low layer: it imports
only ``streamtrain.errors``.
"""

from __future__ import annotations

from .codes import Categories
from .encoding import Encoding, EncodingOptions
from .hashing import bucket, hash64
from .learn import learn_encoding
from .schema import ColumnPlan, StringChoice, choose_string_kind, infer_columns
from .vocab import Vocabulary

__all__ = ["Categories", "ColumnPlan", "Encoding", "EncodingOptions", "StringChoice", "Vocabulary", "bucket",
           "choose_string_kind", "hash64", "infer_columns", "learn_encoding"]

"""numba, as every module that compiles imports it: with its table of argument types whole before
any thread types an argument."""

from __future__ import annotations

import numba
# The first kernel a process loads makes numba's CPU target import these, and each registers an
# argument type in the table ``numba.typeof`` dispatches on. A thread typing an argument of a type
# not seen before meanwhile iterates that table and fails ("dictionary changed size during
# iteration"): it did in the encoding's pass, two columns on two threads. Imported here, before
# any thread, the table no longer changes.
import numba.experimental.function_type  # noqa: F401
import numba.experimental.jitclass  # noqa: F401

__all__ = ["numba"]

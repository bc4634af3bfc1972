"""Two threads in one compiled step: a lasting helper thread and a two-party spin barrier.

The minibatch step splits the hidden layer's columns in two halves (``minibatch``); with two
lanes each half is worked on by a thread of its own, and the two meet once per block of rows to
add their halves of the output layer's input. A meeting costs well under a microsecond where
each thread has a core (a Python event or lock costs tens), so the threads wait for each other
by spinning on a flag each owns, with acquire and release ordering, yielding the core after a
while so that a busy machine still makes progress. A lane that leaves, having failed or not,
sets a third flag, which ends the other's wait: a lane never waits for one that will not come.
"""

from __future__ import annotations

import os
import queue
import threading

from .._cores import usable_cores
from .._jit import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["available", "flags", "run", "barrier", "SECOND"]

#: Where each lane's count and the flag "a lane has left" lie in ``flags()``: a cache line (64 bytes) apart,
#: so a lane's writes do not take the line the other spins on.
_STRIDE, ABORT = 8, 16
SPINS = 4000  # spins (tens of microseconds in all) before each further one also yields the core


def available() -> bool:
    """True where two lanes can run: numba compiles (its pure-Python mode runs no intrinsic)."""
    return not numba.config.DISABLE_JIT


def flags() -> np.ndarray:
    """A fresh set of the lanes' flags (int64): both counts at zero, no abort."""
    return np.zeros(ABORT + 1, np.int64)


def _at(context, builder, signature, args):
    aty = signature.args[0]
    ary = context.make_array(aty)(context, builder, args[0])
    i = context.cast(builder, args[1], signature.args[1], numba.types.intp)
    return cgutils.get_item_pointer(context, builder, aty, ary, [i], wraparound=False)


@intrinsic
def _load_acquire(typingctx, arr, i):
    """``arr[i]`` (int64), read with acquire ordering: what the other lane wrote before its release is seen."""
    def codegen(context, builder, signature, args):
        return builder.load_atomic(_at(context, builder, signature, args), "acquire", 8)
    return numba.types.int64(arr, i), codegen


@intrinsic
def _store_release(typingctx, arr, i, v):
    """``arr[i] = v`` (int64), with release ordering: every write before it is seen first."""
    def codegen(context, builder, signature, args):
        value = context.cast(builder, args[2], signature.args[2], numba.types.int64)
        builder.store_atomic(value, _at(context, builder, signature, args), "release", 8)
        return context.get_dummy_value()
    return numba.types.void(arr, i, v), codegen


@intrinsic
def _yield_core(typingctx):
    """``sched_yield()``: let another thread run on this core (the C library's, linked by name)."""
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
        builder.call(fn, [])
        return context.get_dummy_value()
    return numba.types.void(), codegen


@numba.njit(cache=True, nogil=True)
def barrier(f, lane, count):  # pragma: no cover - compiled
    """Lane ``lane`` (0 or 1) has reached its ``count``-th meeting: wait until the other has too.
    False where the other lane left without coming (``f[ABORT]`` set): the caller returns at once."""
    other = _STRIDE * (1 - lane)
    _store_release(f, _STRIDE * lane, count)
    spins = 0
    while _load_acquire(f, other) < count:
        if _load_acquire(f, ABORT):  # (it left: after this meeting, or without it)
            return _load_acquire(f, other) >= count
        spins += 1
        if spins > SPINS:
            _yield_core()
    return True


class _Job:
    """One call's second half: what to run, and what came of it (its own, so that a call never
    reads another's)."""

    def __init__(self, fn, args: tuple, ended):
        self.fn, self.args, self.ended = fn, args, ended
        self.result = self.error = None
        self.done = threading.Event()

    def wait(self) -> None:
        """Wait for it, through any interruption (raised after it: the half still runs on the
        caller's arrays)."""
        interrupted = None
        while True:
            try:
                self.done.wait()
                break
            except BaseException as e:  # (KeyboardInterrupt: wait on, raise it after)
                interrupted = e
        if interrupted is not None:
            raise interrupted


class _Second:
    """A lasting second thread for the other half of a compiled call that releases the GIL and
    whose halves touch disjoint memory (or meet at ``barrier``): the caller runs the first half
    meanwhile. Started on first use; one caller at a time; none in a forked child."""

    def __init__(self):
        self.lock = threading.Lock()
        self.jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = None
        self.shares = None  # whether this process has a second core to share with (asked once)

    def worth_it(self) -> bool:
        """Whether a second thread can run beside the caller: two cores or more, code compiled."""
        if self.shares is None:
            self.shares = usable_cores() > 1 and available()
        return self.shares

    def _serve(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                job.result = job.fn(*job.args)
            except BaseException as e:  # (the caller's to raise)
                job.error = e
            finally:
                try:
                    if job.ended is not None:
                        job.ended()
                finally:
                    job.done.set()
                    job = None  # (the call's arrays are not kept alive here)

    def both(self, fn, first: tuple, second: tuple, alone=None, ended=None):
        """``(fn(*first), fn(*second))``, the first here and the second beside it, back once both
        are done. Where another caller has the thread, ``alone()`` instead (halves that wait for
        each other), or the halves in turn. ``ended()`` is called as each half returns or raises
        (it ends the other's waits); an error is raised here."""
        if not self.lock.acquire(blocking=False):
            return alone() if alone is not None else (fn(*first), fn(*second))
        try:
            if self.thread is None:
                self.thread = threading.Thread(target=self._serve, name="streamtrain-lane", daemon=True)
                self.thread.start()
            job = _Job(fn, second, ended)
            self.jobs.put(job)
            try:
                mine = fn(*first)
            finally:
                if ended is not None:
                    ended()
                job.wait()
            if job.error is not None:
                raise job.error
            return mine, job.result
        finally:
            self.lock.release()


SECOND = _Second()
if hasattr(os, "register_at_fork"):  # (a forked child has the forking thread alone: a new, unstarted helper)
    os.register_at_fork(after_in_child=lambda: SECOND.__init__())


def run(fn, args_of, f: np.ndarray):
    """``fn(*args_of(0))`` on this thread and ``fn(*args_of(1))`` on the second at once, meeting
    on the flags ``f`` (from ``flags()``): both results. A lane that returns or raises ends the
    other's waits (an exception is raised here). Where another caller has the second thread,
    ``args_of(None)`` is run alone (its one-lane form)."""
    def ended():
        f[ABORT] = 1

    return SECOND.both(fn, args_of(0), args_of(1), alone=lambda: (fn(*args_of(None)),) * 2, ended=ended)

"""The processes that train together: a small communicator, one implementation per engine.

A communicator has a ``rank`` and a ``size``; it sums a float64 buffer in place across the
processes (``allreduce``), broadcasts bytes or JSON-able values from rank 0, gathers JSON-able
values from every rank, and waits for all (``barrier``). ``LOCAL`` is the one-process
communicator: nothing to reduce, so the training loop keeps its fused single-process steps.
``MPICommunicator`` runs over mpi4py (MPICH, Open MPI, a site's MPI); nothing is pickled.

The world is detected from the environment the launchers set (``mpiexec``/``mpirun`` of MPICH
or Open MPI, Slurm's ``srun``), so ``import mpi4py`` (and MPI's initialisation) happens only in
processes an MPI launcher started, and only when a world of several processes needs it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["Communicator", "LOCAL", "MPICommunicator", "communicator", "active", "detect_world", "DISTRIBUTED",
           "decided_by_rank0"]

# What --distributed may say: auto (MPI where a launcher started several processes), none, mpi.
DISTRIBUTED = ("auto", "none", "mpi")

# (rank, size) variables, by launcher: MPICH's hydra (and Intel MPI), Open MPI, MVAPICH, Slurm.
_WORLD_VARS = (("PMI_RANK", "PMI_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
               ("MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS"))


def detect_world(environ=None) -> tuple[int, int] | None:
    """``(rank, size)`` as the launcher that started this process set them, or None."""
    env = os.environ if environ is None else environ
    for rank, size in _WORLD_VARS:
        if rank in env and size in env:
            try:
                return int(env[rank]), int(env[size])
            except ValueError:
                continue
    return None


class Communicator:
    """The processes that train together, and what they do together; this class is one process
    alone (rank 0 of 1: ``LOCAL``), where every method returns its argument or does nothing.

    A subclass (``MPICommunicator``) implements each method for its engine. The collective
    methods (``allreduce``, ``allgatherv``, ``broadcast``, ``broadcast_bytes``, ``allgather``, ``barrier``,
    ``finish``) are called by every process, in the same order.

    Attributes
    ----------
    rank : int
        This process's index, ``0 <= rank < size``; rank 0 logs and owns the run directory.
    size : int
        The number of processes that train together.
    local_size : int
        The processes of the job on this machine (they share its cores).
    local_rank : int
        This process's index among them: 0 on each machine does that machine's own work (its
        decoded copy of the data, on its own disk).
    name : str
        The ``--distributed`` setting that makes it: "none" or "mpi".

    Examples
    --------
    >>> import numpy as np
    >>> from streamtrain.train.distributed import LOCAL
    >>> LOCAL.rank, LOCAL.size
    (0, 1)
    >>> LOCAL.allreduce(np.array([1.0, 2.0]))
    array([1., 2.])
    >>> LOCAL.allgather({"rows": 3})
    [{'rows': 3}]
    """

    rank = 0
    size = 1
    local_size = 1  # the processes on this machine
    local_rank = 0  # this one's index among them
    name = "none"

    def allreduce(self, buffer: np.ndarray) -> np.ndarray:
        """Sum ``buffer`` over all processes, element by element, in place.

        Parameters
        ----------
        buffer : ndarray of float64, shape (n,)
            This process's values (contiguous).

        Returns
        -------
        ndarray of float64, shape (n,)
            ``buffer`` itself, now holding the sums (the same on every process).
        """
        return buffer

    def allgatherv(self, buffer: np.ndarray, counts) -> np.ndarray:
        """Every process's rows, one after another in rank order, on every process.

        Parameters
        ----------
        buffer : ndarray of float64, shape (counts[rank], m)
            This process's rows (contiguous; ``m`` the same on every process).
        counts : sequence of int, length ``size``
            Each process's row count, known to every process.

        Returns
        -------
        ndarray of float64, shape (sum(counts), m)
            Rank 0's rows, then rank 1's, ...
        """
        return buffer

    def broadcast(self, value: Any, root: int = 0) -> Any:
        """Rank ``root``'s value, on every process.

        Parameters
        ----------
        value : JSON-able (dict, list, str, number, bool or None)
            What rank ``root`` sends; the others' is ignored.
        root : int, default 0
            The rank that sends.

        Returns
        -------
        JSON-able
            Rank ``root``'s ``value`` (with several processes, as decoded from JSON: tuples
            become lists).
        """
        return value

    def broadcast_bytes(self, data: bytes | None, root: int = 0) -> bytes:
        """Rank ``root``'s bytes, on every process.

        Parameters
        ----------
        data : bytes or None
            What rank ``root`` sends (bytes there); the others' is ignored (None will do).
        root : int, default 0
            The rank that sends.

        Returns
        -------
        bytes
            Rank ``root``'s ``data``.
        """
        return data

    def allgather(self, value: Any) -> list:
        """Every process's value, on every process.

        Parameters
        ----------
        value : JSON-able (dict, list, str, number, bool or None)
            This process's value.

        Returns
        -------
        list, length ``size``
            Each rank's ``value``, by rank.
        """
        return [value]

    def barrier(self) -> None:
        """Wait until every process is here."""

    def agree_on_failure(self, message: str, timeout: float) -> list[str] | None:
        """Every process's error ``message``, by rank, where every process fails within ``timeout``
        seconds of this one; None where some did not (an error of this process alone). Apart from
        training's collectives (its own communicator), so a process that does not fail never takes
        part by mistake.

        Parameters
        ----------
        message : str
            This process's error (one line; cut to 1,000 bytes).
        timeout : float
            Seconds to wait for the others.

        Returns
        -------
        list of str, length ``size``, or None
        """
        return [message]

    def said_failure(self, timeout: float = 10.0) -> None:
        """After ``agree_on_failure``: rank 0 has said it (its line forwarded); every process waits
        for that here (at most ``timeout`` s) before it ends the job."""

    def abort(self, code: int) -> None:
        """End every process of the job now, with ``code``: MPI's way out of an error on one rank
        (MPI: once the launcher has read what this process wrote). Does not return.

        Parameters
        ----------
        code : int
            The exit status.
        """
        os._exit(code)

    def finish(self) -> None:
        """Before a clean exit: every process's output forwarded, then all leave together (MPI:
        a barrier, then ``MPI_Finalize``; nothing for one process alone)."""

    def exit(self, code: int) -> None:
        """End this process now with ``code``, without Python's finalisation (``cli.exit_now``'s
        reasons). Does not return.

        Parameters
        ----------
        code : int
            The exit status.
        """
        os._exit(code)

    def watch(self, seconds: float) -> None:
        """While training (until ``unwatch``): where a collective has waited ``seconds`` for
        another process (a machine or its network link lost: nothing closes, so the MPI library
        would wait on), find the processes that no longer answer, say which (rank and host) in
        one line, and end the job. Every process calls it at the same point (it gathers the
        hosts' names). Nothing for one process alone.

        Parameters
        ----------
        seconds : float
            How long a collective may wait; 0: no watch.
        """

    def unwatch(self) -> None:
        """Stop watching (training is over: the waits that follow, such as the last checkpoint's,
        may be long)."""


LOCAL = Communicator()


class MPICommunicator(Communicator):
    """The processes of ``MPI.COMM_WORLD`` (mpi4py); made by ``communicator()`` where a launcher
    started the process. Values are sent as JSON and buffers as numpy arrays: nothing is pickled.
    See ``Communicator`` for the methods."""

    name = "mpi"

    def __init__(self):
        try:
            from mpi4py import MPI
        except ImportError:
            raise ConfigError("distributed training needs mpi4py and an MPI: pip install 'streamtrain[mpi]'") from None
        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        node = self.comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.local_size, self.local_rank = node.Get_size(), node.Get_rank()
        node.Free()
        self._failures = self.comm.Dup()  # errors' collectives: never matched with training's
        self._since: float | None = None  # when the collective in flight began (None: none is)
        self._watching = False

    def allreduce(self, buffer):
        self._since = time.monotonic()  # (the watch's: how long this one has waited)
        self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)
        self._since = None
        return buffer

    def allgatherv(self, buffer, counts):
        width = int(np.prod(buffer.shape[1:], dtype=np.int64))
        sizes = np.asarray(counts, dtype=np.int64) * width
        out = np.empty((int(np.sum(counts)), *buffer.shape[1:]), dtype=np.float64)
        self._since = time.monotonic()
        self.comm.Allgatherv(np.ascontiguousarray(buffer, dtype=np.float64), (out, sizes))
        self._since = None
        return out

    def watch(self, seconds):
        if seconds <= 0 or self._watching:
            return
        self._hosts = self.allgather(socket.gethostname())
        self._beats = self.comm.Dup()  # the watch's own messages: never matched with training's
        self._ping_buf = np.empty(1, np.int64)
        self._requests: list = []  # (request, its buffer): every ping, pong and receive it made
        self._watching = True
        self._watcher = threading.Thread(target=self._watch, args=(float(seconds),), name="peer-watch", daemon=True)
        self._watcher.start()

    def unwatch(self):
        if not self._watching:
            return
        self._watching = False
        self._watcher.join()  # (it stops within a tenth of a second: no MPI call of its own follows)
        for request, _ in [(self._pings, None), *self._requests]:
            if not request.Test():
                request.Cancel()  # nothing of the watch's pending at MPI_Finalize
                request.Wait()
        self._requests = []
        self._beats.Free()

    def _watch(self, seconds: float) -> None:
        # mpi4py releases the GIL inside a blocking collective, and MPI runs with
        # MPI_THREAD_MULTIPLE: this thread answers the others' pings, and pings them itself once
        # a collective of this process has waited ``seconds``.
        self._pings = self._beats.Irecv(self._ping_buf, source=self.MPI.ANY_SOURCE, tag=_PING)
        grace = min(max(seconds / 2, 1.0), 10.0)
        while self._watching:
            time.sleep(min(0.1, seconds / 4))
            if not self._watching:
                break
            self._answer()
            since = self._since
            if since is None or time.monotonic() - since < seconds:
                continue
            alive = self._answering(grace)
            silent = [r for r in range(self.size) if r not in alive]
            if not silent or not self._watching or self._since != since:
                continue  # (slow, not lost; or done meanwhile)
            if self.rank != min(alive):
                # One process says it: the first that still answers. It may have begun its wait
                # later than this one: give it its timeout and its pings, answering them, before
                # this one says it instead (a second line is better than none).
                deadline = time.monotonic() + seconds + 2 * grace
                while time.monotonic() < deadline and self._watching and self._since == since:
                    self._answer()
                    time.sleep(0.05)
                if not self._watching or self._since != since:
                    continue
            waited = time.monotonic() - since
            names = ", ".join(f"rank {r} (host {self._hosts[r]})" for r in silent)
            print(f"error: no answer from {names} for {waited:.0f} s: a machine or its network link is lost "
                  f"(--peer-timeout {seconds:g}); the job ends: run the same command with --resume on the "
                  "machines that remain", file=sys.stderr, flush=True)
            _wait_forwarded()
            self.comm.Abort(1)

    def _keep(self, request, buf=None):
        """A request of the watch's, kept (with its buffer) until it completes or ``unwatch``."""
        self._requests = [(r, b) for r, b in self._requests if not r.Test()]
        self._requests.append((request, buf))
        return request

    def _answer(self) -> None:
        """Answer every ping that has come (a pong to its sender)."""
        status = self.MPI.Status()
        while self._pings.Test(status):
            pong = np.array([self.rank], np.int64)
            self._keep(self._beats.Isend(pong, dest=status.Get_source(), tag=_PONG), pong)
            self._pings = self._beats.Irecv(self._ping_buf, source=self.MPI.ANY_SOURCE, tag=_PING)

    def _answering(self, grace: float) -> set:
        """The ranks whose watch answers a ping within ``grace`` seconds (this one among them)."""
        others = [r for r in range(self.size) if r != self.rank]
        bufs = {r: np.empty(1, np.int64) for r in others}
        pongs = {r: self._keep(self._beats.Irecv(bufs[r], source=r, tag=_PONG), bufs[r]) for r in others}
        ping = np.array([self.rank], np.int64)
        for r in others:
            self._keep(self._beats.Isend(ping, dest=r, tag=_PING), ping)
        deadline = time.monotonic() + grace
        alive = {self.rank}
        while time.monotonic() < deadline and len(alive) < self.size and self._watching:
            self._answer()
            for r in others:
                if r not in alive and pongs[r].Test():
                    alive.add(r)
            time.sleep(0.01)
        return alive

    def broadcast_bytes(self, data, root=0):
        n = np.array([0 if data is None else len(data)], dtype=np.int64)
        self._since = time.monotonic()
        self.comm.Bcast(n, root=root)
        buf = np.frombuffer(data, np.uint8).copy() if self.rank == root else np.empty(int(n[0]), np.uint8)
        self.comm.Bcast(buf, root=root)
        self._since = None
        return buf.tobytes()

    def broadcast(self, value, root=0):
        data = json.dumps(value).encode() if self.rank == root else None
        return json.loads(self.broadcast_bytes(data, root))

    def allgather(self, value):
        mine = np.frombuffer(json.dumps(value).encode(), np.uint8)
        sizes = np.zeros(self.size, dtype=np.int64)
        self._since = time.monotonic()
        self.comm.Allgather(np.array([len(mine)], np.int64), sizes)
        everything = np.empty(int(sizes.sum()), np.uint8)
        self.comm.Allgatherv(mine, (everything, sizes))
        self._since = None
        ends = np.cumsum(sizes)
        return [json.loads(everything[e - n:e].tobytes()) for e, n in zip(ends, sizes)]

    def barrier(self):
        self._since = time.monotonic()
        self.comm.Barrier()
        self._since = None

    def agree_on_failure(self, message, timeout):
        import time

        width = 1000
        mine = np.zeros(width, np.uint8)
        raw = message.encode(errors="replace")[:width]
        mine[:len(raw)] = np.frombuffer(raw, np.uint8)
        every = np.zeros(width * self.size, np.uint8)
        request = self._failures.Iallgather(mine, every)
        if not _completes(request, time.monotonic() + timeout):
            return None  # (left pending: the job is ending)
        return [bytes(every[r * width:(r + 1) * width]).rstrip(b"\0").decode(errors="replace")
                for r in range(self.size)]

    def said_failure(self, timeout=10.0):
        import time

        if self.rank == 0:
            _wait_forwarded()
        _completes(self._failures.Ibarrier(), time.monotonic() + timeout)

    def abort(self, code):
        _wait_forwarded()
        self.comm.Abort(code)

    def finish(self):
        # A process that leaves without MPI_Finalize looks failed to the launcher, which may then
        # kill the others before rank 0's output reached it (seen: evaluate's JSON lost under load).
        _wait_forwarded()
        self.comm.Barrier()
        if not self.MPI.Is_finalized():
            self.MPI.Finalize()

    def exit(self, code):
        if self.MPI.Is_finalized():
            # MPICH tells its launcher that a process has finalised in libmpi's destructor, which
            # os._exit skips: hydra then took a clean exit for a lost process now and then (a
            # third of the time for a bare script, rarely for streamtrain: seen in CI) and
            # SIGKILLed the others, the job ending "Killed (signal 9)" after it had succeeded.
            # C's exit runs the libraries' destructors and atexit handlers, still not Python's
            # finalisation; called holding the GIL (PyDLL), so no Python thread runs meanwhile,
            # as at an interpreter's own exit; and bounded: a destructor that hung would hold a
            # job that has succeeded (SIGALRM's default action ends the process).
            import ctypes
            import signal

            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            signal.alarm(30)
            ctypes.PyDLL(None).exit(int(code))
        os._exit(code)


# The watch's message tags (on its own communicator).
_PING, _PONG = 77, 78


def _completes(request, deadline: float) -> bool:
    """Whether an MPI request completes before ``deadline`` (``time.monotonic``), polling."""
    import time

    while not request.Test():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def _wait_forwarded(timeout: float = 5.0) -> None:
    """Wait (at most ``timeout`` s) until the launcher has read what this process wrote to stdout
    and stderr. An abort can overtake output still in the pipe to the launcher's proxy (MPICH's
    hydra then drops it: the job's one error line lost), so a rank aborts once its pipes are empty."""
    import fcntl
    import stat
    import sys
    import termios
    import time

    deadline = time.monotonic() + timeout
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
            fd = stream.fileno()
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                continue  # a file or a terminal: nothing can overtake what was written to it
        except (OSError, ValueError, AttributeError):
            continue
        unread = np.zeros(1, dtype=np.int32)
        while time.monotonic() < deadline:
            try:  # FIONREAD on a pipe counts the bytes not yet read from it, from either end
                fcntl.ioctl(fd, termios.FIONREAD, unread)
            except OSError:
                break
            if unread[0] == 0:
                break
            time.sleep(0.01)


_ACTIVE: list[Communicator] = []  # the MPI communicator made in this process, if any


def active() -> Communicator:
    """The communicator this process trains in (``LOCAL`` unless MPI's was made)."""
    return _ACTIVE[0] if _ACTIVE else LOCAL


def communicator(setting: str = "auto") -> Communicator:
    """The communicator of ``--distributed``: ``auto`` is MPI where a launcher started several
    processes, else ``LOCAL``; ``mpi`` insists on MPI (a world of one is fine); ``none`` is ``LOCAL``."""
    if setting not in DISTRIBUTED:
        raise ConfigError(f"distributed: {setting!r} is not one of {', '.join(DISTRIBUTED)}")
    if setting == "none":
        return LOCAL
    world = detect_world()
    if setting == "auto" and (world is None or world[1] < 2):
        return LOCAL
    comm = _ACTIVE[0] if _ACTIVE else MPICommunicator()
    if not _ACTIVE:
        _ACTIVE.append(comm)
    return comm if comm.size > 1 or setting == "mpi" else LOCAL


def decided_by_rank0(comm: Communicator, decide, payload=None):
    """``decide()`` on rank 0 alone; every process returns ``(outcome, payload bytes)``: what it
    returned (JSON-able) and ``payload(outcome)``'s bytes (None if ``payload`` is None or gives
    None), sent to the others (a process alone gets None: it has what ``decide`` made). Where
    rank 0's ``decide`` raises a ``StreamtrainError``, it raises it and the others raise a
    ``RankError`` with its message and exit code."""
    from ..errors import RankError, StreamtrainError

    if comm.size == 1:  # nobody to send the payload to
        return decide(), None
    message = None
    if comm.rank == 0:
        try:
            outcome = decide()
            message = {"outcome": outcome}
        except StreamtrainError as e:
            comm.broadcast({"error": str(e), "exit_code": e.exit_code})
            raise
    message = comm.broadcast(message)
    if "error" in message:
        raise RankError(message["error"], message["exit_code"])
    outcome = message["outcome"]
    data = payload(outcome) if comm.rank == 0 and payload is not None else None
    has = comm.broadcast(data is not None if comm.rank == 0 else None)
    return outcome, (comm.broadcast_bytes(data) if has else None)


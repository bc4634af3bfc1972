"""``streamtrain serve``: a model that learns from a stream and answers predictions meanwhile.

A broker or a landing directory is read and parsed on a thread of its own (``ReadAhead``), a
bounded queue ahead of training; posted rows are parsed in their requests. One thread trains:
it polls that queue (or the HTTP log), feeds the learner, writes a checkpoint every so often
(then tells the source, which acknowledges what the checkpoint covers) and publishes a copy of
the model for predictions. The HTTP server (Starlette on uvicorn) answers ``/predict`` from the
published copy, never waiting for training, and takes rows on ``/learn`` where the source is
``http``. The checkpoint directory holds one service: its lock, its checkpoints, the HTTP
source's write-ahead log (``log/``) and the refused input (``rejected.jsonl``).
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import queue
import stat
import threading
import time
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np

from ..config import TrainConfig
from ..errors import CheckpointError, ConfigError, DataError, StreamtrainError, os_reason
from ..io.resolve import _NAME as CHECKPOINT_NAME
from ..io.checkpoint import load_checkpoint
from ..io.rundir import RunDirectory
from ..train.schema import TRAINER
from .learner import StreamLearner
from .rows import Columns, _short
from .raw_rows import RawColumns
from .sources import Rejected, StreamSource, open_source
from .sources.base import yield_to_requests
from .sources.readahead import ReadAhead
from .sources.broker import _reason
from .validation import Validation
from .watch import Watch

__all__ = ["Service", "Loading"]

_LOG = logging.getLogger("streamtrain")

MAX_NAME_CHARS = 1024  # a checkpoint's name given to /reload


class Service:
    """A learner, its source and its checkpoint directory; ``app()`` is the HTTP interface."""

    def __init__(self, config: TrainConfig, source: str, checkpoint_dir: str | os.PathLike, *,
                 features: list[str] | None = None, label: str | None = None, classes: list | None = None,
                 init_from=None, scale_rows: int = 1000, shuffle_bytes: int = 0, checkpoint_every: float = 10.0,
                 keep: int = 3, token: str | None = None, guard_reads: bool = False, max_body_bytes: int = 16 << 20,
                 queue_bytes: int = 64 << 20, val=None, val_every: float = 10.0,
                 log: Callable[[str], None] | None = _LOG.info):
        self.dir = Path(checkpoint_dir)
        self.config, self.log = config, log
        self.checkpoint_every, self.keep = float(checkpoint_every), int(keep)
        self.token, self.max_body = token, int(max_body_bytes)
        if guard_reads and token is None:
            raise ConfigError("--guard-reads needs --token-file: the token that reads would require")
        self.guard_reads = bool(guard_reads)  # the live page's data and /metrics need the token too
        self.rundir = RunDirectory(self.dir)
        self.rundir.__enter__()  # one service per directory, from here until close()
        try:
            if init_from is not None:
                features, label = init_from.model.feature_names, init_from.model.label_name or label
            if not features:
                raise ConfigError("name the stream's feature columns (--features f0,f1,...) or --init-from a run")
            label = label or "y"
            n_in = len(features)
            row_bytes = n_in * np.dtype(config.dtype).itemsize
            shuffle_rows = int(shuffle_bytes // max(row_bytes, 1)) if shuffle_bytes else 0
            self.learner = StreamLearner(config, list(features), label, classes, init_from, scale_rows, shuffle_rows,
                                         log)
            encoding = getattr(init_from.model, "encoding", None) if init_from is not None else None
            # a model trained on an encoded table reads the table's own values, encoded as in training
            self.columns = (RawColumns(encoding, label, config.dtype) if encoding is not None
                            else Columns(list(features), label, config.dtype))
            self.columns.max_decoded_bytes = self.max_body  # an Arrow body's rows as decoded, not only as sent
            self.columns.warm_up()
            self.validation = None if val is None else Validation(val, self.learner, val_every)
            self.source: StreamSource = open_source(source, self.columns, self.dir / "log", queue_bytes)
            self.source.owner = self._service_id()  # a broker's consumer group is claimed by this id
            found = self.rundir.resume_point(TRAINER, warn=self._warn)
            source_state = {}
            if found is not None:
                path, arrays, meta = found
                if "stream" not in meta:
                    raise CheckpointError(f"{path}: a training run's checkpoint, not a service's: start the service "
                                          f"in another directory with --init-from {self.dir}")
                self._check_compatible(meta, path)
                self.learner.restore(arrays, meta)
                source_state = meta["stream"]["source"]
                self._say(f"continuing from {path.name}: update {self.learner.state.global_step}, "
                          f"position {json.dumps(self.learner.position)}")
            self.source.start(self.learner.position, source_state)
            if not self.source.accepts_posts:  # (posted rows are parsed in their requests already)
                self.source = ReadAhead(self.source, queue_bytes)
        except BaseException:
            if getattr(self, "validation", None) is not None:
                self.validation.close()
            if getattr(self, "source", None) is not None:
                self.source.close()  # its connection (a claim another service holds is left alone)
            self.rundir.__exit__(None, None, None)
            raise
        self.last_checkpoint = time.monotonic()
        self.checkpoint_time: float | None = None
        self.requests: queue.Queue = queue.Queue()  # work for the training thread (snapshots, reloads)
        self.stopping = threading.Event()
        self.ready = threading.Event()
        self.failure: str | None = None
        # Why posts are refused for good while training goes on (the HTTP write-ahead log broken):
        # readiness and liveness fail, snapshots still work.
        self.refusing: str | None = None
        self.rows_rejected = 0
        self.thread: threading.Thread | None = None
        self.observe_predict: Callable[[float], None] = lambda seconds: None
        self.watch = Watch(self)  # the live page's points

    def _service_id(self) -> str:
        """This service's id, kept in its directory: a restart is the same service (and takes its
        claim on a consumer group back at once), a service in another directory is another."""
        import socket
        import uuid

        from ..io.atomic import atomic_path

        path = self.dir / "service-id"
        try:
            with open(path, "rb") as fh:
                ident = fh.read(200).decode("utf-8", "replace").strip()
            if ident:
                return ident
        except FileNotFoundError:
            pass
        ident = f"{socket.gethostname()}:{uuid.uuid4().hex}"
        with atomic_path(path) as tmp:
            tmp.write_text(ident + "\n")
        return ident

    # -- messages ---------------------------------------------------------------------
    def _say(self, message: str) -> None:
        if self.log:
            self.log(message)

    def _warn(self, message: str) -> None:
        _LOG.warning(message)

    def _check_compatible(self, meta: dict, path) -> None:
        m = meta["model"]
        mine = self.learner.model
        if m["feature_names"] != mine.feature_names or m["classes"] != mine.classes or m["task"] != mine.task:
            raise CheckpointError(f"{path}: its model takes features {m['feature_names'][:5]}... and classes "
                                  f"{m['classes']}, not this service's")
        if meta["stream"]["shuffle_rows"] != self.learner.shuffle_rows:
            raise CheckpointError(f"{path}: written with a shuffle buffer of {meta['stream']['shuffle_rows']} rows, "
                                  f"not {self.learner.shuffle_rows}: give the same --shuffle-mb")

    # -- the training thread ------------------------------------------------------------
    def start(self) -> None:
        """Start the training thread (and the source's reading ahead): ready on return, so that
        ``/readyz`` agrees with the CLI's "ready" line however late the scheduler runs that thread."""
        self.thread = threading.Thread(target=self._train, name="training", daemon=True)
        self.thread.start()
        if isinstance(self.source, ReadAhead):
            self.source.begin()
        self.watch.start(self.stopping)
        self.ready.set()

    def _train(self) -> None:
        yield_to_requests()
        learner, source = self.learner, self.source
        published = time.monotonic()
        try:
            while not self.stopping.is_set():
                self._take(source.poll(0.2))
                while not self.requests.empty():
                    job, done = self.requests.get()
                    try:
                        done["result"] = job()
                    except Exception as e:  # the request's failure, said to its caller: training goes on
                        done["error"] = e
                    done["event"].set()
                now = time.monotonic()
                if now - self.last_checkpoint >= self.checkpoint_every:
                    self.checkpoint()
                if now - published >= 0.2:
                    learner.publish()
                    published = now
        except Exception as e:
            self._failed(e)

    def _failed(self, e: BaseException) -> None:
        if isinstance(e, StreamtrainError):  # diverged, the claim lost, a checkpoint that cannot be written
            self.failure = str(e)
            _LOG.error(f"error: {e}")
        else:  # a broker gone, a disk full: the service says so and stops learning
            self.failure = f"{type(e).__name__}: {e}"
            _LOG.error("error: training stopped", exc_info=e)

    def _take(self, items: list) -> None:
        """A poll's pieces, in order: the rows taken together (one copy, then every batch they
        complete trained in one call), the refused recorded between them."""
        learner, rows, position = self.learner, [], None
        for item in items:
            if not isinstance(item, Rejected):
                try:
                    t = item.t if item.t is not None else learner.targets(item.y, item.where)
                except DataError as e:
                    item = Rejected(item.position, item.where, str(e), item.raw)
                else:
                    rows.append((item.X, t))
                    position = item.position
                    continue
            if rows:  # (the rows before it, at their position)
                learner.feed_many(rows, position, train=False)
                rows = []
            self._reject(item)  # recorded; the position moves past it
            with learner.lock:
                learner.position = item.position
        if rows:
            learner.feed_many(rows, position, train=False)
        if items:
            learner.drain()

    def _reject(self, item: Rejected) -> None:
        self.rows_rejected += 1
        _LOG.warning(f"refused: {item.error}")
        record = {"time": time.time(), "where": item.where, "error": item.error, "position": item.position}
        self.watch.refused(record["time"], item.where, item.error)
        with open(self.dir / "rejected.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        self.source.reject(item)

    def checkpoint(self) -> Path:
        """Write a checkpoint of this moment (in the training thread), then let the source
        acknowledge what it covers."""
        arrays, meta = self.learner.checkpoint_contents(self.source.state())
        path = self.rundir.save(arrays, meta, self.learner.state.global_step, self.keep, TRAINER)
        self.rundir.wait()  # durable before anything is acknowledged
        self.source.ack(meta["stream"]["position"])
        self.last_checkpoint = time.monotonic()
        self.checkpoint_time = time.time()
        return path

    def call(self, job: Callable[[], Any], timeout: float = 60.0):
        """Run ``job`` in the training thread (between two pieces of the stream); its result."""
        done = {"event": threading.Event()}
        self.requests.put((job, done))
        if not done["event"].wait(timeout):
            raise TimeoutError("the training thread did not answer in time")
        if "error" in done:
            raise done["error"]
        return done.get("result")

    def reload(self, name: str) -> dict:
        """Continue from the model of a checkpoint in this service's directory (e.g. a ``train``
        run's, copied there): its parameters, scaler and optimiser state; the stream goes on."""
        found, arrays, meta = self._load_inside(name)
        m, mine = meta["model"], self.learner.model
        if (m["feature_names"], m["classes"], m["task"]) != (mine.feature_names, mine.classes, mine.task):
            raise DataError(f"reload: {found.name} takes features {m['feature_names']} and classes {m['classes']}, "
                            f"this service {mine.feature_names} and {mine.classes}")

        def swap():
            from ..model import Model
            from ..train.state import make_run_optimizer

            learner = self.learner
            cfg = TrainConfig.from_dict(meta["config"])
            same = cfg.optimizer == learner.config.optimizer  # its optimiser state carries over
            learner.adopt(Model.from_checkpoint(arrays, m, cfg),
                          make_run_optimizer(learner.config, arrays if same else None))
            self.checkpoint()
            return {"reloaded": found.name, "model_version": learner.published.version}

        return self.call(swap)

    def _load_inside(self, name: str):
        """``(path, arrays, meta)`` of the checkpoint ``name`` names inside the checkpoint directory
        (a file, or a directory's newest valid checkpoint). Every step from the directory down is
        opened relative to the one before and without following links, so what is read is inside
        the directory whatever is renamed meanwhile; a symbolic link on the way is refused, as is
        anything outside. Every problem is a ``DataError`` (one line)."""
        shown = _short(name)
        if len(name) > MAX_NAME_CHARS:
            raise DataError(f"reload: the checkpoint's name is {len(name)} characters long; at most "
                            f"{MAX_NAME_CHARS} are allowed")
        if "\x00" in name:
            raise DataError(f"reload: {shown}: a name with a NUL character")
        parts = PurePosixPath(name).parts
        if name.startswith("/") or ".." in parts:
            raise DataError(f"reload: {shown} is outside the checkpoint directory {self.dir}")
        nofollow = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        fds: list[int] = []
        try:
            fds.append(os.open(self.dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)))
            for i, part in enumerate(parts):
                here = "/".join(parts[:i + 1])
                try:
                    st = os.stat(part, dir_fd=fds[-1], follow_symlinks=False)
                except FileNotFoundError:
                    raise DataError(f"reload: {shown}: no such checkpoint in {self.dir}") from None
                if stat.S_ISLNK(st.st_mode):
                    raise DataError(f"reload: {shown}: {_short(here)} is a symbolic link; /reload reads only "
                                    f"files inside {self.dir}, reached without links")
                if stat.S_ISDIR(st.st_mode):
                    fds.append(os.open(part, nofollow | getattr(os, "O_DIRECTORY", 0), dir_fd=fds[-1]))
                elif i == len(parts) - 1:
                    try:
                        return self._load_file(fds[-1], part, self.dir / here)
                    except CheckpointError as e:
                        raise DataError(f"reload: {e}") from None
                else:
                    raise DataError(f"reload: {shown}: {_short(here)} is not a directory")
            # a directory: its newest checkpoint that loads, as a run resumes
            where = self.dir.joinpath(*parts)
            names = sorted((n for n in os.listdir(fds[-1]) if CHECKPOINT_NAME.match(n)), reverse=True)
            if not names:
                raise DataError(f"reload: {shown}: no checkpoint in {where}")
            for n in names:
                try:
                    return self._load_file(fds[-1], n, where / n)
                except CheckpointError as e:
                    if n == names[-1]:
                        raise DataError(f"reload: {e}; no valid checkpoint left in {where}") from None
                    self._warn(f"reload: {e}; trying an older checkpoint")
        except OSError as e:  # a name too long, a permission, a link swapped in on the way (ELOOP)
            raise DataError(f"reload: {shown}: cannot open it ({os_reason(e)})") from None
        except (ValueError, UnicodeError) as e:  # a name the file system cannot take
            raise DataError(f"reload: {shown}: not a usable file name ({_reason(e)})") from None
        finally:
            for fd in fds:
                os.close(fd)

    def _load_file(self, dir_fd: int, name: str, path: Path):
        """``(path, arrays, meta)`` of the regular file ``name`` in the directory ``dir_fd``,
        opened without following a link; ``CheckpointError`` if it does not load."""
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(name, flags, dir_fd=dir_fd)  # (a FIFO swapped in does not block the open)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise DataError(f"reload: {_short(str(path.relative_to(self.dir)))} is a symbolic link; /reload "
                                f"reads only files inside {self.dir}, reached without links") from None
            raise
        fh = io.FileIO(fd, "rb")
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise DataError(f"reload: {path.relative_to(self.dir)} is not a checkpoint file")
            fh.name = str(path)  # what messages name
            arrays, meta = load_checkpoint(fh, TRAINER)
        finally:
            fh.close()
        return path, arrays, meta

    def stop(self) -> None:
        """Stop training, write the last checkpoint, release the directory."""
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(60)
        self.watch.join(60)  # (it may be scoring --val, whose file is closed below)
        if isinstance(self.source, ReadAhead):  # its failure, if any, final: before the last checkpoint's ack
            self.source.halt()
            if self.failure is None and self.source.failure is not None:
                self._failed(self.source.failure)
        try:
            if self.failure is None:
                try:
                    self.checkpoint()
                except StreamtrainError:
                    raise
                except Exception as e:  # a broker gone as the last checkpoint is acknowledged: one line
                    self._failed(e)
        finally:
            self.source.close()
            if self.validation is not None:
                self.validation.close()
            self.rundir.__exit__(None, None, None)

    # -- what /metrics and /healthz report -------------------------------------------------
    def status(self) -> dict[str, Any]:
        learner = self.learner
        queued = len(learner.pending_X) + len(learner.buffer_X)
        queued += self.source.queued_rows()
        return {"source": self.source.name, "position": learner.position, "rows_received": learner.rows_received,
                "rows_trained": learner.rows_trained, "rows_rejected": self.rows_rejected,
                "updates": learner.state.global_step, "queue_rows": queued,
                "model_version": learner.published.version, "prequential": learner.prequential(),
                "step_seconds": learner.step_seconds / max(learner.state.global_step, 1),
                "checkpoint_age_seconds": None if self.checkpoint_time is None else time.time() - self.checkpoint_time,
                "training": self.failure is None, "error": self.failure,
                "accepting": self.refusing is None, "intake_error": self.refusing,
                "validation": None if self.validation is None else {
                    "path": str(self.validation.path), "every_seconds": self.validation.every,
                    "last": self.validation.last, "error": self.validation.error}}

    def saturated(self) -> bool:
        return self.source.saturated()

    # -- HTTP ---------------------------------------------------------------------------
    def app(self):
        """The HTTP interface (``routes.make_app``)."""
        from .routes import make_app

        return make_app(self)

    def _accept(self, body: bytes, kind: str, where: str, key: str | None):
        X, y = self.columns.parse(body, kind, where)
        t = self.learner.targets(y, where)
        return self.source.append(X, t, key)

    def _predict(self, body: bytes, kind: str, where: str) -> dict:
        started = time.perf_counter()
        return self._predict_rows(self._predict_parse(body, kind, where), started)

    def _predict_parse(self, body: bytes, kind: str, where: str) -> np.ndarray:
        """A /predict body's rows."""
        return self.columns.parse(body, kind, where, need_label=False)[0]

    def _predict_rows(self, X: np.ndarray, started: float) -> dict:
        """The answer to /predict for the rows ``X`` (parsing began at ``started``)."""
        model = self.learner.published
        labels, proba = model.predict(X)
        out = {"model_version": model.version, "predictions": np.asarray(labels).tolist()}
        if proba is not None:
            out["classes"] = list(model.model.classes)
            out["probabilities"] = np.round(proba.astype(np.float64), 6).tolist()
        self.observe_predict(time.perf_counter() - started)
        return out


class Loading:
    """The ASGI app the server starts with: 503 "loading" (JSON) until ``serve(service)`` hands
    every request on to the service's app."""

    def __init__(self):
        self.service: Service | None = None
        self.error: BaseException | None = None
        self._app = None

    def serve(self, service: Service) -> None:
        self._app = service.app()
        self.service = service

    async def __call__(self, scope, receive, send):
        if self._app is not None:
            return await self._app(scope, receive, send)
        if scope["type"] != "http":
            return
        from starlette.responses import JSONResponse

        what = "loading failed" if self.error is not None else \
            "loading: resuming from the checkpoint, reaching the source"
        await JSONResponse({"error": what}, status_code=503, headers={"Retry-After": "1"})(scope, receive, send)


"""``streamtrain serve``: a service that learns from a stream, and its HTTP server."""

from __future__ import annotations

from pathlib import Path

import click

from ..config import TrainConfig
from ..errors import ConfigError, Interrupted, TrainingError, os_reason
from ..train.trainer import Trainer
from .group import cli
from .options import FiniteFloat, PathOrURL, _config_options, _echo_err, _given_settings, _joined_or_none

__all__ = ['SERVE_SETTINGS', 'serve']


# The settings that mean something for a model learning from a stream (no epochs, shuffles of
# files, hold-outs or early stopping; a cosine schedule needs a run's length, which a stream has not).
SERVE_SETTINGS = ("hidden", "activation", "task", "init", "batch_size", "lr", "lr_schedule", "power_t", "lr_gamma",
                  "lr_step", "warmup", "optimizer", "optimizer_params", "seed", "scale", "dtype", "compiled",
                  "checkpoint_seconds", "keep")


def _serve_options(command):
    return _config_options(command, SERVE_SETTINGS)


def _local_dir(value):
    """The service's directory must be on a local disk: it holds the HTTP source's log, fsynced per request."""
    if isinstance(value, str):
        raise click.BadParameter(f"{value}: the service keeps its checkpoints in a local directory (its "
                                 "HTTP log is fsynced per request); give a path", param_hint="--checkpoint-dir")
    return value


@cli.command(epilog="""\b
More examples:
  curl -X POST localhost:8000/learn -d '[{"f0": 1, "f1": 2, "f2": 3, "y": 1}]'
  curl -X POST localhost:8000/predict -d '[{"f0": 1, "f1": 2, "f2": 3}]'
  streamtrain serve --source dir:landing/ --init-from runs/digits --checkpoint-dir svc
  streamtrain serve --source 'redis://127.0.0.1:6379/0?stream=rows' --init-from runs/bc --checkpoint-dir svc
  streamtrain serve --source 'nats://127.0.0.1:4222?stream=ROWS' --init-from runs/bc --checkpoint-dir svc""")
@click.option("--source", required=True, metavar="SOURCE",
              help="Where rows come from: http (POST /learn), dir:PATH (files landing there), "
              "redis://HOST:PORT/DB?stream=NAME[&group=G], nats://HOST:PORT?stream=NAME[&durable=D].")
@click.option("--checkpoint-dir", type=PathOrURL(), required=True, callback=lambda ctx, param, value: _local_dir(value),
              help="The service's directory: checkpoints (it continues from the newest), the HTTP source's log, "
              "refused input (rejected.jsonl). One service per directory.")
@click.option("--features", multiple=True, callback=_joined_or_none, metavar="NAMES",
              help="The stream's feature columns, comma-separated (not needed with --init-from); may be repeated.")
@click.option("--label", default=None, help="The label column (default: y, or the --init-from run's).")
@click.option("--classes", multiple=True, callback=_joined_or_none, metavar="LABELS",
              help="A new classifier's labels, comma-separated (integers or strings); may be repeated.")
@click.option("--init-from", type=PathOrURL(), default=None, metavar="RUN",
              help="Start from the model of a train run (its scaler, classes and features); serve's settings "
              "given here override its training settings.")
@click.option("--scale-rows", type=click.IntRange(1, 1 << 26), default=1000, show_default=True,
              help="Without --init-from and with --scale standard, the first rows that set the scaler "
              "(before the first update).")
@click.option("--shuffle-mb", type=FiniteFloat(0, 1 << 20), default=0.0, show_default=True,
              help="Mix the stream through a buffer of this many MB of rows (0: train in arrival order); the "
              "buffer is part of each checkpoint.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on (0: a free one, named on stderr).")
@click.option("--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A file holding a bearer token that /learn, /snapshot and /reload then require.")
@click.option("--guard-reads", is_flag=True, default=False,
              help="With --token-file: the live page's data (/watch.json) and /metrics need the token too (open "
                   "the page as http://HOST:PORT/#token=TOKEN).")
@click.option("--max-body-mb", type=FiniteFloat(0, 4096, min_open=True), default=16.0, show_default=True,
              help="Largest request body, as sent and as its Arrow rows decode (413 beyond; for brokers, the largest entry as decoded).")
@click.option("--queue-mb", type=FiniteFloat(0, 1 << 20, min_open=True), default=64.0, show_default=True,
              help="Rows that may wait for training: posted to /learn (429 with Retry-After beyond), or read "
                   "ahead from a broker or a landing directory (reading pauses beyond).")
@click.option("--val", type=click.Path(exists=True, path_type=Path), default=None, metavar="FILE",
              help="A held-out file (the stream's features and label) scored by the model as it learns: its loss "
                   "and accuracy are curves of the live page, in /healthz and /metrics. Read whole at each "
                   "scoring: keep it small.")
@click.option("--val-every", type=FiniteFloat(0, 1 << 20, min_open=True), default=10.0, show_default=True,
              help="Seconds between two scorings of --val (only when the model changed).")
@_serve_options
@click.pass_context
def serve(ctx, source, checkpoint_dir, features, label, classes, init_from, scale_rows, shuffle_mb, host, port,
          token_file, guard_reads, max_body_mb, queue_mb, val, val_every, **settings):
    """Learn from a stream that never ends and answer predictions meanwhile.

    Each row updates the model exactly once across crashes and restarts: checkpoints hold the
    source's position, and brokers are acknowledged only once a checkpoint covers their
    entries. Endpoints: POST /learn (JSON rows or Arrow IPC; source http), POST /predict,
    GET / (a live page: curves of loss, accuracy (also on a held-out --val file), rows/s and lag),
    GET /metrics (Prometheus),
    /healthz, /readyz, POST /snapshot, POST /reload.

    Example: streamtrain serve --source http --checkpoint-dir svc --features f0,f1,f2 --classes 0,1
    """
    from ..serve.service import Service

    given = _given_settings(ctx, settings)
    if given.get("lr_schedule") == "cosine":
        raise click.UsageError("--lr-schedule cosine decays over a run's length, which a stream has not")
    init = None
    if init_from is not None:
        init = Trainer.load(init_from)
        config = TrainConfig(**{**init.config.to_dict(), **given})
    else:
        config = TrainConfig(**given)
    if "checkpoint_seconds" not in given:
        config = TrainConfig(**{**config.to_dict(), "checkpoint_seconds": 10.0})
    if guard_reads and token_file is None:
        raise ConfigError("--guard-reads needs --token-file: the token that reads would require")
    token = None
    if token_file is not None:
        token = _read_token(token_file)
    names = None if features is None else [f.strip() for f in features.split(",") if f.strip()]
    labels = None if classes is None else [_class_value(c.strip()) for c in classes.split(",") if c.strip()]

    def open_service():
        from ..data.loader import share_cores

        svc = Service(config, source, checkpoint_dir, features=names, label=label, classes=labels,
                      init_from=init, scale_rows=scale_rows, shuffle_bytes=int(shuffle_mb * 2**20),
                      checkpoint_every=config.checkpoint_seconds or 10.0, keep=config.keep, token=token,
                      guard_reads=guard_reads, max_body_bytes=int(max_body_mb * 2**20),
                      queue_bytes=int(queue_mb * 2**20), val=val, val_every=val_every, log=_echo_err)
        # Rows are read and parsed on other threads than training's (the reading thread, the
        # requests'): BLAS threads busy-waiting on their core halved the step's speed (measured,
        # Redis on 2 cores; HTTP 1.4x faster without). Once the step's BLAS is loaded (by the
        # service's learner), and for the process's life: changed back while /predict threads
        # ran BLAS, OpenBLAS's thread count would change under them.
        share_cores()
        return svc

    _run_server(open_service, host, port)


def _read_token(path: Path) -> str:
    """The bearer token a file holds (its surrounding white space aside), or one line saying why not."""
    data = path.read_bytes()
    try:
        token = data.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: the token file is not UTF-8 text ({e.reason}: byte {data[e.start]:#04x} at "
                          f"offset {e.start})") from None
    if not token:
        raise click.UsageError(f"{path}: the token file is empty")
    if any(c < " " or c == "\x7f" for c in token):
        raise ConfigError(f"{path}: the token holds a control character (a line break?); an Authorization "
                          "header cannot carry it")
    return token


def _class_value(text: str):
    """A class label as given on the command line: an integer where it reads as one."""
    try:
        return int(text)
    except ValueError:
        return text


def _run_server(open_service, host: str, port: int) -> None:
    """Listen at once (``/readyz`` says 503 "loading" while ``open_service()`` resumes from the
    checkpoint and reaches the source), serve until SIGINT or SIGTERM, then stop training and write
    the last checkpoint. An error while loading ends the server and is raised here."""
    import threading

    import uvicorn

    from ..serve.service import Loading

    sock = _listen(host, port)  # before loading anything: a port in use is one line, and --port 0 is named
    port = sock.getsockname()[1]
    app = Loading()
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                                           lifespan="off"))

    def load():
        try:
            svc = open_service()
            svc.start()
            app.serve(svc)
            _echo_err(f"ready (source: {svc.source.name}; checkpoints in {svc.dir})")
        except BaseException as e:  # raised in the main thread once the server has stopped
            app.error = e
            server.should_exit = True

    loader = threading.Thread(target=load, name="loading", daemon=True)
    loader.start()
    _echo_err(f"serving on http://{f'[{host}]' if ':' in host else host}:{port} (loading)")
    how = "stopped"
    try:
        server.run(sockets=[sock])  # until SIGINT or SIGTERM: uvicorn finishes the requests in flight
    except Interrupted as e:  # uvicorn hands the signal on once it has shut down: the normal way out
        how = f"stopped by {e.signal_name}"
    finally:
        loader.join()  # a stop while loading lets the loading finish, then stops what it opened
        if app.service is not None:
            app.service.stop()
    if app.error is not None:
        raise app.error
    svc = app.service
    if svc.failure:
        raise TrainingError(svc.failure)
    _echo_err(f"{how}; checkpoint written in {svc.dir} (update {svc.learner.state.global_step})")
    if svc.refusing:  # (the rows it took are trained and checkpointed; the posts refused since were not)
        raise TrainingError(f"posts were refused: {svc.refusing}")


def _listen(host: str, port: int):
    """A listening socket on ``host:port`` (``port`` 0: a free one), or the one-line reason why not."""
    import socket

    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, kind, proto, _, address = info[0]
        sock = socket.socket(family, kind, proto)
    except (OSError, UnicodeError) as e:
        why = os_reason(e) if isinstance(e, OSError) else e
        raise ConfigError(f"--host {host}: cannot listen there ({why})") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once after a stop
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise ConfigError(f"{host}:{port}: cannot listen there ({os_reason(e)}); choose another --port") from None
    return sock

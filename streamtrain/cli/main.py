"""Running the command: errors as one line and an exit code, the library's warnings, a prompt exit."""

from __future__ import annotations

import signal
import sys
import time
import traceback

import click

from .._malloc import reuse_freed_memory
from ..errors import Interrupted, StreamtrainError, os_reason
from ..plugins import load_plugins
from ..train.distributed import active as active_communicator
from .group import cli
from .options import _echo_err

__all__ = ['main', 'exit_now']


def main(argv=None) -> None:
    """Run the command: user errors become one line on stderr and exit code 2 (1 for training
    failures, 130 / 143 for SIGINT / SIGTERM); ``--debug`` shows the traceback."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    _show_library_warnings()
    try:
        reuse_freed_memory()
        load_plugins()
        code = cli.main(args=args, prog_name="streamtrain", standalone_mode=False)
        if type(code) is int and code:  # (a ``ctx.exit(n)``: without standalone mode click returns n)
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            exit_now(code)
    except click.exceptions.Exit as e:
        exit_now(e.exit_code)
    except click.exceptions.Abort:
        _fail("interrupted", 130, debug)
    except click.ClickException as e:
        hint = ""
        if isinstance(e, click.UsageError) and e.ctx is not None:
            hint = f" (see '{e.ctx.command_path} --help')"
        _fail(f"error: {e.format_message()}{hint}", e.exit_code, debug, everywhere=True)
    except Interrupted as e:
        _fail(str(e), e.exit_code, debug)
    except StreamtrainError as e:
        _fail(f"error: {e}", e.exit_code, debug, everywhere=e.everywhere)
    except KeyboardInterrupt:
        _fail("interrupted", 130, debug)
    except OSError as e:  # an output or input the library did not name: still one line
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        _fail(f"error: {where}{os_reason(e)}", 2, debug)
    except MemoryError:
        _fail("error: out of memory; lower --window-mb, --batch-size or --hidden", 2, debug)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    active_communicator().finish()  # several processes: their output forwarded, then all leave together
    exit_now(0)


def _show_library_warnings() -> None:
    """The library's warnings (a damaged checkpoint passed over, say) as "warning: ..." lines on stderr."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    logger = logging.getLogger("streamtrain")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _fail(message: str, code: int, debug: bool, everywhere: bool = False) -> None:
    """Say ``message`` (one line) and end with ``code``; ``everywhere``: every process of an MPI job
    is expected to fail alike (a setting, the command line), so they wait longer for each other."""
    comm = active_communicator()
    speak, everyone = True, None
    if comm.size > 1 and code not in (130, 143):
        # MPI's model: an error on one process ends the job. Where every process failed (within the
        # wait: long where that is expected, as a loaded machine can hold one back for seconds), rank
        # 0 alone says so, once; else this process says its own error, naming itself.
        everyone = comm.agree_on_failure(message, 30.0 if everywhere else 2.0)
        if everyone is None:
            message = message.replace("error: ", f"error: rank {comm.rank}: ", 1)
        else:
            speak = comm.rank == 0
            message = _one_error(everyone)
    elif comm.size > 1 and comm.rank:
        message = ""  # an interrupt: every rank stops at the same step; rank 0 says so
    if debug:
        traceback.print_exc()
    if message and speak:  # one line, whatever the message holds
        _echo_err(" ".join(message.split()) if "\n" in message else message)
    if comm.size > 1 and code in (130, 143):
        # Every rank stops at the same step; one that left first would have the launcher end the
        # job before rank 0's line reached it (seen under load: the interrupt's line lost). A
        # second signal meanwhile would break out of the wait with a traceback: it waits too.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        comm.said_failure()
    elif comm.size > 1:
        if everyone is not None:
            comm.said_failure()  # (rank 0's line reaches the launcher before any process ends the job)
            if not speak:  # rank 0's abort ends this process (an abort here would add MPI's own line)
                time.sleep(30.0)
        comm.abort(code)  # once the launcher has read the line
    exit_now(code)


def _one_error(messages: list[str]) -> str:
    """Every process's error as one: the message where they are alike, else each rank's."""
    if len(set(messages)) == 1:
        return messages[0]
    return "error: " + "; ".join(f"rank {r}: {m.removeprefix('error: ')}" for r, m in enumerate(messages))


def exit_now(code: int) -> None:
    """End the process after a failure or an interrupt, skipping interpreter finalisation.

    What streamtrain must clean up (decoding workers, the checkpoint writer, the directory
    lock) is cleaned up before this. Finalisation would then only add noise (asyncio reporting
    zarr's or s3fs's pending tasks) or hang: a run cut short can leave a daemon thread (the
    compiled step's loader, importing numba) frozen while it holds the import lock, and a
    warning printed at shutdown imports.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    active_communicator().exit(code)  # (MPI, after finish(): through C's exit, for the launcher's sake)

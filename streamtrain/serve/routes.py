"""The service's HTTP interface: one plain function per route, each finding the service in
``request.app.state``; bad input is a 4xx naming the problem, anything unforeseen a one-line 500."""

from __future__ import annotations

import hmac
import logging
import time

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import DataError
from .metrics import Metrics
from .ipc_size import decoded_size
from .rows import ARROW_TYPES, JSON_TYPES, DecodesTooLarge, _short, json_body, media_type
from .sources import MAX_KEY_CHARS, QueueFull
from .sources.broker import _reason
from .watch import page

__all__ = ["make_app"]

_LOG = logging.getLogger("streamtrain")

#: A /predict body up to this size is answered on the event loop's thread, not handed to a worker
#: thread: its work (a few hundred rows) is shorter than the hand-overs between threads, each of
#: which waits for the GIL behind the training thread (scripts/bench_serve.py --prefilled measures
#: the latency while training). Larger bodies go to a worker, so that the loop stays responsive.
INLINE_PREDICT_BYTES = 64 << 10
#: ... and holding at most this many rows once parsed.
INLINE_PREDICT_ROWS = 1000


def _decodes_small(body: bytes, kind: str | None, where: str) -> bool:
    """Whether a body decodes to at most ``INLINE_PREDICT_BYTES`` (a compressed Arrow body can
    hold far more rows than its size says: it is decompressed on a worker, not on the loop)."""
    if media_type(kind, where)[0] not in ARROW_TYPES:
        return True
    try:
        return decoded_size(body) <= INLINE_PREDICT_BYTES
    except ValueError:
        return True  # refused at once by the parser, which says why


class _TooLarge(Exception):
    pass


def error(status: int, message: str, **headers) -> JSONResponse:
    return JSONResponse({"error": " ".join(message.split())}, status_code=status, headers=headers or None)


def guarded(handler):
    """The handler, whose unforeseen failure is a 500 with one line (logged as one line too),
    never a traceback: bad input never gets this far (it is a 4xx, below)."""
    async def guard(request: Request):
        try:
            return await handler(request)
        except Exception as e:
            message = f"{request.method} {request.url.path}: {_reason(e)}"
            _LOG.error(f"error: {message}")
            return error(500, message)
    return guard


def authorised(request: Request) -> bool:
    service = request.app.state.service
    if service.token is None:
        return True
    given = request.headers.get("authorization", "")
    # (header values arrive as latin-1: their bytes, as sent, against the token's UTF-8 bytes)
    return given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode("latin-1"),
                                                               service.token.encode())


async def body_of(request: Request) -> bytes:
    service = request.app.state.service
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > service.max_body:
        raise _TooLarge()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > service.max_body:
            raise _TooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


def content_type(request: Request) -> str | None:
    return request.headers.get("content-type")  # None: JSON


def refused(e: DataError) -> JSONResponse:
    return error(413 if isinstance(e, DecodesTooLarge) else 415 if "content type" in str(e) else 400, str(e))


async def learn(request: Request):
    service = request.app.state.service
    if not authorised(request):
        return error(401, "a bearer token is required (Authorization: Bearer ...)")
    if not service.source.accepts_posts:
        return error(409, f"this service learns from its {service.source.name} source, not from /learn")
    where = f"POST /learn ({request.client.host if request.client else 'client'})"
    try:
        key = request.headers.get("idempotency-key")
        if key is not None and len(key) > MAX_KEY_CHARS:
            raise DataError(f"{where}: the Idempotency-Key is {len(key)} characters long; at most "
                            f"{MAX_KEY_CHARS} are allowed")
        body = await body_of(request)
        seq, repeat = await run_in_threadpool(service._accept, body, content_type(request), where, key)
    except _TooLarge:
        service.rows_rejected += 1
        message = f"{where}: the body is larger than {service.max_body} bytes (--max-body-mb)"
        service.watch.refused(time.time(), where, message)
        return error(413, message)
    except QueueFull:
        return error(429, f"{where}: rows waiting for training fill the queue (--queue-mb); retry later",
                     **{"Retry-After": "1"})
    except OSError as e:
        if getattr(service.source, "broken", None) is None:
            raise
        service.refusing = service.refusing or str(e)  # (readiness fails too: no more posts are sent here)
        service.watch.refused(time.time(), where, str(e))
        return error(503, f"{where}: {e}")
    except DataError as e:
        service.rows_rejected += 1
        service.watch.refused(time.time(), where, " ".join(str(e).split()))
        return refused(e)
    return JSONResponse({"accepted": True, "sequence": seq, "repeat": repeat}, status_code=200 if repeat
                        else 202)


async def predict(request: Request):
    service = request.app.state.service
    where = "POST /predict"
    try:
        body = await body_of(request)
        if len(body) <= INLINE_PREDICT_BYTES and _decodes_small(body, content_type(request), where):
            started = time.perf_counter()
            X = service._predict_parse(body, content_type(request), where)
            if len(X) <= INLINE_PREDICT_ROWS:
                result = service._predict_rows(X, started)
            else:  # (rows of one byte each: more than their size says)
                result = await run_in_threadpool(service._predict_rows, X, started)
        else:
            result = await run_in_threadpool(service._predict, body, content_type(request), where)
    except _TooLarge:
        return error(413, f"{where}: the body is larger than {service.max_body} bytes (--max-body-mb)")
    except DataError as e:
        return refused(e)
    return JSONResponse(result)


async def snapshot(request: Request):
    service = request.app.state.service
    if not authorised(request):
        return error(401, "a bearer token is required (Authorization: Bearer ...)")
    if service.failure:
        return error(409, f"training stopped: {service.failure}")
    try:
        path = await run_in_threadpool(service.call, service.checkpoint)
    except TimeoutError:
        return error(503, "snapshot: the training thread did not answer in time; retry later",
                     **{"Retry-After": "5"})
    return JSONResponse({"checkpoint": str(path), "position": service.learner.position,
                         "model_version": service.learner.version})


async def reload(request: Request):
    service = request.app.state.service
    if not authorised(request):
        return error(401, "a bearer token is required (Authorization: Bearer ...)")
    where = "reload"
    try:
        kind, _ = media_type(content_type(request), where)
        if kind not in JSON_TYPES:
            raise DataError(f"{where}: content type {_short(kind)}: give JSON")
        body = await body_of(request)
        data = json_body(body, where) if body.strip() else {}
        name = data.get("checkpoint") if isinstance(data, dict) else None
        if not isinstance(name, str) or not name:
            raise DataError('reload: give {"checkpoint": "<file or directory in the checkpoint directory>"}')
        if service.failure:
            return error(409, f"training stopped: {service.failure}")
        return JSONResponse(await run_in_threadpool(service.reload, name))
    except _TooLarge:
        return error(413, f"reload: the body is larger than {service.max_body} bytes")
    except DataError as e:
        return refused(e)
    except TimeoutError:
        return error(503, "reload: the training thread did not answer in time; retry later",
                     **{"Retry-After": "5"})


async def healthz(request: Request):
    service = request.app.state.service
    status = service.status()
    # (a broken write-ahead log: a restart is what makes the service take rows again)
    return JSONResponse(status, status_code=200 if status["training"] and status["accepting"] else 500)


async def readyz(request: Request):
    service = request.app.state.service
    if not service.ready.is_set():
        return error(503, "loading")
    if service.saturated():
        return error(503, "saturated: the queue of rows waiting for training is full")
    if service.failure:
        return error(503, f"training stopped: {service.failure}")
    if service.refusing:
        return error(503, f"not accepting rows: {service.refusing}")
    return JSONResponse({"ready": True})


async def metrics_page(request: Request):
    if request.app.state.service.guard_reads and not authorised(request):
        return error(401, "a bearer token is required (Authorization: Bearer ...): --guard-reads")
    body, kind = await run_in_threadpool(request.app.state.metrics.render)  # the source may ask its broker
    return Response(body, media_type=kind)


async def live_page(request: Request):
    # (the page holds no data: it asks /watch.json, with the token of its URL's #token=... if any)
    return Response(page(), media_type="text/html; charset=utf-8",
                    headers={"Cache-Control": "no-store", "Content-Security-Policy": CSP})


async def watch_json(request: Request):
    service = request.app.state.service
    if service.guard_reads and not authorised(request):
        return error(401, "a bearer token is required (Authorization: Bearer ...): --guard-reads")
    since = request.query_params.get("since", "0")
    if not (since.isascii() and since.isdigit()) or len(since) > 18:
        return error(400, f"GET /watch.json: since={_short(since)}: give a point's number (0: every point kept)")
    return JSONResponse(service.watch.since(int(since)), headers={"Cache-Control": "no-store"})


# The page runs its own script and style and asks its own origin, nothing else.
CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'"


def make_app(service):
    """The service's HTTP interface: its routes, each a function of the request (which finds the
    service in ``request.app.state``)."""
    posts = {"/learn": learn, "/predict": predict, "/snapshot": snapshot, "/reload": reload}
    gets = {"/": live_page, "/watch.json": watch_json, "/healthz": healthz, "/readyz": readyz,
            "/metrics": metrics_page}
    routes = [*(Route(path, guarded(h), methods=["POST"]) for path, h in posts.items()),
              *(Route(path, guarded(h)) for path, h in gets.items())]
    app = Starlette(routes=routes)
    app.state.service, app.state.metrics = service, Metrics(service)
    return app


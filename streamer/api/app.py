"""The FastAPI application: shared context, error bodies, the request-size guard, and the routers.

Every error leaves as `ErrorBody` JSON (``{"status", "error", "details"}``), whether FastAPI, Starlette,
Redis or the size guard raised it, so clients never have to parse an HTML page or a bare string.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import redis
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from streamer.api.models import ErrorBody
from streamer.api.sources import SourcePolicy
from streamer.config import VosdConfig
from streamer.queue.jobs import JobQueue, KeyNames
from streamer.queue.redis_server import EmbeddedRedis

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

logger = logging.getLogger(__name__)

REDIS_TIMEOUT_S = 5.0
"""A Redis call of a request gives up after this long and the request answers 503."""


@dataclass
class ApiContext:
    """What the routes share: configuration, folders, the source policy and one JobQueue."""

    config: VosdConfig
    policy: SourcePolicy = field(init=False)
    registry: CollectorRegistry | None = field(default=None, init=False)
    """Made by the first /metrics scrape (streamer.api.metrics)."""
    preview_viewers: int = field(default=0, init=False)
    """Open live-preview streams (streamer.api.preview), counted on the event loop's thread."""
    _queue: JobQueue | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def __post_init__(self) -> None:
        self.policy = SourcePolicy(self.config.http.source_roots, self.config.http.source_schemes)

    @property
    def redis_url(self) -> str:
        """The configured Redis, else the daemon's embedded one (never started here: the daemon owns it)."""
        return self.config.redis.url or EmbeddedRedis(self.config.data_dir / "redis").url

    @property
    def uploads_dir(self) -> Path:
        return self.config.data_dir / "uploads"

    @property
    def outputs_dir(self) -> Path:
        """Where the daemon puts a job's outputs unless its options say otherwise (DaemonSettings)."""
        return self.config.data_dir / "outputs"

    def queue(self) -> JobQueue:
        """The JobQueue, made on first use: the daemon may still be starting its embedded Redis."""
        with self._lock:
            if self._queue is None:
                client = redis.Redis.from_url(
                    self.redis_url,
                    decode_responses=True,
                    socket_timeout=REDIS_TIMEOUT_S,
                    socket_connect_timeout=REDIS_TIMEOUT_S,
                )
                self._queue = JobQueue(
                    client,
                    keys=KeyNames(self.config.redis.key_prefix),
                    visibility_timeout_s=self.config.redis.visibility_timeout_s,
                    max_attempts=self.config.redis.max_attempts,
                )
            return self._queue


class BodyTooLarge(Exception):
    """A request body passed http.max_upload_mb while it was being read."""


class BodyLimit:
    """ASGI middleware: 413 for a body over `limit` bytes, by its Content-Length or, when chunked, as soon
    as the bytes read so far pass it, before anything is stored."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send, declared.decode(errors="replace"))
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge:
            if started:
                raise
            await self._refuse(send, f"more than {self.limit}")

    async def _refuse(self, send: Send, size: str) -> None:
        error = f"request body of {size} bytes is over the limit of {self.limit} bytes (http.max_upload_mb)"
        response = _error(413, error)
        await response({"type": "http"}, _no_body, send)


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def _error(status: int, message: str, details: list[str] | None = None, **headers: str) -> JSONResponse:
    body = ErrorBody(status=status, error=message, details=details)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers or None)


def _field_errors(exc: RequestValidationError) -> list[str]:
    lines = []
    for item in exc.errors():
        where = ".".join(str(part) for part in item["loc"] if part != "body") or "body"
        lines.append(f"{where}: {item['msg']}")
    return lines


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        return _error(exc.status_code, message, **(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid request", _field_errors(exc))

    @app.exception_handler(redis.RedisError)
    async def redis_down(request: Request, exc: redis.RedisError) -> JSONResponse:
        logger.warning("%s %s: Redis error: %s", request.method, request.url.path, exc)
        return _error(503, f"the job store (Redis) is unreachable: {exc}")

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("%s %s failed", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the daemon log")


def create_app(config: VosdConfig) -> FastAPI:
    """The API for one daemon's configuration; `streamer.api.server` runs it under uvicorn."""
    from streamer.api import dashboard, metrics, preview, routes

    app = FastAPI(
        title="vosd",
        summary="Streaming video object segmentation: jobs, outputs, metrics.",
        version="0.1.0",
        docs_url="/docs",
        redoc_url=None,
        responses={code: {"model": ErrorBody} for code in (401, 404, 409, 413, 422, 503)},
    )
    app.state.ctx = ApiContext(config)
    _install_error_handlers(app)
    app.include_router(routes.router)
    app.include_router(preview.router)
    app.include_router(metrics.router)
    app.include_router(dashboard.router)
    app.mount("/static", StaticFiles(directory=dashboard.STATIC), name="static")
    app.add_middleware(BodyLimit, limit=int(config.http.max_upload_mb * (1 << 20)))
    return app


def context(request: Request) -> ApiContext:
    """FastAPI dependency: the shared context."""
    ctx: ApiContext = request.app.state.ctx
    return ctx


def error_response(status: int, message: str) -> JSONResponse:
    """An `ErrorBody` response for routes that answer an error without raising."""
    return _error(status, message)


Ctx = Annotated[ApiContext, Depends(context)]

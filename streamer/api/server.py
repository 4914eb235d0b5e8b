"""Runs the API under uvicorn on a thread of the `vosd serve` process.

The socket is bound here, on the caller's thread, so a port in use or a bad address stops `vosd serve`
with a clear message before the daemon starts, instead of a thread dying quietly. The thread shares the
process with the supervisor; every route that blocks runs in uvicorn's thread pool, and the supervisor's
work is mostly waiting on ZeroMQ and Redis, so neither starves the other.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

from streamer.api.app import create_app
from streamer.config import VosdConfig, split_listen

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


class ApiStartError(RuntimeError):
    """The HTTP server could not start; the message says where it tried to listen and why not."""


class ApiServer:
    """uvicorn on a bound socket, on a daemon thread; `stop` ends it."""

    def __init__(self, config: VosdConfig) -> None:
        host, port = split_listen(config.http.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on such sockets; without it Nagle's algorithm
        # and delayed ACKs add about 40 ms to every response written in two parts (headers, body).
        self.socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
        except OSError as exc:
            self.socket.close()
            raise ApiStartError(f"cannot listen on {config.http.listen}: {exc.strerror or exc}") from None
        self.host, self.port = host, self.socket.getsockname()[1]
        settings = uvicorn.Config(
            create_app(config), log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=2
        )
        self.server = uvicorn.Server(settings)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, name="vosd-http", daemon=True
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ApiStartError(f"the HTTP server on {self.url} did not start; see the log above")
            time.sleep(0.02)
        logger.info("HTTP API and dashboard on %s", self.url)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(STOP_TIMEOUT_S)
        self.socket.close()


def start_api(config: VosdConfig) -> ApiServer | None:
    """The running API when ``http.listen`` is set, else None."""
    if not config.http.listen:
        return None
    server = ApiServer(config)
    server.start()
    return server

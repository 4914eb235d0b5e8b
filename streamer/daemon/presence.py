"""What a daemon tells the others sharing its Redis, and what it reads of theirs.

Two records per daemon: a hash of its pids, memory and restart counts (for `vosd status`, /metrics, and
operators finding its processes), which expires unless refreshed; and its load (running jobs and
capacity) in the peers' registry, which each daemon reads before it claims, so the next job goes to
the least loaded one instead of whichever polls first.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable
from typing import cast

import psutil
from redis.typing import EncodableT, FieldT

from streamer.daemon.children import Child
from streamer.queue.jobs import DaemonLoad, JobQueue

STALE_LOAD_S = 3600.0
"""A peer's published load older than this (beyond the visibility timeout) is removed from the registry."""


class Presence:
    """This daemon's records in Redis; every method makes Redis calls (the supervisor's Redis step)."""

    def __init__(self, queue: JobQueue, consumer: str, visibility_timeout_s: float) -> None:
        self.queue = queue
        self.consumer = consumer
        self.visibility_timeout_s = visibility_timeout_s

    def publish_processes(self, children: Iterable[Child], link_fields: dict[str, str]) -> None:
        """Pids, RSS, restarts, model FPS and GPU memory of each child, with `link_fields` (Redis outages)."""
        key = self.queue.keys.daemon(self.consumer)
        fields = {"pid": str(os.getpid()), "heartbeat_at": repr(time.time()), **link_fields}
        for child in children:
            if child.process is not None and child.process.pid is not None:
                fields[child.name] = str(child.process.pid)
                with contextlib.suppress(psutil.Error):  # exiting right now: no figure this round
                    fields[f"rss:{child.name}"] = str(psutil.Process(child.process.pid).memory_info().rss)
            fields[f"restarts:{child.name}"] = str(child.restarts)  # for /metrics (streamer/api)
            if child.model_fps is not None:
                fields[f"model_fps:{child.name}"] = f"{child.model_fps:.3f}"
            if child.gpu_memory_bytes is not None:
                fields[f"gpu_memory:{child.name}"] = str(child.gpu_memory_bytes)
        pipe = self.queue.redis.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping=cast("dict[FieldT, EncodableT]", fields))
        pipe.pexpire(key, int(self.visibility_timeout_s * 1000))
        pipe.execute()

    def publish_load(self, running: int, capacity: int) -> None:
        """Running jobs and capacity, for peers sharing the queue to decide who takes the next job."""
        self.queue.publish_load(self.consumer, DaemonLoad(running, capacity, time.time()))

    def less_loaded_peer(self, running: int) -> str | None:
        """A live peer with room and fewer running jobs than this daemon's `running`, which should take
        the next job instead: without this, whichever daemon polls first takes every job (4 went 3 to 1)."""
        if running == 0:
            return None
        peer = None
        for name, load in self.queue.daemon_loads().items():
            if load is None or not load.fresh(self.visibility_timeout_s + STALE_LOAD_S):
                self.queue.forget_daemon(name)  # long gone, or unreadable
            elif (
                name != self.consumer
                and load.fresh(self.visibility_timeout_s)
                and load.running < min(running, load.capacity)
            ):
                peer = name
        return peer

    def withdraw(self) -> None:
        """Remove both records (clean shutdown)."""
        self.queue.redis.delete(self.queue.keys.daemon(self.consumer))
        self.queue.forget_daemon(self.consumer)

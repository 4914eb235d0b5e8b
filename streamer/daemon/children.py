"""The daemon's long-lived children (workers and the writer): starting, liveness, restarts, stopping.

A child is STARTING until its first `Heartbeat` message on the events socket, then READY. One that dies,
or is silent for `process_timeout_s`, is killed and started again (`restart_if_dead`); the supervisor
then re-runs the jobs it held. Children are spawned, never forked, and die with the daemon
(`streamer.lifeline`).
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.context
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from streamer.transport.messages import Heartbeat

logger = logging.getLogger(__name__)

SPAWN = multiprocessing.get_context("spawn")


class ProcessState(str, Enum):
    STARTING = "starting"
    READY = "ready"


def spawn(target: Callable[[Any], None], argument: Any) -> multiprocessing.context.SpawnProcess:
    """Start `target(argument)` in a fresh interpreter (no inherited sockets, locks or CUDA state)."""
    process = SPAWN.Process(target=target, args=(argument,), daemon=True)
    process.start()
    return process


@dataclass
class Child:
    """A long-lived child (worker or writer) and what the supervisor knows about it."""

    name: str
    endpoint: str
    start: Callable[[], multiprocessing.context.SpawnProcess]
    process: multiprocessing.context.SpawnProcess | None = None
    state: ProcessState = ProcessState.STARTING
    started_at: float = 0.0
    last_heartbeat: float = 0.0
    restarts: int = 0
    model_fps: float | None = None
    """A worker's frames per second of model time, from its last heartbeat (None: the writer, or idle)."""
    gpu_memory_bytes: int | None = None
    """A CUDA worker's allocated GPU memory, from its last heartbeat."""

    @property
    def ready(self) -> bool:
        """Has sent a heartbeat since it was (re)started."""
        return self.state is ProcessState.READY

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def launch(self) -> None:
        self.process = self.start()
        self.state = ProcessState.STARTING
        self.started_at = self.last_heartbeat = time.monotonic()

    def on_heartbeat(self, heartbeat: Heartbeat) -> None:
        self.last_heartbeat = time.monotonic()
        self.model_fps = heartbeat.model_fps
        self.gpu_memory_bytes = heartbeat.gpu_memory_bytes
        if self.state is ProcessState.STARTING:
            self.state = ProcessState.READY
            logger.info("process=%s ready pid=%s", self.name, self.process.pid if self.process else None)

    def restart_if_dead(self, timeout_s: float) -> str | None:
        """Kill it if silent for `timeout_s`; start it again if it is not running. Returns why it was
        replaced (for the re-run jobs' logs), or None when it is fine."""
        assert self.process is not None
        silent = time.monotonic() - self.last_heartbeat
        if self.process.is_alive() and silent < timeout_s:
            return None
        if self.process.is_alive():
            logger.error("process=%s silent for %.0f s; killing it", self.name, silent)
            self.process.kill()
        self.process.join(2.0)
        exitcode = self.process.exitcode
        logger.error("process=%s died exitcode=%s; restarting", self.name, exitcode)
        self.restarts += 1
        self.launch()
        return f"{self.name} died (exit code {exitcode})"

    def join_or_kill(self, timeout_s: float) -> None:
        """Wait for it to exit after a Shutdown; kill it past `timeout_s`."""
        if self.process is None:
            return
        self.process.join(timeout_s)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(2.0)

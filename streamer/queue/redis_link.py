"""The supervisor's link to Redis: notices an outage, retries with backoff, restarts an owned server.

Redis holds the queue and the job records, but the jobs themselves run in the daemon's processes, which
never talk to Redis. So an outage pauses only the supervisor's Redis work (claims, leases, progress,
final states): the decoders, workers and writer go on, progress stays in memory, and a job that ends
meanwhile keeps its final state until it can be written. The daemon's embedded server is restarted
from its append-only file; an external one is retried with exponential backoff. The outage is logged
when it starts and ends, and counted in the daemon's status hash.

Wiring (streamer/daemon/supervisor.py)::

    link = RedisLink(endpoint)
    if link.due():
        try:
            ... every Redis call of this loop turn ...
            link.succeeded()
        except REDIS_ERRORS as exc:
            link.failed(exc)
"""

from __future__ import annotations

import logging
import time

import redis

from streamer.queue.redis_server import RedisEndpoint, RedisStartError

logger = logging.getLogger(__name__)

REDIS_ERRORS: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)
"""What an outage looks like to redis-py (BusyLoadingError, a server still reading its file, is one)."""

RETRY_INITIAL_S = 0.2
RETRY_MAX_S = 5.0
"""Backoff between attempts while Redis is away: doubles from the first to the second bound."""


class RedisLink:
    """Whether Redis is reachable, when to try again, and what to report about outages."""

    def __init__(
        self,
        endpoint: RedisEndpoint,
        *,
        initial_delay_s: float = RETRY_INITIAL_S,
        max_delay_s: float = RETRY_MAX_S,
    ) -> None:
        self.endpoint = endpoint
        self.initial_delay_s = initial_delay_s
        self.max_delay_s = max_delay_s
        self.away_since: float | None = None
        """Monotonic time the current outage began; None while Redis answers."""
        self.outages = 0
        self.last_outage_s: float | None = None
        self._delay_s = initial_delay_s
        self._next_try = 0.0

    @property
    def up(self) -> bool:
        return self.away_since is None

    def away_for(self) -> float:
        """Seconds since the current outage began (0 while Redis answers)."""
        return 0.0 if self.away_since is None else time.monotonic() - self.away_since

    def due(self) -> bool:
        """True when Redis may be tried now: always while it is up, after the backoff while it is away."""
        return time.monotonic() >= self._next_try

    def wait_until_due(self) -> None:
        """Sleep until the next try (for callers that have nothing else to do meanwhile)."""
        time.sleep(max(0.0, self._next_try - time.monotonic()))

    def failed(self, error: Exception) -> None:
        """A Redis call failed: start (or extend) the outage, schedule the next try, restart our server."""
        now = time.monotonic()
        if self.away_since is None:
            self.away_since = now
            self.outages += 1
            self._delay_s = self.initial_delay_s
            logger.error(
                "redis unreachable (%s: %s); jobs keep running, their reports wait until it is back",
                type(error).__name__,
                error,
            )
        else:
            self._delay_s = min(self._delay_s * 2, self.max_delay_s)
        self._next_try = now + self._delay_s
        if self.endpoint.server is not None:
            try:
                self.endpoint.ensure_running()
            except (RedisStartError, OSError) as exc:
                logger.error("embedded redis could not be restarted yet: %s", exc)

    def succeeded(self) -> None:
        """A full round of Redis calls went through: end the outage, if there was one."""
        if self.away_since is None:
            return
        self.last_outage_s = time.monotonic() - self.away_since
        self.away_since = None
        self._next_try = 0.0
        logger.warning("redis reachable again after %.1f s away", self.last_outage_s)

    def status_fields(self) -> dict[str, str]:
        """For the daemon's status hash: how often and how long Redis was away."""
        fields = {"redis_outages": str(self.outages)}
        if self.last_outage_s is not None:
            fields["redis_last_outage_s"] = f"{self.last_outage_s:.1f}"
        return fields

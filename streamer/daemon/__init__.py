"""`vosd serve`: the supervisor. Claims jobs from Redis, runs each through decoder -> worker -> writer.

Processes (spawned, never forked; see docs/architecture.md)::

    supervisor (supervisor.py) one loop: hand-backs -> events -> children -> jobs -> Redis round
    writer                    streamer/output/writer_process.py, one
    worker-<i>                workers/worker.py, one per configured device
    decoder                   streamer/ingest/decoder.py, one per running job

Every child reports on one PULL socket bound here (`events_endpoint`): Heartbeat, Progress, Error, and
the writer's OutputsComplete, which means a job's outputs are complete under their final names. The
supervisor is the only Redis client: it claims jobs (streamer/queue/jobs.py), renews their leases (each
renewal carries the job's progress), and writes final states. (A "heartbeat" is only ever a child's
liveness message; Redis has leases.)

Failure handling, the part users of other queues complain about:

* a worker or the writer that dies (or stops sending heartbeats for `process_timeout_s`) is restarted
  at once; its jobs are re-run on a live worker, from their last checkpoint when the outputs still hold
  its frames (streamer/output/resume.py; `resumed_from` in the status) or else from frame 0, and the writer's
  duplicate handling means each frame is still written exactly once. A job re-run `max_attempts` times is
  given up (`JobQueue.give_up`: failed, with a dead-letter entry). The status hash counts every run (`runs`);
* a decoder that crashes re-runs its job the same way; a decoder that reports an error (unopenable,
  corrupt or truncated source, unusable mask) fails its job with that message, and nothing else stops.
  A decoder that died without cancelling its job on the worker (crash, SIGKILL) is replaced there by
  `transport.release_job`, so the worker frees the job's session at once;
* cancel is polled every loop (`LOOP_S`), so a cancelled job is stopped within a second; so is stop
  (`vosd stop`), which SIGUSR1s the decoder once it is up: it ends the stream normally and the job becomes
  DONE with ``stopped_early`` (cancelled if no frame had been sent yet);
* if the whole daemon dies, its claimed jobs are re-taken by the next daemon after the visibility
  timeout. SIGTERM hands back instead: no more claims, every job here is stopped and handed back to the
  queue (`JobQueue.hand_back`: queued, re-taken at once by the next daemon, the attempt not counted),
  then every child is stopped in order and the process exits 0.

One place decides how a stopping job ends. Stopping (cancel, failure, give-up, hand-back) SIGTERMs the
decoder and asks the writer to discard the outputs; the job waits in SETTLING for the writer's answer,
which is serialised with its own completion of the outputs: Cancel (discarded) applies the intended
ending, OutputsComplete (completed just before) makes the job DONE with its outputs. So the final state and
the files on disk always agree, whichever of cancel and completion came first.

Live jobs: every written frame's latency (decoded to mask written) comes with the writer's Progress;
the median and 95th percentile over the last `LATENCY_WINDOW` frames go into the status hash.

A job's phases here (WAITING, RUNNING, SETTLING, STOPPING) and their transitions are in `lifecycle`.
A child is STARTING until its first heartbeat, then READY.

Modules: `settings` (DaemonSettings, and each child's settings built from the config's sections),
`lifecycle` (a job's phases and their transition table), `children` (starting and restarting workers and
the writer), `presence` (this daemon's records in Redis, and peers' load), `supervisor` (the loop).
"""

from streamer.daemon.settings import DaemonSettings
from streamer.daemon.supervisor import Daemon, serve

__all__ = ["Daemon", "DaemonSettings", "serve"]

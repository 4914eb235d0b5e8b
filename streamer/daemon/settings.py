"""What `vosd serve` runs with, and the one place where each child's settings are built from it.

Every knob is defined once, in `streamer.config`. Its sections travel to the children as they are: a
decoder gets ``sources`` and ``transport``, a worker ``workers``, ``xmem`` and ``transport``, the writer
``writer`` and ``transport``. So no default can differ between layers and no knob is renamed on the way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streamer.config import VosdConfig
from streamer.ingest.decoder import DecoderSettings
from streamer.output.writer_process import WriterSettings
from streamer.queue.jobs import JobRecord
from workers.worker import WorkerSettings

OUTPUT_KINDS = ("overlay", "masks", "rle")
"""The outputs a job may ask for (its options of these names); see `streamer.output.writer_process`."""


@dataclass(frozen=True)
class DaemonSettings:
    """The configuration plus what only the supervisor uses; `from_config` builds it for `vosd serve`."""

    config: VosdConfig
    checkpoint: str
    """XMem checkpoint every worker loads: ``workers.model_path``, or the bundled weights when empty."""
    torch_threads: int = 0
    """Worker torch threads; 0 lets each worker choose (`workers.worker.default_threads`)."""
    stop_grace_s: float = 1.0
    """How long a decoder gets to exit after SIGTERM before it is killed."""
    settle_timeout_s: float = 5.0
    """How long a stopping job waits for the writer's answer (outputs discarded or already complete);
    past it, the writer is presumed gone and the job ends as intended."""
    finish_timeout_s: float = 60.0
    """After its decoder ended normally, how long a job may wait for the writer to write another frame
    (each frame written restarts the wait) or complete its outputs."""
    process_timeout_s: float = 60.0
    """A worker or the writer silent for this long is killed and restarted."""

    @classmethod
    def from_config(cls, config: VosdConfig, **overrides: Any) -> DaemonSettings:
        from workers.training.weights import model_path

        return cls(config=config, checkpoint=str(model_path(config.workers.model_path)), **overrides)

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    @property
    def output_dir(self) -> Path:
        """Job outputs go to ``<output_dir>/<job id>/`` unless the job names its own directory."""
        return self.config.data_dir / "outputs"

    @property
    def default_outputs(self) -> tuple[str, ...]:
        """Outputs a job writes unless its options say otherwise (``writer.overlay``, ``masks``, ``rle``)."""
        return tuple(name for name in OUTPUT_KINDS if getattr(self.config.writer, name))

    def writer_settings(self) -> WriterSettings:
        return WriterSettings(
            collector_endpoint=self.config.writer_endpoint(),
            events_endpoint=self.config.events_endpoint(),
            transport=self.config.transport,
            writer=self.config.writer,
        )

    def worker_settings(self, index: int) -> WorkerSettings:
        return WorkerSettings(
            name=f"worker-{index}",
            device=self.config.workers.devices[index],
            checkpoint=self.checkpoint,
            inbox_endpoint=self.config.worker_endpoint(index),
            writer_endpoint=self.config.writer_endpoint(),
            events_endpoint=self.config.events_endpoint(),
            transport=self.config.transport,
            workers=self.config.workers,
            xmem=self.config.xmem,
            auto=self.config.auto,
            threads=self.torch_threads,
        )

    def decoder_settings(
        self,
        record: JobRecord,
        worker_endpoint: str,
        *,
        options: dict[str, Any],
        outputs: dict[str, Any],
        max_frames: int | None,
    ) -> DecoderSettings:
        """One run's decoder for the job `record` feeding the worker at `worker_endpoint`."""
        return DecoderSettings(
            job_id=record.id,
            source=record.source,
            mask_path=record.mask_path,
            live=record.live,
            worker_endpoint=worker_endpoint,
            writer_endpoint=self.config.writer_endpoint(),
            events_endpoint=self.config.events_endpoint(),
            max_objects=self.config.workers.max_objects,
            transport=self.config.transport,
            sources=self.config.sources,
            options=options,
            outputs=outputs,
            max_frames=max_frames,
        )

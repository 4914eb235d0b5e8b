"""Request and response bodies of the HTTP API; FastAPI turns them into /openapi.json."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from streamer.config import XMemConfig
from streamer.modes import Mode
from streamer.queue.jobs import JobRecord

MAX_POLYGONS = 256
MAX_POINTS = 4096
MAX_SIDE = 16384


class JobOptions(BaseModel):
    """Per-job options. Outputs always go to the job's own folder, so there is no output_dir here."""

    model_config = ConfigDict(extra="forbid")

    max_frames: int | None = Field(default=None, ge=1, description="Stop after this many frames.")
    overlay: bool | None = Field(default=None, description="Write overlay.mp4 (default: the daemon's).")
    masks: bool | None = Field(default=None, description="Write masks/NNNNN.png (default: the daemon's).")
    rle: bool | None = Field(default=None, description="Write masks.jsonl (default: the daemon's).")
    mode: Mode | None = Field(
        default=None,
        description="auto | xmem | tmo (streamer/modes.py). Default: xmem with a first mask, else auto.",
    )
    objects: int | None = Field(
        default=None, ge=1, le=255, description="Auto mode: seed up to N separate components as objects."
    )
    xmem: dict[str, int | bool] = Field(
        default_factory=dict,
        description='XMem overrides by their official names, e.g. {"mem_every": 10}.',
    )

    @field_validator("xmem")
    @classmethod
    def _valid_xmem(cls, values: dict[str, int | bool]) -> dict[str, int | bool]:
        """Checked as the daemon will check them: names, types and their combination with the defaults."""
        unknown = sorted(set(values) - set(XMemConfig.model_fields))
        if unknown:
            raise ValueError(f"unknown XMem options {unknown}; known: {sorted(XMemConfig.model_fields)}")
        return XMemConfig(**values).model_dump(include=set(values))

    def to_job_options(self) -> dict[str, Any]:
        """The flat `JobRecord.options` the daemon reads (streamer.daemon.lifecycle.split_options)."""
        flat = {k: v for k, v in self.model_dump(mode="json", exclude={"xmem"}).items() if v is not None}
        return {**flat, **self.xmem}


class Polygon(BaseModel):
    """One polygon of one object, in first-frame pixel coordinates."""

    model_config = ConfigDict(extra="forbid")

    object: int = Field(ge=1, le=255, description="Object label; polygons of one object share it.")
    points: list[tuple[float, float]] = Field(
        min_length=3, max_length=MAX_POINTS, description="(x, y) pairs."
    )


class PolygonMask(BaseModel):
    """A first-frame mask drawn as polygons; later polygons are painted over earlier ones."""

    model_config = ConfigDict(extra="forbid")

    width: int = Field(ge=1, le=MAX_SIDE, description="Width of the source's first frame.")
    height: int = Field(ge=1, le=MAX_SIDE, description="Height of the source's first frame.")
    polygons: list[Polygon] = Field(min_length=1, max_length=MAX_POLYGONS)


class JobSubmission(BaseModel):
    """POST /jobs as JSON. Multipart forms carry the same fields (``options`` and ``mask_polygons`` as JSON
    text) plus the files ``video`` (instead of ``source``) and ``mask`` (a PNG)."""

    model_config = ConfigDict(extra="forbid")

    source: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="A file under one of http.source_roots, or a URL with one of http.source_schemes.",
    )
    live: bool | None = Field(
        default=None, description="Live: newest frames, drops counted. Default: guessed."
    )
    options: JobOptions = Field(default_factory=JobOptions)
    mask_png: str | None = Field(
        default=None,
        max_length=64 << 20,
        description="First-frame index mask, a PNG in base64.",
    )
    mask_polygons: PolygonMask | None = Field(default=None, description="First-frame mask as polygons.")

    @model_validator(mode="after")
    def _one_mask(self) -> JobSubmission:
        if self.mask_png is not None and self.mask_polygons is not None:
            raise ValueError("give mask_png or mask_polygons, not both")
        return self


class JobView(JobRecord):
    """A job's status hash plus where to fetch its outputs."""

    progress: float | None = Field(description="frames_done / frames_total when the total is known.")
    output_urls: dict[str, str] = Field(description="Output kind -> URL under /jobs/{id}/outputs/.")


class JobPage(BaseModel):
    jobs: list[JobView]
    next_offset: int | None = Field(description="Offset of the next page; null on the last one.")


class StateReply(BaseModel):
    id: str
    state: str
    message: str


class ErrorBody(BaseModel):
    """Every error the API answers, whatever its status."""

    status: int
    error: str = Field(description="What went wrong, in a sentence.")
    details: list[str] | None = Field(default=None, description="One line per invalid field, if any.")

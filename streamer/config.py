"""Daemon configuration: one typed, frozen `VosdConfig`, read from YAML, overridable by environment.

Precedence, highest first: ``VOSD_*`` environment variables (nested fields with ``__``, e.g.
``VOSD_XMEM__MEM_EVERY=10``, ``VOSD_REDIS__URL=redis://host:6379/0``,
``VOSD_WORKERS__DEVICES='["cuda:0","cuda:1"]'``), then the YAML file, then the defaults below, which
configs/default.yaml repeats with a comment on every field. Unknown keys are errors, in the file and in
``VOSD_`` variables alike, so a misspelt option never silently keeps its default.

Size: about 520 lines because every field carries its unit, bounds and reason in its Field description
(tests/streamer/test_config.py requires one, and that configs/default.yaml lists every field); the
sections are small and read best side by side. The `auto` section repeats AutoConfig's fields only to
describe them; their defaults and checks stay in workers/auto/config.py.

Wiring::

    config = load_config(path)                       # ConfigError with file and field on bad input
    logger.info("config: %s", config.summary())      # secrets masked
    endpoint = resolve_redis(config.redis.url, config.data_dir)
    queues = config.transport.queues()              # QueueSettings for every socket
    config.worker_endpoint(i), config.writer_endpoint(), config.events_endpoint()
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from streamer.transport.sockets import LiveDropPolicy, QueueSettings
from workers.auto.config import AutoConfig, ReseedPolicy
from workers.xmem.config import InferenceConfig

MAX_IPC_PATH = 100
"""ipc:// paths longer than this (bytes) do not fit in a Unix socket address."""


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the file (if any) and each bad field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RedisConfig(_Section):
    """Where job records live and how the job queue recovers from dead workers."""

    url: str = Field(
        default="",
        description="Redis URL (redis://, rediss://, unix://). "
        "Empty: start a private embedded Redis in data_dir/redis.",
    )
    key_prefix: str = Field(
        default="vosd", description="Prefix of every Redis key, so daemons can share a server.",
    )
    max_attempts: int = Field(
        default=3, ge=1, description="Deliveries of a job before it is dead-lettered and marked failed."
    )
    visibility_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description="Seconds without a lease renewal after which a running job is re-taken by another "
        "daemon.",
    )
    lease_renewal_s: float = Field(
        default=1.0,
        gt=0,
        description="Seconds between lease renewals of a running job (each also writes progress and checks "
        "for cancel).",
    )

    @model_validator(mode="after")
    def _renewal_within_lease(self) -> RedisConfig:
        if self.lease_renewal_s * 3 > self.visibility_timeout_s:
            raise ValueError("lease_renewal_s must be at most a third of visibility_timeout_s")
        return self


class TransportConfig(_Section):
    """ZeroMQ endpoints and queue sizes. Queues count frames (at the source resolution), not messages."""

    worker_endpoint: str = Field(
        default="ipc://{data_dir}/run/worker-{index}.sock",
        description="Endpoint each worker binds; {index} is the worker number, {data_dir} the data "
        "directory. Example for TCP: tcp://127.0.0.1:560{index}.",
    )
    writer_endpoint: str = Field(
        default="ipc://{data_dir}/run/writer.sock", description="Endpoint the writer binds for results."
    )
    events_endpoint: str = Field(
        default="ipc://{data_dir}/run/events.sock",
        description="Endpoint the daemon binds for progress, heartbeats and errors from its processes.",
    )
    batch_queue_frames: int = Field(
        default=8, ge=1, description="Frames in flight per batch job between decoder and worker (lossless)."
    )
    live_queue_frames: int = Field(
        default=1, ge=1, description="Frames in flight per live job; 1 gives the freshest frames."
    )
    results_queue_frames: int = Field(
        default=16, ge=1, description="Masks queued from a worker to the writer before the worker waits."
    )
    live_drop_policy: LiveDropPolicy = Field(
        default=LiveDropPolicy.DROP_OLDEST,
        description="Live jobs with no room: drop_oldest keeps the newest frame, "
        "drop_newest keeps the held one.",
    )
    peer_timeout_s: float = Field(
        default=30.0, gt=0, description="Seconds a sender waits for a silent peer before failing the job."
    )
    end_of_stream_timeout_s: float = Field(
        default=30.0, gt=0,
        description="Seconds the decoder waits at the end of a stream without the worker segmenting any "
        "of the job's frames still in flight; each frame segmented restarts the wait."
    )

    def queues(self) -> QueueSettings:
        return QueueSettings(
            batch_frames=self.batch_queue_frames,
            live_frames=self.live_queue_frames,
            results_frames=self.results_queue_frames,
            live_policy=self.live_drop_policy,
        )


class SourcesConfig(_Section):
    """How sources are opened and how live ones recover."""

    open_timeout_s: float = Field(default=10.0, gt=0, description="Seconds to open a file, stream or camera.")
    stall_timeout_s: float = Field(
        default=10.0, gt=0, description="Live sources: seconds without a frame before the source is reopened."
    )
    reconnect_initial_delay_s: float = Field(
        default=0.5, ge=0,
        description="Live sources: first wait before reopening; doubles after each failure."
    )
    reconnect_max_delay_s: float = Field(
        default=10.0, ge=0, description="Live sources: longest wait between reopening attempts."
    )
    reconnect_attempts: int = Field(
        default=0, ge=0,
        description="Live sources: failed reopenings in a row before the job fails; 0 = no count limit "
        "(reconnect_give_up_s still applies)."
    )
    reconnect_give_up_s: float = Field(
        default=300.0, ge=0,
        description="Live sources: seconds without a frame (or, for a source that never connected, since the "
        "first attempt) after which the job fails with the last error; 0 = never give up.",
    )

    @model_validator(mode="after")
    def _delays_ordered(self) -> SourcesConfig:
        if self.reconnect_max_delay_s < self.reconnect_initial_delay_s:
            raise ValueError("reconnect_max_delay_s must be at least reconnect_initial_delay_s")
        return self


class WorkersConfig(_Section):
    """Worker processes: one per device, each holding several jobs."""

    devices: list[str] = Field(
        default_factory=lambda: ["cpu"], min_length=1,
        description='Devices, one worker each, e.g. ["cuda:0", "cuda:1"].'
    )
    jobs_per_worker: int = Field(
        default=4, ge=1, description="Jobs a worker holds at once; more wait in the queue.",
    )
    size: int = Field(
        default=480,
        description="Working resolution: shorter side in pixels the model sees; -1 = source size."
    )
    max_objects: int = Field(default=16, ge=1, le=255, description="Objects allowed in a first-frame mask.")
    model_path: str = Field(
        default="", description="XMem checkpoint (.pth). Empty: the bundled default weights.",
    )
    checkpoint_every_s: float = Field(
        default=30.0, ge=0,
        description="Save a batch job's XMem memory this often next to its outputs, so a re-run after a "
        "crash resumes there instead of at frame 0; 0 = never. Live jobs restart fresh.",
    )
    engine: Literal["fast", "reference"] = Field(
        default="fast",
        description="XMem inference path: fast (sparse top-k memory read-out; outputs within float rounding "
        "of the reference, see benchmarks/RESULTS.md) or reference (the eager float32 path, operation for "
        "operation the official XMem code).",
    )

    @field_validator("devices")
    @classmethod
    def _device_names(cls, devices: list[str]) -> list[str]:
        for device in devices:
            if not re.fullmatch(r"cpu|cuda(:\d+)?|mps", device):
                raise ValueError(f"unknown device {device!r}; use cpu, cuda, cuda:N or mps")
        return devices

    @field_validator("size")
    @classmethod
    def _size(cls, size: int) -> int:
        if size != -1 and size < 64:
            raise ValueError("size must be -1 (source size) or at least 64 pixels")
        return size


_XMEM = InferenceConfig()
"""XMem's defaults come from the engine's InferenceConfig, which also validates the combination."""


class XMemConfig(_Section):
    """XMem inference options, with XMem's official names and defaults (see workers.xmem.config)."""

    mem_every: int = Field(
        default=_XMEM.mem_every, ge=1, description="Frames between additions to working memory.",
    )
    top_k: int = Field(
        default=_XMEM.top_k, ge=1, description="Memory entries each query pixel reads from (top-k softmax).",
    )
    deep_update_every: int = Field(
        default=_XMEM.deep_update_every, ge=-1,
        description="Frames between deep updates of sensory memory; -1 = with every memory frame."
    )
    enable_long_term: bool = Field(
        default=_XMEM.enable_long_term,
        description="Compress old working memory into long-term memory (off: memory grows with the video).",
    )
    enable_long_term_count_usage: bool = Field(
        default=_XMEM.enable_long_term_count_usage,
        description="Count how often long-term entries are read, to evict the least used."
    )
    max_mid_term_frames: int = Field(
        default=_XMEM.max_mid_term_frames, ge=2,
        description="Working-memory frames before compression into long-term memory."
    )
    min_mid_term_frames: int = Field(
        default=_XMEM.min_mid_term_frames, ge=1, description="Working-memory frames kept after compression.",
    )
    num_prototypes: int = Field(
        default=_XMEM.num_prototypes, ge=1, description="Long-term prototypes created per compression.",
    )
    max_long_term_elements: int = Field(
        default=_XMEM.max_long_term_elements, ge=1,
        description="Long-term memory cap in elements; least-used are evicted beyond it."
    )

    @model_validator(mode="after")
    def _valid_for_the_engine(self) -> XMemConfig:
        self.inference_config()
        return self

    def inference_config(self) -> InferenceConfig:
        """The engine's config for these options (raises ValueError on an invalid combination)."""
        return InferenceConfig(**self.model_dump())


_AUTO = AutoConfig()
"""Auto mode's defaults come from AutoConfig, which also validates the combination."""


class AutoSection(_Section):
    """Jobs without a first-frame mask (modes auto and tmo): TMO's model and every seeding threshold."""

    model_path: str = Field(
        default="", description="TMO checkpoint (.pth). Empty: the bundled vosd-tmo-lite.pth.",
    )
    flow: Literal["dis", "none"] = Field(
        default="dis", description="TMO's motion input: dis (OpenCV DIS optical flow) or none (the frame).",
    )
    stable_frames: int = Field(
        default=_AUTO.stable_frames, description="Seeding: TMO frames in a row that must be plausible, "
        "confident and agree (stable_iou) before the mask seeds XMem.",
    )
    stable_iou: float = Field(
        default=_AUTO.stable_iou, description="IoU (0-1) between consecutive TMO masks counted as stable.",
    )
    min_area: float = Field(
        default=_AUTO.min_area, description="Smallest plausible object, fraction of the frame (0-1); an "
        "XMem mask below it has collapsed.",
    )
    max_area: float = Field(
        default=_AUTO.max_area, description="Largest plausible object, fraction of the frame (0-1).",
    )
    min_confidence: float = Field(
        default=_AUTO.min_confidence, description="Mean TMO foreground probability (0-1) inside its mask "
        "for TMO to count as confident.",
    )
    check_every: int = Field(
        default=_AUTO.check_every, description="Frames between TMO checks of XMem's mask while tracking.",
    )
    drift_iou: float = Field(
        default=_AUTO.drift_iou, description="IoU (0-1) of XMem's and TMO's masks below which a check "
        "drifts.",
    )
    drift_checks: int = Field(
        default=_AUTO.drift_checks, description="Drifting checks in a row (TMO stable and confident) "
        "before XMem is re-seeded.",
    )
    cut_threshold: float = Field(
        default=_AUTO.cut_threshold, description="Mean absolute grey difference (0-1) of consecutive "
        "thumbnails above which a scene cut restarts the search; 1 or more: never.",
    )
    thumbnail: int = Field(
        default=_AUTO.thumbnail, description="Side in pixels of the grey thumbnails compared for cuts.",
    )
    component_fraction: float = Field(
        default=_AUTO.component_fraction, description="Mask cleaning: components smaller than this "
        "fraction (0-1) of the largest are dropped.",
    )
    reseed: ReseedPolicy = Field(
        default=_AUTO.reseed, description="Re-seed on drift or collapse: reset (clear XMem's memory) or "
        "memory (add TMO's mask as a memory frame).",
    )
    objects: int = Field(
        default=_AUTO.objects, description="Objects to seed: 1 = one object; N = the N largest separate "
        "components. A job may override it (vosd submit --objects).",
    )

    @model_validator(mode="after")
    def _valid_for_auto_mode(self) -> AutoSection:
        self.auto_config()
        return self

    def auto_config(self, **overrides: Any) -> AutoConfig:
        """The AutoConfig of these options with `overrides` (raises ValueError on an invalid value)."""
        values = self.model_dump(exclude={"model_path", "flow"})
        return AutoConfig.from_mapping({**values, **overrides})


class WriterConfig(_Section):
    """What the writer produces for each job."""

    overlay_alpha: float = Field(
        default=0.5, ge=0, le=1, description="Mask opacity in the overlay MP4 (0-1).",
    )
    crf: int = Field(
        default=20, ge=0, le=51, description="H.264 constant rate factor; lower is better and larger.",
    )
    overlay: bool = Field(
        default=True, description="Write overlay.mp4 (source frames with masks drawn). Job option 'overlay'.",
    )
    masks: bool = Field(
        default=True, description="Write one palette PNG index mask per frame in masks/. Job option 'masks'.",
    )
    rle: bool = Field(
        default=True, description="Write masks.jsonl: COCO-style RLE per object per frame. Job option 'rle'.",
    )


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
"""Hosts reachable only from this machine; listening anywhere else requires `HttpConfig.token`."""


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) -> (host, port); ValueError with the expected form."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]]+):(\d{1,5})", listen)
    if match is None:
        raise ValueError(f"listen must be host:port, e.g. 127.0.0.1:8080, got {listen!r}")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 0 < port < 65536:
        raise ValueError(f"listen port must be 1-65535, got {port}")
    return host, port


class HttpConfig(_Section):
    """The HTTP API, dashboard and metrics of `vosd serve` (streamer/api); off while `listen` is empty."""

    listen: str = Field(
        default="",
        description="host:port to serve on, e.g. 127.0.0.1:8080. Empty: no HTTP server. Any host other "
        "than loopback requires a token.",
    )
    token: str = Field(
        default="",
        description="Bearer token every request must carry (Authorization: Bearer ...), except /healthz, "
        "/readyz and the dashboard page itself. Set it with VOSD_HTTP__TOKEN rather than in a file.",
    )
    max_upload_mb: float = Field(
        default=512.0, gt=0, description="Largest request body (a video upload with its mask), in MiB.",
    )
    max_mask_mb: float = Field(default=8.0, gt=0, description="Largest first-frame mask PNG, in MiB.")
    source_roots: list[str] = Field(
        default_factory=list,
        description="Directories whose files (after resolving symlinks) API jobs may name as sources. "
        "Empty: only uploaded videos and the URL schemes below.",
    )
    source_schemes: list[str] = Field(
        default_factory=lambda: ["rtsp", "rtsps"],
        description="URL schemes API jobs may use, a subset of streamer.ingest.sources.SUPPORTED_SCHEMES.",
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, listen: str) -> str:
        if listen:
            split_listen(listen)
        return listen

    @field_validator("source_schemes")
    @classmethod
    def _schemes(cls, schemes: list[str]) -> list[str]:
        from streamer.ingest.sources import SUPPORTED_SCHEMES

        unknown = sorted(set(schemes) - SUPPORTED_SCHEMES)
        if unknown:
            raise ValueError(f"unsupported schemes {unknown}; choose from {sorted(SUPPORTED_SCHEMES)}")
        return schemes

    @model_validator(mode="after")
    def _token_beyond_loopback(self) -> HttpConfig:
        if self.listen and not self.token and split_listen(self.listen)[0] not in LOOPBACK_HOSTS:
            raise ValueError(
                f"listening on {self.listen} (beyond loopback) requires a token: set VOSD_HTTP__TOKEN"
            )
        return self


def redact_url(url: str) -> str:
    """`url` with its password (``redis://user:PASS@host``) masked, for logs and error messages."""
    return re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", url)


class VosdConfig(BaseSettings):
    """Everything `vosd serve` and the CLI need; see configs/default.yaml for the commented defaults."""

    model_config = SettingsConfigDict(
        env_prefix="VOSD_", env_nested_delimiter="__", extra="forbid", frozen=True, case_sensitive=False
    )

    data_dir: Path = Field(
        default=Path("~/.local/share/vosd"),
        description="Directory for the embedded Redis, ipc sockets and default job outputs.",
    )
    log_level: str = Field(default="INFO", description="Logging level: DEBUG, INFO, WARNING or ERROR.")
    redis: RedisConfig = Field(default_factory=RedisConfig, description="Job store and queue.")
    transport: TransportConfig = Field(default_factory=TransportConfig, description="Sockets and queues.")
    sources: SourcesConfig = Field(
        default_factory=SourcesConfig, description="Opening and reconnecting sources.",
    )
    workers: WorkersConfig = Field(default_factory=WorkersConfig, description="Worker processes and model.")
    xmem: XMemConfig = Field(default_factory=XMemConfig, description="XMem inference options.")
    auto: AutoSection = Field(
        default_factory=AutoSection, description="Jobs without a first-frame mask (modes auto and tmo).",
    )
    writer: WriterConfig = Field(default_factory=WriterConfig, description="Job outputs.")
    http: HttpConfig = Field(
        default_factory=HttpConfig, description="HTTP API, dashboard and metrics (off by default).",
    )

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, path: Path) -> Path:
        return path.expanduser()

    @field_validator("log_level")
    @classmethod
    def _level(cls, level: str) -> str:
        if level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("log_level must be DEBUG, INFO, WARNING or ERROR")
        return level.upper()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment over the YAML values passed in by `load_config`; no .env or secrets files."""
        return env_settings, init_settings

    def worker_endpoint(self, index: int) -> str:
        return self._endpoint(self.transport.worker_endpoint, index=index)

    def writer_endpoint(self) -> str:
        return self._endpoint(self.transport.writer_endpoint)

    def events_endpoint(self) -> str:
        return self._endpoint(self.transport.events_endpoint)

    def summary(self) -> dict[str, Any]:
        """The effective configuration for the startup log, with any password in the Redis URL masked."""
        data = self.model_dump(mode="json")
        data["redis"]["url"] = redact_url(data["redis"]["url"])
        if data["http"]["token"]:
            data["http"]["token"] = "***"
        return data

    def _endpoint(self, template: str, **values: int) -> str:
        endpoint = template.format(data_dir=self.data_dir, **values)
        if endpoint.startswith("ipc://") and len(endpoint.removeprefix("ipc://").encode()) > MAX_IPC_PATH:
            raise ConfigError(
                f"ipc endpoint too long for a Unix socket ({endpoint}); use a shorter data_dir or tcp://"
            )
        return endpoint


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = "unknown key" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None) -> VosdConfig:
    """Read `path` (YAML mapping; None = defaults only), apply VOSD_* variables, validate."""
    data: Any = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{where}: cannot read configuration: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{where}: the top level must be a mapping of sections")
    try:
        return VosdConfig(**data)
    except ValidationError as exc:
        message = f"{where} (with VOSD_* environment overrides): invalid configuration:\n{_describe(exc)}"
        raise ConfigError(message) from None

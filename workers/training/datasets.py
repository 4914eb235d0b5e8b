"""Training clip datasets: DAVIS, YouTube-VOS, static images turned into clips, and synthetic video.

Every dataset yields the same sample, a dict of
  ``images`` float (T, 3, S, S) normalised RGB,
  ``labels`` int64 (T, S, S) with 0 = background and i + 1 = the i-th sampled object,
  ``num_objects`` int64 () objects actually present (the rest of the object channels are padding).
The first frame always shows at least one sampled object, because that frame's mask is the reference the
network propagates.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from streamer.masks import read_index_mask
from workers.training.augment import (
    ClipAugmentation,
    StaticDeformation,
    augment_clip,
    deform_still,
    to_tensor,
)
from workers.training.synthetic import SyntheticConfig, generate_clip

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
STILL_SUFFIXES = (".jpg", ".jpeg", ".bmp", ".webp")
"""Static-image datasets keep masks as PNGs beside the images, so images there are never PNGs."""
MIN_FIRST_FRAME_PIXELS = 16
"""An object counts as visible in the first frame only with at least this many pixels after augmentation."""
MAX_TRIALS = 10
"""Draws of frames / augmentation before a dataset gives up on a sample and tries another one."""


class DatasetLayoutError(ValueError):
    """A dataset folder does not have the expected layout."""


@dataclass(frozen=True)
class VideoRecord:
    """One annotated video.

    Attributes:
        name: sequence name (the folder name).
        frames: image files in temporal order.
        masks: the index-mask file of each frame.
        skip_scale: source frames per listed frame (5 for YouTube-VOS train, which is annotated every 5th
            frame), used to express the max skip in source frames for every dataset alike.
    """

    name: str
    frames: tuple[Path, ...]
    masks: tuple[Path, ...]
    skip_scale: int = 1


def read_names(names: Iterable[str] | Path | None) -> set[str] | None:
    """Sequence names from an iterable or a text file with one name per line (None stays None)."""
    if names is None:
        return None
    if isinstance(names, Path):
        return {line.strip() for line in names.read_text().splitlines() if line.strip()}
    return set(names)


def list_annotated_videos(
    image_root: Path, mask_root: Path, *, include: set[str] | None, exclude: set[str], skip_scale: int = 1
) -> list[VideoRecord]:
    """Videos under ``image_root/<name>/`` whose frames have a same-stem PNG under ``mask_root/<name>/``.

    Only frames with a mask are listed (YouTube-VOS annotates a subset) and ``exclude`` always wins over
    ``include``. Included names that match no folder are reported; excluded ones are not, as one held-out list
    serves several datasets (the trainer checks it against all of them: see ``sequence_names``).
    """
    if not image_root.is_dir() or not mask_root.is_dir():
        raise DatasetLayoutError(f"expected image folder {image_root} and mask folder {mask_root}")
    available = sorted(p.name for p in image_root.iterdir() if p.is_dir())
    unknown = sorted(set(include or ()) - set(available))
    if unknown:
        log.warning("include list names sequences not in %s: %s", image_root, ", ".join(unknown))
    excluded = sorted(set(exclude) & set(available))
    if excluded:
        log.info("held out from %s: %s", image_root, ", ".join(excluded))
    records = []
    for name in available:
        if name in exclude or (include is not None and name not in include):
            continue
        frames, masks = [], []
        for frame in sorted(p for p in (image_root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            mask = mask_root / name / f"{frame.stem}.png"
            if mask.is_file():
                frames.append(frame)
                masks.append(mask)
        if frames:
            records.append(VideoRecord(name, tuple(frames), tuple(masks), skip_scale))
    return records


def list_davis(
    root: Path, *, include: Iterable[str] | Path | None = None, exclude: Iterable[str] = ()
) -> list[VideoRecord]:
    """DAVIS videos (``JPEGImages/480p``, ``Annotations/480p``); 0/255 masks become object 1.

    Without ``include``, ``ImageSets/2017/train.txt`` limits the list to the training split when it exists,
    so a full DAVIS 2017 trainval folder never trains on its validation sequences by default.
    """
    included = read_names(include)
    split = root / "ImageSets" / "2017" / "train.txt"
    if included is None and split.is_file():
        included = read_names(split)
    images, masks = davis_folders(root)
    return list_annotated_videos(images, masks, include=included, exclude=set(exclude))


def list_youtube(root: Path, *, exclude: Iterable[str] = ()) -> list[VideoRecord]:
    """YouTube-VOS training videos; ``root`` is the split folder or holds ``train_480p`` / ``train``."""
    images, masks = youtube_folders(root)
    return list_annotated_videos(images, masks, include=None, exclude=set(exclude), skip_scale=5)


def davis_folders(root: Path) -> tuple[Path, Path]:
    """(image folder, mask folder) of a DAVIS root."""
    return root / "JPEGImages" / "480p", root / "Annotations" / "480p"


def youtube_folders(root: Path) -> tuple[Path, Path]:
    """(image folder, mask folder) of a YouTube-VOS training split given it or its parent."""
    for candidate in (root, root / "train_480p", root / "train"):
        if (candidate / "JPEGImages").is_dir() and (candidate / "Annotations").is_dir():
            return candidate / "JPEGImages", candidate / "Annotations"
    raise DatasetLayoutError(f"no JPEGImages/ and Annotations/ under {root} (or its train_480p/, train/)")


def sequence_names(image_root: Path) -> set[str]:
    """Names of the sequence folders under an image folder (empty if it does not exist)."""
    return {p.name for p in image_root.iterdir() if p.is_dir()} if image_root.is_dir() else set()


def list_static(root: Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs anywhere under ``root``: a JPEG / BMP / WebP image with a same-stem PNG beside it,
    or, in the ``images/`` + ``masks/`` layout (e.g. weizmann-horse), in the sibling ``masks/`` folder."""
    pairs = []
    for image in sorted(root.rglob("*")):
        if image.suffix.lower() not in STILL_SUFFIXES:
            continue
        mask = static_mask_path(image)
        if mask is not None:
            pairs.append((image, mask))
    if not pairs:
        raise DatasetLayoutError(f"no image + same-name .png mask pairs under {root} "
                                 "(beside each image, or images/NAME.jpg with masks/NAME.png)")
    return pairs


def static_mask_path(image: Path) -> Path | None:
    """A still image's mask: ``NAME.png`` beside it, else ``../masks/NAME.png`` when it is in ``images/``."""
    beside = image.with_suffix(".png")
    if beside.is_file():
        return beside
    if image.parent.name == "images":
        sibling = image.parent.parent / "masks" / f"{image.stem}.png"
        if sibling.is_file():
            return sibling
    return None


def sample_frame_indices(length: int, count: int, max_skip: int, rng: np.random.Generator) -> list[int]:
    """``count`` distinct frame indices in time order, each new one within ``max_skip`` of one already taken.

    Growing the set from a random seed frame bounds the gaps without fixing the spacing; half of the clips
    are reversed in time, as motion has no preferred direction.
    """
    if length < count:
        raise ValueError(f"cannot sample {count} frames from a video of {length}")
    skip = max(1, min(max_skip, length))
    chosen = [int(rng.integers(length))]
    while len(chosen) < count:
        candidates = sorted({i for c in chosen for i in range(max(0, c - skip), min(length, c + skip + 1))}
                            - set(chosen))
        chosen.append(int(rng.choice(candidates)))
    indices = sorted(chosen)
    return indices[::-1] if rng.random() < 0.5 else indices


def relabel(
    masks: Sequence[np.ndarray], max_objects: int, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """Pick up to ``max_objects`` objects visible in the first mask and renumber them 1..K in every frame.

    Returns (labels (T, H, W) uint8, K); K = 0 when the first frame shows no object large enough.
    """
    first = masks[0]
    present, counts = np.unique(first[first > 0], return_counts=True)
    visible = present[counts >= MIN_FIRST_FRAME_PIXELS]
    if len(visible) > max_objects:
        visible = rng.choice(visible, size=max_objects, replace=False)
    stacked = np.stack(masks)
    labels = np.zeros_like(stacked)
    for new_label, old_label in enumerate(visible, start=1):
        labels[stacked == old_label] = new_label
    return labels, len(visible)


def make_sample(frames: list[np.ndarray], labels: np.ndarray, count: int) -> dict[str, torch.Tensor]:
    """The common sample dict (see the module docstring)."""
    return {
        "images": to_tensor(frames),
        "labels": torch.from_numpy(labels.astype(np.int64)),
        "num_objects": torch.tensor(count, dtype=torch.int64),
    }


class RandomSource:
    """A lazily seeded numpy generator per process: each DataLoader worker gets its own stream.

    The seed comes from ``torch.initial_seed()``, which the DataLoader sets per worker from its own
    generator, so streams differ between workers and ranks yet replay exactly for the same loader seed.
    """

    def __init__(self) -> None:
        self._rng: np.random.Generator | None = None
        self._seed: int | None = None

    def get(self) -> np.random.Generator:
        seed = torch.initial_seed()
        if self._rng is None or seed != self._seed:
            self._rng = np.random.default_rng(seed)
            self._seed = seed
        return self._rng


class VideoClipDataset(Dataset):
    """Clips from annotated videos (DAVIS / YouTube-VOS layouts), XMem's sampling and augmentation.

    ``max_skip`` is in source frames; ``finetune`` switches the per-frame affine off. The trainer builds a new
    dataset when the schedule changes either (worker processes hold copies, so mutation would not reach them).
    """

    def __init__(
        self, records: Sequence[VideoRecord], *, num_frames: int, max_objects: int,
        augmentation: ClipAugmentation, max_skip: int = 5, finetune: bool = False,
    ) -> None:
        self.records = [r for r in records if len(r.frames) >= num_frames]
        if not self.records:
            raise DatasetLayoutError(f"no video has {num_frames} annotated frames")
        self.num_frames = num_frames
        self.max_objects = max_objects
        self.augmentation = augmentation
        self.max_skip = max_skip
        self.finetune = finetune
        self._random = RandomSource()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self._random.get()
        for trial in range(MAX_TRIALS):
            record = self.records[index if trial < MAX_TRIALS // 2 else int(rng.integers(len(self.records)))]
            skip = max(1, self.max_skip // record.skip_scale)
            indices = sample_frame_indices(len(record.frames), self.num_frames, skip, rng)
            frames = [np.asarray(Image.open(record.frames[i]).convert("RGB")) for i in indices]
            masks = [read_index_mask(record.masks[i]) for i in indices]
            frames, masks = augment_clip(frames, masks, self.augmentation, rng,
                                         per_frame_affine=not self.finetune)
            labels, count = relabel(masks, self.max_objects, rng)
            if count:
                return make_sample(frames, labels, count)
        raise RuntimeError(f"no clip with a visible object after {MAX_TRIALS} trials (last: {record.name})")


class StillSource(Protocol):
    """Numbered still images with masks: ``source(index, rng) -> (image uint8 (H,W,3), mask uint8 (H,W))``."""

    def __len__(self) -> int: ...

    def __call__(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]: ...


class StillLoader:
    """Reads (image, mask) pairs from files; masks become one object (static saliency data is binary)."""

    def __init__(self, pairs: Sequence[tuple[Path, Path]]) -> None:
        self.pairs = list(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __call__(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.pairs[index]
        image = np.asarray(Image.open(image_path).convert("RGB"))
        mask = (np.asarray(Image.open(mask_path).convert("L")) > 127).astype(np.uint8)
        return image, mask


class SyntheticStills:
    """Single synthetic frames with one object: stage-0 data when no static image dataset is available."""

    def __init__(self, config: SyntheticConfig, length: int) -> None:
        self.config = config
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __call__(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        config = SyntheticConfig(**{**self.config.__dict__, "min_objects": 1, "max_objects": 1})
        clip = generate_clip(config, 1, rng)
        return clip.frames[0], clip.masks[0]


class StaticClipDataset(Dataset):
    """Stage 0: each still image becomes a clip of independently deformed copies (one object)."""

    def __init__(
        self, stills: StillSource, *, num_frames: int, augmentation: ClipAugmentation,
        deformation: StaticDeformation = StaticDeformation(),
    ) -> None:
        self.stills = stills
        self.num_frames = num_frames
        self.augmentation = augmentation
        self.deformation = deformation
        self._random = RandomSource()

    def __len__(self) -> int:
        return len(self.stills)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self._random.get()
        for trial in range(MAX_TRIALS):
            image, mask = self.stills(index if trial == 0 else int(rng.integers(len(self))), rng)
            frames, masks = deform_still(image, mask, self.num_frames, self.deformation, self.augmentation,
                                         rng)
            labels, count = relabel(masks, 1, rng)
            if count:
                return make_sample(frames, labels, count)
        raise RuntimeError(f"no deformed still with a visible object after {MAX_TRIALS} trials")


class SyntheticVideoDataset(Dataset):
    """Stages 1 (and 2 without real video): generated clips, cropped and jittered like real video.

    Frames are rendered somewhat larger than the crop so the random resized crop has room to zoom, as with
    BL30K's renders. The per-frame affine is off (as XMem does for BL30K): the motion is already synthetic.
    """

    def __init__(
        self, length: int, *, num_frames: int, max_objects: int, augmentation: ClipAugmentation,
        render_scale: float = 1.25, max_skip: int = 5,
    ) -> None:
        self.length = length
        self.num_frames = num_frames
        self.max_objects = max_objects
        self.augmentation = augmentation
        side = round(augmentation.crop_size * render_scale)
        self.config = SyntheticConfig(height=side, width=side, max_objects=max(max_objects, 1) + 1)
        self.max_skip = max_skip
        self._random = RandomSource()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self._random.get()
        # a larger max skip means faster motion between sampled frames, as with real video
        speed = min(self.max_skip, 15) / 5.0
        config = SyntheticConfig(**{**self.config.__dict__, "max_speed": self.config.max_speed * speed,
                                    "max_spin": self.config.max_spin * speed})
        for _ in range(MAX_TRIALS):
            clip = generate_clip(config, self.num_frames, rng)
            frames, masks = augment_clip(list(clip.frames), list(clip.masks), self.augmentation, rng,
                                         per_frame_affine=False)
            labels, count = relabel(masks, self.max_objects, rng)
            if count:
                return make_sample(frames, labels, count)
        raise RuntimeError(f"no synthetic clip with a visible object after {MAX_TRIALS} trials")

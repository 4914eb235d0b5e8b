"""TMO's training samples: saliency stills with the image as motion, video frames with on-the-fly DIS flow.

A sample is a dict of
  ``image``  float (3, S, S) RGB in [0, 1] (TMONetwork normalises inside its encoders),
  ``motion`` float (3, S, S): the colour-coded flow for a video frame, the image again for a still,
  ``mask``   int64 (S, S): 1 = the primary object(s), 0 = background,
  ``flow``   bool (): whether ``motion`` is flow ("motion as option": the motion encoder learns both).
Video flow is made exactly as `TMOSession` makes it (workers/tmo/flow.py: DIS from frame t to t - 1,
negated, colour-coded with the frame's largest magnitude) on the whole frame, before cropping, so training
sees the motion images inference will. Flips negate the matching flow component before the colour coding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from streamer.masks import read_index_mask
from workers.tmo.flow import DISFlow, flow_to_colour
from workers.training.augment import crop_box
from workers.training.datasets import (
    STILL_SUFFIXES,
    DatasetLayoutError,
    RandomSource,
    StillLoader,
    VideoRecord,
    list_static,
)

ASPECT_JITTER = (3 / 4, 4 / 3)
"""A crop's aspect ratio is the frame's own times a factor in this range."""
MIN_OBJECT_PIXELS = 16
"""Crops of a video frame keep at least this many object pixels when a few draws allow it."""
CROP_TRIALS = 5


def list_saliency(root: Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs: ``root/images/*.jpg`` with ``root/masks/<stem>.png`` (DUTS-style), or else
    same-stem pairs anywhere under ``root``."""
    images, masks = root / "images", root / "masks"
    if not (images.is_dir() and masks.is_dir()):
        return list_static(root)
    pairs = [(image, masks / f"{image.stem}.png") for image in sorted(images.iterdir())
             if image.suffix.lower() in STILL_SUFFIXES and (masks / f"{image.stem}.png").is_file()]
    if not pairs:
        raise DatasetLayoutError(f"no images/<name>.jpg with masks/<name>.png under {root}")
    return pairs


@dataclass(frozen=True)
class TMOAugmentation:
    """Random crop (area relative to the inference window, aspect near the frame's) and flips.

    Attributes:
        crop_size: side of the square output.
        window: average crop area as a fraction of the frame: (crop_size / network input size)^2, at most 1.
        crop_scale: range of the crop area as a fraction of ``window`` (capped at the whole frame).
        hflip_prob, vflip_prob: flip chances.
    """

    crop_size: int
    window: float = 1.0
    crop_scale: tuple[float, float] = (0.7, 1.3)
    hflip_prob: float = 0.5
    vflip_prob: float = 0.5


@dataclass(frozen=True)
class Geometry:
    """One draw of the augmentation: a crop box (top, left, height, width) and flips."""

    box: tuple[int, int, int, int]
    hflip: bool
    vflip: bool


def draw_geometry(height: int, width: int, params: TMOAugmentation, rng: np.random.Generator) -> Geometry:
    """A crop around the inference window's size with the frame's aspect (jittered), and flips."""
    low, high = params.crop_scale
    scale = (min(1.0, params.window * low), min(1.0, params.window * high))
    aspect = width / height
    box = crop_box(height, width, scale, (aspect * ASPECT_JITTER[0], aspect * ASPECT_JITTER[1]), rng)
    return Geometry(box, bool(rng.random() < params.hflip_prob), bool(rng.random() < params.vflip_prob))


def flip(array: np.ndarray, geometry: Geometry) -> np.ndarray:
    if geometry.hflip:
        array = array[:, ::-1]
    if geometry.vflip:
        array = array[::-1]
    return array


def flip_flow(flow: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Mirror a flow field and negate the component the mirror reverses."""
    flow = flip(flow, geometry).copy()
    if geometry.hflip:
        flow[..., 0] *= -1
    if geometry.vflip:
        flow[..., 1] *= -1
    return flow


def crop(array: np.ndarray, geometry: Geometry, size: int, interpolation: int) -> np.ndarray:
    """Flip, cut the box and resize to ``size`` squared (the box is drawn on the flipped frame)."""
    top, left, height, width = geometry.box
    window = np.ascontiguousarray(flip(array, geometry)[top:top + height, left:left + width])
    return cv2.resize(window, (size, size), interpolation=interpolation)


def image_interpolation(geometry: Geometry, size: int) -> int:
    """Area when shrinking both ways (no aliasing), bilinear otherwise."""
    _, _, height, width = geometry.box
    return cv2.INTER_AREA if height > size and width > size else cv2.INTER_LINEAR


def to_sample(image: np.ndarray, motion: np.ndarray, mask: np.ndarray, has_flow: bool
              ) -> dict[str, torch.Tensor]:
    def colour(array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float().div_(255)

    return {"image": colour(image), "motion": colour(motion),
            "mask": torch.from_numpy((mask > 0).astype(np.int64)), "flow": torch.tensor(has_flow)}


class TMOMixDataset(Dataset):
    """One epoch = ``stills_per_epoch`` random stills then ``video_frames_per_epoch`` random video frames.

    Either source may be absent (its share is then dropped). Video frames are drawn from frame 1 on, so each
    has a previous frame to estimate flow from.
    """

    def __init__(self, stills: StillLoader | None, videos: Sequence[VideoRecord], *, stills_per_epoch: int,
                 video_frames_per_epoch: int, augmentation: TMOAugmentation) -> None:
        self.stills = stills if stills is not None and len(stills) else None
        self.videos = [record for record in videos if len(record.frames) >= 2]
        self.still_count = stills_per_epoch if self.stills is not None else 0
        self.video_count = video_frames_per_epoch if self.videos else 0
        if self.still_count + self.video_count == 0:
            raise DatasetLayoutError("no training data: no stills and no video with two annotated frames")
        self.augmentation = augmentation
        self._random = RandomSource()
        self._flow: DISFlow | None = None  # made in the process that uses it (OpenCV objects do not pickle)

    def __len__(self) -> int:
        return self.still_count + self.video_count

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = self._random.get()
        if index < self.still_count:
            return self.still_sample(rng)
        return self.video_sample(rng)

    def still_sample(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        assert self.stills is not None
        image, mask = self.stills(int(rng.integers(len(self.stills))), rng)
        size = self.augmentation.crop_size
        geometry = draw_geometry(mask.shape[0], mask.shape[1], self.augmentation, rng)
        image = crop(image, geometry, size, image_interpolation(geometry, size))
        return to_sample(image, image, crop(mask, geometry, size, cv2.INTER_NEAREST), False)

    def video_sample(self, rng: np.random.Generator) -> dict[str, torch.Tensor]:
        record = self.videos[int(rng.integers(len(self.videos)))]
        index = int(rng.integers(1, len(record.frames)))
        previous, current = (np.asarray(Image.open(record.frames[i]).convert("RGB"))
                             for i in (index - 1, index))
        mask = read_index_mask(record.masks[index])
        if self._flow is None:
            self._flow = DISFlow()
        flow = self._flow(previous, current)
        size = self.augmentation.crop_size
        for _ in range(CROP_TRIALS):
            geometry = draw_geometry(mask.shape[0], mask.shape[1], self.augmentation, rng)
            cropped_mask = crop(mask, geometry, size, cv2.INTER_NEAREST)
            if np.count_nonzero(cropped_mask) >= MIN_OBJECT_PIXELS:
                break
        colour = flow_to_colour(flip_flow(flow, geometry))
        if colour.shape[:2] != mask.shape:
            colour = cv2.resize(colour, (mask.shape[1], mask.shape[0]), interpolation=cv2.INTER_LINEAR)
        unflipped = Geometry(geometry.box, False, False)  # the colours are already mirrored
        motion = crop(colour, unflipped, size, image_interpolation(geometry, size))
        image = crop(current, geometry, size, image_interpolation(geometry, size))
        return to_sample(image, motion, cropped_mask, True)


def inference_window(crop_size: int, input_size: int) -> float:
    """The fraction of a frame's area a crop covers on average so objects keep their inference size."""
    return min(1.0, (crop_size / input_size) ** 2)


def describe(dataset: TMOMixDataset) -> str:
    """A log line: what the mix holds and draws per epoch."""
    stills = len(dataset.stills) if dataset.stills is not None else 0
    frames = sum(len(record.frames) for record in dataset.videos)
    return (f"{stills} stills ({dataset.still_count}/epoch), {len(dataset.videos)} videos with {frames} "
            f"frames "
            f"({dataset.video_count}/epoch)")

"""Pure functions of auto mode: cleaning TMO's mask, judging it, splitting it into objects, and the
scene-cut measure. Masks here are binary or index masks (H, W); nothing keeps state."""

from __future__ import annotations

import cv2
import numpy as np
from scipy import ndimage

from workers.auto.config import AutoConfig


def area_fraction(mask: np.ndarray) -> float:
    """Fraction (0-1) of the pixels that are foreground (any non-zero label)."""
    return float(np.count_nonzero(mask)) / mask.size if mask.size else 0.0


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of the foregrounds of two masks of one size; two empty masks agree fully (1.0)."""
    fa, fb = a != 0, b != 0
    union = np.count_nonzero(fa | fb)
    return 1.0 if union == 0 else np.count_nonzero(fa & fb) / union


def confidence(foreground: np.ndarray, mask: np.ndarray) -> float:
    """Mean foreground probability inside `mask` (0 for an empty mask)."""
    inside = mask != 0
    return float(foreground[inside].mean()) if inside.any() else 0.0


def components(mask: np.ndarray) -> list[np.ndarray]:
    """Connected components (8-connected) of the foreground as boolean masks, largest first; ties keep
    scan order so the result is deterministic."""
    labelled, count = ndimage.label(mask != 0, structure=np.ones((3, 3), dtype=bool))
    if count == 0:
        return []
    sizes = np.bincount(labelled.ravel())[1:]
    order = sorted(range(count), key=lambda i: (-int(sizes[i]), i))
    return [labelled == i + 1 for i in order]


def clean_mask(mask: np.ndarray, config: AutoConfig) -> np.ndarray:
    """Binary uint8 mask: components at least `component_fraction` of the largest one's area (at most
    `objects` of them when several objects are wanted), each with its holes filled."""
    parts = kept_components(mask, config)
    cleaned = np.zeros(mask.shape, dtype=np.uint8)
    for part in parts:
        cleaned[part] = 1
    return cleaned


def kept_components(mask: np.ndarray, config: AutoConfig) -> list[np.ndarray]:
    """The components `clean_mask` keeps, holes filled, largest first."""
    parts = components(mask)
    if not parts:
        return []
    largest = int(parts[0].sum())
    kept = [p for p in parts if p.sum() >= config.component_fraction * largest]
    if config.objects > 1:
        kept = kept[: config.objects]
    return [ndimage.binary_fill_holes(p) for p in kept]


def object_mask(mask: np.ndarray, config: AutoConfig) -> np.ndarray:
    """The seed index mask (uint8): with `objects` == 1 every kept component is object 1; with more,
    the kept components are objects 1..N, largest first."""
    parts = kept_components(mask, config)
    seed = np.zeros(mask.shape, dtype=np.uint8)
    for label, part in enumerate(parts, start=1):
        seed[part & (seed == 0)] = 1 if config.objects == 1 else label
    return seed


def plausible(mask: np.ndarray, config: AutoConfig) -> bool:
    """Whether the foreground's area lies within [min_area, max_area] of the frame."""
    return config.min_area <= area_fraction(mask) <= config.max_area


def confident(foreground: np.ndarray, mask: np.ndarray, config: AutoConfig) -> bool:
    """Whether TMO's mean foreground probability inside `mask` reaches `min_confidence`."""
    return confidence(foreground, mask) >= config.min_confidence


def thumbnail(frame: np.ndarray, side: int) -> np.ndarray:
    """float32 (side, side) grey levels in 0-1 of an RGB uint8 frame (area averaging)."""
    grey = frame.astype(np.float32).mean(axis=2)
    return cv2.resize(grey, (side, side), interpolation=cv2.INTER_AREA) / 255.0


def frame_difference(previous: np.ndarray, current: np.ndarray) -> float:
    """Mean absolute difference (0-1) of two thumbnails: the scene-cut measure."""
    return float(np.abs(current - previous).mean())


def is_cut(previous: np.ndarray | None, current: np.ndarray, config: AutoConfig) -> bool:
    """Whether the step from thumbnail `previous` to `current` is a scene cut (never on the first)."""
    return previous is not None and frame_difference(previous, current) > config.cut_threshold

"""The pure functions of auto mode: cleaning, judging and splitting TMO's mask, and the scene-cut measure."""

from __future__ import annotations

import numpy as np
import pytest

from workers.auto import seed
from workers.auto.config import AutoConfig


def boxes(shape: tuple[int, int], *rects: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    for top, left, bottom, right in rects:
        mask[top:bottom, left:right] = 1
    return mask


def test_iou_area_and_confidence() -> None:
    a = boxes((10, 10), (0, 0, 4, 4))
    b = boxes((10, 10), (0, 2, 4, 6))
    assert seed.iou(a, b) == pytest.approx(8 / 24)
    assert seed.iou(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    assert seed.area_fraction(a) == pytest.approx(0.16)
    foreground = np.where(a == 1, 0.9, 0.2).astype(np.float32)
    assert seed.confidence(foreground, a) == pytest.approx(0.9)
    assert seed.confidence(foreground, np.zeros_like(a)) == 0.0
    config = AutoConfig(min_confidence=0.8, min_area=0.1, max_area=0.5)
    assert seed.confident(foreground, a, config) and seed.plausible(a, config)
    assert not seed.plausible(boxes((10, 10), (0, 0, 1, 1)), config)
    assert not seed.plausible(boxes((10, 10), (0, 0, 10, 8)), config)


def test_clean_keeps_large_components_and_fills_holes() -> None:
    mask = boxes((40, 40), (2, 2, 20, 20), (25, 25, 33, 33), (36, 36, 38, 38))
    mask[8:12, 8:12] = 0  # a hole in the largest part
    cleaned = seed.clean_mask(mask, AutoConfig(component_fraction=0.15))
    assert cleaned.dtype == np.uint8
    assert cleaned[8:12, 8:12].all(), "the hole is filled"
    assert cleaned[25:33, 25:33].all(), "64 px >= 0.15 * 324 px: kept"
    assert not cleaned[36:38, 36:38].any(), "4 px < 0.15 * 324 px: dropped as noise"
    assert not seed.clean_mask(np.zeros((5, 5), dtype=np.uint8), AutoConfig()).any()


def test_objects_are_components_largest_first() -> None:
    mask = boxes((40, 40), (0, 0, 5, 5), (10, 10, 30, 30), (32, 0, 40, 10))
    one = seed.object_mask(mask, AutoConfig(component_fraction=0.0))
    assert set(np.unique(one)) == {0, 1} and np.count_nonzero(one) == 25 + 400 + 80
    two = seed.object_mask(mask, AutoConfig(objects=2, component_fraction=0.0))
    assert (two[10:30, 10:30] == 1).all(), "the largest component is object 1"
    assert (two[32:40, 0:10] == 2).all()
    assert not two[0:5, 0:5].any(), "a third component is not an object when 2 are asked for"


def test_scene_cut_measure() -> None:
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 60, size=(48, 64, 3), dtype=np.uint8)
    shifted = np.roll(dark, 2, axis=1)
    bright = rng.integers(120, 200, size=(48, 64, 3), dtype=np.uint8)
    config = AutoConfig()
    small = [seed.thumbnail(f, config.thumbnail) for f in (dark, shifted, bright)]
    assert small[0].shape == (32, 32) and small[0].min() >= 0 and small[2].max() <= 1
    assert not seed.is_cut(None, small[0], config)
    assert not seed.is_cut(small[0], small[1], config)
    assert seed.is_cut(small[1], small[2], config)
    assert seed.frame_difference(small[1], small[2]) > 0.3


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="min_area must be below max_area"):
        AutoConfig(min_area=0.5, max_area=0.4)
    with pytest.raises(ValueError, match="reseed"):
        AutoConfig(reseed="forget")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown auto options"):
        AutoConfig.from_mapping({"check_evry": 2})
    assert AutoConfig.from_mapping({"check_every": 2}).check_every == 2

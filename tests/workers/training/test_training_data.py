"""Training data: layouts, held-out exclusion, clip sampling, augmentation alignment, synthetic video."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from workers.training.augment import (
    ClipAugmentation,
    Jitter,
    StaticDeformation,
    augment_clip,
    crop_box,
    deform_still,
)
from workers.training.datasets import (
    DatasetLayoutError,
    StaticClipDataset,
    StillLoader,
    SyntheticVideoDataset,
    VideoClipDataset,
    list_davis,
    list_static,
    list_youtube,
    relabel,
    sample_frame_indices,
)
from workers.training.synthetic import ObjectLayer, SyntheticConfig, composite, generate_clip

NO_COLOUR = ClipAugmentation(crop_size=48, clip_jitter=Jitter(), frame_jitter=Jitter(), grayscale_prob=0.0)


def square_mask(height: int, width: int, top: int, left: int, size: int, value: int) -> np.ndarray:
    mask = np.zeros((height, width), np.uint8)
    mask[top:top + size, left:left + size] = value
    return mask


def write_video(
    image_dir: Path, mask_dir: Path, frames: int, *, annotated_every: int = 1, grey: bool = True
) -> None:
    """A square moving right over a dark background; the image is bright exactly where the mask is set."""
    image_dir.mkdir(parents=True)
    mask_dir.mkdir(parents=True)
    for t in range(frames):
        mask = square_mask(48, 64, 10, 5 + 3 * t, 20, 255 if grey else 1)
        image = np.where(mask[..., None] > 0, 230, 20).astype(np.uint8).repeat(3, axis=2)
        Image.fromarray(image).save(image_dir / f"{t:05d}.jpg", quality=95)
        if t % annotated_every == 0:
            Image.fromarray(mask).save(mask_dir / f"{t:05d}.png")


def make_davis(root: Path, names: list[str], frames: int = 6) -> Path:
    for name in names:
        write_video(root / "JPEGImages" / "480p" / name, root / "Annotations" / "480p" / name, frames)
    return root


def test_davis_held_out_sequences_are_never_listed(tmp_path: Path) -> None:
    root = make_davis(tmp_path / "DAVIS", ["bear", "dog", "goat"])
    assert [r.name for r in list_davis(root)] == ["bear", "dog", "goat"]
    assert [r.name for r in list_davis(root, exclude=["dog"])] == ["bear", "goat"]
    assert [r.name for r in list_davis(root, include=["dog", "goat"], exclude=["goat"])] == ["dog"]
    record = list_davis(root)[0]
    assert len(record.frames) == len(record.masks) == 6 and record.skip_scale == 1


def test_davis_train_split_file_is_the_default_subset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = make_davis(tmp_path / "DAVIS", ["bear", "dog", "goat"])
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "train.txt").write_text("bear\ngoat\n")
    assert [r.name for r in list_davis(root)] == ["bear", "goat"]
    with caplog.at_level(logging.WARNING):
        assert [r.name for r in list_davis(root, include=["dog", "dgo"])] == ["dog"]
    assert "dgo" in caplog.text


def test_davis_grey_masks_become_object_one(tmp_path: Path) -> None:
    root = make_davis(tmp_path / "DAVIS", ["bear"])
    dataset = VideoClipDataset(list_davis(root), num_frames=3, max_objects=3, augmentation=NO_COLOUR)
    torch.manual_seed(0)
    sample = dataset[0]
    assert sample["images"].shape == (3, 3, 48, 48)
    assert sample["labels"].shape == (3, 48, 48) and sample["labels"].dtype == torch.int64
    assert set(sample["labels"].unique().tolist()) <= {0, 1}
    assert sample["num_objects"].item() == 1
    assert (sample["labels"][0] == 1).sum() >= 16


def test_youtube_lists_only_annotated_frames(tmp_path: Path) -> None:
    root = tmp_path / "YouTube"
    write_video(root / "train" / "JPEGImages" / "v1", root / "train" / "Annotations" / "v1", 11,
                annotated_every=5, grey=False)
    write_video(root / "train" / "JPEGImages" / "held", root / "train" / "Annotations" / "held", 6,
                grey=False)
    records = list_youtube(root, exclude=["held"])
    assert [r.name for r in records] == ["v1"]
    assert [p.stem for p in records[0].frames] == ["00000", "00005", "00010"]
    assert records[0].skip_scale == 5
    with pytest.raises(DatasetLayoutError):
        list_youtube(tmp_path / "nowhere")


@pytest.mark.parametrize("max_skip", [1, 2, 4])
def test_sampled_frames_are_distinct_and_within_max_skip(max_skip: int) -> None:
    rng = np.random.default_rng(1)
    reversed_seen = False
    for _ in range(50):
        indices = sample_frame_indices(30, 5, max_skip, rng)
        ordered = sorted(indices)
        assert len(set(indices)) == 5
        assert indices in (ordered, ordered[::-1])
        reversed_seen |= indices != ordered
        assert max(np.diff(ordered)) <= max_skip
    assert reversed_seen


def test_relabel_keeps_visible_objects_renumbered() -> None:
    first = np.zeros((20, 20), np.uint8)
    first[0:5, 0:5] = 7  # 25 px: visible
    first[10:12, 10:12] = 9  # 4 px: too small to be a reference
    later = np.full((20, 20), 7, np.uint8)
    later[0, 0] = 9
    labels, count = relabel([first, later], 3, np.random.default_rng(0))
    assert count == 1
    assert set(np.unique(labels).tolist()) == {0, 1}
    assert (labels[1] == 1).sum() == 399 and labels[1, 0, 0] == 0

    many = np.repeat(np.arange(5, dtype=np.uint8), 100).reshape(20, 25)
    labels, count = relabel([many], 2, np.random.default_rng(0))
    assert count == 2 and set(np.unique(labels).tolist()) == {0, 1, 2}


def agreement(image: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of pixels where "bright" equals "labelled"."""
    return float(((image.mean(axis=2) > 125) == (mask > 0)).mean())


def test_clip_augmentation_keeps_masks_on_their_pixels() -> None:
    rng = np.random.default_rng(3)
    masks = [square_mask(60, 80, 15, 10 + 4 * t, 25, 1) for t in range(4)]
    frames = [np.where(m[..., None] > 0, 230, 20).astype(np.uint8).repeat(3, axis=2) for m in masks]
    out_frames, out_masks = augment_clip(frames, masks, NO_COLOUR, rng)
    for image, mask in zip(out_frames, out_masks, strict=True):
        assert image.shape == (48, 48, 3) and mask.shape == (48, 48)
        assert agreement(image, mask) > 0.97
    # the check has teeth: a mask shifted by a few pixels disagrees clearly
    assert agreement(out_frames[0], np.roll(out_masks[0], 6, axis=1)) < 0.95


def test_static_deformation_keeps_masks_aligned_and_moves_the_object() -> None:
    rng = np.random.default_rng(4)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:44, 20:40] = 1
    image = np.where(mask[..., None] > 0, 230, 20).astype(np.uint8).repeat(3, axis=2)
    frames, masks = deform_still(image, mask, 3, StaticDeformation(), NO_COLOUR, rng)
    assert len(frames) == len(masks) == 3
    for frame, frame_mask in zip(frames, masks, strict=True):
        assert agreement(frame, frame_mask) > 0.97
        assert set(np.unique(frame_mask).tolist()) <= {0, 1}
    assert not np.array_equal(masks[0], masks[1])


def test_static_dataset_from_a_folder(tmp_path: Path) -> None:
    for name in ("a", "b"):
        mask = square_mask(64, 64, 12, 12, 36, 255)
        (tmp_path / "set").mkdir(exist_ok=True)
        Image.fromarray(np.where(mask[..., None] > 0, 230, 20).astype(np.uint8).repeat(3, axis=2)).save(
            tmp_path / "set" / f"{name}.jpg")
        Image.fromarray(mask).save(tmp_path / "set" / f"{name}.png")
    pairs = list_static(tmp_path)
    assert [p[0].name for p in pairs] == ["a.jpg", "b.jpg"]
    dataset = StaticClipDataset(StillLoader(pairs), num_frames=3, augmentation=NO_COLOUR)
    sample = dataset[1]
    assert sample["images"].shape == (3, 3, 48, 48) and sample["num_objects"].item() == 1
    assert (sample["labels"][0] == 1).sum() >= 16
    with pytest.raises(DatasetLayoutError):
        list_static(tmp_path / "set" / "missing")


def test_static_pairs_in_images_and_masks_folders(tmp_path: Path) -> None:
    # the weizmann-horse layout: images/NAME.jpg with masks/NAME.png; an image without a mask is skipped
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    mask = square_mask(64, 64, 12, 12, 36, 255)
    for name in ("horse001", "horse002", "nomask"):
        Image.fromarray(np.where(mask[..., None] > 0, 230, 20).astype(np.uint8).repeat(3, axis=2)).save(
            tmp_path / "images" / f"{name}.jpg")
    for name in ("horse001", "horse002"):
        Image.fromarray(mask).save(tmp_path / "masks" / f"{name}.png")
    pairs = list_static(tmp_path)
    assert [(p[0].name, p[1].parent.name, p[1].name) for p in pairs] == [
        ("horse001.jpg", "masks", "horse001.png"), ("horse002.jpg", "masks", "horse002.png")]
    sample = StaticClipDataset(StillLoader(pairs), num_frames=3, augmentation=NO_COLOUR)[0]
    assert sample["num_objects"].item() == 1 and (sample["labels"][0] == 1).sum() >= 16


def test_synthetic_masks_match_the_rendered_objects() -> None:
    config = SyntheticConfig(height=64, width=80, min_objects=3, max_objects=3, object_size=(0.4, 0.6))
    clip = generate_clip(config, 4, np.random.default_rng(5))
    assert clip.frames.shape == (4, 64, 80, 3) and clip.masks.shape == (4, 64, 80)
    assert sorted(clip.depth_order) == [1, 2, 3]
    # the mask is the front-most covering layer, and the image shows that layer's texture there
    expected = np.zeros_like(clip.masks)
    for layer in clip.layers:
        expected[layer.alpha] = layer.label
    np.testing.assert_array_equal(clip.masks, expected)
    for layer in clip.layers:
        own = clip.masks == layer.label
        np.testing.assert_array_equal(clip.frames[own], layer.colour[own])
    assert (clip.masks[0] > 0).any()
    again = generate_clip(config, 4, np.random.default_rng(5))
    np.testing.assert_array_equal(again.frames, clip.frames)


def test_synthetic_occlusion_follows_drawing_order() -> None:
    background = np.zeros((1, 10, 10, 3), np.uint8)
    back_alpha = np.zeros((1, 10, 10), bool)
    back_alpha[0, 2:7, 2:7] = True
    front_alpha = np.zeros((1, 10, 10), bool)
    front_alpha[0, 5:9, 5:9] = True
    back = ObjectLayer(label=1, colour=np.full((1, 10, 10, 3), 100, np.uint8), alpha=back_alpha)
    front = ObjectLayer(label=2, colour=np.full((1, 10, 10, 3), 200, np.uint8), alpha=front_alpha)
    frames, masks = composite(background, (back, front))
    assert masks[0, 6, 6] == 2 and frames[0, 6, 6, 0] == 200  # overlap: the front object wins
    assert masks[0, 3, 3] == 1 and frames[0, 3, 3, 0] == 100
    frames, masks = composite(background, (front, back))
    assert masks[0, 6, 6] == 1 and frames[0, 6, 6, 0] == 100


def test_synthetic_dataset_samples_have_a_first_frame_object() -> None:
    dataset = SyntheticVideoDataset(4, num_frames=3, max_objects=2, augmentation=NO_COLOUR)
    torch.manual_seed(0)
    for index in range(len(dataset)):
        sample = dataset[index]
        count = sample["num_objects"].item()
        assert 1 <= count <= 2
        assert sample["images"].shape == (3, 3, 48, 48)
        assert int(sample["labels"].max()) <= count
        for label in range(1, count + 1):
            assert (sample["labels"][0] == label).sum() >= 16


def test_crop_box_stays_inside_the_frame() -> None:
    rng = np.random.default_rng(6)
    for _ in range(100):
        top, left, height, width = crop_box(30, 90, (0.36, 1.0), (3 / 4, 4 / 3), rng)
        assert top >= 0 and top + height <= 30 and left >= 0 and left + width <= 90
        assert height > 0 and width > 0

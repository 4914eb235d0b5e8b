"""Evaluation: dataset layout discovery (DAVIS 2016/2017, YouTube-VOS, Long-Time Video, generic) on folders
built here from real JPEG/PNG files, the per-video usage-counting rule, and `vosd eval` + `vosd score` end to end
with a calibrated random checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from streamer.masks import read_index_mask, write_index_mask
from workers.evaluation.datasets import DatasetLayoutError, DatasetName, load_dataset

H, W = 64, 96


def write_jpeg(path: Path, rng: np.random.Generator, shape: tuple[int, int] = (H, W)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)).save(path, quality=95)


def blob_mask(labels: list[int], shape: tuple[int, int] = (H, W)) -> np.ndarray:
    """Index mask with one rectangle per label, side by side."""
    mask = np.zeros(shape, dtype=np.uint8)
    for i, label in enumerate(labels):
        mask[10:40, 4 + 22 * i : 20 + 22 * i] = label
    return mask


def write_davis(root: Path, sequences: dict[str, int], *, resolution: str = "480p", grey: bool = False,
                labels: list[int] | None = None, shape: tuple[int, int] = (H, W), seed: int = 0) -> None:
    """A DAVIS folder: `frames` JPEGs per sequence and a ground-truth PNG for every frame."""
    rng = np.random.default_rng(seed)
    for name, frames in sequences.items():
        for t in range(frames):
            write_jpeg(root / "JPEGImages" / resolution / name / f"{t:05d}.jpg", rng, shape)
            mask = blob_mask(labels or [1], shape)
            path = root / "Annotations" / resolution / name / f"{t:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            if grey:
                Image.fromarray(np.where(mask > 0, 255, 0).astype(np.uint8), mode="L").save(path)
            else:
                write_index_mask(path, mask)


def test_d16_reads_grey_masks_and_every_sequence_without_imagesets(tmp_path: Path) -> None:
    write_davis(tmp_path, {"cows": 3, "bear": 4}, grey=True)
    dataset = load_dataset("D16", tmp_path)
    assert [s.name for s in dataset.sequences] == ["bear", "cows"]
    bear = dataset.sequences[0]
    assert [p.name for p in bear.frames] == ["00000.jpg", "00001.jpg", "00002.jpg", "00003.jpg"]
    assert list(bear.masks) == [0]  # only the first annotation, like eval.py
    assert set(np.unique(read_index_mask(bear.first_annotation))) == {0, 1}
    assert dataset.size == 480 and bear.save is None and bear.output_size is None
    assert dataset.output_dir(tmp_path / "out", bear) == tmp_path / "out" / "bear"


def test_d17_uses_its_own_imageset_year(tmp_path: Path) -> None:
    write_davis(tmp_path, {"a": 2, "b": 2, "c": 2}, labels=[1, 2, 3])
    assert len(load_dataset("D17", tmp_path).sequences) == 3  # no ImageSets: everything
    (tmp_path / "ImageSets" / "2017").mkdir(parents=True)
    (tmp_path / "ImageSets" / "2017" / "val.txt").write_text("c\na\n")
    (tmp_path / "ImageSets" / "2016").mkdir(parents=True)
    (tmp_path / "ImageSets" / "2016" / "val.txt").write_text("b\n")
    assert [s.name for s in load_dataset("D17", tmp_path).sequences] == ["c", "a"]
    assert [s.name for s in load_dataset("D16", tmp_path).sequences] == ["b"]
    assert set(np.unique(read_index_mask(load_dataset("D17", tmp_path).sequences[0].first_annotation))) == {
        0, 1, 2, 3}


def test_davis_other_sizes_read_full_resolution_and_write_480p(tmp_path: Path) -> None:
    write_davis(tmp_path, {"a": 2}, labels=[1, 2])
    write_davis(tmp_path, {"a": 2}, labels=[1, 2], resolution="Full-Resolution", shape=(2 * H, 2 * W))
    full = load_dataset("D17", tmp_path, size=600).sequences[0]
    assert full.frames[0].parent == tmp_path / "JPEGImages" / "Full-Resolution" / "a"
    assert full.output_size == (H, W)
    native = load_dataset("D17", tmp_path, size=-1).sequences[0]
    assert native.frames[0].parent.name == "a" and native.output_size is None
    assert load_dataset("D17", tmp_path, size=480).sequences[0].frames[0].parent.parent.name == "480p"


def test_youtube_all_frames_late_objects_and_listed_outputs(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    split = tmp_path / "valid"
    for t in range(11):
        write_jpeg(tmp_path / "all_frames" / "valid_all_frames" / "JPEGImages" / "v1" / f"{t:05d}.jpg", rng)
        if t % 5 == 0:
            write_jpeg(split / "JPEGImages" / "v1" / f"{t:05d}.jpg", rng)
    (split / "Annotations" / "v1").mkdir(parents=True)
    write_index_mask(split / "Annotations" / "v1" / "00000.png", blob_mask([1]))
    write_index_mask(split / "Annotations" / "v1" / "00005.png", blob_mask([0, 2]))
    meta = {"videos": {"v1": {"objects": {"1": {"category": "cat", "frames": ["00000", "00005", "00010"]},
                                          "2": {"category": "dog", "frames": ["00005", "00010"]}}}}}
    (split / "meta.json").write_text(json.dumps(meta))
    dataset = load_dataset(DatasetName.Y18, tmp_path)
    (video,) = dataset.sequences
    assert len(video.frames) == 11 and video.frames[0].parent.parent.parent.name == "valid_all_frames"
    assert sorted(video.masks) == [0, 5]  # every annotation: object 2 enters at frame 5
    assert video.save == {"00000", "00005", "00010"}
    assert dataset.output_dir(tmp_path / "out", video) == tmp_path / "out" / "Annotations" / "v1"
    # Without all_frames and meta.json: the sparse frames, all written.
    (split / "meta.json").unlink()
    shutil.rmtree(tmp_path / "all_frames")
    (sparse,) = load_dataset("Y18", tmp_path).sequences
    assert len(sparse.frames) == 3 and sparse.save == {"00000", "00005", "00010"}
    assert sorted(sparse.masks) == [0, 1]


def test_long_time_video_is_never_resized_and_generic_keeps_size(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for t in range(3):
        write_jpeg(tmp_path / "long_video_set" / "JPEGImages" / "blueboy" / f"{t:05d}.jpg", rng)
    (tmp_path / "long_video_set" / "Annotations" / "blueboy").mkdir(parents=True)
    for t in (0, 2):  # ground truth of later frames is not an input
        write_index_mask(tmp_path / "long_video_set" / "Annotations" / "blueboy" / f"{t:05d}.png", blob_mask([1]))
    lv = load_dataset("LV3", tmp_path, size=480)
    assert lv.size == -1 and list(lv.sequences[0].masks) == [0]
    generic = load_dataset("generic", tmp_path / "long_video_set", size=320)
    assert generic.size == 320 and generic.sequences[0].save is None


def test_layout_errors_name_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetLayoutError, match="JPEGImages"):
        load_dataset("D17", tmp_path)
    write_jpeg(tmp_path / "JPEGImages" / "480p" / "a" / "00000.jpg", np.random.default_rng(0))
    with pytest.raises(DatasetLayoutError, match="annotation folder of sequence a"):
        load_dataset("D17", tmp_path)
    (tmp_path / "Annotations" / "480p" / "a").mkdir(parents=True)
    write_index_mask(tmp_path / "Annotations" / "480p" / "a" / "other.png", blob_mask([1]))
    with pytest.raises(DatasetLayoutError, match="no annotation named after one of its frames"):
        load_dataset("D17", tmp_path)

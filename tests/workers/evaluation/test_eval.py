"""Evaluation: dataset layout discovery (DAVIS 2016/2017, YouTube-VOS, Long-Time Video, generic) on folders
built here from real JPEG/PNG files, the per-video usage-counting rule, and `vosd eval` + `vosd score` end to
end with a calibrated random checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from streamer.masks import read_index_mask, write_index_mask
from workers.evaluation.datasets import DatasetLayoutError, DatasetName, load_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

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
        blueboy = tmp_path / "long_video_set" / "Annotations" / "blueboy"
        write_index_mask(blueboy / f"{t:05d}.png", blob_mask([1]))
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


def test_usage_counting_follows_the_per_video_rule() -> None:
    from workers.evaluation.runner import count_usage
    from workers.xmem.config import InferenceConfig

    defaults = InferenceConfig()
    # 391 / (10 - 5) * 128 = 10009.6 >= 10000, 390 frames give 9984.
    assert count_usage(defaults, 391) and not count_usage(defaults, 390)
    assert not count_usage(InferenceConfig(enable_long_term=False), 100_000)
    small = InferenceConfig(num_prototypes=16, max_long_term_elements=20)
    assert count_usage(small, 7) and not count_usage(small, 6)  # 7 / 5 * 16 = 22.4, 6 / 5 * 16 = 19.2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from workers.xmem.network import NetworkSpec
    from workers.xmem.random_init import InitOptions, write_random_checkpoint

    path = tmp_path_factory.mktemp("model") / "random-small.pth"
    options = InitOptions(batches=1, batch_size=1, image_size=(H, W))
    return write_random_checkpoint(path, NetworkSpec.small(), seed=2, options=options)


def moving_davis(root: Path, sequences: dict[str, int], palette: np.ndarray) -> None:
    """DAVIS 2017-like folder: a texture moving one pixel per frame, two objects moving with it."""
    rng = np.random.default_rng(9)
    for name, frames in sequences.items():
        texture = rng.integers(0, 256, size=(H + frames, W + frames, 3), dtype=np.uint8)
        for t in range(frames):
            path = root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(texture[t : t + H, t : t + W]).save(path, quality=95)
            mask = np.roll(blob_mask([1, 2]), shift=(-t, -t), axis=(0, 1))
            gt = root / "Annotations" / "480p" / name / f"{t:05d}.png"
            gt.parent.mkdir(parents=True, exist_ok=True)
            write_index_mask(gt, mask, palette)


def test_vosd_eval_then_score_end_to_end(tmp_path: Path, checkpoint: Path) -> None:
    from typer.testing import CliRunner

    from streamer.cli.app import app
    from streamer.masks import read_palette

    palette = np.random.default_rng(3).integers(0, 256, size=(256, 3), dtype=np.uint8)
    palette[0] = 0
    moving_davis(tmp_path / "davis", {"walk": 5, "run": 4}, palette)
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(app, [
        "eval", "--dataset", "D17", "--root", str(tmp_path / "davis"), "--output", str(out),
        "--model", str(checkpoint), "--size", "-1", "--top-k", "8", "--mem-every", "2", "--device", "cpu",
    ])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["run", "walk"]
    assert sorted(p.name for p in (out / "walk").iterdir()) == [f"{t:05d}.png" for t in range(5)]
    first_gt = tmp_path / "davis" / "Annotations" / "480p" / "walk" / "00000.png"
    for png in (out / "walk").iterdir():
        with Image.open(png) as image:
            assert image.mode == "P" and image.size == (W, H)
        np.testing.assert_array_equal(read_palette(png), palette)
    np.testing.assert_array_equal(read_index_mask(out / "walk" / "00000.png"), read_index_mask(first_gt))
    report = json.loads((out / "eval_report.json").read_text())
    assert [(s["name"], s["frames"], s["processed"], s["written"]) for s in report["sequences"]] == [
        ("run", 4, 4, 4), ("walk", 5, 5, 5)]
    assert all(s["fps"] > 0 and s["count_usage"] is False for s in report["sequences"])

    scored = runner.invoke(app, ["score", "--gt", str(tmp_path / "davis"), "--pred", str(out), "--json"])
    assert scored.exit_code == 0, scored.output
    scores = json.loads(scored.output)
    assert {(o["sequence"], o["object"], o["frames"]) for o in scores["objects"]} == {
        ("run", 1, 2), ("run", 2, 2), ("walk", 1, 3), ("walk", 2, 3)}
    assert 0 <= scores["J&F"] <= 100
    perfect = runner.invoke(app, ["score", "--gt", str(tmp_path / "davis"),
                                  "--pred", str(tmp_path / "davis" / "Annotations" / "480p")])
    assert perfect.output.strip().splitlines()[-1] == "J&F 100.0 J 100.0 F 100.0"


def test_youtube_outputs_only_listed_frames_with_late_objects(tmp_path: Path, checkpoint: Path) -> None:
    from workers.evaluation.runner import run_dataset
    from workers.xmem.checkpoint import load_network
    from workers.xmem.config import InferenceConfig

    rng = np.random.default_rng(4)
    split = tmp_path / "valid"
    texture = rng.integers(0, 256, size=(H + 8, W + 8, 3), dtype=np.uint8)
    for t in range(8):
        folder = tmp_path / "all_frames" / "valid_all_frames" / "JPEGImages" / "v1"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(texture[t : t + H, t : t + W]).save(folder / f"{t:05d}.jpg", quality=95)
        if t % 5 == 0:
            (split / "JPEGImages" / "v1").mkdir(parents=True, exist_ok=True)
            Image.fromarray(texture[t : t + H, t : t + W]).save(split / "JPEGImages" / "v1" / f"{t:05d}.jpg")
    (split / "Annotations" / "v1").mkdir(parents=True)
    write_index_mask(split / "Annotations" / "v1" / "00001.png", blob_mask([4]))  # frame 0 has no object yet
    write_index_mask(split / "Annotations" / "v1" / "00005.png", blob_mask([0, 9]))
    meta = {"videos": {"v1": {"objects": {"4": {"frames": ["00001", "00005"]}, "9": {"frames": ["00005"]}}}}}
    (split / "meta.json").write_text(json.dumps(meta))
    dataset = load_dataset("Y18", tmp_path, size=-1)
    report = run_dataset(load_network(checkpoint), dataset, tmp_path / "out", InferenceConfig(top_k=8),
                         show_progress=False)
    written = tmp_path / "out" / "Annotations" / "v1"
    assert sorted(p.name for p in written.iterdir()) == ["00001.png", "00005.png"]
    assert (report.sequences[0].frames, report.sequences[0].processed) == (8, 7)  # frame 0 skipped
    late = read_index_mask(written / "00005.png")
    assert (late[blob_mask([0, 9]) == 9] == 9).all()
    np.testing.assert_array_equal(read_index_mask(written / "00001.png"), blob_mask([4]))

"""`vosd eval --method tmo` and `vosd score --unsupervised`: dataset layouts, output layout, scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from streamer.cli.app import app
from streamer.masks import read_index_mask, write_index_mask
from tmo_helpers import SMALL, random_network
from videos import render_moving_shapes
from workers.evaluation.datasets import DatasetLayoutError, DatasetName, load_dataset
from workers.evaluation.unsupervised import load_unsupervised, run_unsupervised, score_unsupervised
from workers.tmo.checkpoint import save_checkpoint
from workers.tmo.flow import DISFlow
from workers.tmo.session import TMOSession

SIZE = (48, 36)
BLACK = np.zeros((20, 20, 3), np.uint8)


def save(path: Path, array: np.ndarray, *, index: bool = False) -> None:
    """An image file (or a palette index mask) at `path`, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if index:
        write_index_mask(path, array)
    else:
        Image.fromarray(array).save(path)


def write_clip(frame_dir: Path, names: list[str], suffix: str = ".jpg") -> list[np.ndarray]:
    """Frames of a moving disc named `names`; returns the true binary masks."""
    frame_dir.mkdir(parents=True, exist_ok=True)
    masks = []
    for name, (frame, mask) in zip(names, render_moving_shapes(frames=len(names), size=SIZE), strict=True):
        Image.fromarray(frame).save(frame_dir / f"{name}{suffix}")
        masks.append(mask)
    return masks


def test_fbms_release_layout_reads_sparse_gt_files(tmp_path: Path) -> None:
    names = ["cars1_01", "cars1_02", "cars1_03"]
    masks = write_clip(tmp_path / "Testset" / "cars1", names)
    gt = tmp_path / "Testset" / "cars1" / "GroundTruth"
    gt.mkdir()
    Image.fromarray(masks[0] * 255).save(gt / "cars1_01_gt.pgm")
    Image.fromarray(masks[2] * 255).save(gt / "cars1_03_gt.pgm")
    (sequence,) = load_unsupervised(DatasetName.FBMS, tmp_path)
    assert sequence.name == "cars1" and [p.name for p in sequence.frames] == [f"{n}.jpg" for n in names]
    found = {i: p.name for i, p in sequence.annotations.items()}
    assert found == {0: "cars1_01_gt.pgm", 2: "cars1_03_gt.pgm"}


def test_youtube_objects_layout_nests_classes(tmp_path: Path) -> None:
    for video in ("aeroplane/0001", "aeroplane/0002", "cat/0001"):
        masks = write_clip(tmp_path / "JPEGImages" / video, ["00001", "00002"])
        save(tmp_path / "Annotations" / video / "00002.png", masks[1], index=True)
    sequences = load_unsupervised(DatasetName.YTO, tmp_path)
    assert [s.name for s in sequences] == ["aeroplane/0001", "aeroplane/0002", "cat/0001"]
    assert all(list(s.annotations) == [1] for s in sequences)
    with pytest.raises(DatasetLayoutError, match="JPEGImages"):
        load_unsupervised(DatasetName.YTO, tmp_path / "Annotations")
    with pytest.raises(DatasetLayoutError, match="--method tmo reads"):
        load_unsupervised(DatasetName.Y18, tmp_path)
    with pytest.raises(DatasetLayoutError, match="use --method tmo"):
        load_dataset(DatasetName.FBMS, tmp_path)


def test_runner_writes_one_mask_folder_per_sequence(tmp_path: Path) -> None:
    root = tmp_path / "yto"
    for video in ("car/0001", "dog/0003"):
        write_clip(root / "JPEGImages" / video, ["00001", "00002"])
    network = random_network("mitb1", SMALL)
    report = run_unsupervised(lambda: TMOSession(network, flow=DISFlow("fast")),
                              load_unsupervised(DatasetName.YTO, root), tmp_path / "out")
    assert (report.sequences, report.frames, report.flow_frames) == (2, 4, 2)
    for video in ("car/0001", "dog/0003"):
        files = sorted(p.name for p in (tmp_path / "out" / video).iterdir())
        assert files == ["00001.png", "00002.png"]
        mask = read_index_mask(tmp_path / "out" / video / "00002.png")
        assert mask.shape == (SIZE[1], SIZE[0]) and set(np.unique(mask)) <= {0, 1}
    assert json.loads((tmp_path / "out" / "eval_report.json").read_text())["frames"] == 4


def test_eval_command_runs_tmo_on_davis(tmp_path: Path) -> None:
    root = tmp_path / "davis"
    masks = write_clip(root / "JPEGImages" / "480p" / "blob", ["00000", "00001"])
    save(root / "Annotations" / "480p" / "blob" / "00000.png", masks[0], index=True)
    checkpoint = save_checkpoint(random_network("mitb1"), tmp_path / "tmo.pth")
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "--method", "tmo", "--model", str(checkpoint), "--dataset", "D16",
                                 "--root", str(root), "--output", str(tmp_path / "out"), "--flow", "dis",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "1 sequences, 2 frames (1 with flow)" in result.output
    assert sorted(p.name for p in (tmp_path / "out" / "blob").iterdir()) == ["00000.png", "00001.png"]
    bundled = runner.invoke(app, ["eval", "--method", "tmo", "--dataset", "D16", "--root", str(root),
                                  "--output", str(tmp_path / "o2"), "--flow", "none", "--device", "cpu"])
    assert bundled.exit_code == 0, bundled.output  # no --model: the bundled lite model
    assert sorted(p.name for p in (tmp_path / "o2" / "blob").iterdir()) == ["00000.png", "00001.png"]
    raft = runner.invoke(app, ["eval", "--method", "tmo", "--model", str(checkpoint), "--dataset", "D16",
                               "--root", str(root), "--output", str(tmp_path / "o3"), "--flow", "raft"])
    assert raft.exit_code == 2 and "--raft-weights" in raft.output


def square(filled: bool, width: int = 10) -> np.ndarray:
    mask = np.zeros((20, 20), dtype=np.uint8)
    if filled:
        mask[:10, :width] = 1
    return mask


def test_unsupervised_scores_on_hand_made_masks(tmp_path: Path) -> None:
    # YouTube-Objects: mean IoU over annotated frames, then over videos of a class, then over classes.
    root, pred = tmp_path / "yto", tmp_path / "pred"
    cases = {"aeroplane/0001": [(square(True), square(True, 5)), (square(False), square(False))],  # 0.5, 1
             "aeroplane/0002": [(square(True), square(False))],  # 0
             "cat/0001": [(square(True), square(True))]}  # 1
    for video, frames in cases.items():
        for index, (gt, prediction) in enumerate(frames):
            save(root / "JPEGImages" / video / f"{index:05}.jpg", BLACK)
            save(root / "Annotations" / video / f"{index:05}.png", gt * 255)
            save(pred / video / f"{index:05}.png", prediction, index=True)
    scores = score_unsupervised(DatasetName.YTO, root, pred)
    assert {s.name: s.j for s in scores.sequences} == {"aeroplane/0001": 0.75, "aeroplane/0002": 0.0,
                                                       "cat/0001": 1.0}
    assert scores.f is None and scores.j == pytest.approx((0.375 + 1.0) / 2)
    # DAVIS 2016 through the command: J&F over every annotated frame, the first and last included.
    davis = tmp_path / "davis"
    for index, (gt, prediction) in enumerate([(square(True), square(True)), (square(True), square(False))]):
        save(davis / "JPEGImages" / "480p" / "s" / f"{index:05}.jpg", BLACK)
        save(davis / "Annotations" / "480p" / "s" / f"{index:05}.png", gt, index=True)
        save(tmp_path / "dpred" / "s" / f"{index:05}.png", prediction, index=True)
    result = CliRunner().invoke(app, ["score", "--unsupervised", "--dataset", "D16", "--gt", str(davis),
                                      "--pred", str(tmp_path / "dpred"), "--json"])
    assert result.exit_code == 0, result.output
    numbers = json.loads(result.output)
    assert (numbers["J"], numbers["F"], numbers["J&F"]) == (50.0, 50.0, 50.0)
    assert numbers["sequences"][0]["frames"] == 2

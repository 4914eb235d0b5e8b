"""J and F: hand-checked small cases, and agreement with vos-benchmark (an independent implementation of the
DAVIS 2017 definitions) on synthetic multi-object sequences written as real palette PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from streamer.cli.app import app
from streamer.masks import write_index_mask
from workers.evaluation.metrics import (
    SequenceTally,
    boundary_f_measure,
    boundary_map,
    disk,
    frame_scores,
    region_similarity,
    score_folders,
    tolerance_radius,
)

H, W = 40, 56
AGREEMENT = 1e-9
"""Percent. Both sides compute the same float64 quantities; only summation order differs (~1e-13)."""


def square(top: int, left: int, side: int, shape: tuple[int, int] = (12, 12)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_region_similarity_hand_cases() -> None:
    a = square(2, 2, 4)
    assert region_similarity(a, a) == 1.0
    assert region_similarity(a, square(7, 7, 4)) == 0.0
    empty = np.zeros_like(a)
    assert region_similarity(empty, empty) == 1.0
    assert region_similarity(empty, a) == 0.0
    # 4x4 squares shifted by two columns: 8 shared pixels out of 24 covered.
    assert region_similarity(a, square(2, 4, 4)) == pytest.approx(8 / 24)


def test_boundary_map_follows_the_one_pixel_convention() -> None:
    mask = np.zeros((5, 5), dtype=bool)
    mask[1:3, 1:3] = True
    expected = np.zeros((5, 5), dtype=bool)
    for row, col in [(0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2)]:
        expected[row, col] = True
    np.testing.assert_array_equal(boundary_map(mask), expected)
    # Objects touching the right or bottom edge get no boundary along that edge; the corner pixel never.
    full = np.ones((4, 4), dtype=bool)
    assert not boundary_map(full).any()


def test_boundary_map_matches_vos_benchmark() -> None:
    from vos_benchmark.utils import _seg2bmap

    rng = np.random.default_rng(4)
    for _ in range(5):
        mask = rng.random((13, 17)) > 0.6
        np.testing.assert_array_equal(boundary_map(mask), _seg2bmap(mask).astype(bool))


def test_tolerance_radius_and_disk() -> None:
    assert tolerance_radius((480, 854)) == 8  # 0.008 * 979.6 = 7.84, rounded up
    assert tolerance_radius((12, 12)) == 1
    assert disk(1).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    assert disk(2).sum() == 13


def test_boundary_f_hand_cases() -> None:
    kernel = disk(1)
    a = square(2, 2, 4)
    empty = np.zeros_like(a)
    assert boundary_f_measure(a, a, kernel) == 1.0
    assert boundary_f_measure(a, square(7, 7, 4), kernel) == 0.0
    assert boundary_f_measure(empty, empty, kernel) == 1.0
    assert boundary_f_measure(empty, a, kernel) == 0.0
    assert boundary_f_measure(a, empty, kernel) == 0.0
    # One pixel of shift is within the tolerance disk: every boundary pixel matches.
    assert boundary_f_measure(a, square(2, 3, 4), kernel) == 1.0
    assert 0.0 < boundary_f_measure(a, square(2, 5, 4), kernel) < 1.0


def test_unseen_objects_score_one_and_late_objects_count_everywhere() -> None:
    gt = np.zeros((12, 12), dtype=np.uint8)
    gt[square(2, 2, 4)] = 1
    late = gt.copy()
    late[square(7, 7, 4)] = 2
    tally = SequenceTally("s")
    tally.add_frame(gt, gt)  # object 2 absent from both: J = F = 1 here
    tally.add_frame(gt, late)  # object 2 missed: J = F = 0
    tally.add_frame(gt.copy(), gt)
    scores = {s.label: s for s in tally.scores()}
    assert scores[1].j == 1.0 and scores[1].f == 1.0
    assert scores[2].j == pytest.approx(2 / 3) and scores[2].f == pytest.approx(2 / 3)
    assert scores[2].frames == 3
    assert frame_scores(gt, late, [2])[2] == (0.0, 0.0)


def moving_ellipses(rng: np.random.Generator, frames: int, objects: int) -> list[np.ndarray]:
    """Index masks of overlapping ellipses drifting across the frame (later labels drawn on top)."""
    rows, cols = np.mgrid[0:H, 0:W]
    centres = rng.uniform((8, 8), (H - 8, W - 8), size=(objects, 2))
    radii = rng.uniform(4, 11, size=(objects, 2))
    velocity = rng.uniform(-2, 2, size=(objects, 2))
    masks = []
    for t in range(frames):
        mask = np.zeros((H, W), dtype=np.uint8)
        for k in range(objects):
            (cy, cx), (ry, rx) = centres[k] + t * velocity[k], radii[k]
            mask[((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1] = k + 1
        masks.append(mask)
    return masks


def perturb(mask: np.ndarray, rng: np.random.Generator, objects: int) -> np.ndarray:
    """A plausible prediction: shifted, with label noise, an occasionally dropped object and a stray label."""
    pred = np.roll(mask, shift=tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
    noise = rng.random(mask.shape) < 0.02
    pred[noise] = rng.integers(0, objects + 1, size=int(noise.sum()))
    if rng.random() < 0.3:
        pred[pred == rng.integers(1, objects + 1)] = 0
    if rng.random() < 0.3:
        pred[rng.integers(0, H), rng.integers(0, W)] = objects + 3  # a label the ground truth never has
    return pred


@pytest.fixture(scope="module")
def synthetic_scores(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("scores")
    rng = np.random.default_rng(7)
    for index, objects in enumerate((1, 2, 3, 3)):
        seq = f"seq{index}"
        (root / "gt" / seq).mkdir(parents=True)
        (root / "pred" / seq).mkdir(parents=True)
        for t, mask in enumerate(moving_ellipses(rng, 7, objects)):
            write_index_mask(root / "gt" / seq / f"{t:05d}.png", mask)
            write_index_mask(root / "pred" / seq / f"{t:05d}.png", perturb(mask, rng, objects))
    return root / "gt", root / "pred"


def test_scores_agree_with_vos_benchmark(synthetic_scores: tuple[Path, Path], tmp_path: Path) -> None:
    from vos_benchmark.benchmark import benchmark

    gt, pred = synthetic_scores
    result = score_folders(gt, pred)
    # vos-benchmark writes results.csv into the prediction folder; give it a copy.
    copy = tmp_path / "pred"
    for seq in pred.iterdir():
        (copy / seq.name).mkdir(parents=True)
        for png in seq.iterdir():
            (copy / seq.name / png.name).write_bytes(png.read_bytes())
    jf, j, f, per_object = benchmark([str(gt)], [str(copy)], num_processes=1, verbose=False)
    reference = {(seq, label): (ious[label], bfs[label])
                 for seq, (ious, bfs) in per_object[0].items() for label in ious}
    ours = {(s.sequence, s.label): (100 * s.j, 100 * s.f) for s in result.objects}
    assert ours.keys() == reference.keys()
    assert len(ours) == 9
    for key, (ref_j, ref_f) in reference.items():
        assert abs(ours[key][0] - ref_j) < AGREEMENT and abs(ours[key][1] - ref_f) < AGREEMENT, key
    summary = result.summary
    assert abs(100 * summary.j - j[0]) < AGREEMENT
    assert abs(100 * summary.f - f[0]) < AGREEMENT
    assert abs(100 * summary.jf - jf[0]) < AGREEMENT
    assert 20 < 100 * summary.jf < 95  # the perturbations make it a non-trivial case


def test_score_command_prints_table_and_json(synthetic_scores: tuple[Path, Path]) -> None:
    gt, pred = synthetic_scores
    expected = score_folders(gt, pred).summary
    runner = CliRunner()
    table = runner.invoke(app, ["score", "--gt", str(gt), "--pred", str(pred)])
    assert table.exit_code == 0, table.output
    last = table.output.strip().splitlines()[-1]
    assert last == f"J&F {100 * expected.jf:.1f} J {100 * expected.j:.1f} F {100 * expected.f:.1f}"
    assert "seq3" in table.output
    as_json = runner.invoke(app, ["score", "--gt", str(gt), "--pred", str(pred), "--json"])
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.output)
    assert data["J&F"] == 100 * expected.jf and data["J"] == 100 * expected.j
    assert len(data["objects"]) == 9


def test_score_names_a_missing_prediction(synthetic_scores: tuple[Path, Path], tmp_path: Path) -> None:
    gt, _ = synthetic_scores
    (tmp_path / "seq0").mkdir()
    write_index_mask(tmp_path / "seq0" / "00001.png", np.zeros((H, W), dtype=np.uint8))
    result = CliRunner().invoke(app, ["score", "--gt", str(gt), "--pred", str(tmp_path)])
    assert result.exit_code == 2
    assert "00002.png" in result.output

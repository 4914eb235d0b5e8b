"""J (region similarity) and F (boundary F-measure) with the DAVIS 2017 toolkit definitions.

Scores are fractions in [0, 1]; tables multiply by 100. Per sequence, the objects are the labels found in
any ground-truth frame; each object is scored on every evaluated frame (semi-supervised scoring skips the
first and last frame), a frame where neither the prediction nor the ground truth shows the object counts as
J = F = 1, and an object's J and F are means over those frames. The dataset J and F are means over all
(sequence, object) pairs, and J&F is their mean, as in the DAVIS tables.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from streamer.masks import read_index_mask

BOUND_TH = 0.008
"""Boundary tolerance as a fraction of the image diagonal (DAVIS)."""


def region_similarity(pred: np.ndarray, gt: np.ndarray) -> float:
    """Intersection over union of two boolean masks; 1 when both are empty (nothing to get wrong)."""
    union = np.count_nonzero(pred | gt)
    if union == 0:
        return 1.0
    return np.count_nonzero(pred & gt) / union


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """One-pixel-wide boundary of a boolean mask, DAVIS's convention.

    A pixel is on the boundary when it differs from its right, lower or lower-right neighbour; neighbours
    outside the image are not compared, so objects touching the right or bottom edge get no extra edge
    there, and the bottom-right pixel is never a boundary pixel.
    """
    mask = mask.astype(bool)
    boundary = np.zeros_like(mask)
    boundary[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    boundary[:-1, :] |= mask[:-1, :] != mask[1:, :]
    boundary[:-1, :-1] |= mask[:-1, :-1] != mask[1:, 1:]
    return boundary


def tolerance_radius(shape: tuple[int, int], bound_th: float = BOUND_TH) -> int:
    """Boundary matching radius in pixels: bound_th of the diagonal, rounded up (values >= 1 are pixels)."""
    if bound_th >= 1:
        return math.ceil(bound_th)
    return math.ceil(bound_th * math.hypot(*shape))


def disk(radius: int) -> np.ndarray:
    """Structuring element of the pixels within `radius` of the centre, uint8 (2r+1, 2r+1)."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).astype(np.uint8)


def boundary_f_measure(pred: np.ndarray, gt: np.ndarray, kernel: np.ndarray) -> float:
    """F-measure of boundary precision and recall, each boundary matched within the dilation `kernel`.

    An empty boundary on one side only gives F = 0; both empty gives F = 1.
    """
    pred_boundary = boundary_map(pred)
    gt_boundary = boundary_map(gt)
    n_pred = np.count_nonzero(pred_boundary)
    n_gt = np.count_nonzero(gt_boundary)
    if n_pred == 0 or n_gt == 0:
        return 1.0 if n_pred == n_gt else 0.0
    pred_dilated = cv2.dilate(pred_boundary.astype(np.uint8), kernel).astype(bool)
    gt_dilated = cv2.dilate(gt_boundary.astype(np.uint8), kernel).astype(bool)
    precision = np.count_nonzero(pred_boundary & gt_dilated) / n_pred
    recall = np.count_nonzero(gt_boundary & pred_dilated) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def frame_scores(pred: np.ndarray, gt: np.ndarray, labels: Iterable[int],
                 bound_th: float = BOUND_TH) -> dict[int, tuple[float, float]]:
    """(J, F) of each label on one pair of index masks."""
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
    kernel = disk(tolerance_radius(gt.shape, bound_th))
    scores = {}
    for label in labels:
        pred_object, gt_object = pred == label, gt == label
        scores[label] = (region_similarity(pred_object, gt_object),
                         boundary_f_measure(pred_object, gt_object, kernel))
    return scores


@dataclass(frozen=True)
class ObjectScore:
    """Mean J and F of one object of one sequence over the evaluated frames."""

    sequence: str
    label: int
    j: float
    f: float
    frames: int

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2


@dataclass
class SequenceTally:
    """Running sums for one sequence, so frames can be streamed from disk one at a time.

    Only labels present in the prediction or the ground truth of a frame are measured; every other label
    scores J = F = 1 there, which `scores` adds back, so objects first seen late are still scored on all
    evaluated frames.
    """

    sequence: str
    bound_th: float = BOUND_TH
    frames: int = 0
    gt_labels: set[int] = field(default_factory=set)
    sums: dict[int, list[float]] = field(default_factory=dict)
    """label -> [J sum, F sum, frames where it was measured]"""

    def add_labels(self, gt: np.ndarray) -> None:
        """Register the objects of a ground-truth frame that is not evaluated (first or last)."""
        self.gt_labels.update(present_labels(gt))

    def add_frame(self, pred: np.ndarray, gt: np.ndarray) -> None:
        gt_present = present_labels(gt)
        self.gt_labels.update(gt_present)
        measured = gt_present | present_labels(pred)
        for label, (j, f) in frame_scores(pred, gt, sorted(measured), self.bound_th).items():
            entry = self.sums.setdefault(label, [0.0, 0.0, 0])
            entry[0] += j
            entry[1] += f
            entry[2] += 1
        self.frames += 1

    def scores(self) -> list[ObjectScore]:
        if self.frames == 0:
            raise ValueError(f"sequence {self.sequence} has no evaluated frames (it needs at least three)")
        results = []
        for label in sorted(self.gt_labels):
            j_sum, f_sum, measured = self.sums.get(label, [0.0, 0.0, 0])
            unmeasured = self.frames - measured
            results.append(ObjectScore(self.sequence, label, (j_sum + unmeasured) / self.frames,
                                       (f_sum + unmeasured) / self.frames, self.frames))
        return results


def present_labels(mask: np.ndarray) -> set[int]:
    """Non-zero labels of an index mask."""
    return {int(label) for label in np.unique(mask) if label != 0}


@dataclass(frozen=True)
class Summary:
    """Dataset means over all (sequence, object) pairs."""

    j: float
    f: float
    objects: int

    @property
    def jf(self) -> float:
        return (self.j + self.f) / 2


def summarise(scores: list[ObjectScore]) -> Summary:
    if not scores:
        raise ValueError("no objects to score")
    return Summary(float(np.mean([s.j for s in scores])), float(np.mean([s.f for s in scores])), len(scores))


@dataclass(frozen=True)
class FolderScores:
    """Scores of every predicted sequence, and the ground-truth sequences that had no prediction."""

    objects: list[ObjectScore]
    unpredicted: list[str]

    @property
    def summary(self) -> Summary:
        return summarise(self.objects)


def sequence_root(root: Path) -> Path:
    """The folder holding one folder per sequence: `root` itself, or its DAVIS / YouTube-VOS annotation
    folder."""
    for candidate in (root / "Annotations" / "480p", root / "Annotations"):
        if candidate.is_dir():
            return candidate
    return root


def score_folders(gt_root: str | Path, pred_root: str | Path, *, skip_first_and_last: bool = True,
                  bound_th: float = BOUND_TH) -> FolderScores:
    """Score every sequence folder of `pred_root` against the same-named folder of `gt_root`.

    Ground-truth PNGs name the frames to score (sparse annotations stay sparse); each needs a prediction.
    """
    gt_dir, pred_dir = sequence_root(Path(gt_root)), sequence_root(Path(pred_root))
    for folder, what in ((gt_dir, "ground truth"), (pred_dir, "prediction")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} folder not found: {folder}")
    gt_sequences = {p.name for p in gt_dir.iterdir() if p.is_dir()}
    pred_sequences = {p.name for p in pred_dir.iterdir() if p.is_dir()}
    if not pred_sequences:
        raise ValueError(f"no sequence folders in {pred_dir}")
    if extra := sorted(pred_sequences - gt_sequences):
        raise ValueError(f"predicted sequences without ground truth in {gt_dir}: {', '.join(extra)}")
    objects = []
    for name in sorted(pred_sequences):
        objects.extend(score_sequence(gt_dir / name, pred_dir / name, skip_first_and_last=skip_first_and_last,
                                      bound_th=bound_th))
    return FolderScores(objects, sorted(gt_sequences - pred_sequences))


def score_sequence(gt_dir: Path, pred_dir: Path, *, skip_first_and_last: bool = True,
                   bound_th: float = BOUND_TH) -> list[ObjectScore]:
    """Per-object scores of one sequence, reading one pair of PNGs at a time."""
    frames = sorted(p.name for p in gt_dir.iterdir() if p.suffix.lower() == ".png")
    tally = SequenceTally(gt_dir.name, bound_th)
    for index, frame in enumerate(frames):
        gt = read_index_mask(gt_dir / frame)
        if skip_first_and_last and index in (0, len(frames) - 1):
            tally.add_labels(gt)
            continue
        pred_path = pred_dir / frame
        if not pred_path.is_file():
            raise FileNotFoundError(f"missing prediction {pred_path} for ground truth {gt_dir / frame}")
        tally.add_frame(read_index_mask(pred_path), gt)
    return tally.scores()

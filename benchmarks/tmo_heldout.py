"""Unsupervised J&F on DAVIS-2016 sequences: a centred-ellipse baseline against `vosd eval --method tmo`.

A model that finds no object at all can still score by predicting the middle of the frame, where DAVIS
objects usually are: the baseline is an ellipse centred in every frame, its semi-axes `--axes` of the
frame's width and height. Scoring is `vosd score --unsupervised`'s (D16: J and F over all annotated frames).
Predictions are folders written by `vosd eval --method tmo` on the same root (label=folder, repeatable):

    python benchmarks/tmo_heldout.py [--root DAVIS] [--sequences dog,camel,car-roundabout]
                                     [--pred dis=OUT_DIS --pred none=OUT_NONE --pred aos=OUT_AOS]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from streamer.masks import write_index_mask
from workers.evaluation.unsupervised import UnsupervisedScores, load_unsupervised, score_unsupervised

DEFAULT_ROOT = Path("/work/shared/data/davis16-dev")
HELD_OUT = "dog,camel,car-roundabout"


def ellipse(height: int, width: int, axes: float) -> np.ndarray:
    """uint8 (H, W): 1 inside the ellipse centred in the frame with semi-axes axes * (W, H)."""
    mask = np.zeros((height, width), np.uint8)
    centre = (width // 2, height // 2)
    cv2.ellipse(mask, centre, (round(axes * width), round(axes * height)), 0, 0, 360, 1, thickness=-1)
    return mask


def subset_root(root: Path, names: list[str], folder: Path) -> Path:
    """A DAVIS root that lists only `names` (ImageSets/2016/val.txt) and links to `root`'s frames."""
    for part in ("JPEGImages", "Annotations"):
        (folder / part).symlink_to((root / part).resolve(), target_is_directory=True)
    (folder / "ImageSets" / "2016").mkdir(parents=True)
    (folder / "ImageSets" / "2016" / "val.txt").write_text("\n".join(names) + "\n")
    return folder


def write_ellipses(root: Path, output: Path, axes: float) -> None:
    """One ellipse PNG per frame, in `vosd eval`'s output layout."""
    for sequence in load_unsupervised("D16", root):
        (output / sequence.name).mkdir(parents=True)
        for frame in sequence.frames:
            with Image.open(frame) as image:
                width, height = image.size
            write_index_mask(output / sequence.name / f"{frame.stem}.png", ellipse(height, width, axes))


def row(label: str, scores: UnsupervisedScores) -> str:
    cells = [f"{100 * (s.j + s.f) / 2:6.1f} ({100 * s.j:.1f}/{100 * s.f:.1f})" for s in scores.sequences]
    assert scores.jf is not None
    return f"{label:<10}" + "".join(f"{cell:>22}" for cell in cells) + f"{100 * scores.jf:10.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--sequences", default=HELD_OUT, help="comma-separated names ('' = all)")
    parser.add_argument("--axes", type=float, default=0.25, help="ellipse semi-axes as fractions of W, H")
    parser.add_argument("--pred", action="append", default=[], help="LABEL=FOLDER of vosd eval output")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        names = [n.strip() for n in args.sequences.split(",") if n.strip()]
        root = subset_root(args.root, names, Path(scratch) / "root") if names else args.root
        write_ellipses(root, Path(scratch) / "ellipse", args.axes)
        results = [("ellipse", score_unsupervised("D16", root, Path(scratch) / "ellipse"))]
        for item in args.pred:
            label, _, folder = item.partition("=")
            results.append((label, score_unsupervised("D16", root, Path(folder))))
    print("J&F (J/F) in %; first column per sequence, last the mean J&F")
    print(f"{'':<10}" + "".join(f"{s.name:>22}" for s in results[0][1].sequences) + f"{'mean':>10}")
    for label, scores in results:
        print(row(label, scores))


if __name__ == "__main__":
    main()

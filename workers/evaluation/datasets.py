"""Evaluation dataset layouts, read the way XMem's eval.py reads them.

A layout is turned into a list of `EvalSequence`s that only hold file paths: frames are decoded one at a
time by the runner, so a video is never held in memory.

* D16 / D17 (DAVIS 2016 / 2017): ``JPEGImages/480p/<seq>``, ``Annotations/480p/<seq>``; the sequences of
  ``ImageSets/2016/val.txt`` or ``ImageSets/2017/val.txt`` when that file exists, else every sequence. With a
  size other than 480 the ``Full-Resolution`` (or ``1080p``) folders are read and, for a positive size, the
  output is resized to the 480p frame shape. Only the first annotation is used; D16's 0/255 masks are
  object 1.
* Y18 (YouTube-VOS 2018 validation): ``valid/JPEGImages``, ``valid/Annotations``, ``valid/meta.json``; frames
  from ``all_frames/valid_all_frames/JPEGImages`` when present. Every annotation is used (objects enter late);
  outputs are written only for the frames that meta.json lists (else the frames of ``valid/JPEGImages``).
* LV3 (Long-Time Video): ``JPEGImages/<seq>``, ``Annotations/<seq>`` (or under ``long_video_set``); never
  resized.
* generic: ``JPEGImages/<seq>``, ``Annotations/<seq>`` with a first-frame mask; every frame is written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class DatasetLayoutError(ValueError):
    """The dataset folder does not have the layout its name promises."""


class DatasetName(str, Enum):
    """The layouts `vosd eval --dataset` accepts (XMem's names, and generic for its G).

    FBMS, YTO (YouTube-Objects) and LV (Long-Videos) are TMO's unsupervised test sets
    (workers/evaluation/unsupervised.py); XMem reads D16, D17, Y18, LV3 and generic.
    """

    D16 = "D16"
    D17 = "D17"
    Y18 = "Y18"
    LV3 = "LV3"
    generic = "generic"
    FBMS = "FBMS"
    YTO = "YTO"
    LV = "LV"


@dataclass(frozen=True)
class EvalSequence:
    """One video: its frames in order, which of them carry annotations, and which outputs to write.

    Attributes:
        name: the sequence (and output folder) name.
        frames: frame files in playback order.
        masks: frame index -> annotation file; frames before the first one are skipped.
        save: names (file stems) of the frames to write, or None for all processed frames.
        output_size: (H, W) of the written masks, or None for the frame size.
    """

    name: str
    frames: tuple[Path, ...]
    masks: dict[int, Path]
    save: frozenset[str] | None = None
    output_size: tuple[int, int] | None = None

    @property
    def first_annotation(self) -> Path:
        return self.masks[min(self.masks)]


@dataclass(frozen=True)
class EvalDataset:
    """The sequences of a layout, the resize that layout runs at, and where its outputs go."""

    name: DatasetName
    sequences: tuple[EvalSequence, ...]
    size: int
    youtube_layout: bool = False

    def output_dir(self, root: Path, sequence: EvalSequence) -> Path:
        """XMem's output layout: ``<root>/<seq>``, or ``<root>/Annotations/<seq>`` for YouTube-VOS."""
        return root / "Annotations" / sequence.name if self.youtube_layout else root / sequence.name


def load_dataset(name: DatasetName | str, root: str | Path, size: int = 480) -> EvalDataset:
    """Discover the sequences of dataset `name` under `root`; `size` is the requested shorter side."""
    name, root = DatasetName(name), Path(root)
    if name in (DatasetName.FBMS, DatasetName.YTO, DatasetName.LV):
        raise DatasetLayoutError(f"{name.value} is an unsupervised test set: use --method tmo")
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset folder not found: {root}")
    if name in (DatasetName.D16, DatasetName.D17):
        return load_davis(name, root, size)
    if name is DatasetName.Y18:
        return load_youtube(root, size)
    if name is DatasetName.LV3:
        base = root / "long_video_set" if (root / "long_video_set").is_dir() else root
        return EvalDataset(name, plain_sequences(base), size=-1)
    return EvalDataset(name, plain_sequences(root), size=size)


def frame_files(folder: Path) -> tuple[Path, ...]:
    """Image files of a sequence folder, sorted by name (DAVIS and YouTube-VOS names are zero-padded)."""
    return tuple(sorted(p for p in folder.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and p.is_file()))


def find_annotations(frames: tuple[Path, ...], mask_dir: Path, *, all_masks: bool) -> dict[int, Path]:
    """Frame index -> annotation `<mask_dir>/<frame stem>.png`: every one, or only the first."""
    masks = {}
    for index, frame in enumerate(frames):
        mask = mask_dir / f"{frame.stem}.png"
        if mask.is_file():
            masks[index] = mask
            if not all_masks:
                break
    return masks


def make_sequence(name: str, frame_dir: Path, mask_dir: Path, *, all_masks: bool = False,
                  save: frozenset[str] | None = None,
                  output_size: tuple[int, int] | None = None) -> EvalSequence:
    """Build one sequence, with errors that name the missing folder or annotation."""
    if not frame_dir.is_dir():
        raise DatasetLayoutError(f"frame folder of sequence {name} not found: {frame_dir}")
    frames = frame_files(frame_dir)
    if not frames:
        raise DatasetLayoutError(f"no frames in {frame_dir}")
    if not mask_dir.is_dir():
        raise DatasetLayoutError(f"annotation folder of sequence {name} not found: {mask_dir}")
    masks = find_annotations(frames, mask_dir, all_masks=all_masks)
    if not masks:
        raise DatasetLayoutError(
            f"sequence {name} has no annotation named after one of its frames in {mask_dir}")
    return EvalSequence(name, frames, masks, save, output_size)


def subfolders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir())


def load_davis(name: DatasetName, root: Path, size: int) -> EvalDataset:
    """DAVIS 2016 / 2017: 480p folders at size 480, full resolution otherwise."""
    low_res = root / "JPEGImages" / "480p"
    resolution = "480p"
    if size != 480:
        resolution = next(
            (r for r in ("Full-Resolution", "1080p") if (root / "JPEGImages" / r).is_dir()), "480p")
    image_root, mask_root = root / "JPEGImages" / resolution, root / "Annotations" / resolution
    if not image_root.is_dir():
        raise DatasetLayoutError(f"{root} is not a DAVIS folder: {image_root} is missing")
    year = "2016" if name is DatasetName.D16 else "2017"
    imageset = root / "ImageSets" / year / "val.txt"
    if imageset.is_file():
        names = [line.strip() for line in imageset.read_text().splitlines() if line.strip()]
    else:
        names = subfolders(image_root)
    resize_back = resolution != "480p" and size > 0 and low_res.is_dir()
    sequences = []
    for seq in names:
        output_size = first_frame_shape(low_res / seq) if resize_back else None
        sequences.append(make_sequence(seq, image_root / seq, mask_root / seq, output_size=output_size))
    if not sequences:
        raise DatasetLayoutError(f"no sequences in {image_root}")
    return EvalDataset(name, tuple(sequences), size)


def first_frame_shape(folder: Path) -> tuple[int, int]:
    """(H, W) of a folder's first frame, read from the file header only."""
    from PIL import Image  # here so that `vosd --help`, which imports this module, stays light
    frames = frame_files(folder)
    if not frames:
        raise DatasetLayoutError(f"no frames in {folder}")
    with Image.open(frames[0]) as image:
        width, height = image.size
    return height, width


def load_youtube(root: Path, size: int) -> EvalDataset:
    """YouTube-VOS validation: all frames when available, every annotation, outputs for the listed frames."""
    split = root / "valid"
    if not (split / "JPEGImages").is_dir() or not (split / "Annotations").is_dir():
        raise DatasetLayoutError(
            f"{root} is not a YouTube-VOS folder: valid/JPEGImages and valid/Annotations needed")
    all_frames = root / "all_frames" / "valid_all_frames" / "JPEGImages"
    image_root = all_frames if all_frames.is_dir() else split / "JPEGImages"
    listed = listed_frames(split / "meta.json")
    sequences = []
    for seq in subfolders(split / "JPEGImages"):
        save = (listed or {}).get(seq) or frozenset(p.stem for p in frame_files(split / "JPEGImages" / seq))
        sequences.append(
            make_sequence(seq, image_root / seq, split / "Annotations" / seq, all_masks=True, save=save))
    if not sequences:
        raise DatasetLayoutError(f"no sequences in {split / 'JPEGImages'}")
    return EvalDataset(DatasetName.Y18, tuple(sequences), size, youtube_layout=True)


def listed_frames(meta_path: Path) -> dict[str, frozenset[str]] | None:
    """Sequence -> frames any object of meta.json lists (the frames the server scores), or None without it."""
    if not meta_path.is_file():
        return None
    videos = json.loads(meta_path.read_text())["videos"]
    return {
        seq: frozenset(frame for obj in video["objects"].values() for frame in obj["frames"])
        for seq, video in videos.items()
    }


def plain_sequences(root: Path) -> tuple[EvalSequence, ...]:
    """``JPEGImages/<seq>`` + ``Annotations/<seq>`` (Long-Time Video and generic), first annotation only."""
    image_root, mask_root = root / "JPEGImages", root / "Annotations"
    if not image_root.is_dir():
        raise DatasetLayoutError(f"{root} needs JPEGImages/<sequence> and Annotations/<sequence> folders")
    sequences = tuple(make_sequence(seq, image_root / seq, mask_root / seq) for seq in subfolders(image_root))
    if not sequences:
        raise DatasetLayoutError(f"no sequences in {image_root}")
    return sequences

"""J&F and speed of XMem checkpoints on DAVIS-2016 sequences, side by side, against copying the first mask.

The baseline predicts the first frame's mask on every frame: a model that does not beat it has learnt
nothing about following objects. Scoring is DAVIS's (first and last frames skipped, objects merged into
one as in DAVIS-2016), with the output at the annotation size. Use it on sequences the checkpoints were not
trained on (the bundled model holds out dog, camel and car-roundabout).

Every checkpoint runs under every setting: each ``--size`` (XMem's default inference options at that
working size) and each ``--profile`` (a vosd config YAML: its ``workers.size`` and ``xmem`` section, as the
daemon would run it). FPS is frames per second of ``VideoSession.step`` (pre-processing, network,
post-processing at the 854x480 frame size), the number a live camera job sees; run it with ``--threads``
set to the cores a worker gets. One command compares a new model with the bundled one:

    python benchmarks/heldout.py --checkpoint workers/weights/vosd-lite.pth --checkpoint new.pth \\
        --size 480 --size 240 --profile configs/live-camera.yaml --threads 2 [--json scores.json]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from streamer.config import load_config
from streamer.masks import read_index_mask
from workers.evaluation.metrics import ObjectScore, SequenceTally, summarise
from workers.evaluation.runner import read_frame
from workers.training.weights import default_model_path
from workers.xmem.checkpoint import load_network
from workers.xmem.config import InferenceConfig
from workers.xmem.network import XMemNetwork
from workers.xmem.session import VideoSession

DEFAULT_ROOT = Path("/work/shared/data/davis16-dev")
HELD_OUT = "dog,camel,car-roundabout"


@dataclass(frozen=True)
class Setting:
    """How the checkpoints run: a working size and the inference options, named for the table."""

    name: str
    size: int
    config: InferenceConfig


@dataclass
class Run:
    """One (checkpoint, setting, sequence): the model's object scores, frames and seconds spent."""

    scores: list[ObjectScore]
    frames: int
    seconds: float


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="DAVIS folder (JPEGImages/480p, ...)")
    parser.add_argument("--sequences", default=HELD_OUT, help="comma-separated sequence names")
    parser.add_argument("--checkpoint", type=Path, action="append",
                        help="XMem checkpoint; repeat to compare (default: the bundled model)")
    parser.add_argument("--size", type=int, action="append",
                        help="shorter side the model runs at (-1: native); repeatable (default: 480 unless a "
                             "--profile is given)")
    parser.add_argument("--profile", type=Path, action="append",
                        help="vosd config YAML whose workers.size and xmem options to use; repeatable")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write every score and timing to this file")
    return parser.parse_args(argv)


def settings_from(sizes: list[int] | None, profiles: list[Path] | None) -> list[Setting]:
    """The settings of the command line: sizes first, then profiles; 480 alone when neither is given."""
    settings = [Setting(f"size {size}", size, InferenceConfig()) for size in sizes or []]
    for path in profiles or []:
        vosd = load_config(path)
        settings.append(Setting(f"{path.stem} (size {vosd.workers.size}, mem_every {vosd.xmem.mem_every})",
                                vosd.workers.size, vosd.xmem.inference_config()))
    return settings or [Setting("size 480", 480, InferenceConfig())]


def checkpoint_names(paths: list[Path]) -> list[str]:
    """Short column names: file stems, or the paths where two stems collide (tables keep their ends)."""
    stems = [path.stem for path in paths]
    return [stem if stems.count(stem) == 1 else str(path) for stem, path in zip(stems, paths, strict=True)]


def sequence_files(root: Path, name: str) -> tuple[list[Path], list[Path]]:
    """Frames and their annotations (DAVIS-2016 annotates every frame)."""
    frames = sorted((root / "JPEGImages" / "480p" / name).glob("*.jpg"))
    masks = sorted((root / "Annotations" / "480p" / name).glob("*.png"))
    if not frames or len(frames) != len(masks):
        raise SystemExit(f"{name}: {len(frames)} frames but {len(masks)} annotations under {root}")
    return frames, masks


def single_object(path: Path) -> np.ndarray:
    """DAVIS-2016 setting: every annotated pixel is object 1."""
    return (read_index_mask(path) > 0).astype(np.uint8)


def copy_first_scores(truths: list[np.ndarray], name: str) -> list[ObjectScore]:
    """Scores of the baseline that predicts the first mask on every frame."""
    tally = SequenceTally(name)
    for index, truth in enumerate(truths):
        if index in (0, len(truths) - 1):
            tally.add_labels(truth)
        else:
            tally.add_frame(truths[0], truth)
    return tally.scores()


def run_sequence(network: XMemNetwork, setting: Setting, name: str, frames: list[np.ndarray],
                 truths: list[np.ndarray]) -> Run:
    """Segment one sequence from its first mask and score it."""
    session = VideoSession(network, setting.config, size=setting.size)
    tally = SequenceTally(name)
    elapsed = 0.0
    last = len(frames) - 1
    for index, (frame, truth) in enumerate(zip(frames, truths, strict=True)):
        started = time.perf_counter()
        result = session.step(frame, truths[0] if index == 0 else None, end=index == last)
        elapsed += time.perf_counter() - started
        if index in (0, last):
            tally.add_labels(truth)
        else:
            tally.add_frame(result.index_mask, truth)
    return Run(tally.scores(), len(frames), elapsed)


def cell(scores: list[ObjectScore], frames: int, seconds: float) -> str:
    summary = summarise(scores)
    return f"{100 * summary.jf:6.1f}{100 * summary.j:6.1f}{100 * summary.f:6.1f}{frames / seconds:7.2f}"


def print_table(setting: Setting, names: list[str], sequences: list[str],
                runs: dict[tuple[int, str], Run], baseline: dict[str, list[ObjectScore]]) -> None:
    """One block per setting: a row per sequence, J&F / J / F / FPS per checkpoint, the baseline's J&F."""
    width = 25
    print(f"\n{setting.name}")
    print(f"{'':<18}{'copy-1st':>9} |" + "|".join(f"{name[-(width - 1):]:>{width}}" for name in names))
    print(f"{'sequence':<18}{'J&F':>9} |" + "|".join(f"{'J&F':>6}{'J':>6}{'F':>6}{'fps':>7}" for _ in names))
    for sequence in sequences:
        cells = [cell(runs[i, sequence].scores, runs[i, sequence].frames, runs[i, sequence].seconds)
                 for i in range(len(names))]
        print(f"{sequence:<18}{100 * summarise(baseline[sequence]).jf:9.1f} |" + "|".join(
            f"{c:>{width}}" for c in cells))
    cells = []
    for i in range(len(names)):
        chosen = [runs[i, s] for s in sequences]
        cells.append(cell([score for run in chosen for score in run.scores], sum(r.frames for r in chosen),
                          sum(r.seconds for r in chosen)))
    everything = [score for s in sequences for score in baseline[s]]
    print(f"{'mean':<18}{100 * summarise(everything).jf:9.1f} |" + "|".join(f"{c:>{width}}" for c in cells),
          flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    paths = args.checkpoint or [default_model_path()]
    names = checkpoint_names(paths)
    networks = [load_network(path) for path in paths]
    settings = settings_from(args.size, args.profile)
    sequences = [n.strip() for n in args.sequences.split(",") if n.strip()]
    print(f"root {args.root}, {torch.get_num_threads()} thread(s); checkpoints: "
          + ", ".join(f"{name} = {path} ({net.spec.variant})"
                      for name, path, net in zip(names, paths, networks, strict=True)))
    runs: dict[tuple[int, int, str], Run] = {}
    baseline: dict[str, list[ObjectScore]] = {}
    for sequence in sequences:  # each sequence is read once and kept in memory for every run
        frame_paths, mask_paths = sequence_files(args.root, sequence)
        frames = [read_frame(path) for path in frame_paths]
        truths = [single_object(path) for path in mask_paths]
        baseline[sequence] = copy_first_scores(truths, sequence)
        for s, setting in enumerate(settings):
            for i, network in enumerate(networks):
                run = runs[s, i, sequence] = run_sequence(network, setting, sequence, frames, truths)
                jf = 100 * summarise(run.scores).jf
                print(f"  {sequence} | {setting.name} | {names[i]}: J&F {jf:.1f}, "
                      f"{run.frames / run.seconds:.2f} fps", flush=True)
    for s, setting in enumerate(settings):
        block = {(i, sequence): runs[s, i, sequence] for i in range(len(names)) for sequence in sequences}
        print_table(setting, names, sequences, block, baseline)
    if args.json is not None:
        args.json.write_text(json.dumps({
            "threads": torch.get_num_threads(),
            "checkpoints": dict(zip(names, map(str, paths), strict=True)),
            "runs": [{"setting": setting.name, "size": setting.size, "checkpoint": names[i],
                      "sequence": sequence, "frames": run.frames, "seconds": run.seconds,
                      "j": summarise(run.scores).j, "f": summarise(run.scores).f,
                      "jf": summarise(run.scores).jf, "copy_first_jf": summarise(baseline[sequence]).jf}
                     for (s, i, sequence), run in runs.items() for setting in [settings[s]]],
        }, indent=1))


if __name__ == "__main__":
    main()

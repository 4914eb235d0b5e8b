"""Run XMem over an evaluation dataset the way eval.py does, writing palette PNGs in its output layout.

Each video gets a fresh VideoSession (so a fresh InferenceCore and memory). Long-term usage counting is
decided per video with eval.py's rule, because without it long-term removal cannot run, and with it
short videos would pay for bookkeeping they never use.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from streamer.masks import read_index_mask, read_palette, write_index_mask
from workers.evaluation.datasets import EvalDataset, EvalSequence
from workers.xmem.config import InferenceConfig
from workers.xmem.network import XMemNetwork
from workers.xmem.session import VideoSession

REPORT_FILE = "eval_report.json"


@dataclass(frozen=True)
class SequenceReport:
    """What happened to one video: frame counts and the time spent in the session (decoding excluded)."""

    name: str
    frames: int
    processed: int
    written: int
    seconds: float
    count_usage: bool

    @property
    def fps(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class EvalReport:
    sequences: list[SequenceReport]
    peak_gpu_mb: float | None

    @property
    def processed(self) -> int:
        return sum(s.processed for s in self.sequences)

    @property
    def fps(self) -> float:
        seconds = sum(s.seconds for s in self.sequences)
        return self.processed / seconds if seconds > 0 else 0.0

    def to_json(self) -> dict:
        return {
            "fps": self.fps, "processed_frames": self.processed, "peak_gpu_mb": self.peak_gpu_mb,
            "sequences": [dataclasses.asdict(s) | {"fps": s.fps} for s in self.sequences],
        }


def count_usage(config: InferenceConfig, length: int) -> bool:
    """eval.py's per-video rule: count long-term usage iff long-term memory could fill up in this video."""
    if not config.enable_long_term:
        return False
    span = config.max_mid_term_frames - config.min_mid_term_frames
    if span <= 0:
        raise ValueError("max_mid_term_frames must be larger than min_mid_term_frames")
    return length / span * config.num_prototypes >= config.max_long_term_elements


def read_frame(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def run_sequence(network: XMemNetwork, dataset: EvalDataset, sequence: EvalSequence, output_root: Path,
                 config: InferenceConfig, *, amp: bool = False, device: torch.device | None = None,
                 on_frame: Callable[[], None] | None = None) -> SequenceReport:
    """Segment one video and write its PNGs; `on_frame()` is called after every frame (progress)."""
    usage = count_usage(config, len(sequence.frames))
    video_config = dataclasses.replace(config, enable_long_term_count_usage=usage)
    session = VideoSession(network, video_config, size=dataset.size, amp=amp, device=device)
    palette = read_palette(sequence.first_annotation)
    out_dir = dataset.output_dir(output_root, sequence)
    out_dir.mkdir(parents=True, exist_ok=True)
    processed = written = 0
    seconds = 0.0
    last = len(sequence.frames) - 1
    for index, path in enumerate(sequence.frames):
        mask_path = sequence.masks.get(index)
        mask = read_index_mask(mask_path) if mask_path is not None else None
        frame = read_frame(path)
        start = time.perf_counter()
        result = session.step(frame, mask, end=index == last, output_size=sequence.output_size)
        if session.device.type == "cuda":
            torch.cuda.synchronize(session.device)
        seconds += time.perf_counter() - start
        if not result.skipped:
            processed += 1
            if sequence.save is None or path.stem in sequence.save:
                write_index_mask(out_dir / f"{path.stem}.png", result.index_mask, palette)
                written += 1
        if on_frame is not None:
            on_frame()
    return SequenceReport(sequence.name, len(sequence.frames), processed, written, seconds, usage)


def run_dataset(network: XMemNetwork, dataset: EvalDataset, output_root: str | Path, config: InferenceConfig,
                *, amp: bool = False, device: torch.device | None = None,
                show_progress: bool = True) -> EvalReport:
    """Evaluate every sequence, write `eval_report.json` next to the outputs, and return the report."""
    output_root = Path(output_root)
    output_root.mkdir(parents=True, exist_ok=True)
    on_gpu = device is not None and torch.device(device).type == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    total = sum(len(s.frames) for s in dataset.sequences)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    reports = []
    with Progress(*columns, disable=not show_progress) as progress:
        task = progress.add_task(dataset.name.value, total=total)
        for sequence in dataset.sequences:
            progress.update(task, description=f"{dataset.name.value} {sequence.name}")
            reports.append(run_sequence(network, dataset, sequence, output_root, config, amp=amp,
                                        device=device, on_frame=lambda: progress.advance(task)))
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if on_gpu else None
    report = EvalReport(reports, peak)
    (output_root / REPORT_FILE).write_text(json.dumps(report.to_json(), indent=2))
    return report

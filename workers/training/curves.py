"""Loss curves: a CSV log (plus TensorBoard when installed) and a PNG plot of it.

The CSV is the record that always exists, is appended to across resumes, and is what the plot reads; the plot
uses matplotlib when available and otherwise draws a simple chart with PIL so a run always leaves a picture.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

COLUMNS = ("stage", "step", "iteration", "lr", "loss", "ce", "dice", "bootstrap", "seconds_per_iteration")
"""CSV columns; ``step`` counts iterations over all stages (the x axis), ``iteration`` restarts per stage."""
PLOTTED = ("loss", "ce", "dice")
COLOURS = {"loss": (31, 119, 180), "ce": (255, 127, 14), "dice": (44, 160, 44)}


@dataclass(frozen=True)
class LossRow:
    """One logged interval (losses averaged over its iterations and all ranks)."""

    stage: str
    step: int
    iteration: int
    lr: float
    loss: float
    ce: float
    dice: float
    bootstrap: float
    seconds_per_iteration: float


class LossLog:
    """Appends rows to ``losses.csv`` in the experiment folder and mirrors them to TensorBoard if present."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "losses.csv"
        folder.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            with self.path.open("w", newline="") as handle:
                csv.writer(handle).writerow(COLUMNS)
        self._board = open_tensorboard(folder / "tensorboard")

    def write(self, row: LossRow) -> None:
        with self.path.open("a", newline="") as handle:
            csv.writer(handle).writerow([getattr(row, name) for name in COLUMNS])
        if self._board is not None:
            for name in ("loss", "ce", "dice", "lr", "bootstrap", "seconds_per_iteration"):
                self._board.add_scalar(f"train/{name}", getattr(row, name), row.step)

    def close(self) -> None:
        if self._board is not None:
            self._board.close()


def open_tensorboard(folder: Path) -> object | None:
    """A SummaryWriter when the tensorboard package is installed, else None (logged once)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard is not installed; losses go to the CSV only")
        return None
    return SummaryWriter(str(folder))


def read_rows(csv_path: Path) -> list[LossRow]:
    """Rows of a loss CSV, in file order."""
    with csv_path.open(newline="") as handle:
        return [LossRow(stage=r["stage"], step=int(r["step"]), iteration=int(r["iteration"]),
                        lr=float(r["lr"]), loss=float(r["loss"]), ce=float(r["ce"]), dice=float(r["dice"]),
                        bootstrap=float(r["bootstrap"]),
                        seconds_per_iteration=float(r["seconds_per_iteration"]))
                for r in csv.DictReader(handle)]


def plot_curves(csv_path: Path, png_path: Path) -> Path:
    """Plot total / cross-entropy / dice loss against the overall step; returns the PNG path."""
    rows = read_rows(csv_path)
    if not rows:
        raise ValueError(f"{csv_path} has no logged rows yet")
    png_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import matplotlib
    except ImportError:
        draw_with_pil(rows, png_path)
    else:
        matplotlib.use("Agg")
        draw_with_matplotlib(rows, png_path)
    return png_path


def plotted(rows: list[LossRow]) -> list[str]:
    """The losses a run logs: a TMO run has no dice term (its column stays 0), so that line is left out."""
    return [name for name in PLOTTED if name == "loss" or any(getattr(row, name) for row in rows)]


def stage_starts(rows: list[LossRow]) -> list[tuple[int, str]]:
    """(step, stage) where each stage's rows begin, to mark stage boundaries."""
    starts = []
    for row in rows:
        if not starts or starts[-1][1] != row.stage:
            starts.append((row.step, row.stage))
    return starts


def draw_with_matplotlib(rows: list[LossRow], png_path: Path) -> None:
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(9, 4.5))
    steps = [row.step for row in rows]
    for name in plotted(rows):
        axis.plot(steps, [getattr(row, name) for row in rows], label=name,
                  color=tuple(c / 255 for c in COLOURS[name]))
    for step, stage in stage_starts(rows)[1:]:
        axis.axvline(step, color="grey", linestyle=":")
        axis.text(step, axis.get_ylim()[1], f" s{stage}", va="top", color="grey")
    axis.set_xlabel("iteration (all stages)")
    axis.set_ylabel("loss")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)


def draw_with_pil(rows: list[LossRow], png_path: Path, size: tuple[int, int] = (900, 450)) -> None:
    """A plain line chart: axes with min/max labels, one polyline per loss, dotted stage boundaries."""
    width, height = size
    left, right, top, bottom = 60, 20, 20, 40
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    steps = [row.step for row in rows]
    values = [getattr(row, name) for row in rows for name in plotted(rows)]
    x0, x1 = min(steps), max(max(steps), min(steps) + 1)
    y0, y1 = min(0.0, min(values)), max(values) or 1.0

    def point(step: float, value: float) -> tuple[float, float]:
        x = left + (step - x0) / (x1 - x0) * (width - left - right)
        y = height - bottom - (value - y0) / (y1 - y0) * (height - top - bottom)
        return x, y

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    draw.text((5, top), f"{y1:.3g}", fill="black")
    draw.text((5, height - bottom - 10), f"{y0:.3g}", fill="black")
    draw.text((left, height - bottom + 5), str(x0), fill="black")
    draw.text((width - right - 60, height - bottom + 5), str(x1), fill="black")
    draw.text((width // 2 - 60, height - 18), "iteration (all stages)", fill="black")
    for step, stage in stage_starts(rows)[1:]:
        x = point(step, y0)[0]
        for y in range(top, height - bottom, 6):
            draw.line([x, y, x, y + 2], fill="grey")
        draw.text((x + 2, top + 2), f"s{stage}", fill="grey")
    for index, name in enumerate(plotted(rows)):
        line = [point(row.step, getattr(row, name)) for row in rows]
        if len(line) > 1:
            draw.line(line, fill=COLOURS[name], width=2)
        else:
            x, y = line[0]
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=COLOURS[name])
        draw.text((width - right - 80, top + 5 + 14 * index), name, fill=COLOURS[name])
    image.save(png_path)

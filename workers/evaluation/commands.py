"""`vosd eval` and `vosd score`: thin typer front-ends; torch and the engine are imported when they run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from workers.evaluation.datasets import DatasetName


def fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def resolve_model(model: str | None) -> Path:
    """The checkpoint to run: a file, a registered weights name, or (absent) the default model."""
    from workers.training.weights import WeightsError, model_path

    try:
        return model_path(model)
    except WeightsError as error:
        fail(f"{error}; or pass --model PATH (an XMem checkpoint)")


def eval_command(
    dataset: Annotated[DatasetName, typer.Option(help="Layout: D16, D17 (DAVIS), Y18 (YouTube-VOS 2018 valid), "
                                                 "LV3 (Long-Time Video, never resized), generic.")],
    root: Annotated[Path, typer.Option(help="Dataset folder (DAVIS: the one holding JPEGImages/480p; "
                                            "YouTube-VOS: the one holding valid/).")],
    output: Annotated[Path, typer.Option(help="Output folder; one folder of palette PNGs per sequence.")],
    model: Annotated[str | None, typer.Option(
        help="XMem checkpoint file or registered weights name; default: the default model.")] = None,
    size: Annotated[int, typer.Option(help="Shorter side the frames are resized to; -1 keeps them.")] = 480,
    amp: Annotated[bool, typer.Option(help="Mixed precision (eval.py's default; off here for exact fp32).")]
    = False,
    mem_every: Annotated[int | None, typer.Option(help="Memory frame every r frames (eval.py: 5).")] = None,
    top_k: Annotated[int | None, typer.Option(help="k of the top-k softmax (30).")] = None,
    deep_update_every: Annotated[int | None, typer.Option(
        help="Deep update period; -1 = with every memory frame (-1).")] = None,
    disable_long_term: Annotated[bool, typer.Option(help="No long-term memory.")] = False,
    max_mid_term_frames: Annotated[int | None, typer.Option(help="T_max (10).")] = None,
    min_mid_term_frames: Annotated[int | None, typer.Option(help="T_min (5).")] = None,
    num_prototypes: Annotated[int | None, typer.Option(help="Prototypes per consolidation (128).")] = None,
    max_long_term_elements: Annotated[int | None, typer.Option(help="Long-term memory cap (10000).")] = None,
    device: Annotated[str | None, typer.Option(help="torch device; default cuda when available.")] = None,
) -> None:
    """Run XMem on a dataset and write palette PNGs in XMem's eval layout."""
    import torch

    from workers.evaluation.datasets import DatasetLayoutError, load_dataset
    from workers.evaluation.runner import run_dataset
    from workers.xmem.checkpoint import CheckpointError, load_network
    from workers.xmem.config import InferenceConfig

    options = {
        "mem_every": mem_every, "top_k": top_k, "deep_update_every": deep_update_every,
        "max_mid_term_frames": max_mid_term_frames, "min_mid_term_frames": min_mid_term_frames,
        "num_prototypes": num_prototypes, "max_long_term_elements": max_long_term_elements,
    }
    try:
        config = InferenceConfig(**{k: v for k, v in options.items() if v is not None},
                                 enable_long_term=not disable_long_term)
        data = load_dataset(dataset, root, size)
    except (DatasetLayoutError, TypeError, ValueError) as error:
        fail(str(error))
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    checkpoint = resolve_model(model)
    try:
        network = load_network(checkpoint, device=torch_device)
    except CheckpointError as error:
        fail(str(error))
    report = run_dataset(network, data, output, config, amp=amp, device=torch_device)
    memory = f", peak GPU memory {report.peak_gpu_mb:.0f} MB" if report.peak_gpu_mb is not None else ""
    typer.echo(f"{len(report.sequences)} sequences, {report.processed} frames, {report.fps:.2f} FPS{memory}; "
               f"masks in {output}")


def score_command(
    gt: Annotated[Path, typer.Option(help="Ground truth: a folder of sequence folders of PNGs "
                                          "(or a DAVIS root with Annotations/480p).")],
    pred: Annotated[Path, typer.Option(help="Predictions in the same layout (e.g. the output of vosd eval).")],
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON with full-precision values instead.")]
    = False,
) -> None:
    """J&F of predicted masks against ground truth (DAVIS 2017 definitions, first and last frame skipped)."""
    from workers.evaluation.metrics import score_folders

    try:
        result = score_folders(gt, pred)
    except (FileNotFoundError, ValueError) as error:
        fail(str(error))
    summary = result.summary
    if json_output:
        typer.echo(json.dumps({
            "unit": "percent", "J&F": 100 * summary.jf, "J": 100 * summary.j, "F": 100 * summary.f,
            "objects": [{"sequence": s.sequence, "object": s.label, "J&F": 100 * s.jf, "J": 100 * s.j,
                         "F": 100 * s.f, "frames": s.frames} for s in result.objects],
            "unpredicted": result.unpredicted,
        }, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("sequence", "object", "J&F", "J", "F", "frames")
    for s in result.objects:
        table.add_row(s.sequence, str(s.label), f"{100 * s.jf:.1f}", f"{100 * s.j:.1f}", f"{100 * s.f:.1f}",
                      str(s.frames))
    Console().print(table)
    if result.unpredicted:
        typer.echo(f"not predicted (not scored): {', '.join(result.unpredicted)}")
    typer.echo(f"J&F {100 * summary.jf:.1f} J {100 * summary.j:.1f} F {100 * summary.f:.1f}")

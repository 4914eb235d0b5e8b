"""`vosd eval` and `vosd score`: thin typer front-ends; torch and the engine are imported when they run."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from workers.evaluation.datasets import DatasetName


class Method(str, Enum):
    """Which engine `vosd eval` runs: XMem (semi-supervised, first mask given), TMO (unsupervised) or auto
    (unsupervised: TMO seeds and re-seeds XMem, as a daemon job without a mask)."""

    xmem = "xmem"
    tmo = "tmo"
    auto = "auto"


class FlowChoice(str, Enum):
    """TMO's motion input: none (RGB as motion), DIS optical flow (OpenCV) or RAFT (weights file)."""

    none = "none"
    dis = "dis"
    raft = "raft"


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
    dataset: Annotated[DatasetName, typer.Option(help="Layout: D16, D17 (DAVIS), "
                                                 "Y18 (YouTube-VOS 2018 valid), "
                                                 "LV3 (Long-Time Video, never resized), generic; "
                                                 "with --method tmo: D16, FBMS, YTO, LV, generic.")],
    root: Annotated[Path, typer.Option(help="Dataset folder (DAVIS: the one holding JPEGImages/480p; "
                                            "YouTube-VOS: the one holding valid/).")],
    output: Annotated[Path, typer.Option(help="Output folder; one folder of palette PNGs per sequence.")],
    model: Annotated[str | None, typer.Option(
        help="XMem checkpoint file or registered weights name (default: the default model); with --method "
             "tmo, a TMO checkpoint (default: the bundled vosd-tmo-lite.pth).")] = None,
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
    method: Annotated[Method, typer.Option(help="xmem (first mask given) or tmo (unsupervised, no mask).")]
    = Method.xmem,
    flow: Annotated[FlowChoice, typer.Option(help="TMO motion input: dis (OpenCV DIS flow), raft (needs "
                                                  "--raft-weights) or none (RGB as motion).")]
    = FlowChoice.dis,
    aos: Annotated[bool, typer.Option(help="TMO adaptive output selection between RGB and flow paths.")]
    = False,
    raft_weights: Annotated[Path | None, typer.Option(help="torchvision raft_large / raft_small state dict.")]
    = None,
    tmo_model: Annotated[str | None, typer.Option(
        help="With --method auto: the TMO checkpoint (default: the bundled vosd-tmo-lite.pth).")] = None,
    auto_config: Annotated[Path | None, typer.Option(
        "--config", help="With --method auto: a vosd YAML config whose auto section sets the thresholds.")]
    = None,
    reseed: Annotated[str | None, typer.Option(
        help="With --method auto: reset or memory (overrides the config's auto.reseed).")] = None,
) -> None:
    """Run XMem (or TMO with --method tmo) on a dataset and write palette PNGs, one folder per sequence."""
    import torch

    if method is Method.tmo:
        eval_tmo(dataset, root, output, model, flow, aos, raft_weights, device)
        return
    if method is Method.auto:
        if flow is FlowChoice.raft or aos:
            fail("--method auto uses DIS flow or none (the daemon's choices); not raft or --aos")
        eval_auto(dataset, root, output, model, tmo_model, flow, size, auto_config, reseed, device)
        return

    from workers.evaluation.datasets import DatasetLayoutError, load_dataset
    from workers.evaluation.runner import run_dataset
    from workers.xmem.checkpoint import CheckpointError, load_network
    from workers.xmem.config import InferenceConfig

    options: dict[str, Any] = {
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


def eval_tmo(dataset: DatasetName, root: Path, output: Path, model: str | None, flow: FlowChoice, aos: bool,
             raft_weights: Path | None, device: str | None) -> None:
    """`vosd eval --method tmo`: every frame of every sequence, no first mask, one TMOSession per video."""
    import torch

    from workers.evaluation.datasets import DatasetLayoutError
    from workers.evaluation.unsupervised import load_unsupervised, run_unsupervised
    from workers.tmo import load_network
    from workers.tmo.checkpoint import CheckpointError
    from workers.tmo.flow import FlowConfig, FlowError, make_flow
    from workers.tmo.session import TMOSession
    from workers.training.weights import WeightsError, default_tmo_model_path

    if model is None:
        try:
            model = str(default_tmo_model_path())
        except WeightsError as error:
            fail(str(error))
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        sequences = load_unsupervised(dataset, root)
        network = load_network(model, device=torch_device)
        config = FlowConfig(flow.value, raft_weights=raft_weights)
        make_flow(config, torch_device)
    except (DatasetLayoutError, CheckpointError, FlowError) as error:
        fail(str(error))
    report = run_unsupervised(
        lambda: TMOSession(network, flow=make_flow(config, torch_device), aos=aos, device=torch_device),
        sequences, output)
    typer.echo(f"{report.sequences} sequences, {report.frames} frames ({report.flow_frames} with flow), "
               f"{report.fps:.2f} FPS; masks in {output}")


def eval_auto(dataset: DatasetName, root: Path, output: Path, model: str | None, tmo_model: str | None,
              flow: FlowChoice, size: int, config_path: Path | None, reseed: str | None,
              device: str | None) -> None:
    """`vosd eval --method auto`: every frame of every sequence, no first mask, one AutoSession per video
    (TMO finds and re-finds the object, XMem follows it), masks written like --method tmo."""
    import torch

    from streamer.config import ConfigError, load_config
    from workers.auto.build import load_tmo, mask_free_session
    from workers.evaluation.datasets import DatasetLayoutError
    from workers.evaluation.unsupervised import load_unsupervised, run_unsupervised
    from workers.tmo.checkpoint import CheckpointError as TMOCheckpointError
    from workers.training.weights import WeightsError
    from workers.xmem.checkpoint import CheckpointError, load_network

    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        settings = load_config(config_path)
        auto = settings.auto.auto_config(**({} if reseed is None else {"reseed": reseed}))
        sequences = load_unsupervised(dataset, root)
        xmem = load_network(resolve_model(model), device=torch_device)
        tmo = load_tmo(tmo_model or settings.auto.model_path, torch_device)
    except (ConfigError, DatasetLayoutError, CheckpointError, TMOCheckpointError, WeightsError,
            ValueError) as error:
        fail(str(error))
    inference = settings.xmem.inference_config()
    sessions: list[Any] = []

    def session() -> Any:
        sessions.append(mask_free_session("auto", tmo=tmo, flow=flow.value, device=torch_device, xmem=xmem,
                                          inference=inference, auto=auto, size=size))
        return sessions[-1]

    report = run_unsupervised(session, sequences, output)
    seeds = sum(s.seeds for s in sessions)
    typer.echo(f"{report.sequences} sequences, {report.frames} frames, {report.fps:.2f} FPS, {seeds} seeds "
               f"and re-seeds (policy {auto.reseed}); masks in {output}")


def score_command(
    gt: Annotated[Path, typer.Option(help="Ground truth: a folder of sequence folders of PNGs "
                                          "(or a DAVIS root with Annotations/480p).")],
    pred: Annotated[
        Path, typer.Option(help="Predictions in the same layout (e.g. the output of vosd eval).")
    ],
    json_output: Annotated[
        bool, typer.Option("--json", help="Print JSON with full-precision values instead.")
    ] = False,
    unsupervised: Annotated[bool, typer.Option(
        help="Binary masks over every annotated frame (TMO): --gt is the dataset root read as --dataset.")]
    = False,
    dataset: Annotated[DatasetName, typer.Option(
        help="With --unsupervised: D16 (J&F), FBMS or YTO (mean IoU), LV or generic (J&F).")]
    = DatasetName.D16,
) -> None:
    """J&F of predicted masks against ground truth (DAVIS 2017 definitions, first and last frame skipped)."""
    if unsupervised:
        score_unsupervised_command(gt, pred, dataset, json_output)
        return
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


def score_unsupervised_command(gt: Path, pred: Path, dataset: DatasetName, json_output: bool) -> None:
    """Print per-sequence and mean J (and F, J&F where the dataset reports them) in percent."""
    from workers.evaluation.datasets import DatasetLayoutError
    from workers.evaluation.unsupervised import score_unsupervised

    try:
        scores = score_unsupervised(dataset, gt, pred)
    except (DatasetLayoutError, FileNotFoundError, ValueError) as error:
        fail(str(error))

    def percent(value: float | None) -> float | None:
        return None if value is None else 100 * value

    if json_output:
        typer.echo(json.dumps({
            "unit": "percent", "dataset": dataset.value, "J": percent(scores.j), "F": percent(scores.f),
            "J&F": percent(scores.jf),
            "sequences": [{"sequence": s.name, "J": percent(s.j), "F": percent(s.f), "frames": s.frames}
                          for s in scores.sequences],
        }, indent=2))
        return
    for s in scores.sequences:
        boundary = "" if s.f is None else f" F {100 * s.f:.1f}"
        typer.echo(f"{s.name}: J {100 * s.j:.1f}{boundary} ({s.frames} frames)")
    jf = scores.jf
    if scores.f is None or jf is None:  # both or neither
        typer.echo(f"mean IoU (J) {100 * scores.j:.1f}")
    else:
        typer.echo(f"J&F {100 * jf:.1f} J {100 * scores.j:.1f} F {100 * scores.f:.1f}")

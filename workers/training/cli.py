"""`vosd train`, `vosd train-plot` and `vosd weights ...`: thin typer front-ends, heavy imports inside.

`train_command` builds a TrainConfig and runs it in this process, or with ``--nproc-per-node N`` hands it to
``torch.distributed.run`` (the config travels as a JSON file, so every rank sees exactly the same options).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from workers.training.config import VARIANTS, TrainConfig

if TYPE_CHECKING:
    from workers.training.tmo_config import TMOTrainConfig

TMO_VARIANTS = ("rn101", "mitb1", "lite")

log = logging.getLogger(__name__)

LAUNCH_FILE = "launch_config.json"


def split_names(values: list[str] | None) -> tuple[str, ...]:
    """Names from repeated options; each value is a comma-separated list or a file with one name a line."""
    names: list[str] = []
    for value in values or []:
        path = Path(value)
        if path.is_file():
            names += [line.strip() for line in path.read_text().splitlines() if line.strip()]
        else:
            names += [name.strip() for name in value.split(",") if name.strip()]
    return tuple(names)


def train_command(
    method: Annotated[str, typer.Option(
        help="xmem (semi-supervised, stages 0-3) or tmo (unsupervised: stills + video frames with flow).")]
    = "xmem",
    stage: Annotated[str, typer.Option(
        help="Stages to run in order: 0 static, 1 synthetic, 2/3 video; e.g. 03.")] = "03",
    exp_id: Annotated[str, typer.Option(help="Experiment name; outputs go to OUTPUT_DIR/EXP_ID.")] = "run",
    variant: Annotated[str, typer.Option(
        help="XMem: official (ResNet-50, released layout), small (ResNet-18) or lite (ImageNet "
             "EfficientNet-Lite0 key encoder; trains best on a CPU). TMO: official or rn101 (ResNet-101), "
             "mitb1 or lite (ImageNet EfficientNet-Lite0 encoders; for CPUs).")] = "official",
    load_network: Annotated[Path | None, typer.Option(help="Start from this plain state dict.")] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run saved in OUTPUT_DIR/EXP_ID.")] = False,
    davis_root: Annotated[Path | None, typer.Option(
        help="DAVIS folder (JPEGImages/480p, Annotations/480p).")] = None,
    davis_include: Annotated[list[str] | None, typer.Option(
        help="DAVIS sequences to train on (names, comma lists or a file); "
             "default: ImageSets/2017/train.txt.")]
    = None,
    yv_root: Annotated[Path | None, typer.Option(help="YouTube-VOS training folder.")] = None,
    static_root: Annotated[Path | None, typer.Option(
        help="Images with same-name PNG masks (or images/ + masks/) for XMem's stage 0 (default: synthetic "
             "stills) and TMO's still part.")] = None,
    held_out: Annotated[list[str] | None, typer.Option(
        help="Sequences never trained on (names, comma lists or a file); repeatable.")] = None,
    iterations: Annotated[int | None, typer.Option(
        help="Scale every stage to this many iterations (its schedule scales along).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Clips per step over all processes.")] = None,
    lr: Annotated[float | None, typer.Option(help="Initial learning rate (XMem: 1e-5).")] = None,
    max_objects: Annotated[int | None, typer.Option(
        help="Objects per clip in every stage (1 for single-object data such as DAVIS-2016).")] = None,
    freeze: Annotated[list[str] | None, typer.Option(
        help="Parameter-name prefixes to keep fixed, e.g. key_encoder.stem (comma lists; repeatable).")]
    = None,
    crop_size: Annotated[int, typer.Option(help="Square training crop (XMem and TMO: 384).")] = 384,
    input_size: Annotated[int | None, typer.Option(
        help="TMO: the network's square input side (default 384; lite 224).")] = None,
    vflip_prob: Annotated[float, typer.Option(
        help="TMO: chance of a vertical flip (TMO: 0.5; upside-down scenes are rare in video).")] = 0.5,
    num_workers: Annotated[int, typer.Option(help="Data loader processes over all ranks.")] = 4,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    amp: Annotated[bool, typer.Option(help="Mixed precision on CUDA.")] = True,
    output_dir: Annotated[Path, typer.Option(help="Parent folder of experiment folders.")] = Path("saves"),
    log_every: Annotated[int, typer.Option(help="Iterations per logged loss row.")] = 100,
    save_every: Annotated[int, typer.Option(help="Iterations between checkpoints.")] = 25_000,
    minutes: Annotated[float | None, typer.Option(
        help="XMem: wall-clock budget of the run; when spent, the current stage saves and stops, later "
             "stages are skipped.")] = None,
    clip_grad_norm: Annotated[float, typer.Option(help="Clip gradients to this norm (0 = off).")] = 3.0,
    seed: Annotated[int, typer.Option(help="Base random seed.")] = 14159265,
    nproc_per_node: Annotated[int, typer.Option(
        help="Processes (GPUs) to launch with torch.distributed.run.")] = 1,
    config_file: Annotated[Path | None, typer.Option(
        hidden=True, help="A saved TrainConfig (JSON).")] = None,
) -> None:
    """Train XMem in stages (XMem's recipe) or TMO (--method tmo); checkpoints load with the engine's
    load_network."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if method == "tmo":
        from workers.training.tmo_config import TMOTrainConfig

        if config_file is not None:
            tmo_config = TMOTrainConfig.from_dict(json.loads(config_file.read_text()))
        else:
            tmo_variant = "rn101" if variant == "official" else variant
            if tmo_variant not in TMO_VARIANTS:
                raise typer.BadParameter(f"TMO variant must be one of official, {', '.join(TMO_VARIANTS)}")
            recipe: dict[str, Any] = {
                name: value
                for name, value in (("iterations", iterations), ("batch_size", batch_size), ("lr", lr))
                if value is not None
            }
            try:
                tmo_config = TMOTrainConfig(
                    exp_id=exp_id, output_dir=output_dir, variant=tmo_variant,  # type: ignore[arg-type]
                    load_network=load_network, resume=resume, static_root=static_root, davis_root=davis_root,
                    davis_include=split_names(davis_include) or None, held_out=split_names(held_out),
                    crop_size=crop_size, input_size=input_size, vflip_prob=vflip_prob,
                    frozen=split_names(freeze),
                    num_workers=num_workers, device=device, amp=amp, log_every=log_every,
                    save_every=save_every, seed=seed, **recipe)
            except ValueError as error:
                raise typer.BadParameter(str(error)) from error
        run_training(tmo_config, nproc_per_node, "tmo")
        return
    if method != "xmem":
        raise typer.BadParameter(f"method must be xmem or tmo, not {method!r}")
    if config_file is not None:
        config = TrainConfig.from_dict(json.loads(config_file.read_text()))
    else:
        if variant not in VARIANTS:
            raise typer.BadParameter(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
        try:
            config = TrainConfig(
                stages=stage, exp_id=exp_id, output_dir=output_dir, variant=variant,  # type: ignore[arg-type]
                load_network=load_network, resume=resume, davis_root=davis_root,
                davis_include=split_names(davis_include) or None, yv_root=yv_root, static_root=static_root,
                held_out=split_names(held_out), iterations=iterations, batch_size=batch_size, lr=lr,
                max_objects=max_objects, frozen=split_names(freeze),
                crop_size=crop_size, num_workers=num_workers, device=device, amp=amp, log_every=log_every,
                save_every=save_every, minutes=minutes, clip_grad_norm=clip_grad_norm, seed=seed,
            )
        except ValueError as error:
            raise typer.BadParameter(str(error)) from error
    run_training(config, nproc_per_node, "xmem")


def run_training(config: TrainConfig | TMOTrainConfig, nproc_per_node: int, method: str) -> None:
    """Train here, or launch torch.distributed.run when more processes are asked for and none runs yet."""
    if nproc_per_node > 1 and "WORLD_SIZE" not in os.environ:
        raise typer.Exit(launch_distributed(config, nproc_per_node, method))
    from workers.training.trainer import TrainingError, train

    try:
        if method == "tmo":
            from workers.training.tmo_trainer import train_tmo

            final = train_tmo(config)  # type: ignore[arg-type]
        else:
            final = train(config)  # type: ignore[arg-type]
    except TrainingError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(f"final weights: {final}")


def launch_distributed(config: TrainConfig | TMOTrainConfig, processes: int, method: str = "xmem") -> int:
    """Run the trainer under torch.distributed.run on this machine; returns its exit code."""
    folder = config.experiment_dir
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / LAUNCH_FILE
    config_path.write_text(json.dumps(config.to_dict(), indent=2))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "workers.training.trainer", "--method", method, "--config-file", str(config_path)]
    log.info("launching: %s", " ".join(command))
    return subprocess.run(command, check=False).returncode


def plot_command(
    experiment: Annotated[Path, typer.Argument(help="Experiment folder (with losses.csv) or a loss CSV.")],
    output: Annotated[Path | None, typer.Option(help="PNG to write (default: losses.png beside the CSV).")]
    = None,
) -> None:
    """Plot a training run's loss curves to a PNG."""
    from workers.training.curves import plot_curves

    csv_path = experiment / "losses.csv" if experiment.is_dir() else experiment
    if not csv_path.is_file():
        raise typer.BadParameter(f"no loss log at {csv_path}")
    typer.echo(str(plot_curves(csv_path, output or csv_path.with_name("losses.png"))))


weights_app = typer.Typer(help="Model weights: official XMem releases and local checkpoints.",
                          no_args_is_help=True)


@weights_app.command("list")
def weights_list_command() -> None:
    """Known and installed weights, and which one is the default."""
    from rich.console import Console
    from rich.table import Table

    from workers.training.weights import list_weights, weights_dir

    table = Table(title=f"weights in {weights_dir()}")
    for column in ("name", "default", "installed", "sha256", "description"):
        table.add_column(column)
    for entry in list_weights():
        table.add_row(entry.name, "*" if entry.is_default else "", str(entry.path) if entry.path else "no",
                      (entry.sha256 or "-")[:16], entry.description)
    Console(width=160).print(table)


@weights_app.command("install")
def weights_install_command(
    name: Annotated[str, typer.Argument(help="XMem or XMem-s012.")],
    sha256: Annotated[str | None, typer.Option(
        help="Expected SHA-256 (otherwise the first download pins it).")] = None,
    url: Annotated[str | None, typer.Option(help="Download from this address instead (a mirror).")] = None,
    force: Annotated[bool, typer.Option(help="Download even if a matching file is installed.")] = False,
    set_default: Annotated[bool, typer.Option(help="Make it the default model.")] = False,
) -> None:
    """Download official weights (resumable, verified, validated)."""
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    from workers.training.weights import WeightsError, install

    with Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn()) as progress:
        task = progress.add_task(name, total=None)

        def report(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        try:
            path = install(name, sha256=sha256, url=url, force=force, set_default=set_default,
                           progress=report)
        except WeightsError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from error
    typer.echo(str(path))


@weights_app.command("add")
def weights_add_command(
    name: Annotated[str, typer.Argument(help="Name to register the checkpoint under.")],
    file: Annotated[Path, typer.Argument(help="A plain XMem state dict (.pth).")],
    set_default: Annotated[bool, typer.Option(help="Make it the default model.")] = False,
) -> None:
    """Register a local checkpoint after loading it once with load_network."""
    from workers.training.weights import WeightsError, add

    try:
        path = add(name, file, set_default=set_default)
    except WeightsError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    typer.echo(str(path))


@weights_app.command("use")
def weights_use_command(name: Annotated[str, typer.Argument(help="An installed or added name.")]) -> None:
    """Make installed weights the default model."""
    from workers.training.weights import WeightsError, set_default_model

    try:
        set_default_model(name)
    except WeightsError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    typer.echo(f"default model: {name}")

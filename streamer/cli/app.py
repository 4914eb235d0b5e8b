"""The `vosd` command line.

Each command lives next to the code it drives and imports torch, PyAV and the rest only when it
runs, so `vosd --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from streamer.cli.daemon_commands import (
    cancel_command,
    jobs_command,
    serve_command,
    status_command,
    stop_command,
    submit_command,
    watch_command,
)
from streamer.modes import Mode
from workers.evaluation.cli import eval_command, score_command
from workers.training.cli import plot_command, train_command, weights_app

app = typer.Typer(
    name="vosd",
    help="Streaming video object segmentation with XMem.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

@app.command("segment")
def segment_command(
    video: Annotated[str, typer.Argument(help="Video file or stream URL.")],
    mask: Annotated[
        Path | None, typer.Option("--mask", "-m", help="Index mask of the first frame (palette or 0/255 "
                                  "PNG). Without it: auto mode, TMO finds the object.")
    ] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Overlay MP4 to write.")] = None,
    masks: Annotated[
        Path | None, typer.Option("--masks", help="Folder for one palette PNG per frame.")
    ] = None,
    rle: Annotated[
        Path | None, typer.Option("--rle", help="JSON-lines file of per-object RLE masks.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Checkpoint file or registered weights name.")] = None,
    config: Annotated[Path | None, typer.Option(help="vosd YAML config (inference options, size).")] = None,
    size: Annotated[
        int | None, typer.Option(help="Shorter side the model sees; -1 keeps the source size.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="torch device; default cuda when available.")] = None,
    amp: Annotated[
        bool | None, typer.Option("--amp/--no-amp", help="Mixed precision (default: on CUDA).")
    ] = None,
    mode: Annotated[
        Mode | None, typer.Option(help="xmem (needs --mask), auto (TMO seeds and watches XMem) or tmo "
                                       "(TMO's masks only). Default: xmem with --mask, auto without.")
    ] = None,
    objects: Annotated[
        int | None, typer.Option(min=1, max=255, help="Auto mode: separate components seeded as up to N "
                                                      "objects, largest first (default: the config's, 1).")
    ] = None,
    tmo_model: Annotated[
        str | None, typer.Option(help="TMO checkpoint for auto/tmo (default: the bundled vosd-tmo-lite.pth).")
    ] = None,
) -> None:
    """Segment one video locally: overlay MP4 and masks, with a progress bar; no mask: auto mode."""
    from rich.console import Console

    from streamer.segment import run_segment

    console = Console(stderr=True)
    try:
        run_segment(video, mask, output=output, masks_dir=masks, rle_path=rle, model=model,
                    config_path=config, size=size, device=device, amp=amp, console=console,
                    mode=None if mode is None else mode.value, objects=objects, tmo_model=tmo_model)
    except Exception as error:  # every failure ends in one clear line and a non-zero exit
        from streamer.segment import USER_ERRORS

        if not isinstance(error, USER_ERRORS):
            raise
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(code=2) from None


app.command("serve", help="Run the daemon: decoder, worker and writer processes around a Redis job queue.")(
    serve_command)
app.command(
    "submit", help="Queue a segmentation job (file, stream URL or camera) with its first-frame mask."
)(submit_command)
app.command("status", help="State and progress of one job, or of the daemon.")(status_command)
app.command("watch", help="Follow a job with a progress bar until it ends.")(watch_command)
app.command("cancel", help="Cancel a queued or running job (takes effect within a second).")(cancel_command)
app.command("stop", help="End a running job now and keep its outputs; a queued job is cancelled.")(
    stop_command)
app.command("jobs", help="List jobs, newest first.")(jobs_command)
app.command("eval", help="Run XMem (or TMO, --method tmo) on a dataset and write palette PNGs per sequence.")(
    eval_command)
app.command("score", help="J&F of predicted masks against ground truth (DAVIS 2017 definitions; "
                          "--unsupervised for TMO's protocol).")(score_command)
app.command("train", help="Train XMem (stages 0-3), optionally from a checkpoint; resumable.")(train_command)
app.command("train-plot", help="Plot the loss curves of a training run.")(plot_command)
app.add_typer(weights_app, name="weights", help="List, install and register model weights.")


if __name__ == "__main__":
    app()

"""The `vosd` command line.

Each command lives next to the code it drives and imports torch, PyAV and the rest only when it
runs, so `vosd --help` stays instant.
"""

from __future__ import annotations

import typer

from workers.evaluation.commands import eval_command, score_command

app = typer.Typer(
    name="vosd",
    help="Streaming video object segmentation with XMem.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

app.command("eval", help="Run XMem on a dataset and write palette PNGs in XMem's eval layout.")(eval_command)
app.command("score", help="J&F of predicted masks against ground truth (DAVIS 2017 definitions).")(score_command)


if __name__ == "__main__":
    app()

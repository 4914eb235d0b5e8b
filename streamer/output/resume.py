"""Checkpoints of batch jobs: where they live, which one a re-run resumes from, and when they go.

Why next to the outputs (``<output dir>/.checkpoint/``): a checkpoint at frame N is only worth anything
together with the outputs of frames 0..N-1 (the writer keeps their PNGs and RLE lines in its ``.part``
files), and the two must travel together: a daemon that shares the output directory (NFS) after the
holder died can resume, and one that cannot see it finds neither and starts from frame 0, honestly.

Who does what (this module is torch-free; the session state itself is `workers.xmem.session.save_state`):

* the worker saves ``pending-<N>.pt`` (the session after frames 0..N-1) every `checkpoint_every_s`
  and tells the writer with a `CheckpointSaved` message sent after the mask of frame N-1;
* the writer renames it to ``frame-<N>.pt`` (`promote`) only once it has written the masks of frames
  0..N-1, so a usable checkpoint is never ahead of the outputs, whichever of worker and writer lags;
* the daemon, when it (re-)runs a job that has run before, takes N from the newest ``frame-<N>.pt``
  (`resume_point`), checks that the outputs still hold N masks, and puts N in the job's outputs as
  ``resume_from``; the decoder then sends frames < N to the writer only (for the overlay re-encode),
  the worker loads the checkpoint, and the writer skips what it has already written;
* the writer deletes the directory when the job's outputs are completed or discarded, the daemon again
  when the job reaches a final state (`discard`).

Live jobs are never checkpointed: a re-run of a live source is new footage, so they restart fresh.
Resuming needs the PNG masks output (the saved masks of frames < N are what the overlay and the job's
outputs are rebuilt from); jobs without it restart from frame 0.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DIRECTORY = ".checkpoint"
_PROMOTED = re.compile(r"frame-(\d+)\.pt")
_PENDING = re.compile(r"pending-(\d+)\.pt")


def resumable(outputs: dict[str, Any], live: bool) -> bool:
    """Whether a job with these outputs can be checkpointed and resumed (module docstring)."""
    return not live and bool(outputs.get("masks")) and "dir" in outputs


def directory(outputs: dict[str, Any]) -> Path:
    return Path(outputs["dir"]) / DIRECTORY


def pending_path(outputs: dict[str, Any], frame: int) -> Path:
    """Where the worker saves the session after frames 0..frame-1, before the writer vouches for it."""
    return directory(outputs) / f"pending-{frame:08d}.pt"


def checkpoint_path(outputs: dict[str, Any], frame: int) -> Path:
    """A checkpoint the writer has promoted: the outputs hold frames 0..frame-1."""
    return directory(outputs) / f"frame-{frame:08d}.pt"


def promote(outputs: dict[str, Any], frame: int) -> bool:
    """Make ``pending-<frame>`` the job's checkpoint and drop older ones; False when it is gone."""
    folder = directory(outputs)
    try:
        pending_path(outputs, frame).replace(checkpoint_path(outputs, frame))
    except FileNotFoundError:
        return False
    for path in folder.iterdir():
        match = _PROMOTED.fullmatch(path.name) or _PENDING.fullmatch(path.name)
        if match and int(match.group(1)) < frame:
            path.unlink(missing_ok=True)
    return True


def saved_frame(outputs: dict[str, Any]) -> int:
    """N of the newest promoted checkpoint, 0 when there is none."""
    try:
        names = [path.name for path in directory(outputs).iterdir()]
    except (FileNotFoundError, NotADirectoryError):
        return 0
    frames = [int(match.group(1)) for name in names if (match := _PROMOTED.fullmatch(name))]
    return max(frames, default=0)


def resume_point(outputs: dict[str, Any]) -> int:
    """The frame a re-run of this job starts at: the checkpoint's N if the outputs still hold the masks
    of frames 0..N-1, else 0 (and the useless checkpoint is deleted)."""
    frame = saved_frame(outputs)
    if frame == 0:
        return 0
    from streamer.output.writer import durable_frames
    from streamer.output.writer_process import output_paths

    durable = durable_frames(output_paths(outputs)["masks"])
    if durable < frame:
        logger.warning("checkpoint at frame %d but only %d masks are kept in %s; starting from frame 0",
                       frame, durable, outputs["dir"])
        discard(outputs)
        return 0
    return frame


def discard(outputs: dict[str, Any]) -> None:
    """Delete the job's checkpoints (the job ended, or its outputs are gone)."""
    shutil.rmtree(directory(outputs), ignore_errors=True)

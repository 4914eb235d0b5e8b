"""How a job is segmented: `Mode` and the one rule that picks it from the mask and the request.

* xmem: XMem from a first-frame mask (the mask is required);
* auto: TMO finds the primary object and seeds XMem, then watches it (workers/auto); no mask;
* tmo: TMO's own per-frame masks, no XMem; no mask.
"""

from __future__ import annotations

from enum import Enum
from typing import Any


class Mode(str, Enum):
    """Segmentation mode of a job or a `vosd segment` run."""

    AUTO = "auto"
    XMEM = "xmem"
    TMO = "tmo"


class ModeError(ValueError):
    """The requested mode cannot run with (or without) the given mask; the message says what to change."""


def choose_mode(mask_given: bool, requested: Mode | str | None = None) -> Mode:
    """The mode to run: `requested`, checked against whether a first-frame mask was given, or by default
    xmem with a mask and auto without one."""
    if requested is None:
        return Mode.XMEM if mask_given else Mode.AUTO
    try:
        mode = Mode(requested)
    except ValueError:
        raise ModeError(f"unknown mode {requested!r}; choose auto, xmem or tmo") from None
    if mode is Mode.XMEM and not mask_given:
        raise ModeError("mode xmem needs a first-frame mask (--mask); without one use auto or tmo")
    if mode is not Mode.XMEM and mask_given:
        raise ModeError(f"mode {mode.value} finds the object itself and takes no mask; "
                        "drop --mask or use mode xmem")
    return mode


def job_mode_options(mask_given: bool, requested: Mode | str | None, objects: int | None) -> dict[str, Any]:
    """The job options that say how a queued job is segmented (``mode``, and ``objects`` for auto), as
    `vosd submit` and POST /jobs store them; ModeError when the request does not fit the mask."""
    mode = choose_mode(mask_given, requested)
    if objects is not None and mode is not Mode.AUTO:
        raise ModeError(f"objects applies to mode auto only (this job runs in mode {mode.value})")
    return {"mode": mode.value, **({"objects": objects} if objects is not None else {})}

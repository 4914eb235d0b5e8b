"""Building the session of a mask-free job from settings: TMO's checkpoint, its motion input, and the
session of the mode. Shared by `vosd segment`, the daemon worker and `vosd eval --method auto`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from workers.auto.config import AutoConfig
from workers.auto.session import AutoSession, TMOOnlySession
from workers.tmo.session import TMOSession

if TYPE_CHECKING:
    from workers.tmo.network import TMONetwork
    from workers.xmem.config import InferenceConfig
    from workers.xmem.network import XMemNetwork


def tmo_model_path(setting: str | Path | None) -> Path:
    """The TMO checkpoint a setting names: a file, or (empty) the bundled vosd-tmo-lite.pth."""
    from workers.training.weights import WeightsError, default_tmo_model_path

    if not setting:
        return default_tmo_model_path()
    path = Path(setting).expanduser()
    if not path.is_file():
        raise WeightsError(f"TMO checkpoint {path} not found")
    return path


def load_tmo(setting: str | Path | None, device: str | torch.device) -> TMONetwork:
    from workers.tmo.checkpoint import load_network

    return load_network(tmo_model_path(setting), device=device)


def tmo_session(network: TMONetwork, flow: str, device: str | torch.device) -> TMOSession:
    """A TMOSession with motion input `flow` ("dis" or "none")."""
    from workers.tmo.flow import FlowConfig, make_flow

    estimator = make_flow(FlowConfig(flow), device)  # type: ignore[arg-type]
    return TMOSession(network, flow=estimator, device=device)


def mask_free_session(mode: str, *, tmo: TMONetwork, flow: str, device: str | torch.device,
                      xmem: XMemNetwork | None = None, inference: InferenceConfig | None = None,
                      auto: AutoConfig | None = None, size: int = 480, amp: bool = False,
                      fast: bool = True) -> AutoSession | TMOOnlySession:
    """The session of mode "auto" (TMO-seeded XMem; needs `xmem` and `inference`) or "tmo" (TMO alone);
    `fast` picks XMem's fast or reference inference path (`VideoSession`)."""
    watcher = tmo_session(tmo, flow, device)
    if mode == "tmo":
        return TMOOnlySession(watcher)
    if mode != "auto":
        raise ValueError(f"mode {mode!r} needs a first-frame mask")
    if xmem is None or inference is None:
        raise ValueError("auto mode needs the XMem network and its inference options")
    from workers.xmem.session import VideoSession

    video = VideoSession(xmem, inference, size=size, amp=amp, device=device, fast=fast)
    return AutoSession(watcher, video, auto or AutoConfig())

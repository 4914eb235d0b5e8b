"""Optical flow for TMO's motion encoder, computed on the fly from consecutive frames (never precomputed).

TMO was trained on RAFT flow colour-coded with the Middlebury wheel, normalised by each frame's largest
flow magnitude (RAFT's flow_viz; torchvision's `flow_to_image` is the same scheme). Here:
* DIS (OpenCV, no weights, CPU) is the default estimator; RAFT uses torchvision's architecture with a weights
  file the user provides (torchvision's raft_large / raft_small state dict).
* The flow of frame t is estimated from t to t-1 and negated: it sits on frame t's pixels (like the image)
  and points the way things moved, like the forward RAFT flow of the training data.
* Flow is estimated on frames scaled so the shorter side is at most `short_side` (TMO used 480p flows);
  the network resizes the colour image to 384x384 anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import cv2
import numpy as np
import torch
import torch.nn.functional as F

FlowMethod = Literal["none", "dis", "raft"]
DIS_PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
WHEEL_SEGMENTS = ((15, (255, 0, 0), 1), (6, (255, 255, 0), 0), (4, (0, 255, 0), 2),
                  (11, (0, 255, 255), 1), (13, (0, 0, 255), 0), (6, (255, 0, 255), 2))
"""Middlebury wheel: (steps, start colour, channel that changes) for red-yellow-green-cyan-blue-magenta."""
RAFT_MULTIPLE = 8
RAFT_MIN_SIDE = 128
"""RAFT needs sides divisible by 8 and at least 128 (its correlation pyramid); frames are edge-padded."""


class FlowError(ValueError):
    """Flow cannot be set up (unknown method, missing or unusable RAFT weights); the message says why."""


def colour_wheel() -> np.ndarray:
    """(55, 3) float32 colours: each segment ramps one channel up or down from its start colour."""
    rows = []
    for steps, start, channel in WHEEL_SEGMENTS:
        colours = np.tile(np.asarray(start, dtype=np.float32), (steps, 1))
        ramp = np.floor(255 * np.arange(steps) / steps)
        colours[:, channel] = ramp if start[channel] == 0 else 255 - ramp
        rows.append(colours)
    return np.concatenate(rows)


WHEEL = colour_wheel()


def flow_to_colour(flow: np.ndarray) -> np.ndarray:
    """Flow (H, W, 2) in pixels (x, y) -> uint8 RGB (H, W, 3); hue = direction, saturation = magnitude
    relative to the frame's largest one (zero flow is white)."""
    flow = flow.astype(np.float32)
    magnitude = np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2)
    scale = magnitude.max() + np.finfo(np.float32).eps
    u, v = flow[..., 0] / scale, flow[..., 1] / scale
    radius = np.sqrt(u**2 + v**2)
    position = (np.arctan2(-v, -u) / np.pi + 1) / 2 * (len(WHEEL) - 1)
    floor = np.floor(position)
    lower = floor.astype(np.int64)
    upper = np.where(lower + 1 == len(WHEEL), 0, lower + 1)
    weight = (position - floor)[..., None]
    colour = ((1 - weight) * WHEEL[lower] + weight * WHEEL[upper]) / 255
    colour = 1 - radius[..., None] * (1 - colour)
    return np.floor(255 * colour).astype(np.uint8)


def scaled_pair(previous: np.ndarray, current: np.ndarray, short_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Both frames resized (area) so the shorter side is at most `short_side`."""
    height, width = current.shape[:2]
    factor = short_side / min(height, width)
    if factor >= 1:
        return previous, current
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return (cv2.resize(previous, size, interpolation=cv2.INTER_AREA),
            cv2.resize(current, size, interpolation=cv2.INTER_AREA))


class FlowEstimator(Protocol):
    def __call__(self, previous: np.ndarray, current: np.ndarray) -> np.ndarray:
        """uint8 RGB frames (H, W, 3) -> flow (h, w, 2) float32 on `current`'s pixels, pointing forward."""


class DISFlow:
    """OpenCV's Dense Inverse Search on grey frames."""

    def __init__(self, preset: str = "medium", short_side: int = 480) -> None:
        if preset not in DIS_PRESETS:
            raise FlowError(f"unknown DIS preset {preset!r}; expected one of {list(DIS_PRESETS)}")
        self.dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])  # type: ignore[attr-defined]  # not in cv2's stubs
        self.short_side = short_side

    def __call__(self, previous: np.ndarray, current: np.ndarray) -> np.ndarray:
        previous, current = scaled_pair(previous, current, self.short_side)
        grey = [cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY) for f in (current, previous)]
        return -self.dis.calc(grey[0], grey[1], None)


class RAFTFlow:
    """torchvision's RAFT (large or small, told apart by the weights) with a user-provided state dict."""

    def __init__(self, weights: str | Path, *, device: str | torch.device = "cpu", updates: int = 12,
                 short_side: int = 480) -> None:
        from torchvision.models.optical_flow import raft_large, raft_small

        path = Path(weights)
        if not path.is_file():
            raise FlowError(f"RAFT weights not found: {path} (torchvision's raft_large or raft_small .pth)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        errors = []
        for build in (raft_large, raft_small):
            model = build(weights=None, progress=False)
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as error:
                errors.append(f"{build.__name__}: {str(error).splitlines()[0]}")
                continue
            self.model = model.to(device).eval()
            self.device = torch.device(device)
            self.updates = updates
            self.short_side = short_side
            return
        raise FlowError(f"{path} is neither a torchvision raft_large nor raft_small state dict "
                        f"({'; '.join(errors)})")

    def tensor(self, frame: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, 3) -> (1, 3, H', W') in [-1, 1], edge-padded to RAFT's sizes."""
        image = torch.from_numpy(np.ascontiguousarray(frame)).to(self.device).permute(2, 0, 1)[None].float()
        height, width = frame.shape[:2]
        pad_h, pad_w = (max(RAFT_MIN_SIDE - side, -side % RAFT_MULTIPLE) for side in (height, width))
        image = F.pad(image, (0, pad_w, 0, pad_h), mode="replicate")
        return image / 127.5 - 1

    @torch.inference_mode()
    def __call__(self, previous: np.ndarray, current: np.ndarray) -> np.ndarray:
        previous, current = scaled_pair(previous, current, self.short_side)
        height, width = current.shape[:2]
        flow = self.model(self.tensor(current), self.tensor(previous), num_flow_updates=self.updates)[-1]
        return -flow[0, :, :height, :width].permute(1, 2, 0).cpu().numpy()


@dataclass(frozen=True)
class FlowConfig:
    """How motion images are made.

    Attributes:
        method: "none" (the frame is its own motion input), "dis" (default) or "raft".
        dis_preset: DIS speed/quality preset (ultrafast, fast, medium).
        raft_weights: torchvision RAFT state dict; required for "raft".
        raft_updates: RAFT's recurrent refinement steps (12, torchvision's default).
        short_side: flow is estimated on frames at most this short (TMO used 480p).
    """

    method: FlowMethod = "dis"
    dis_preset: str = "medium"
    raft_weights: Path | None = None
    raft_updates: int = 12
    short_side: int = 480


def make_flow(config: FlowConfig, device: str | torch.device = "cpu") -> FlowEstimator | None:
    """The estimator `config` asks for; None for method "none"."""
    if config.method == "none":
        return None
    if config.method == "dis":
        return DISFlow(config.dis_preset, config.short_side)
    if config.method == "raft":
        if config.raft_weights is None:
            raise FlowError("--flow raft needs RAFT weights: pass --raft-weights PATH "
                            "(torchvision's raft_large or raft_small state dict)")
        return RAFTFlow(config.raft_weights, device=device, updates=config.raft_updates,
                        short_side=config.short_side)
    raise FlowError(f"unknown flow method {config.method!r}; expected none, dis or raft")

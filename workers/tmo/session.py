"""TMOSession: uint8 frames in one at a time, binary index masks and foreground probabilities out.

TMO keeps no memory, so the only per-stream state is the previous frame (for optical flow). The first
frame, and every frame with flow "none", uses the RGB frame as its motion input, as TMO's training does for
still images. With `aos`, frames that have flow run both paths and keep the more confident one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from workers.tmo.flow import FlowEstimator, flow_to_colour
from workers.tmo.network import TMONetwork
from workers.xmem.session import check_frame

FOREGROUND_LABEL = 1


@dataclass(frozen=True)
class TMOResult:
    """The segmentation of one frame.

    Attributes:
        index_mask: uint8 (H, W): 1 = the primary object(s), 0 = background.
        foreground: float32 (H, W) softmax probability of foreground.
        used_flow: whether the motion input was a flow image (False: the RGB frame).
    """

    index_mask: np.ndarray
    foreground: np.ndarray
    used_flow: bool


class TMOSession:
    """One stream through a shared TMONetwork (which holds no state, so one network serves many sessions)."""

    def __init__(self, network: TMONetwork, *, flow: FlowEstimator | None = None, aos: bool = False,
                 device: torch.device | str | None = None) -> None:
        self.network = network
        self.flow = flow
        self.aos = aos
        self.device = torch.device(device) if device is not None else next(network.parameters()).device
        self.previous: np.ndarray | None = None

    def tensor(self, image: np.ndarray) -> torch.Tensor:
        """uint8 (H, W, 3) -> float (1, 3, H, W) in [0, 1] (copied: frames may be read-only)."""
        return torch.tensor(image, device=self.device).permute(2, 0, 1)[None].float().div(255)

    def motion_image(self, frame: np.ndarray) -> np.ndarray | None:
        """The colour-coded flow from the previous frame, or None (first frame, no flow, size change)."""
        previous, self.previous = self.previous, frame
        if self.flow is None or previous is None or previous.shape != frame.shape:
            return None
        return flow_to_colour(self.flow(previous, frame))

    @torch.inference_mode()
    def step(self, frame: np.ndarray) -> TMOResult:
        """Segment the next frame of the stream."""
        check_frame(frame)
        motion = self.motion_image(frame)
        image = self.tensor(frame)
        if motion is None:
            logits, used_flow = self.network.segment(image, image), False
        elif self.aos:
            selected = self.network.select_output(image, self.tensor(motion))
            logits, used_flow = selected.logits, selected.used_flow
        else:
            logits, used_flow = self.network.segment(image, self.tensor(motion)), True
        probabilities = logits.float().softmax(dim=1)[0]
        index_mask = (probabilities.argmax(dim=0) == FOREGROUND_LABEL).to(torch.uint8) * FOREGROUND_LABEL
        return TMOResult(index_mask.cpu().numpy(), probabilities[FOREGROUND_LABEL].cpu().numpy(), used_flow)

"""VideoSession: the one place where raw frames and index masks become XMem inputs and outputs.

It reproduces the data pipeline of XMem's eval.py so that `vosd eval`, the daemon worker and
`vosd segment` all feed the engine identically:

* frame: uint8 RGB -> float in [0, 1] -> ImageNet normalisation -> (size >= 0) resize of the *normalised*
  tensor so the shorter side is `size` (torchvision, bilinear, torchvision's default antialiasing);
* mask: the caller's labels are mapped to 1..K in order of first appearance (ascending within a frame, so
  labels already 1..K map to themselves), turned into one channel per label seen so far and resized with
  nearest neighbour to the resized frame's size (eval.py's int(h / min(h, w) * size) formula gives the
  same size, up to float rounding where eval.py would fail); new labels go to the core through
  `set_all_labels` and `valid_labels`;
* output: probabilities resized bilinearly (align_corners=False) to the frame (or requested) size, argmax
  (the fast path avoids torch.argmax, slow on CPU over channels; same result), labels mapped back.
  Frames before the first mask are skipped, as eval.py never passes them to the core.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torchvision.transforms import InterpolationMode

from workers.imagenet import IMAGENET_MEAN, IMAGENET_STD
from workers.xmem.config import InferenceConfig
from workers.xmem.inference_core import InferenceCore
from workers.xmem.network import XMemNetwork

MAX_OBJECTS = 255
"""Index masks are uint8, so labels 1..255."""
STATE_FORMAT = 1
"""Version of `VideoSession.state_dict`; bumped when its layout changes, so an old checkpoint is refused."""


class SessionInputError(ValueError):
    """A frame or mask the session cannot use; the message says which and why."""


@dataclass(frozen=True)
class FrameResult:
    """The segmentation of one frame.

    Attributes:
        index_mask: uint8 (H, W) in the caller's labels, at the frame size (or the requested output size).
        probabilities: float32 (1 + N, H, W), background first, then `labels` in order; None unless asked for.
        labels: the caller's label of each object channel.
        skipped: True for frames before the first mask (the mask is then all background).
    """

    index_mask: np.ndarray
    probabilities: np.ndarray | None
    labels: tuple[int, ...]
    skipped: bool = False


class VideoSession:
    """One video through one InferenceCore: uint8 frames + index masks in, index masks out."""

    def __init__(self, network: XMemNetwork, config: InferenceConfig | dict, *, size: int = 480,
                 amp: bool = False, device: torch.device | str | None = None, fast: bool = True) -> None:
        """`fast` selects the fast inference path (`InferenceCore`'s sparse readout, a contiguous argmax);
        fast=False is the reference path. The network's own path is chosen by `load_network(fast=...)`."""
        self.device = torch.device(device) if device is not None else next(network.parameters()).device
        self.size = size
        self.amp = amp
        self.fast = fast
        self.core = InferenceCore(network, config, fast=fast)
        self.labels: list[int] = []
        self._to_internal = torch.zeros(256, dtype=torch.long, device=self.device)
        self._to_caller = torch.zeros(1, dtype=torch.uint8, device=self.device)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(3, 1, 1)

    @property
    def started(self) -> bool:
        """Whether the first mask has been given (frames before it are skipped)."""
        return bool(self.labels)

    def memory_stats(self) -> dict:
        return self.core.memory_stats()

    def reset(self) -> None:
        """Forget every object and all memory: the next frame with a mask starts the video again (auto
        mode's re-seed after a scene cut or with the "reset" policy)."""
        self.core.clear_memory()
        self.core.set_all_labels([])
        self.labels = []
        self._to_internal.zero_()
        self._to_caller = torch.zeros(1, dtype=torch.uint8, device=self.device)

    def state_dict(self) -> dict:
        """Everything needed to continue this video bit-identically in another process: the caller's
        labels and the core's state (CPU tensors and plain types, loadable with weights_only=True)."""
        return {"format": STATE_FORMAT, "size": self.size, "labels": list(self.labels),
                "core": self.core.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state_dict`; the session must be built with the same network, config and size."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"session state format {state.get('format')!r}, expected {STATE_FORMAT}")
        if state["size"] != self.size:
            raise ValueError(f"session state made at working size {state['size']}, "
                             f"this session uses {self.size}")
        self.core.load_state_dict(state["core"], self.device)
        self.labels = []
        for label in state["labels"]:
            self.labels.append(label)
            self._to_internal[label] = len(self.labels)
        self._to_caller = torch.tensor([0, *self.labels], dtype=torch.uint8, device=self.device)

    @torch.no_grad()
    def step(self, frame: np.ndarray, mask: np.ndarray | None = None, *, end: bool = False,
             output_size: tuple[int, int] | None = None, keep_probabilities: bool = False,
             anchor: bool = False) -> FrameResult:
        """Segment one frame; `mask` adds objects (labels not given before), `end` marks the last frame.

        With `anchor`, `mask` is the whole truth of this frame for every object: objects seen before may
        appear in it again (an object it lacks is absent on this frame) and the frame becomes a memory
        frame, so the video is re-anchored without forgetting its memory (auto mode's "memory" re-seed).
        `output_size` (H, W) resizes the output to another size than the frame's (DAVIS full-resolution
        input scored at 480p); `keep_probabilities` also returns the probability map.
        """
        height, width = check_frame(frame)
        out_size = output_size or (height, width)
        if anchor and (mask is None or not self.started):
            raise SessionInputError("an anchor frame needs a mask, on a video that has started")
        if mask is not None:
            check_mask(mask, (height, width), first=not self.started)
        elif not self.started:
            return FrameResult(np.zeros(out_size, dtype=np.uint8), None, (), skipped=True)
        image = self.image_tensor(frame)
        image_size = (image.shape[-2], image.shape[-1])
        one_hot, valid = (None, None) if mask is None else self.mask_tensor(mask, image_size, anchor=anchor)
        autocast = torch.autocast(self.device.type) if self.amp else nullcontext()
        with autocast:
            prob = self.core.step(image, one_hot, valid_labels=valid, end=end)
        prob = prob.float()
        if tuple(prob.shape[-2:]) != out_size:
            prob = F.interpolate(prob[None], size=out_size, mode="bilinear", align_corners=False)[0]
        # the fast path's argmax gives the same labels as the reference one, the first maximum winning ties
        winner = self.index_mask(prob) if self.fast else self._to_caller[prob.argmax(dim=0)]
        index_mask = winner.cpu().numpy()
        probabilities = prob.cpu().numpy() if keep_probabilities else None
        return FrameResult(index_mask, probabilities, tuple(self.labels))

    def index_mask(self, prob: torch.Tensor) -> torch.Tensor:
        """uint8 (H, W) caller labels of the most likely channel of (1 + N, H, W) probabilities.

        The same map as ``self._to_caller[prob.argmax(dim=0)]`` (ties go to the first channel, as argmax
        does), computed faster: on CPU argmax over the channel dimension of a 480x854 map takes about 170 ms
        on one core, ``max(dim=0).indices`` about 10 ms and one comparison for a single object about 1 ms.
        """
        if prob.shape[0] == 2:
            # argmax picks channel 1 only where it is strictly more likely than the background
            return (prob[1] > prob[0]).to(torch.uint8).mul_(self._to_caller[1])
        return self._to_caller[prob.max(dim=0).indices]

    def image_tensor(self, frame: np.ndarray) -> torch.Tensor:
        """(3, H', W') normalised, resized after normalisation as eval.py does."""
        # one copy into channels-first order (frames may be read-only), then in-place arithmetic on contiguous
        # memory: the same values as normalising the permuted view, in 40 % of the time on CPU
        planar = np.array(frame.transpose(2, 0, 1), order="C")
        image = torch.from_numpy(planar).to(self.device).float().div_(255)
        image = image.sub_(self._mean).div_(self._std)
        if self.size >= 0:
            image = TF.resize(image, self.size, interpolation=InterpolationMode.BILINEAR)
        return image

    def mask_tensor(self, mask: np.ndarray, size: tuple[int, int], *,
                    anchor: bool = False) -> tuple[torch.Tensor, list[int]]:
        """One-hot (K, H', W') over every label seen so far, and the internal ids of the labels the mask
        decides: its new labels, or (`anchor`) every label."""
        present = sorted(int(v) for v in np.unique(mask) if v != 0)
        repeated = [label for label in present if label in self.labels]
        if anchor:
            present = [label for label in present if label not in self.labels]
        elif repeated:
            raise SessionInputError(
                f"labels {repeated} were given on an earlier frame; a later mask may only add new objects")
        if len(self.labels) + len(present) > MAX_OBJECTS:
            raise SessionInputError(f"at most {MAX_OBJECTS} objects per video are supported")
        for label in present:
            self.labels.append(label)
            self._to_internal[label] = len(self.labels)
        self._to_caller = torch.tensor([0, *self.labels], dtype=torch.uint8, device=self.device)
        self.core.set_all_labels(list(range(1, len(self.labels) + 1)))
        index = self._to_internal[torch.from_numpy(mask.astype(np.int64)).to(self.device)]
        if tuple(index.shape) != size:
            index = F.interpolate(index[None, None].float(), size=size, mode="nearest")[0, 0].long()
        channels = torch.arange(1, len(self.labels) + 1, device=self.device).view(-1, 1, 1)
        valid = [int(self._to_internal[label]) for label in (self.labels if anchor else present)]
        return (index[None] == channels).float(), valid


def check_frame(frame: np.ndarray) -> tuple[int, int]:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise SessionInputError(f"frames are uint8 RGB (H, W, 3); got {frame.dtype} {frame.shape}")
    return frame.shape[0], frame.shape[1]


def check_mask(mask: np.ndarray, frame_size: tuple[int, int], *, first: bool) -> None:
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise SessionInputError(f"masks are integer index masks (H, W); got {mask.dtype} {mask.shape}")
    if mask.shape != frame_size:
        raise SessionInputError(f"mask size {mask.shape} differs from frame size {frame_size}")
    if mask.size and (mask.min() < 0 or mask.max() > MAX_OBJECTS):
        raise SessionInputError(f"mask labels must be 0 (background) to {MAX_OBJECTS}; "
                                f"got {mask.min()}..{mask.max()}")
    if first and not mask.any():
        raise SessionInputError(
            "the first mask has no object: label at least one pixel with a non-zero label")


def save_state(state: dict, path: str | Path) -> int:
    """torch.save `state` to `path` atomically (temporary file, then rename); returns its size in bytes.

    A reader sees the previous file or the new one, never a torn one, even if this process is killed."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path.stat().st_size


def load_state(path: str | Path) -> dict:
    """Read a `save_state` file: tensors and plain types only (weights_only, nothing is executed)."""
    return torch.load(path, map_location="cpu", weights_only=True)

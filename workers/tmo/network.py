"""TMONetwork: TMO's per-frame computation as a pure module (no state between calls, `forward` raises).

One frame: image and motion (a colour-coded flow image, or the RGB frame again) are each resized to
384x384 bicubic without keeping the aspect ratio, encoded by the appearance and the motion encoder, the
features are added per stride, decoded to 2-class logits, and the logits are resized bicubic to the
image's size. Adaptive output selection (AOS) decodes twice, with RGB and with flow as motion, and keeps
the more confident prediction. Shapes: (B, C, H, W).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.tmo.decoder import WIDTH, Decoder
from workers.tmo.encoders import (
    LITE_ENCODER_DIMS,
    MIT_DIMS,
    RESNET_DIMS,
    LiteEncoder,
    MiTB1Encoder,
    NormalisingEncoder,
    ResNet101Encoder,
)

Variant = Literal["rn101", "mitb1", "lite"]
VARIANTS: tuple[str, ...] = get_args(Variant)
INPUT_SIZE = 384
"""Side of the square both inputs are resized to (TMO's)."""
LITE_INPUT_SIZE = 224
"""The lite variant's default side: its cost grows with the area, and the bundled model was trained at it."""
LITE_DECODER_WIDTH = 64
"""Decoder channels of the lite variant: at stride 4, TMO's 256 would cost more than both encoders."""
ENCODERS: dict[str, tuple[type[NormalisingEncoder], tuple[int, int, int, int]]] = {
    "rn101": (ResNet101Encoder, RESNET_DIMS),
    "mitb1": (MiTB1Encoder, MIT_DIMS),
    "lite": (LiteEncoder, LITE_ENCODER_DIMS),
}
CONFIDENCE_THRESHOLD = 0.1
"""AOS confidence: the L2 norm of (0.1 - p) over the softmax entries p below 0.1."""


@dataclass(frozen=True)
class AOSResult:
    """What adaptive output selection chose.

    Attributes:
        logits: (1, 2, H, W) of the chosen path.
        used_flow: True when the flow path was kept, False for the RGB-as-motion path.
        rgb_confidence, flow_confidence: the two confidences compared.
    """

    logits: Tensor
    used_flow: bool
    rgb_confidence: float
    flow_confidence: float


def resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bicubic, align_corners=False; a no-op at the same size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False)


def confidence(probabilities: Tensor) -> Tensor:
    """AOS confidence per batch item: more near-zero probabilities = a more decisive mask."""
    gap = (CONFIDENCE_THRESHOLD - probabilities).clamp_min(0)
    return torch.linalg.vector_norm(gap.flatten(1), dim=1)


class TMONetwork(nn.Module):
    """Appearance encoder, motion encoder (same kind, separate weights) and decoder.

    Variants: TMO's `rn101` and `mitb1`, and vosd's `lite` (EfficientNet-Lite0 encoders, a narrower decoder;
    made to run and train on a CPU). `input_size` is the square side inputs are resized to (default: 384
    for TMO's variants, 224 for lite; less runs faster). `decoder_width` defaults to the variant's.
    """

    def __init__(self, variant: Variant = "rn101", *, input_size: int | None = None,
                 decoder_width: int | None = None) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown TMO variant {variant!r}; expected one of {list(VARIANTS)}")
        lite = variant == "lite"
        self.input_size = input_size or (LITE_INPUT_SIZE if lite else INPUT_SIZE)
        self.variant = variant
        encoder, dims = ENCODERS[variant]
        self.app_encoder = encoder()
        self.mo_encoder = encoder()
        self.decoder = Decoder(dims, decoder_width or (LITE_DECODER_WIDTH if lite else WIDTH))

    def forward(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("TMONetwork has no forward; call segment(image, motion)")

    def decode(self, appearance: list[Tensor], motion: list[Tensor]) -> Tensor:
        """Features added per stride -> logits (B, 2, S, S) at the encoders' input size S."""
        return self.decoder([a + m for a, m in zip(appearance, motion, strict=True)])

    def segment(self, image: Tensor, motion: Tensor, *, aos: bool = False) -> Tensor:
        """Logits (B, 2, H, W), background first, for image and motion (B, 3, ·, ·) float RGB in [0, 1].

        `motion` is a colour-coded flow image or the image itself, at any size (it is resized to 384 too).
        With `aos` (B = 1) `motion` must be a flow image; the more confident of the RGB and flow paths wins.

        Example:
            >>> from workers.tmo import load_network
            >>> net = load_network("TMO_rn101.pth")
            >>> mask = net.segment(frame, flow_image).argmax(dim=1)
        """
        check_inputs(image, motion)
        if aos:
            return self.select_output(image, motion).logits
        square = (self.input_size, self.input_size)
        logits = self.decode(self.app_encoder(resize(image, square)), self.mo_encoder(resize(motion, square)))
        return resize(logits, (image.shape[-2], image.shape[-1]))

    def select_output(self, image: Tensor, flow: Tensor) -> AOSResult:
        """Adaptive output selection for one frame: 3 encoder passes, 2 decodes; ties keep the flow path."""
        check_inputs(image, flow)
        if image.shape[0] != 1:
            raise ValueError(f"adaptive output selection takes one frame (B = 1); got B = {image.shape[0]}")
        square, size = (self.input_size, self.input_size), (image.shape[-2], image.shape[-1])
        small = resize(image, square)
        appearance = self.app_encoder(small)
        rgb = resize(self.decode(appearance, self.mo_encoder(small)), size)
        flowed = resize(self.decode(appearance, self.mo_encoder(resize(flow, square))), size)
        rgb_score = float(confidence(rgb.softmax(dim=1))[0])
        flow_score = float(confidence(flowed.softmax(dim=1))[0])
        use_flow = flow_score >= rgb_score
        return AOSResult(flowed if use_flow else rgb, use_flow, rgb_score, flow_score)


def check_inputs(image: Tensor, motion: Tensor) -> None:
    """Fail early with the shapes when the inputs are not two (B, 3, H, W) float batches of one size B."""
    for name, x in (("image", image), ("motion", motion)):
        if x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise ValueError(f"{name} must be float RGB (B, 3, H, W) in [0, 1]; "
                             f"got {x.dtype} {tuple(x.shape)}")
    if image.shape[0] != motion.shape[0]:
        raise ValueError(f"image and motion batch sizes differ: {image.shape[0]} != {motion.shape[0]}")

"""XMemNetwork: the XMem network as a pure module with named steps (encode_key, encode_value, segment).

The official variant has exactly the official state-dict layout, so released checkpoints load
without renaming. The module keeps no state between calls; memory lives in the inference core.
Shapes: H, W are padded to multiples of 16; h, w = H/16, W/16; N = number of objects.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.xmem.aggregate import aggregated_log_odds
from workers.xmem.backbones import LITE_DIMS, KeyEncoder, LiteKeyEncoder, ValueTrunk, trunk_dims
from workers.xmem.modules import (
    FeatureFusionBlock,
    HiddenReinforcer,
    HiddenUpdater,
    KeyProjection,
    UpsampleBlock,
    distribute_cat,
    fold,
    unfold,
)

Variant = Literal["official", "small", "lite"]
KEY_ENCODER_DEPTH: dict[str, int] = {"official": 50, "small": 18}
"""ResNet depth of the key encoder of the ResNet variants; "lite" uses an EfficientNet-Lite0 trunk."""
VARIANTS: tuple[str, ...] = get_args(Variant)
VALUE_TRUNK_DIM = 256
"""Output channels of the value encoder's ResNet-18 trunk (both variants)."""


@dataclass(frozen=True)
class NetworkSpec:
    """Everything that fixes the network's shapes; all of it can be read back from a state dict.

    variant picks the key-encoder trunk: "official" = ResNet-50 (f16/f8/f4 = 1024/512/256 channels),
    "small" = ResNet-18 (256/128/64), "lite" = EfficientNet-Lite0 (112/40/24; ImageNet weights installable).
    decoder_dims are the decoder widths at 1/16, 1/8 and 1/4;
    update_dim is the width the decoder GRU's three inputs are projected to. hidden_dim 0 = no sensory memory.
    """

    key_dim: int = 64
    value_dim: int = 512
    hidden_dim: int = 64
    variant: Variant = "official"
    decoder_dims: tuple[int, int, int] = (512, 256, 256)
    update_dim: int = 256

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}; expected one of {list(VARIANTS)}")
        widths = (self.key_dim, self.value_dim, self.update_dim, *self.decoder_dims)
        if len(self.decoder_dims) != 3 or min(widths) <= 0 or self.hidden_dim < 0:
            raise ValueError(f"invalid network widths: {self}")

    @classmethod
    def official(cls, hidden_dim: int = 64) -> NetworkSpec:
        """The released XMem layout (hidden_dim=0 gives XMem-no-sensory)."""
        return cls(hidden_dim=hidden_dim)

    @classmethod
    def small(cls, hidden_dim: int = 32) -> NetworkSpec:
        """A CPU-trainable layout: ResNet-18 key encoder and narrower value / decoder widths."""
        return cls(
            key_dim=64, value_dim=256, hidden_dim=hidden_dim, variant="small",
            decoder_dims=(256, 128, 64), update_dim=128,
        )

    @classmethod
    def lite(cls, hidden_dim: int = 32) -> NetworkSpec:
        """The small layout on an EfficientNet-Lite0 key encoder: what the bundled model uses."""
        return dataclasses.replace(cls.small(hidden_dim), variant="lite")

    @classmethod
    def preset(cls, variant: str, hidden_dim: int | None = None) -> NetworkSpec:
        """The named variant's default layout, with ``hidden_dim`` when given."""
        presets = {"official": cls.official, "small": cls.small, "lite": cls.lite}
        if variant not in presets:
            raise ValueError(f"unknown variant {variant!r}; expected one of {list(VARIANTS)}")
        return presets[variant]() if hidden_dim is None else presets[variant](hidden_dim)

    @property
    def feature_dims(self) -> tuple[int, int, int]:
        """Channels of the key encoder's (f16, f8, f4)."""
        if self.variant == "lite":
            return LITE_DIMS
        return trunk_dims(KEY_ENCODER_DEPTH[self.variant])

    def key_encoder(self) -> nn.Module:
        """A fresh key-encoder trunk of this variant."""
        return LiteKeyEncoder() if self.variant == "lite" else KeyEncoder(KEY_ENCODER_DEPTH[self.variant])


class ValueEncoder(ValueTrunk):
    """Image + masks -> per-object values, optionally deep-updating the hidden state."""

    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__()
        self.fuser = FeatureFusionBlock(spec.feature_dims[0], VALUE_TRUNK_DIM, spec.value_dim, spec.value_dim)
        self.hidden_reinforce = HiddenReinforcer(spec.value_dim, spec.hidden_dim) if spec.hidden_dim else None

    def forward(
        self, image: Tensor, f16: Tensor, hidden: Tensor | None, masks: Tensor,
        others: Tensor, deep_update: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """image (B,3,H,W), f16 (B,C16,h,w), masks/others (B,N,H,W) -> value (B,N,Cv,h,w), hidden."""
        batch = masks.shape[0]
        stacked = distribute_cat(image, torch.stack([masks, others], dim=2))
        g = unfold(self.trunk(fold(stacked)), batch)
        value = self.fuser(f16, g)
        if deep_update and self.hidden_reinforce is not None:
            hidden = self.hidden_reinforce(value, hidden)
        return value, hidden


class Decoder(nn.Module):
    """Readout (+ hidden) and multi-scale image features -> per-object logits at full resolution."""

    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__()
        f16_dim, f8_dim, f4_dim = spec.feature_dims
        g16, g8, g4 = spec.decoder_dims
        self.fuser = FeatureFusionBlock(f16_dim, spec.value_dim + spec.hidden_dim, g16, g16)
        self.hidden_update = (
            HiddenUpdater(g16, g8, g4 + 1, spec.update_dim, spec.hidden_dim) if spec.hidden_dim else None
        )
        self.up_16_8 = UpsampleBlock(f8_dim, g16, g8)
        self.up_8_4 = UpsampleBlock(f4_dim, g8, g4)
        self.pred = nn.Conv2d(g4, 1, 3, padding=1)

    def forward(
        self, f16: Tensor, f8: Tensor, f4: Tensor, hidden: Tensor | None,
        readout: Tensor, update_hidden: bool,
    ) -> tuple[Tensor | None, Tensor]:
        """Returns (new hidden (B,N,Ch,h,w) or None, object logits (B,N,H,W))."""
        batch = readout.shape[0]
        if self.hidden_update is not None:
            assert hidden is not None, "a network with a hidden state needs it here"
            readout = torch.cat([readout, hidden], dim=2)
        g16 = self.fuser(f16, readout)
        g8 = self.up_16_8(f8, g16)
        g4 = self.up_8_4(f4, g8)
        logits4 = self.pred(F.relu(fold(g4)))
        new_hidden = None
        if update_hidden and self.hidden_update is not None:
            g4_with_logits = torch.cat([g4, unfold(logits4, batch)], dim=2)
            new_hidden = self.hidden_update(g16, g8, g4_with_logits, hidden)
        logits = F.interpolate(logits4, scale_factor=4, mode="bilinear", align_corners=False)
        return new_hidden, logits.view(batch, -1, *logits.shape[-2:])


def others_masks(masks: Tensor) -> Tensor:
    """(B, N, H, W) -> for each object the sum of the other objects' masks (zeros when N == 1)."""
    count = masks.shape[1]
    if count == 1:
        return torch.zeros_like(masks)
    others = [masks[:, [j for j in range(count) if j != i]].sum(dim=1) for i in range(count)]
    return torch.stack(others, dim=1)


class XMemNetwork(nn.Module):
    """The XMem network; call the named steps, not forward (the inference core decides which to run)."""

    def __init__(self, spec: NetworkSpec | None = None) -> None:
        super().__init__()
        self.spec = spec or NetworkSpec()
        self.key_encoder = self.spec.key_encoder()
        self.value_encoder = ValueEncoder(self.spec)
        self.key_proj = KeyProjection(self.spec.feature_dims[0], self.spec.key_dim)
        self.decoder = Decoder(self.spec)

    def forward(self, *args: object, **kwargs: object) -> None:
        raise NotImplementedError("XMemNetwork has no forward; call encode_key, encode_value and segment")

    def encode_key(
        self, image: Tensor, *, need_shrinkage: bool, need_selection: bool
    ) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor, Tensor, Tensor]:
        """image (B,3,H,W) -> key (B,Ck,h,w), shrinkage (B,1,h,w) | None, selection (B,Ck,h,w) | None,
        f16 (B,C16,h,w), f8 (B,C8,2h,2w), f4 (B,C4,4h,4w)."""
        f16, f8, f4 = self.key_encoder(image)
        key, shrinkage, selection = self.key_proj(f16, need_shrinkage, need_selection)
        return key, shrinkage, selection, f16, f8, f4

    def encode_value(
        self, image: Tensor, f16: Tensor, hidden: Tensor | None, masks: Tensor, *,
        deep_update: bool,
    ) -> tuple[Tensor, Tensor | None]:
        """image (B,3,H,W), f16, hidden (B,N,Ch,h,w), masks (B,N,H,W) -> value (B,N,Cv,h,w), hidden.

        The hidden state is returned unchanged unless deep_update is set and the network has sensory memory.
        """
        return self.value_encoder(image, f16, hidden, masks, others_masks(masks), deep_update)

    def segment(
        self, f16: Tensor, f8: Tensor, f4: Tensor, hidden: Tensor | None,
        readout: Tensor, *, update_hidden: bool,
    ) -> tuple[Tensor | None, Tensor, Tensor]:
        """readout (B,N,Cv,h,w) -> (new hidden | None, logits (B,N+1,H,W), prob (B,N+1,H,W)), bg first.

        logits are the aggregated log-odds (softmax over dim 1 gives prob); new hidden is None unless
        update_hidden is set and the network has sensory memory.
        """
        new_hidden, object_logits = self.decoder(f16, f8, f4, hidden, readout, update_hidden)
        logits = aggregated_log_odds(torch.sigmoid(object_logits), dim=1)
        return new_hidden, logits, torch.softmax(logits, dim=1)


def empty_network(spec: NetworkSpec) -> XMemNetwork:
    """Build on the meta device, then allocate uninitialised CPU storage (fast); fill every tensor after."""
    with torch.device("meta"):
        network = XMemNetwork(spec)
    return network.to_empty(device="cpu")

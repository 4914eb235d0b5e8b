"""Shared by the TMO tests: cached calibrated random networks, and TMO's per-frame procedure re-computed
from a state dict with functional PyTorch, written from the spec's description (not from workers/tmo)."""

from __future__ import annotations

import copy
import functools
import math

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor

from workers.tmo.network import TMONetwork
from workers.tmo.random_init import TMOInitOptions, make_random_network

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


SMALL = 96
"""The square side the fast tests resize to (TMO itself: 384)."""


@functools.cache
def calibrated(variant: str) -> TMONetwork:
    options = TMOInitOptions(image_size=64) if variant == "rn101" else TMOInitOptions(image_size=SMALL)
    return make_random_network(variant, 0, options)  # type: ignore[arg-type]


def random_network(variant: str, input_size: int = 384) -> TMONetwork:
    """One calibrated network per variant for the whole session; a shallow copy at another input size."""
    network = copy.copy(calibrated(variant))
    network.input_size = input_size
    return network


def bicubic(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False)


def sub(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def resnet_features(state: dict[str, Tensor], x: Tensor) -> list[Tensor]:
    """torchvision's ResNet-101 with the encoder's weights; features after layer1..layer4."""
    trunk = torchvision.models.resnet101(weights=None)
    trunk.fc = torch.nn.Identity()
    trunk.load_state_dict({k: v for k, v in state.items() if k not in ("mean", "std")}, strict=True)
    trunk.eval()
    x = trunk.maxpool(trunk.relu(trunk.bn1(trunk.conv1(x))))
    out = []
    for layer in (trunk.layer1, trunk.layer2, trunk.layer3, trunk.layer4):
        x = layer(x)
        out.append(x)
    return out


def mit_features(state: dict[str, Tensor], x: Tensor) -> list[Tensor]:
    """MiT-b1 from Hugging Face 4.x key names: patch conv + LN, pre-norm blocks with reduced K/V, final LN."""
    heads, ratios, patches, strides = (1, 2, 5, 8), (8, 4, 2, 1), (7, 3, 3, 3), (4, 2, 2, 2)
    out = []

    def w(name: str) -> Tensor:
        return state[f"encoder.{name}"]

    def heads_of(z: Tensor, prefix: str, n_heads: int) -> Tensor:
        """Project z with the linear layer under prefix and split it into (batch, heads, tokens, dim)."""
        z = F.linear(z, w(prefix + "weight"), w(prefix + "bias"))
        b, n, c = z.shape
        return z.reshape(b, n, n_heads, c // n_heads).permute(0, 2, 1, 3)

    for i in range(4):
        x = F.conv2d(x, w(f"patch_embeddings.{i}.proj.weight"), w(f"patch_embeddings.{i}.proj.bias"),
                     stride=strides[i], padding=patches[i] // 2)
        b, c, h, wd = x.shape
        t = x.flatten(2).transpose(1, 2)
        t = F.layer_norm(t, (c,), w(f"patch_embeddings.{i}.layer_norm.weight"),
                         w(f"patch_embeddings.{i}.layer_norm.bias"))
        j = 0
        while f"encoder.block.{i}.{j}.layer_norm_1.weight" in state:
            p = f"block.{i}.{j}."
            y = F.layer_norm(t, (c,), w(p + "layer_norm_1.weight"), w(p + "layer_norm_1.bias"))
            kv = y
            if ratios[i] > 1:
                g = y.transpose(1, 2).reshape(b, c, h, wd)
                a = p + "attention.self."
                g = F.conv2d(g, w(a + "sr.weight"), w(a + "sr.bias"), stride=ratios[i])
                kv = F.layer_norm(g.flatten(2).transpose(1, 2), (c,), w(a + "layer_norm.weight"),
                                  w(a + "layer_norm.bias"))

            q, k, v = (heads_of(z, p + f"attention.self.{name}.", heads[i])
                       for z, name in ((y, "query"), (kv, "key"), (kv, "value")))
            att = F.scaled_dot_product_attention(q, k, v)
            att = att.permute(0, 2, 1, 3).reshape(b, -1, c)
            o = p + "attention.output.dense."
            t = t + F.linear(att, w(o + "weight"), w(o + "bias"))
            y = F.layer_norm(t, (c,), w(p + "layer_norm_2.weight"), w(p + "layer_norm_2.bias"))
            y = F.linear(y, w(p + "mlp.dense1.weight"), w(p + "mlp.dense1.bias"))
            y = y.transpose(1, 2).reshape(b, -1, h, wd)
            y = F.conv2d(y, w(p + "mlp.dwconv.dwconv.weight"), w(p + "mlp.dwconv.dwconv.bias"), padding=1,
                         groups=y.shape[1])
            y = F.gelu(y.flatten(2).transpose(1, 2), approximate="none")
            t = t + F.linear(y, w(p + "mlp.dense2.weight"), w(p + "mlp.dense2.bias"))
            j += 1
        t = F.layer_norm(t, (c,), w(f"layer_norm.{i}.weight"), w(f"layer_norm.{i}.bias"))
        x = t.transpose(1, 2).reshape(b, c, h, wd)
        out.append(x)
    return out


def conv(state: dict[str, Tensor], name: str, x: Tensor, relu: bool) -> Tensor:
    weight = state[f"{name}.conv.weight"]
    y = F.conv2d(x, weight, state[f"{name}.conv.bias"], padding=weight.shape[-1] // 2)
    return F.relu(y) if relu else y


def cbam(state: dict[str, Tensor], name: str, x: Tensor) -> Tensor:
    x = conv(state, f"{name}.conv1", x, False)

    def mlp(v: Tensor) -> Tensor:
        return conv(state, f"{name}.conv2.1", conv(state, f"{name}.conv2.0", v, True), False)

    avg = x.mean(dim=(2, 3), keepdim=True)
    mx = x.flatten(2).max(dim=2).values[..., None, None]
    x = x * torch.sigmoid(mlp(avg) + mlp(mx))
    maps = torch.cat([x.mean(dim=1, keepdim=True), x.max(dim=1, keepdim=True).values], dim=1)
    spatial = conv(state, f"{name}.conv3.1", conv(state, f"{name}.conv3.0", maps, True), False)
    return x * torch.sigmoid(spatial)


def decoder(state: dict[str, Tensor], features: list[Tensor]) -> Tensor:
    s4, s8, s16, s32 = features
    up2 = functools.partial(F.interpolate, scale_factor=2, mode="bicubic", align_corners=False)
    x = cbam(state, "cbam1", conv(state, "blend1", conv(state, "conv1", s32, True), True))
    for i, skip in ((2, s16), (3, s8), (4, s4)):
        x = torch.cat([conv(state, f"conv{i}", skip, True), up2(x)], dim=1)
        x = cbam(state, f"cbam{i}", conv(state, f"blend{i}", x, True))
    x = conv(state, "predictor", x, False)
    return F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)


def encode(state: dict[str, Tensor], prefix: str, x: Tensor) -> list[Tensor]:
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    enc = sub(state, prefix)
    if "conv1.weight" in enc:
        return resnet_features(enc, x)
    return mit_features(sub(enc, "backbone."), x)


@torch.no_grad()
def reference_segment(state: dict[str, Tensor], image: Tensor, motion: Tensor, square: int = 384) -> Tensor:
    """The official per-frame computation from TMONetwork-named tensors (vos. and module. removed)."""
    size = tuple(image.shape[-2:])
    app = encode(state, "app_encoder.", bicubic(image, (square, square)))
    mo = encode(state, "mo_encoder.", bicubic(motion, (square, square)))
    logits = decoder(sub(state, "decoder."), [a + m for a, m in zip(app, mo, strict=True)])
    return bicubic(logits, size)


def reference_confidence(logits: Tensor) -> float:
    """sqrt of the sum of (0.1 - p)^2 over every softmax entry p below 0.1."""
    p = logits.softmax(dim=1).flatten()
    low = p[p < 0.1]
    return math.sqrt(float(((0.1 - low) ** 2).sum()))

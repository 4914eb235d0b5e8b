"""The training-time forward pass over a clip: XMemNetwork's steps wired the way XMem trains them.

Per clip: keys for all frames at once; the first frame's mask becomes the first memory value; every later
frame reads a small memory (all earlier frames while there are at most ``num_ref_frames`` of them, then the
first frame plus random earlier ones) with a plain softmax over all memory positions (no top-k, no long-term
memory), is segmented, and its predicted soft masks become a new value. Randomness (memory choice, deep
updates) is drawn up front into a ClipPlan so the forward itself is deterministic and testable.

This lives here, not in workers/xmem/, so the inference network carries no training branches; DDP needs a
``forward``, which XMemNetwork deliberately does not have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch

from workers.xmem.aggregate import aggregated_log_odds
from workers.xmem.network import XMemNetwork


@dataclass(frozen=True)
class ClipPlan:
    """The random choices of one training forward.

    Attributes:
        references: for each query frame t = 1..T-1, a (B, R_t) long tensor of the memory frames it reads.
        deep_updates: for each frame t = 1..T-2 (those whose value is encoded), whether the value encoder
            also deep-updates the sensory memory. Frame 0 always does.
    """

    references: tuple[torch.Tensor, ...]
    deep_updates: tuple[bool, ...]


@dataclass(frozen=True)
class ClipOutput:
    """Predictions for frames 1..T-1.

    Attributes:
        logits: per frame (B, 1+N, H, W) aggregated log-odds, background first (softmax gives probs).
        probs: per frame (B, 1+N, H, W) probabilities; padding objects are exactly absent.
    """

    logits: list[torch.Tensor]
    probs: list[torch.Tensor]


def draw_plan(
    batch: int, num_frames: int, num_ref_frames: int, deep_update_prob: float, generator: torch.Generator
) -> ClipPlan:
    """Draw memory frames and deep updates for a clip (XMem's training scheme).

    Query frame t reads frames 0..t-1 while t <= num_ref_frames; later, frame 0 (the only ground-truth
    reference) plus ``num_ref_frames - 1`` distinct random frames among 1..t-1, drawn per sample.
    """
    references = []
    for t in range(1, num_frames):
        if t <= num_ref_frames:
            references.append(torch.arange(t).expand(batch, t).clone())
        else:
            rows = [torch.cat([torch.zeros(1, dtype=torch.long),
                               torch.randperm(t - 1, generator=generator)[:num_ref_frames - 1] + 1])
                    for _ in range(batch)]
            references.append(torch.stack(rows))
    draws = torch.rand(max(num_frames - 2, 0), generator=generator)
    return ClipPlan(tuple(references), tuple(bool(d < deep_update_prob) for d in draws))


def object_selector(num_objects: torch.Tensor, max_objects: int) -> torch.Tensor:
    """(B,) object counts -> (B, N) float, 1 for a real object channel and 0 for padding."""
    return (torch.arange(max_objects, device=num_objects.device) < num_objects[:, None]).float()


def gather_frames(tensor: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """(B, T, ...) indexed per sample by (B, R) frame numbers -> (B, R, ...)."""
    rows = torch.arange(tensor.shape[0], device=tensor.device)[:, None]
    return tensor[rows, frames.to(tensor.device)]


def anisotropic_similarity(
    memory_key: torch.Tensor, memory_shrinkage: torch.Tensor, query_key: torch.Tensor,
    query_selection: torch.Tensor,
) -> torch.Tensor:
    """XMem's similarity -sum_c e_q (k_m - k_q)^2 * s_m / sqrt(Ck).

    memory_key (B, Ck, M), memory_shrinkage (B, 1, M), query_key / query_selection (B, Ck, P) -> (B, M, P).

    The square is expanded into three matrix products so no (Ck, M, P) tensor is formed; batched over clips.
    Must agree with the inference readout's similarity (workers/xmem/similarity.py).
    """
    scale = memory_key.shape[1] ** -0.5
    memory_term = (memory_key.pow(2).transpose(1, 2)) @ query_selection
    cross_term = memory_key.transpose(1, 2) @ (query_selection * query_key)
    query_term = (query_selection * query_key.pow(2)).sum(dim=1, keepdim=True)
    distance = memory_term - 2 * cross_term + query_term
    return -distance * memory_shrinkage.transpose(1, 2) * scale


def read_memory(
    query_key: torch.Tensor, query_selection: torch.Tensor, memory_key: torch.Tensor,
    memory_shrinkage: torch.Tensor, memory_value: torch.Tensor,
) -> torch.Tensor:
    """Full-softmax memory readout.

    query_key / query_selection (B, Ck, h, w); memory_key (B, R, Ck, h, w); memory_shrinkage (B, R, 1, h, w);
    memory_value (B, R, N, Cv, h, w) -> readout (B, N, Cv, h, w). Done in float32: a softmax over thousands of
    positions is where half precision loses the most.
    """
    batch, _, height, width = query_key.shape
    objects, value_dim = memory_value.shape[2:4]
    flat_memory = memory_key.float().permute(0, 2, 1, 3, 4).flatten(2)  # (B, Ck, R*h*w)
    shrinkage = memory_shrinkage.float().permute(0, 2, 1, 3, 4).flatten(2)  # (B, 1, R*h*w)
    similarity = anisotropic_similarity(flat_memory, shrinkage, query_key.float().flatten(2),
                                        query_selection.float().flatten(2))  # (B, M, P)
    affinity = torch.softmax(similarity, dim=1)
    values = memory_value.float().permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)  # (B, N*Cv, M)
    readout = torch.bmm(values, affinity)
    return readout.view(batch, objects, value_dim, height, width).to(memory_value.dtype)


class TrainingXMem(XMemNetwork):
    """XMemNetwork with a clip-level forward for training; its state dict is exactly the network's."""

    def forward(  # type: ignore[override]
        self, images: torch.Tensor, first_masks: torch.Tensor, num_objects: torch.Tensor, plan: ClipPlan
    ) -> ClipOutput:
        """images (B, T, 3, H, W), first_masks (B, N, H, W), num_objects (B,) -> frames 1..T-1 predicted."""
        batch, num_frames = images.shape[:2]
        selector = object_selector(num_objects, first_masks.shape[1]).to(images.dtype)
        key, shrinkage, selection, f16, f8, f4 = (
            cast(torch.Tensor, t).unflatten(0, (batch, num_frames))  # all computed (need_* = True)
            for t in self.encode_key(images.flatten(0, 1), need_shrinkage=True, need_selection=True))
        hidden = key.new_zeros(batch, first_masks.shape[1], self.spec.hidden_dim, *key.shape[-2:])
        masks = first_masks * selector[:, :, None, None]
        value, hidden = self.encode_value(images[:, 0], f16[:, 0], hidden, masks, deep_update=True)
        values = [value]
        logits, probs = [], []
        for t in range(1, num_frames):
            frames = plan.references[t - 1]
            memory_values = gather_frames(torch.stack(values, 1), frames)
            readout = read_memory(key[:, t], selection[:, t], gather_frames(key, frames),
                                  gather_frames(shrinkage, frames), memory_values)
            last = t == num_frames - 1
            new_hidden, object_logits = self.decoder(f16[:, t], f8[:, t], f4[:, t], hidden, readout, not last)
            if new_hidden is not None:
                hidden = new_hidden
            object_prob = torch.sigmoid(object_logits.float()) * selector[:, :, None, None]
            frame_logits = aggregated_log_odds(object_prob, dim=1)
            frame_prob = torch.softmax(frame_logits, dim=1)
            logits.append(frame_logits)
            probs.append(frame_prob)
            if not last:
                masks = frame_prob[:, 1:].to(images.dtype)
                value, hidden = self.encode_value(images[:, t], f16[:, t], hidden, masks,
                                                  deep_update=plan.deep_updates[t - 1])
                values.append(value)
        return ClipOutput(logits, probs)

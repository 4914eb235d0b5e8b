"""XMem's training loss: bootstrapped cross-entropy plus dice, summed over the predicted frames.

Pure functions on tensors. The cross-entropy starts over all pixels and is annealed to the hardest 15 %
(bootstrapping), which keeps easy background from dominating once the network segments coarse shapes; dice
counters the imbalance between small objects and large backgrounds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bootstrap_fraction(iteration: int, start: int, end: int, final: float = 0.15) -> float:
    """Fraction of hardest pixels kept by the cross-entropy at ``iteration``.

    1.0 before ``start``, ``final`` after ``end``, and linear in between (XMem's warm-up schedule).
    """
    if iteration < start:
        return 1.0
    if iteration >= end:
        return final
    return final + (1.0 - final) * (end - iteration) / (end - start)


def bootstrapped_cross_entropy(logits: torch.Tensor, target: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mean cross-entropy over the ``fraction`` of pixels with the highest loss.

    logits (B, C, H, W) unnormalised class scores, target (B, H, W) class indices. All pixels of the batch
    compete for the top-``fraction`` slots; fraction >= 1 is the ordinary mean.
    """
    pixel_loss = F.cross_entropy(logits.float(), target, reduction="none").flatten()
    if fraction >= 1.0:
        return pixel_loss.mean()
    keep = max(1, int(pixel_loss.numel() * fraction))
    return torch.topk(pixel_loss, keep, sorted=False).values.mean()


def dice_loss(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over objects of 1 - soft dice; prob and target (K, H, W), one object per row.

    The +1 smoothing makes an object that is absent in both prediction and target cost nothing.
    """
    prob = prob.float().flatten(1)
    target = target.float().flatten(1)
    intersection = (prob * target).sum(dim=1)
    total = prob.sum(dim=1) + target.sum(dim=1)
    return (1.0 - (2.0 * intersection + 1.0) / (total + 1.0)).mean()


def frame_loss(
    logits: torch.Tensor, prob: torch.Tensor, labels: torch.Tensor, num_objects: list[int], fraction: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy, dice) of one predicted frame, each averaged over the batch.

    logits (B, 1+N, H, W) with background first, prob (B, 1+N, H, W) their softmax, labels (B, H, W) in 0..N.
    Each sample is scored only on its own ``num_objects[b]`` object channels (the rest are padding).
    """
    ce_terms = []
    dice_terms = []
    for b, count in enumerate(num_objects):
        ce_terms.append(bootstrapped_cross_entropy(logits[b:b + 1, :count + 1], labels[b:b + 1], fraction))
        object_ids = torch.arange(1, count + 1, device=labels.device).view(-1, 1, 1)
        dice_terms.append(dice_loss(prob[b, 1:count + 1], labels[b].unsqueeze(0) == object_ids))
    return torch.stack(ce_terms).mean(), torch.stack(dice_terms).mean()


def clip_loss(
    logits: list[torch.Tensor], probs: list[torch.Tensor], labels: torch.Tensor, num_objects: list[int],
    fraction: float,
) -> dict[str, torch.Tensor]:
    """The loss of a clip: per-frame cross-entropy and dice summed over frames 1..T-1.

    logits / probs hold one (B, 1+N, H, W) tensor per predicted frame (frames 1..T-1, in order); labels is
    (B, T, H, W). Returns "total" (to back-propagate) and the summed "ce" and "dice" parts (for logging).
    """
    if len(logits) != labels.shape[1] - 1 or len(probs) != len(logits):
        raise ValueError(f"expected {labels.shape[1] - 1} predicted frames, got {len(logits)} / {len(probs)}")
    ce = logits[0].new_zeros((), dtype=torch.float32)
    dice = ce.clone()
    for index, (frame_logits, frame_prob) in enumerate(zip(logits, probs, strict=True), start=1):
        frame_ce, frame_dice = frame_loss(frame_logits, frame_prob, labels[:, index], num_objects, fraction)
        ce = ce + frame_ce
        dice = dice + frame_dice
    return {"total": ce + dice, "ce": ce, "dice": dice}

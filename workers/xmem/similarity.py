"""Pure maths of the memory readout: anisotropic L2 similarity, top-k softmax, readout, usage.

Memory tensors are laid out (..., C, M) with M memory elements, query tensors (..., C, P) with P query
positions (flattened h*w); affinities are (..., M, P) and sum to one over the memory axis M.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def similarity(
    memory_key: Tensor, memory_shrinkage: Tensor | None, query_key: Tensor, query_selection: Tensor | None
) -> Tensor:
    """Negative anisotropic squared L2 distance (XMem).

    Shapes: memory key (..., Ck, M), shrinkage (..., 1, M), query key / selection (..., Ck, P) -> (..., M, P).

    S[m, p] = -sum_c e[c, p] (k_m[c, m] - k_q[c, p])^2 * s[m] / sqrt(Ck), with shrinkage s on the memory side
    and selection e on the query side, computed as three matrix products (the expanded square) so no
    (Ck, M, P) tensor is formed. Without a selection the query-norm term is dropped (STCN-style L2), which
    changes no softmax over M. Without a shrinkage s = 1.
    """
    key_dim = memory_key.shape[-2]
    memory_t = memory_key.transpose(-2, -1)
    if query_selection is None:
        memory_norm = memory_key.pow(2).sum(dim=-2).unsqueeze(-1)
        cross = 2 * (memory_t @ query_key)
        result = cross - memory_norm
    else:
        memory_norm = memory_t.pow(2) @ query_selection
        cross = 2 * (memory_t @ (query_key * query_selection))
        query_norm = (query_selection * query_key.pow(2)).sum(dim=-2, keepdim=True)
        result = cross - memory_norm - query_norm
    if memory_shrinkage is not None:
        result = result * memory_shrinkage.transpose(-2, -1)
    return result / math.sqrt(key_dim)


def top_k_softmax(scores: Tensor, top_k: int) -> Tensor:
    """Softmax over the k largest scores along the memory axis, zero elsewhere: (..., M, P) -> (..., M, P).

    Two deliberate fixes over XMem: k is capped at M (XMem raises when a frame or a new object group has
    fewer than k elements), and the maximum is subtracted before exponentiating (XMem's exp underflows to
    0/0 = NaN when all k scores are below about -104 in float32); otherwise the result is the same.
    """
    k = min(top_k, scores.shape[-2])
    values, indices = torch.topk(scores, k=k, dim=-2)
    weights = torch.exp(values - values[..., :1, :])
    weights = weights / weights.sum(dim=-2, keepdim=True)
    return torch.zeros_like(scores).scatter_(-2, indices, weights)


def readout(values: Tensor, affinity: Tensor) -> Tensor:
    """Affinity-weighted memory values: (..., N, Cv, M) and (..., M, P) -> (..., N, Cv, P)."""
    return values @ affinity.unsqueeze(-3)


def usage(affinity: Tensor) -> Tensor:
    """How much each memory element was read by one query frame: (..., M, P) -> (..., M)."""
    return affinity.sum(dim=-1)

"""Pure maths of the memory readout: anisotropic L2 similarity, top-k softmax, readout, usage.

Memory tensors are laid out (..., C, M) with M memory elements, query tensors (..., C, P) with P query
positions (flattened h*w); affinities are (..., M, P) and sum to one over the memory axis M.
"""

from __future__ import annotations

import math
import threading
import warnings

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


# The sparse readout used by the fast path. It works in query-major layout: scores (P, M), so that the top-k
# runs along contiguous memory and no dense (M, P) affinity is ever formed. Scores and top-k weights are the
# same bits as the functions above give (transposed); only the readout's summation order differs (k terms
# instead of a matrix product over all M), which changes results at float rounding level.


class Workspace:
    """Reusable scratch buffers for the (P, M) score matrices of one thread's sessions.

    At 480p a full working memory gives 1620 x 16200 scores (105 MB); allocating two such tensors for
    every frame costs page faults on every frame, so the fast path keeps them. Buffers grow to the largest
    size asked for and are shared by every session of the thread (they are only used within one read-out).
    """

    def __init__(self) -> None:
        self.buffers: dict[str, Tensor] = {}

    def matrix(self, name: str, rows: int, columns: int, like: Tensor) -> Tensor:
        """An uninitialised contiguous (rows, columns) tensor of `like`'s dtype and device."""
        count = rows * columns
        buffer = self.buffers.get(name)
        # an inference tensor (made under torch.inference_mode) cannot be written outside that mode
        if (buffer is None or buffer.numel() < count or buffer.dtype != like.dtype
                or buffer.device != like.device
                or (buffer.is_inference() and not torch.is_inference_mode_enabled())):
            buffer = torch.empty(count, dtype=like.dtype, device=like.device)
            self.buffers[name] = buffer
        return buffer[:count].view(rows, columns)

    def clear(self) -> None:
        self.buffers.clear()


_THREAD = threading.local()


def thread_workspace() -> Workspace:
    """The calling thread's shared `Workspace`."""
    workspace = getattr(_THREAD, "workspace", None)
    if workspace is None:
        workspace = _THREAD.workspace = Workspace()
    return workspace


def power_of_two(value: float) -> bool:
    mantissa, _ = math.frexp(value)
    return mantissa == 0.5


def similarity_by_query(
    memory_key: Tensor, memory_shrinkage: Tensor | None, query_key: Tensor, query_selection: Tensor | None,
    workspace: Workspace | None = None,
) -> Tensor:
    """`similarity` transposed, for one frame: memory (Ck, M), (1, M); query (Ck, P) -> scores (P, M).

    Each element goes through the same float operations as in `similarity` and gets the same bits: the
    factor 2 is applied to the small query operand instead of the product, and when sqrt(Ck) is a power of
    two (Ck = 64) the division by it is applied to the shrinkage; both are exact rescalings. The large
    (P, M) tensor is updated in place, in `workspace` buffers when given (the result is then a view of a
    buffer, valid until the next call with the same workspace).
    """
    key_dim = memory_key.shape[-2]
    positions, size = query_key.shape[-1], memory_key.shape[-1]
    scale = math.sqrt(key_dim)

    def matrix(name: str) -> Tensor | None:
        return None if workspace is None else workspace.matrix(name, positions, size, memory_key)

    if query_selection is None:
        memory_norm = memory_key.pow(2).sum(dim=-2).unsqueeze(0)
        result = torch.mm((2 * query_key).t(), memory_key, out=matrix("scores"))
        result.sub_(memory_norm)
    else:
        result = torch.mm((2 * (query_key * query_selection)).t(), memory_key, out=matrix("scores"))
        result.sub_(torch.mm(query_selection.t(), memory_key.pow(2), out=matrix("memory_norm")))
        query_norm = (query_selection * query_key.pow(2)).sum(dim=-2, keepdim=True)
        result.sub_(query_norm.t())
    if memory_shrinkage is None:
        return result.div_(scale)
    if power_of_two(scale):
        return result.mul_(memory_shrinkage / scale)
    return result.mul_(memory_shrinkage).div_(scale)


def top_k_weights(scores: Tensor, top_k: int) -> tuple[Tensor, Tensor]:
    """The non-zero part of `top_k_softmax` for scores (P, M): weights and memory indices, both (k, P).

    The weights are bit-identical to the non-zero entries of `top_k_softmax(scores.T, top_k)`.
    """
    k = min(top_k, scores.shape[-1])
    values, indices = torch.topk(scores, k=k, dim=-1)
    values = values.t().contiguous()
    weights = torch.exp(values - values[:1])
    weights = weights / weights.sum(dim=0, keepdim=True)
    return weights, indices.t().contiguous()


def sparse_readout(values: Tensor, weights: Tensor, indices: Tensor) -> Tensor:
    """`readout` from top-k weights: values (N, Cv, M), weights / indices (k, P) -> (N, Cv, P).

    Reads only the k chosen memory columns of each query position (k * P columns instead of a dense
    M x P product).
    """
    count, channels, size = values.shape
    top, positions = weights.shape
    weights = weights.to(values.dtype)
    if values.dtype not in (torch.float32, torch.float64):  # sparse kernels are float32 / float64 only
        return (values[:, :, indices] * weights).sum(dim=2)
    # (N*Cv, M) @ sparse (M, P) is computed as sparse (P, M) @ (M, N*Cv): one row of k entries per position
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        rows = torch.sparse_csr_tensor(
            torch.arange(0, top * positions + 1, top, device=values.device),
            indices.t().reshape(-1), weights.t().reshape(-1), size=(positions, size),
            check_invariants=False)
    dense = values.reshape(count * channels, size).t()
    return torch.mm(rows, dense).t().reshape(count, channels, positions)


def sparse_usage(weights: Tensor, indices: Tensor, size: int) -> Tensor:
    """`usage` from top-k weights / indices (k, P) for a memory of `size` elements -> (size,)."""
    return weights.new_zeros(size).index_add_(0, indices.reshape(-1), weights.reshape(-1))

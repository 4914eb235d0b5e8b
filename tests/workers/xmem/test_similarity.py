"""Readout maths: anisotropic L2 similarity, top-k softmax with its two fixes, readout, usage."""

from __future__ import annotations

import math

import pytest
import torch

from workers.xmem.similarity import readout, similarity, top_k_softmax, usage

CK, M, P = 8, 12, 5


def tensors(seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    memory_key = torch.randn(CK, M, generator=generator)
    shrinkage = 1 + torch.rand(1, M, generator=generator) * 3
    query_key = torch.randn(CK, P, generator=generator)
    selection = torch.rand(CK, P, generator=generator)
    return memory_key, shrinkage, query_key, selection


def direct(memory_key, shrinkage, query_key, selection) -> torch.Tensor:
    """The definition, term by term: -sum_c e[c,p] (k[c,m] - q[c,p])^2 * s[m] / sqrt(Ck)."""
    diff = memory_key[:, :, None] - query_key[:, None, :]
    weighted = (selection[:, None, :] * diff.pow(2)).sum(dim=0)
    return -weighted * shrinkage.view(M, 1) / math.sqrt(CK)


def test_similarity_is_the_anisotropic_l2_of_the_spec() -> None:
    memory_key, shrinkage, query_key, selection = tensors()
    result = similarity(memory_key, shrinkage, query_key, selection)
    assert result.shape == (M, P)
    expected = direct(memory_key, shrinkage, query_key, selection)
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-5)
    assert (result <= 1e-5).all()


def test_shrinkage_scales_memory_rows_and_selection_weights_query_channels() -> None:
    memory_key, shrinkage, query_key, selection = tensors(1)
    base = similarity(memory_key, shrinkage, query_key, selection)
    doubled = shrinkage.clone()
    doubled[0, 3] *= 2
    changed = similarity(memory_key, doubled, query_key, selection)
    torch.testing.assert_close(changed[3], 2 * base[3])
    torch.testing.assert_close(changed[torch.arange(M) != 3], base[torch.arange(M) != 3])
    only_first_channel = torch.zeros_like(selection)
    only_first_channel[0] = 1
    expected = -(memory_key[0, :, None] - query_key[0, None, :]).pow(2) * shrinkage.view(M, 1) / math.sqrt(CK)
    torch.testing.assert_close(similarity(memory_key, shrinkage, query_key, only_first_channel), expected)


def test_similarity_without_selection_or_shrinkage_is_plain_l2_up_to_a_per_query_constant() -> None:
    memory_key, _, query_key, _ = tensors(2)
    result = similarity(memory_key, None, query_key, None)
    full = direct(memory_key, torch.ones(1, M), query_key, torch.ones(CK, P))
    offset = result - full
    torch.testing.assert_close(offset, query_key.pow(2).sum(dim=0, keepdim=True).expand(M, P) / math.sqrt(CK))
    torch.testing.assert_close(torch.softmax(result, dim=0), torch.softmax(full, dim=0))


def naive_top_k_softmax(scores: torch.Tensor, k: int) -> torch.Tensor:
    """XMem's version: exponentiate the top-k scores without subtracting their maximum."""
    values, indices = torch.topk(scores, k=k, dim=0)
    weights = torch.exp(values)
    return torch.zeros_like(scores).scatter_(0, indices, weights / weights.sum(dim=0, keepdim=True))


def test_top_k_softmax_keeps_k_largest_and_matches_xmem_on_normal_scores() -> None:
    scores = -torch.rand(M, P, generator=torch.Generator().manual_seed(3)) * 10
    affinity = top_k_softmax(scores, 4)
    assert ((affinity > 0).sum(dim=0) == 4).all()
    torch.testing.assert_close(affinity.sum(dim=0), torch.ones(P))
    top = torch.topk(scores, 4, dim=0).indices
    assert (affinity.gather(0, top) > 0).all()
    torch.testing.assert_close(affinity, naive_top_k_softmax(scores, 4))


def test_top_k_softmax_does_not_underflow_to_nan() -> None:
    scores = -torch.rand(M, P, generator=torch.Generator().manual_seed(4)) * 10
    far = scores - 200.0
    assert torch.isnan(naive_top_k_softmax(far, 4)).any(dim=0).all()
    affinity = top_k_softmax(far, 4)
    assert torch.isfinite(affinity).all()
    torch.testing.assert_close(affinity.sum(dim=0), torch.ones(P))
    torch.testing.assert_close(affinity, top_k_softmax(scores, 4))
    half = top_k_softmax(far.half(), 4)
    assert torch.isfinite(half).all()


def test_top_k_larger_than_memory_uses_every_element() -> None:
    scores = -torch.rand(3, P, generator=torch.Generator().manual_seed(5)) * 5
    with pytest.raises(RuntimeError):
        torch.topk(scores, 30, dim=0)
    torch.testing.assert_close(top_k_softmax(scores, 30), torch.softmax(scores, dim=0))


def test_readout_and_usage() -> None:
    generator = torch.Generator().manual_seed(6)
    values = torch.randn(2, 4, M, generator=generator)
    affinity = top_k_softmax(torch.randn(M, P, generator=generator), 3)
    result = readout(values, affinity)
    assert result.shape == (2, 4, P)
    torch.testing.assert_close(result[1, :, 2], (values[1] * affinity[:, 2]).sum(dim=1))
    torch.testing.assert_close(usage(affinity), affinity.sum(dim=1))
    assert usage(affinity).sum().item() == pytest.approx(P)

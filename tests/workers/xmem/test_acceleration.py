"""The fast inference path against the reference path (issue #10).

The fast path's memory read-out uses the same scores and top-k weights as the reference (bit for bit) and
sums only the k chosen values; whole videos through the fast path stay within float rounding of the
reference. The reference path (fast=False) and training are untouched.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from workers.xmem import InferenceConfig, InferenceCore, load_network
from workers.xmem.acceleration import Acceleration, accelerate, conv_bn_pairs, is_inference_only
from workers.xmem.checkpoint import save_state_dict
from workers.xmem.network import NetworkSpec, XMemNetwork
from workers.xmem.random_init import InitOptions, make_random_network, write_random_checkpoint
from workers.xmem.similarity import (
    Workspace,
    readout,
    similarity,
    similarity_by_query,
    sparse_readout,
    sparse_usage,
    top_k_softmax,
    top_k_weights,
    usage,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOLERANCE = 1e-6
"""Largest probability difference between the fast and the reference path over a video with trained
weights (measured: 1.2e-7, one float32 step at 1.0)."""
RANDOM_TOLERANCE = 2e-5
"""The same over the first frames of a random network (measured: 1.1e-5). A random network's recurrence
(sensory memory, memory values) amplifies float rounding from frame to frame (3e-4 after 16 frames), which a
trained network's does not; float32 itself is that far from float64 on such networks."""
BUNDLED = Path(__file__).parents[3] / "workers" / "weights" / "vosd-lite.pth"
SMALL_OPTIONS = InitOptions(batches=1, batch_size=1, image_size=(48, 64))


@pytest.fixture(scope="module")
def small() -> XMemNetwork:
    return make_random_network(NetworkSpec.small(), seed=3, options=SMALL_OPTIONS)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("fast") / "small.pth"
    return write_random_checkpoint(path, NetworkSpec.small(), seed=4, options=SMALL_OPTIONS)


def memory_and_query(size: int, positions: int, seed: int = 0, key_dim: int = 16) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    key = torch.randn(key_dim, size, generator=generator)
    shrinkage = torch.rand(1, size, generator=generator) * 3 + 1
    query = torch.randn(key_dim, positions, generator=generator)
    selection = torch.rand(key_dim, positions, generator=generator)
    return key, shrinkage, query, selection


@pytest.mark.parametrize("with_selection", [True, False])
@pytest.mark.parametrize("with_shrinkage", [True, False])
@pytest.mark.parametrize("key_dim", [16, 12])  # sqrt 4 (folded into the shrinkage) and sqrt 12
def test_query_major_scores_are_the_reference_bits(with_selection: bool, with_shrinkage: bool,
                                                   key_dim: int) -> None:
    key, shrinkage, query, selection = memory_and_query(300, 70, key_dim=key_dim)
    shrink = shrinkage if with_shrinkage else None
    select = selection if with_selection else None
    reference = similarity(key, shrink, query, select).t()
    assert torch.equal(similarity_by_query(key, shrink, query, select), reference)
    workspace = Workspace()
    larger = memory_and_query(400, 70, seed=9, key_dim=key_dim)
    similarity_by_query(larger[0], larger[1], larger[2], larger[3], workspace)  # buffers of another size
    assert torch.equal(similarity_by_query(key, shrink, query, select, workspace), reference)
    with torch.inference_mode():  # buffers made in inference mode are replaced when used outside it
        similarity_by_query(larger[0], larger[1], larger[2], larger[3], workspace)
    assert torch.equal(similarity_by_query(key, shrink, query, select, workspace), reference)


@pytest.mark.parametrize("size", [300, 12])
def test_sparse_readout_matches_the_dense_top_k_readout(size: int) -> None:
    key, shrinkage, query, selection = memory_and_query(size, 70, seed=1)
    values = torch.randn(3, 8, size, generator=torch.Generator().manual_seed(2))
    scores = similarity(key, shrinkage, query, selection)
    affinity = top_k_softmax(scores, 30)
    weights, indices = top_k_weights(scores.t().contiguous(), 30)
    assert weights.shape == indices.shape == (min(30, size), 70)
    # the weights are the reference's non-zero affinities, bit for bit
    assert torch.equal(affinity.gather(0, indices), weights)
    torch.testing.assert_close(sparse_readout(values, weights, indices), readout(values, affinity),
                               atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(sparse_usage(weights, indices, size), usage(affinity), atol=1e-5, rtol=1e-5)


def run_video(core: InferenceCore, frames: int, late: int) -> list[torch.Tensor]:
    """Object 1 on frame 0 and object 2 on frame `late` (a second object group) over a moving texture."""
    generator = torch.Generator().manual_seed(5)
    texture = torch.randn(3, 48 + frames, 64 + frames, generator=generator)
    results = []
    for t in range(frames):
        image = texture[:, t : t + 45, t : t + 60]
        if t == 0:
            core.set_all_labels([1])
            mask = torch.zeros(1, 45, 60)
            mask[0, 10:30, 10:35] = 1
            prob = core.step(image, mask, valid_labels=[1])
        elif t == late:
            core.set_all_labels([1, 2])
            mask = torch.zeros(2, 45, 60)
            mask[1, 5:20, 40:58] = 1
            prob = core.step(image, mask, valid_labels=[2])
        else:
            prob = core.step(image, end=t == frames - 1)
        results.append(prob.clone())
    return results


LONG_TERM = InferenceConfig(mem_every=1, max_mid_term_frames=4, min_mid_term_frames=2, num_prototypes=6,
                            max_long_term_elements=20, top_k=5)
"""Small memory bounds: compressions into long-term memory and evictions happen within 16 frames."""


def largest_differences(network: XMemNetwork, frames: int) -> list[float]:
    reference = run_video(InferenceCore(network, LONG_TERM, fast=False), frames, late=6)
    fast_core = InferenceCore(network, LONG_TERM)
    fast = run_video(fast_core, frames, late=6)
    assert fast_core.fast and fast_core.memory.stats()["long_term"] > 0
    assert all(a.shape == b.shape for a, b in zip(reference, fast, strict=True))
    return [float((a - b).abs().max()) for a, b in zip(reference, fast, strict=True)]


def test_fast_core_follows_the_reference_with_trained_weights() -> None:
    differences = largest_differences(load_network(BUNDLED), 16)
    assert max(differences) <= TOLERANCE, differences


def test_fast_core_follows_the_reference_on_a_random_network(small: XMemNetwork) -> None:
    differences = largest_differences(small, 9)
    assert max(differences[:7]) <= RANDOM_TOLERANCE, differences  # up to the second group's first frame
    assert max(differences) <= 10 * RANDOM_TOLERANCE, differences


def test_reference_path_and_training_are_untouched(checkpoint: Path) -> None:
    state = torch.load(checkpoint, weights_only=True)
    reference = load_network(checkpoint, fast=False)
    assert not is_inference_only(reference)
    assert reference.state_dict().keys() == state.keys()
    assert all(torch.equal(reference.state_dict()[name], tensor) for name, tensor in state.items())
    assert not InferenceCore(reference, InferenceConfig(), fast=False).memory.fast

    from workers.training.config import TrainConfig
    from workers.training.trainer import initial_network

    trainable = initial_network(TrainConfig(), checkpoint)
    assert trainable.state_dict().keys() == state.keys()
    assert any(isinstance(module, torch.nn.BatchNorm2d) for module in trainable.modules())


def test_folded_network_is_close_and_refuses_to_be_saved(checkpoint: Path, tmp_path: Path) -> None:
    reference = load_network(checkpoint, fast=False)
    folded = accelerate(load_network(checkpoint, fast=False),
                        Acceleration(fold_batchnorm=True, channels_last=True))
    assert is_inference_only(folded) and not conv_bn_pairs(folded)
    assert not any(isinstance(module, torch.nn.BatchNorm2d) for module in folded.modules())
    image = torch.randn(1, 3, 48, 64, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        expected = reference.encode_key(image, need_shrinkage=True, need_selection=True)
        actual = folded.encode_key(image, need_shrinkage=True, need_selection=True)
    for want, got in zip(expected, actual, strict=True):
        assert want is not None and got is not None
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="rewritten for inference"):
        save_state_dict(folded, tmp_path / "folded.pth")
    save_state_dict(reference, tmp_path / "reference.pth")

"""Memory stays bounded on long videos: thousands of frames through the real (small, random) network with
compression and long-term eviction on almost every memory frame, and an object that enters midway."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from workers.xmem import InferenceConfig, InferenceCore
from workers.xmem.network import NetworkSpec, XMemNetwork
from workers.xmem.random_init import InitOptions, make_random_network

H, W = 32, 48
FRAME = 6
"""Memory elements per frame: 32x48 pads to itself, h x w = 2 x 3."""
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


@pytest.fixture(scope="module")
def network(one_torch_thread: None) -> XMemNetwork:
    options = InitOptions(batches=1, batch_size=1, image_size=(H, W))
    return make_random_network(NetworkSpec.small(), seed=7, options=options)


def frames(count: int) -> Iterator[torch.Tensor]:
    """A random texture seen through a window that wanders over it (wrapping around), normalised."""
    texture = torch.randint(0, 256, (3, 4 * H, 4 * W), generator=torch.Generator().manual_seed(0),
                            dtype=torch.uint8).float() / 255
    for t in range(count):
        top, left = (t * 3) % (3 * H), (t * 5) % (3 * W)
        yield (texture[:, top : top + H, left : left + W] - MEAN) / STD


def box(labels: int, channel: int, top: int, left: int) -> torch.Tensor:
    mask = torch.zeros(labels, H, W)
    mask[channel, top : top + 14, left : left + 18] = 1
    return mask


def run_long_video(network: XMemNetwork, config: InferenceConfig, count: int,
                   late_frame: int) -> dict[str, int]:
    """Check the bounds after every frame; returns how often WM was compressed and the late group's peak."""
    core = InferenceCore(network, config)
    compressions, late_in_long_term, previous = 0, 0, 0
    for t, image in enumerate(frames(count)):
        if t == 0:
            core.set_all_labels([1])
            prob = core.step(image, box(1, 0, 4, 6), valid_labels=[1])
        elif t == late_frame:
            core.set_all_labels([1, 2])
            prob = core.step(image, box(2, 1, 16, 26), valid_labels=[2])
        else:
            prob = core.step(image, end=t == count - 1)
        stats = core.memory_stats()
        objects = 1 if t < late_frame else 2
        assert stats["working"] <= config.max_mid_term_frames * FRAME, (t, stats)
        assert stats["long_term"] <= config.max_long_term_elements, (t, stats)
        assert stats["sensory_objects"] == objects == len(stats["working_groups"]), (t, stats)
        assert all(size <= stats["working"] for size in stats["working_groups"])
        assert all(size <= stats["long_term"] for size in stats["long_term_groups"])
        assert prob.shape == (1 + objects, H, W) and torch.isfinite(prob).all(), t
        compressions += stats["working"] < previous
        previous = stats["working"]
        if objects == 2:
            late_in_long_term = max(late_in_long_term, stats["long_term_groups"][1])
            if t > late_frame + 2 * config.max_mid_term_frames:
                assert stats["working_groups"][1] == stats["working"] - FRAME, (t, stats)
    return {"compressions": compressions, "late_in_long_term": late_in_long_term}


def test_two_thousand_frames_with_usage_counting(network: XMemNetwork) -> None:
    """1,000 compressions add 4,000 prototypes to a long-term memory capped at 16: eviction runs at almost
    every compression, with two object groups for the second half."""
    config = InferenceConfig(mem_every=1, top_k=8, max_mid_term_frames=4, min_mid_term_frames=2,
                             num_prototypes=4, max_long_term_elements=16)
    result = run_long_video(network, config, 2000, late_frame=1000)
    assert result["compressions"] >= 990
    assert result["late_in_long_term"] > 0


def test_without_usage_counting_long_term_memory_stays_bounded(network: XMemNetwork) -> None:
    config = InferenceConfig(mem_every=2, top_k=8, max_mid_term_frames=4, min_mid_term_frames=2,
                             num_prototypes=4, max_long_term_elements=10, enable_long_term_count_usage=False)
    result = run_long_video(network, config, 400, late_frame=150)
    assert result["compressions"] >= 95
    assert result["late_in_long_term"] > 0

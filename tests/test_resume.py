"""Resuming a video from a checkpoint: a session saved at frame k and loaded into a fresh session continues
exactly as the uninterrupted one (engine), on a small calibrated random network."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from workers.xmem.config import InferenceConfig
from workers.xmem.init import InitOptions, make_random_network
from workers.xmem.network import NetworkSpec, XMemNetwork
from workers.xmem.session import VideoSession, load_state, save_state

H, W = 48, 64
FRAMES = 16
LATE_FRAME = 4


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def network() -> XMemNetwork:
    options = InitOptions(batches=1, batch_size=1, image_size=(H, W))
    return make_random_network(NetworkSpec.small(), seed=5, options=options)


def video(frames: int, seed: int = 0) -> list[np.ndarray]:
    texture = np.random.default_rng(seed).integers(0, 256, size=(H + frames, W + frames, 3), dtype=np.uint8)
    return [texture[t : t + H, t : t + W] for t in range(frames)]


def masks() -> dict[int, np.ndarray]:
    first = np.zeros((H, W), np.uint8)
    first[4:24, 4:28], first[20:44, 36:60] = 3, 7
    late = np.zeros((H, W), np.uint8)
    late[30:46, 6:22] = 5
    return {0: first, LATE_FRAME: late}


def consolidating(**overrides: int) -> InferenceConfig:
    """Every frame a memory frame, working memory compressed every few frames and long-term memory so
    small that it evicts: 12 memory elements per 48x64 frame."""
    options = dict(mem_every=1, top_k=8, max_mid_term_frames=4, min_mid_term_frames=2, num_prototypes=6,
                   max_long_term_elements=14)
    return InferenceConfig(**{**options, **overrides})


def step(session: VideoSession, frames: list[np.ndarray], t: int) -> np.ndarray:
    result = session.step(frames[t], masks().get(t), end=t == len(frames) - 1, keep_probabilities=True)
    return result.probabilities


@pytest.mark.parametrize(
    ("config", "stop_after"),
    [
        (consolidating(), 2),  # before the late object
        (consolidating(), 9),  # after several consolidations and an eviction, with two object groups
        (consolidating(deep_update_every=3), 10),  # deep updates on their own schedule
        (consolidating(enable_long_term_count_usage=False), 11),  # eviction of the oldest prototypes
        (InferenceConfig(top_k=8, mem_every=3), 7),  # default long-term bounds, memory frames every third frame
    ],
)
def test_a_restored_session_continues_exactly_as_the_uninterrupted_one(
    network: XMemNetwork, tmp_path: Path, config: InferenceConfig, stop_after: int
) -> None:
    frames = video(FRAMES)
    reference = VideoSession(network, config, size=-1)
    expected = [step(reference, frames, t) for t in range(FRAMES)]

    interrupted = VideoSession(network, config, size=-1)
    for t in range(stop_after + 1):
        np.testing.assert_array_equal(step(interrupted, frames, t), expected[t])
    stats = interrupted.memory_stats()
    saved = save_state(interrupted.state_dict(), tmp_path / "state.pt")
    assert saved == (tmp_path / "state.pt").stat().st_size and not list(tmp_path.glob(".*.tmp"))
    del interrupted

    resumed = VideoSession(network, config, size=-1)
    resumed.load_state_dict(load_state(tmp_path / "state.pt"))
    assert resumed.memory_stats() == stats and stats["sensory_objects"] > 0
    if stop_after >= 9 and config.max_mid_term_frames == 4:
        assert stats["long_term"] > 0 and len(stats["long_term_groups"]) == 2
    for t in range(stop_after + 1, FRAMES):
        np.testing.assert_array_equal(step(resumed, frames, t), expected[t], err_msg=f"frame {t}")
    assert resumed.memory_stats() == reference.memory_stats()


def test_a_state_from_other_options_or_another_size_is_refused(network: XMemNetwork) -> None:
    frames = video(3)
    session = VideoSession(network, consolidating(), size=-1)
    for t in range(3):
        step(session, frames, t)
    state = session.state_dict()
    with pytest.raises(ValueError, match="inference options"):
        VideoSession(network, consolidating(top_k=4), size=-1).load_state_dict(state)
    with pytest.raises(ValueError, match="working size"):
        VideoSession(network, consolidating(), size=32).load_state_dict(state)

"""AutoSession on synthetic clips: waiting for the object, seeding, scene-cut re-seeds, drift re-seeds by
either policy, several objects, and state_dict continuation. XMem is a small calibrated random network;
TMO is BrightObjectTMO (tests/auto_clips.py), a thresholding implementation of TMO's interface."""

from __future__ import annotations

import numpy as np
import pytest

from auto_clips import BrightObjectTMO, H, W, clip, square_mask
from workers.auto.config import AutoConfig
from workers.auto.session import SEARCHING, TRACKING, AutoSession, TMOOnlySession
from workers.xmem.config import InferenceConfig
from workers.xmem.network import NetworkSpec, XMemNetwork
from workers.xmem.random_init import InitOptions, make_random_network
from workers.xmem.session import VideoSession, load_state, save_state

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def network() -> XMemNetwork:
    options = InitOptions(batches=1, batch_size=1, image_size=(H, W))
    return make_random_network(NetworkSpec.small(), seed=5, options=options)


def session(network: XMemNetwork, **options: object) -> AutoSession:
    video = VideoSession(network, InferenceConfig(top_k=8, mem_every=2), size=-1)
    return AutoSession(BrightObjectTMO(), video, AutoConfig.from_mapping(options))


def run(auto: AutoSession, frames: list[np.ndarray]) -> list:
    return [auto.step(f, end=t == len(frames) - 1) for t, f in enumerate(frames)]


def test_waits_while_there_is_no_object_then_seeds(network: XMemNetwork) -> None:
    frames = clip(12, appear=4)
    auto = session(network, stable_frames=3)
    results = run(auto, frames)
    assert [r.state for r in results[:6]] == [SEARCHING] * 6
    assert all(not r.index_mask.any() for r in results[:6]), "nothing is written while searching"
    events = [r.event for r in results if r.event is not None]
    assert events == [{"kind": "seed", "frame": 6, "reason": "first"}], "3 stable frames: 4, 5, 6"
    assert results[6].state == TRACKING
    assert np.array_equal(results[6].index_mask, square_mask(frames[6])), "the seed frame shows the seed"
    assert auto.seeds == 1 and auto.last_seed == 6


def test_unstable_or_implausible_masks_do_not_seed(network: XMemNetwork) -> None:
    tiny = clip(8, size=2)  # 4 px of 3072: below min_area
    assert all(r.state == SEARCHING for r in run(session(network), tiny))
    assert all(r.state == SEARCHING for r in run(session(network, min_confidence=0.99), clip(8)))


def test_scene_cut_reseeds_and_reports_it(network: XMemNetwork) -> None:
    frames = clip(20, cut=10)
    auto = session(network, stable_frames=2, check_every=100)
    results = run(auto, frames)
    events = [r.event for r in results if r.event is not None]
    assert events == [{"kind": "seed", "frame": 1, "reason": "first"},
                      {"kind": "reseed", "frame": 11, "reason": "cut"}]
    assert results[10].state == SEARCHING and not results[10].index_mask.any()
    assert np.array_equal(results[11].index_mask, square_mask(frames[11])), "the new object is the seed"
    tmo = auto.tmo
    assert isinstance(tmo, BrightObjectTMO) and tmo.calls == 4, "frames 0, 1, then 10, 11 after the cut"
    assert tmo.motion_frames[2] is None, "no flow across the cut"
    assert tmo.motion_frames[3] is frames[10]


@pytest.mark.parametrize("policy", ["reset", "memory"])
def test_drift_reseeds_by_the_policy(network: XMemNetwork, policy: str) -> None:
    # From frame 15 the object jumps to the other side without a cut: XMem (random weights) cannot follow
    # it, TMO finds it at once; after two disagreeing checks XMem is re-anchored on TMO's mask.
    frames = clip(30)
    for t in range(15, 30):
        frames[t][square_mask(frames[t]) == 1] = 40
        frames[t][30:42, 44:56] = 240
    auto = session(network, stable_frames=2, check_every=2, drift_checks=2, reseed=policy,
                   cut_threshold=0.5)
    results = run(auto, frames)
    reseeds = [r.event for r in results if r.event is not None and r.event["kind"] == "reseed"]
    assert reseeds and all(e["reason"] in ("drift", "collapse") for e in reseeds)
    assert any(e["frame"] in range(15, 21) for e in reseeds), "the jump is caught within 2 checks"
    for event in reseeds:
        t = event["frame"]
        assert np.array_equal(results[t].index_mask, square_mask(frames[t])), "re-seeded on TMO's mask"
        assert (t - 1) % 2 == 0 or any(e["frame"] < t for e in reseeds), "only on check frames"
    last = reseeds[-1]["frame"]
    steps = auto.video.core.curr_ti + 1
    # reset: XMem starts again at the last re-seed; memory: one video from frame 1 on, where each re-seed
    # frame is stepped twice (tracked, then anchored on TMO's mask, as XMem's interactive corrections are).
    assert steps == (30 - last if policy == "reset" else 29 + len(reseeds))
    assert auto.video.labels == [1]


def test_tmo_runs_only_every_check_every_frames_while_tracking(network: XMemNetwork) -> None:
    frames = clip(17)
    auto = session(network, stable_frames=2, check_every=4, drift_iou=0.0, min_area=1e-4)
    results = run(auto, frames)
    assert [r.event for r in results if r.event] == [{"kind": "seed", "frame": 1, "reason": "first"}]
    tmo = auto.tmo
    assert isinstance(tmo, BrightObjectTMO)
    assert tmo.calls == 2 + 3, "frames 0 and 1 searching, then checks at frames 5, 9 and 13"
    motion = zip(tmo.motion_frames[1:], (1, 5, 9, 13), strict=True)
    assert all(m is frames[t - 1] for m, t in motion), "each TMO run gets flow from the frame just before"


def test_several_objects(network: XMemNetwork) -> None:
    frames = clip(6)
    for frame in frames:
        frame[34:44, 40:60] = 240  # a second, larger object
    results = run(session(network, stable_frames=2, objects=2), frames)
    seeded = results[1].index_mask
    assert (seeded[34:44, 40:60] == 1).all() and (seeded[8:20, 5:17] == 2).all()


def test_state_dict_continues_identically(network: XMemNetwork, tmp_path) -> None:
    frames = clip(24, appear=2, cut=14)
    whole = run(session(network, stable_frames=2, check_every=3), frames)
    first = session(network, stable_frames=2, check_every=3)
    for t in range(9):
        first.step(frames[t])
    save_state({"session": first.state_dict()}, tmp_path / "state.pth")
    second = session(network, stable_frames=2, check_every=3)
    second.load_state_dict(load_state(tmp_path / "state.pth")["session"])
    rest = [second.step(f, end=t == len(frames) - 1) for t, f in enumerate(frames) if t >= 9]
    for a, b in zip(whole[9:], rest, strict=True):
        assert np.array_equal(a.index_mask, b.index_mask) and a.event == b.event and a.state == b.state
    assert second.seeds == 2


def test_tmo_only_session_writes_tmo_masks(tmp_path) -> None:
    frames = clip(4)
    only = TMOOnlySession(BrightObjectTMO())
    results = [only.step(f) for f in frames]
    assert all(np.array_equal(r.index_mask, square_mask(f)) for r, f in zip(results, frames, strict=True))
    save_state({"session": only.state_dict()}, tmp_path / "tmo.pth")
    again = TMOOnlySession(BrightObjectTMO())
    again.load_state_dict(load_state(tmp_path / "tmo.pth")["session"])
    assert again.frame == 4 and np.array_equal(again.tmo.previous, frames[-1])

"""Optical flow for TMO: direction of DIS flow, colour coding against torchvision, RAFT wiring, sessions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.utils import flow_to_image

from tmo_helpers import SMALL, random_network
from videos import render_moving_shapes
from workers.tmo.flow import DISFlow, FlowConfig, FlowError, RAFTFlow, flow_to_colour, make_flow
from workers.tmo.session import TMOSession


def square_frames(dx: int, dy: int, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A textured square on a textured background, moved by (dx, dy) pixels between the two frames."""
    rng = np.random.default_rng(0)
    background = (rng.random((size // 4, size // 4, 3)) * 80).repeat(4, 0).repeat(4, 1).astype(np.uint8)
    patch = (120 + rng.random((8, 8, 3)) * 135).repeat(4, 0).repeat(4, 1).astype(np.uint8)
    frames = []
    for shift in (0, 1):
        frame = background.copy()
        y, x = 30 + shift * dy, 30 + shift * dx
        frame[y:y + 32, x:x + 32] = patch
        frames.append(frame)
    return frames[0], frames[1]


@pytest.mark.parametrize("dx, dy", [(4, 0), (0, -3), (-3, 2)])
def test_dis_flow_follows_a_translating_square(dx: int, dy: int) -> None:
    previous, current = square_frames(dx, dy)
    flow = DISFlow("medium")(previous, current)
    assert flow.shape == (96, 96, 2) and flow.dtype == np.float32
    inside = flow[30 + dy + 8:30 + dy + 24, 30 + dx + 8:30 + dx + 24].reshape(-1, 2)
    median = np.median(inside, axis=0)
    assert median == pytest.approx([dx, dy], abs=0.75)


def test_dis_flow_is_estimated_at_most_at_the_short_side() -> None:
    previous, current = square_frames(4, 0)
    flow = DISFlow("fast", short_side=48)(previous, current)
    assert flow.shape == (48, 48, 2)
    assert np.median(flow[23:30, 23:30, 0]) == pytest.approx(2, abs=0.6)  # half the size, half the pixels


def test_flow_colours_equal_torchvision_flow_to_image() -> None:
    rng = np.random.default_rng(1)
    ys, xs = np.mgrid[-20:20, -30:30].astype(np.float32)
    fields = [np.stack([xs, ys], axis=-1), rng.normal(size=(40, 60, 2)).astype(np.float32) * 7,
              np.stack([np.full_like(xs, 3.0), np.zeros_like(ys)], axis=-1),
              np.zeros((40, 60, 2), np.float32)]
    for flow in fields:
        ours = flow_to_colour(flow)
        theirs = flow_to_image(torch.from_numpy(flow).permute(2, 0, 1)).permute(1, 2, 0).numpy()
        assert ours.dtype == np.uint8 and ours.shape == (40, 60, 3)
        assert np.array_equal(ours, theirs)
    assert (flow_to_colour(fields[3]) == 255).all()  # no motion is white
    assert tuple(flow_to_colour(fields[2])[0, 0]) == (255, 0, 0)  # rightwards at full magnitude is red


def test_raft_loads_a_torchvision_state_dict(tmp_path) -> None:
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    path = tmp_path / "raft_small.pth"
    torch.save(raft_small(weights=None).state_dict(), path)
    estimator = make_flow(FlowConfig("raft", raft_weights=path, raft_updates=2))
    assert isinstance(estimator, RAFTFlow)
    previous, current = square_frames(4, 0, size=72)
    flow = estimator(previous[:66, :69], current[:66, :69])
    assert flow.shape == (66, 69, 2) and np.isfinite(flow).all()
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(FlowError, match="neither a torchvision raft_large nor raft_small"):
        RAFTFlow(tmp_path / "bad.pth")
    with pytest.raises(FlowError, match="--raft-weights"):
        make_flow(FlowConfig("raft"))
    assert make_flow(FlowConfig("none")) is None


def test_session_segments_a_moving_object_clip() -> None:
    network = random_network("mitb1", SMALL)
    clip = list(render_moving_shapes(frames=3, size=(80, 60)))
    session = TMOSession(network, flow=DISFlow("fast"), aos=False)
    results = [session.step(frame) for frame, _ in clip]
    assert [r.used_flow for r in results] == [False, True, True]
    for result in results:
        assert result.index_mask.shape == (60, 80) and result.index_mask.dtype == np.uint8
        assert set(np.unique(result.index_mask)) <= {0, 1}
        assert result.foreground.shape == (60, 80) and result.foreground.dtype == np.float32
        assert np.array_equal(result.index_mask, (result.foreground > 0.5).astype(np.uint8))
    frame, _ = clip[1]
    image = torch.from_numpy(frame).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        alone = network.segment(image, image).softmax(dim=1)[0, 1].numpy()
    assert not np.allclose(results[1].foreground, alone, atol=1e-3), "frame 2 must use flow, not RGB"
    rgb_only = TMOSession(network, flow=None)
    rgb_only.step(clip[0][0])
    second = rgb_only.step(frame)
    assert not second.used_flow and np.allclose(second.foreground, alone, atol=1e-5)


def test_session_with_aos_reports_the_selected_path() -> None:
    network = random_network("mitb1", SMALL)
    clip = [frame for frame, _ in render_moving_shapes(frames=2, size=(64, 48))]
    session = TMOSession(network, flow=DISFlow("fast"), aos=True)
    first, second = session.step(clip[0]), session.step(clip[1])
    assert not first.used_flow
    flow_image = flow_to_colour(DISFlow("fast")(clip[0], clip[1]))
    image, flow = (torch.from_numpy(x).permute(2, 0, 1)[None].float() / 255 for x in (clip[1], flow_image))
    with torch.no_grad():
        expected = network.select_output(image, flow)
    assert second.used_flow == expected.used_flow
    assert np.allclose(second.foreground, expected.logits.softmax(dim=1)[0, 1].numpy(), atol=1e-5)

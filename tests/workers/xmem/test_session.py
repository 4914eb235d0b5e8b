"""VideoSession: eval.py's input pipeline (normalise, then resize), label mapping, late objects, output size,
frames before the first mask, and input errors, on a small calibrated random network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from torchvision import transforms

from workers.imagenet import IMAGENET_MEAN, IMAGENET_STD
from workers.xmem.config import InferenceConfig
from workers.xmem.network import NetworkSpec, XMemNetwork
from workers.xmem.random_init import InitOptions, make_random_network
from workers.xmem.session import SessionInputError, VideoSession

pytestmark = pytest.mark.usefixtures("one_torch_thread")

H, W = 48, 64




@pytest.fixture(scope="module")
def network() -> XMemNetwork:
    options = InitOptions(batches=1, batch_size=1, image_size=(48, 64))
    return make_random_network(NetworkSpec.small(), seed=5, options=options)


def video(frames: int, seed: int = 0) -> list[np.ndarray]:
    """Windows of a random texture moving one pixel down-right per frame."""
    texture = np.random.default_rng(seed).integers(0, 256, size=(H + frames, W + frames, 3), dtype=np.uint8)
    return [texture[t : t + H, t : t + W] for t in range(frames)]


def rectangles(**boxes: tuple[int, int, int, int]) -> np.ndarray:
    """Index mask from label_<k>=(top, left, bottom, right) boxes."""
    mask = np.zeros((H, W), dtype=np.uint8)
    for name, (top, left, bottom, right) in boxes.items():
        mask[top:bottom, left:right] = int(name.removeprefix("label_"))
    return mask


def config(top_k: int = 8) -> InferenceConfig:
    return InferenceConfig(top_k=top_k, mem_every=2)


FIRST = rectangles(label_3=(4, 4, 24, 28), label_7=(20, 36, 44, 60))
LATE = rectangles(label_5=(30, 6, 46, 22))


def run(network: XMemNetwork, masks: dict[int, np.ndarray], frames: list[np.ndarray], **kwargs) -> list:
    session = VideoSession(network, config(), size=-1, **kwargs)
    return [session.step(f, masks.get(t), end=t == len(frames) - 1) for t, f in enumerate(frames)]


def relabel(mask: np.ndarray, mapping: dict[int, int]) -> np.ndarray:
    lookup = np.arange(256, dtype=np.uint8)
    for old, new in mapping.items():
        lookup[old] = new
    return lookup[mask]


def test_non_contiguous_labels_and_a_late_object_map_back(network: XMemNetwork) -> None:
    frames = video(6)
    results = run(network, {0: FIRST, 3: LATE}, frames)
    assert results[0].labels == (3, 7) and results[3].labels == (3, 7, 5)
    np.testing.assert_array_equal(results[0].index_mask, FIRST)  # the first frame returns its own mask
    late = results[3].index_mask
    assert (late[LATE == 5] == 5).all()  # the new object's mask overrides older predictions
    assert set(np.unique(late)) <= {0, 3, 5, 7} and {3, 7} <= set(np.unique(late))
    for result in results[1:]:
        assert result.index_mask.dtype == np.uint8 and result.index_mask.shape == (H, W)
        assert set(np.unique(result.index_mask)) - {0, 3, 5, 7} == set()
    # Labels in order of first appearance (3, 7, then 5) are internally 1, 2, 3: the same run with those
    # labels gives the same masks under the mapping.
    to_internal = {3: 1, 7: 2, 5: 3}
    coherent = run(network, {0: relabel(FIRST, to_internal), 3: relabel(LATE, to_internal)}, frames)
    for ours, reference in zip(results, coherent, strict=True):
        np.testing.assert_array_equal(relabel(ours.index_mask, to_internal), reference.index_mask)
    assert coherent[3].labels == (1, 2, 3)


def test_frames_before_the_first_mask_are_skipped(network: XMemNetwork) -> None:
    frames = video(5, seed=1)
    session = VideoSession(network, config(), size=-1)
    skipped = [session.step(frames[t]) for t in range(2)]
    assert all(r.skipped and not r.index_mask.any() and r.labels == () for r in skipped)
    assert not session.started
    later = [session.step(frames[t], FIRST if t == 2 else None, end=t == 4) for t in range(2, 5)]
    assert session.started and not any(r.skipped for r in later)
    fresh = run(network, {0: FIRST}, frames[2:])
    for ours, reference in zip(later, fresh, strict=True):
        np.testing.assert_array_equal(ours.index_mask, reference.index_mask)


def test_input_is_normalised_then_resized_like_torchvision(network: XMemNetwork) -> None:
    frame = video(1, seed=2)[0]
    session = VideoSession(network, config(top_k=4), size=32)
    reference = transforms.Compose([
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        transforms.Resize(32, interpolation=transforms.InterpolationMode.BILINEAR),
    ])(Image.fromarray(frame))
    image = session.image_tensor(frame)
    assert image.shape == (3, 32, 42)  # shorter side 32, longer int(32 * 64 / 48)
    torch.testing.assert_close(image, reference, rtol=0, atol=1e-5)
    unresized = VideoSession(network, config(), size=-1).image_tensor(frame)
    assert unresized.shape == (3, H, W)
    # bit for bit the arithmetic of eval.py's order (permute, scale, normalise), read-only frames included
    frame.flags.writeable = False
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    plain = (torch.tensor(frame).permute(2, 0, 1).float().div(255) - mean) / std
    assert torch.equal(VideoSession(network, config(), size=-1).image_tensor(frame), plain)


def test_resized_inference_returns_masks_at_the_input_resolution(network: XMemNetwork) -> None:
    frames = video(4, seed=3)
    session = VideoSession(network, config(top_k=4), size=32)
    results = [session.step(f, FIRST if t == 0 else None, end=t == 3, keep_probabilities=True)
               for t, f in enumerate(frames)]
    for result in results:
        assert result.index_mask.shape == (H, W)
        assert result.probabilities is not None and result.probabilities.shape == (3, H, W)
        assert result.probabilities.dtype == np.float32
        np.testing.assert_allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-4)
        np.testing.assert_array_equal(result.index_mask, np.array([0, 3, 7])[result.probabilities.argmax(0)])
    # Frame 0 is the input mask, downsampled with nearest and upsampled bilinearly: only edges may move.
    near_edge = ndimage.maximum_filter(FIRST, size=5) != ndimage.minimum_filter(FIRST, size=5)
    moved = results[0].index_mask != FIRST
    assert moved.any() and not (moved & ~near_edge).any()
    half = session.step(frames[0], output_size=(24, 32))
    assert half.index_mask.shape == (24, 32) and half.probabilities is None


def test_mixed_precision_runs_on_the_input_device(network: XMemNetwork) -> None:
    frames = video(3, seed=4)
    results = run(network, {0: FIRST}, frames, amp=True)
    assert results[-1].index_mask.shape == (H, W)
    np.testing.assert_array_equal(results[0].index_mask, FIRST)


def test_input_errors_are_explicit(network: XMemNetwork) -> None:
    frame = video(1)[0]
    session = VideoSession(network, config(), size=-1)
    with pytest.raises(SessionInputError, match="differs from frame size"):
        session.step(frame, FIRST[:-1])
    with pytest.raises(SessionInputError, match="first mask has no object"):
        session.step(frame, np.zeros((H, W), dtype=np.uint8))
    with pytest.raises(SessionInputError, match="0 \\(background\\) to 255"):
        session.step(frame, FIRST.astype(np.int32) * 100)
    with pytest.raises(SessionInputError, match="uint8 RGB"):
        session.step(frame.astype(np.float32), FIRST)
    session.step(frame, FIRST)
    with pytest.raises(SessionInputError, match=r"labels \[7\] were given on an earlier frame"):
        session.step(frame, rectangles(label_7=(0, 0, 5, 5)))


def test_reset_starts_the_video_again_as_a_fresh_session(network: XMemNetwork) -> None:
    frames = video(8)
    reused = VideoSession(network, config(), size=-1)
    for t in range(4):
        reused.step(frames[t], FIRST if t == 0 else None)
    reused.reset()
    assert not reused.started and reused.step(frames[4]).skipped
    again = [reused.step(f, LATE if t == 0 else None) for t, f in enumerate(frames[5:])]
    fresh = run(network, {0: LATE}, frames[5:])
    for a, b in zip(again, fresh, strict=True):
        assert np.array_equal(a.index_mask, b.index_mask) and a.labels == b.labels == (5,)


def test_an_anchor_mask_re_anchors_known_objects_and_keeps_memory(network: XMemNetwork) -> None:
    frames = video(6)
    session = VideoSession(network, config(), size=-1)
    with pytest.raises(SessionInputError, match="anchor frame needs a mask"):
        session.step(frames[0], FIRST, anchor=True)
    session.step(frames[0], FIRST)
    session.step(frames[1])
    with pytest.raises(SessionInputError, match="given on an earlier frame"):
        session.step(frames[2], FIRST)
    moved = rectangles(label_7=(2, 2, 20, 20), label_9=(30, 30, 40, 40))  # 3 absent, 7 moved, 9 new
    anchored = session.step(frames[2], moved, anchor=True)
    assert np.array_equal(anchored.index_mask, moved), "the anchor frame's output is the anchor mask"
    assert anchored.labels == (3, 7, 9)
    assert session.core.curr_ti == 2, "memory kept: the anchor is the video's third step"
    assert session.step(frames[3]).index_mask.shape == (H, W)


@pytest.mark.parametrize("labels", [(9,), (1,), (3, 7), (2, 4, 250)])
def test_index_mask_is_argmax_of_the_probabilities_ties_included(network: XMemNetwork, labels: tuple) -> None:
    # the fast path (one comparison for one object, max().indices for more) must equal official argmax
    session = VideoSession(network, config(), size=-1)
    first = np.zeros((H, W), dtype=np.uint8)
    for k, label in enumerate(labels):
        first[k, 0] = label
    session.mask_tensor(first, (H, W))
    generator = torch.Generator().manual_seed(len(labels))
    # coarse values make many exact ties between channels, including with the background
    prob = torch.randint(0, 4, (1 + len(labels), H, W), generator=generator).float() / 4
    prob[:, 0, 0] = 0.5  # a tie of every channel
    expected = torch.tensor([0, *labels], dtype=torch.uint8)[prob.argmax(dim=0)]
    fast = session.index_mask(prob)
    assert fast.dtype == torch.uint8
    assert torch.equal(fast, expected)

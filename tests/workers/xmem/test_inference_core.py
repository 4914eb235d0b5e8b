"""InferenceCore: the official per-frame procedure and its memory-size traces.

S1-S5 run the official-format network (random calibrated checkpoint, written and loaded like a released
one) on the spec's video: a random texture seen through a 75x100 window that moves one pixel down-right per
frame (padded to 80x112, so HW = 5 * 7 = 35 memory elements per frame).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from workers.xmem import InferenceConfig, InferenceCore, load_network
from workers.xmem.aggregate import aggregate
from workers.xmem.network import NetworkSpec, XMemNetwork
from workers.xmem.padding import Padding, pad, padding_for, unpad
from workers.xmem.random_init import InitOptions, make_random_network, write_random_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
HW = 35
BOXES = {1: (10, 40, 10, 45), 2: (35, 70, 55, 95), 3: (5, 30, 60, 95)}
"""Spec section 5 objects: label -> (top, bottom, left, right), rows and columns inclusive-exclusive."""




@pytest.fixture(scope="module")
def official(tmp_path_factory: pytest.TempPathFactory) -> XMemNetwork:
    path = tmp_path_factory.mktemp("xmem") / "random.pth"
    # The default shrinkage spread of InitOptions keeps long-term usage free of ties at zero, as in the
    # spec's reference network, so S2's evictions match its trace.
    options = InitOptions(batches=1, batch_size=1, image_size=(80, 112))
    return load_network(write_random_checkpoint(path, NetworkSpec(), seed=0, options=options))


@pytest.fixture(scope="module")
def small() -> XMemNetwork:
    return make_random_network(NetworkSpec.small(), seed=1, options=InitOptions(batches=1, batch_size=1,
                                                                               image_size=(48, 64)))


def video(frames: int, height: int = 75, width: int = 100, seed: int = 0) -> list[torch.Tensor]:
    """Normalised (3, H, W) windows of a random uint8 texture, moving one pixel down-right per frame."""
    generator = torch.Generator().manual_seed(seed)
    texture = torch.randint(0, 256, (3, height + 2 * frames, width + 2 * frames), generator=generator,
                            dtype=torch.uint8)
    return [(texture[:, t : t + height, t : t + width].float() / 255 - MEAN) / STD for t in range(frames)]


def one_hot(labels: list[int], present: list[int], height: int = 75, width: int = 100) -> torch.Tensor:
    """(len(labels), H, W) one-hot mask with the boxes of the `present` labels (others empty)."""
    mask = torch.zeros(len(labels), height, width)
    for label in present:
        top, bottom, left, right = BOXES[label]
        mask[labels.index(label), top:bottom, left:right] = 1
    return mask


@dataclass
class Frame:
    prob: torch.Tensor
    stats: dict


def run(network: XMemNetwork, config: InferenceConfig | dict, frames: int, late_frame: int | None = None,
        after: Callable[[int, InferenceCore], None] | None = None) -> list[Frame]:
    """Objects 1-2 on frame 0, object 3 on `late_frame`; the mapper's calls (set_all_labels, valid_labels).

    `after(t, core)` is called after each frame."""
    core = InferenceCore(network, config)
    results = []
    for t, image in enumerate(video(frames)):
        end = t == frames - 1
        if t == 0:
            core.set_all_labels([1, 2])
            prob = core.step(image, one_hot([1, 2], [1, 2]), valid_labels=[1, 2], end=end)
        elif t == late_frame:
            core.set_all_labels([1, 2, 3])
            prob = core.step(image, one_hot([1, 2, 3], [3]), valid_labels=[3], end=end)
        else:
            prob = core.step(image, end=end)
        assert not torch.isnan(prob).any(), f"NaN on frame {t}"
        results.append(Frame(prob.clone(), core.memory_stats()))
        if after is not None:
            after(t, core)
    return results


def trace(results: list[Frame], key: str) -> list:
    return [frame.stats[key] for frame in results]


def test_s1_eval_defaults(official: XMemNetwork) -> None:
    results = run(official, InferenceConfig(enable_long_term_count_usage=False), 12)
    assert trace(results, "working") == [35] * 5 + [70] * 5 + [105] * 2
    assert trace(results, "working_groups") == [[35]] * 5 + [[70]] * 5 + [[105]] * 2
    assert trace(results, "long_term") == [0] * 12
    assert trace(results, "sensory_objects") == [2] * 12
    assert all(frame.prob.shape == (3, 75, 100) for frame in results)
    torch.testing.assert_close(results[0].prob, aggregate(one_hot([1, 2], [1, 2]), dim=0))
    for frame in results:
        torch.testing.assert_close(frame.prob.sum(dim=0), torch.ones(75, 100))


def test_s2_compression_and_long_term_eviction(official: XMemNetwork) -> None:
    config = InferenceConfig(mem_every=1, max_mid_term_frames=4, min_mid_term_frames=2, num_prototypes=16,
                             max_long_term_elements=60)
    results = run(official, config, 20)
    assert trace(results, "working") == [35, 70, 105] + [70, 105] * 8 + [105]
    assert trace(results, "working_groups") == [[size] for size in trace(results, "working")]
    assert trace(results, "long_term") == [0, 0, 0, 16, 16, 32, 32, 48, 48] + [60] * 11
    assert trace(results, "long_term_groups") == [[size] for size in trace(results, "long_term")]


def test_s3_late_object_with_compression(official: XMemNetwork) -> None:
    """Memory frames 0, 3, 4, 7, 10, 13 (15 is the end frame); object 3 enters at frame 4 as group 1.

    Totals are the official ones. Per group, XMem gives [70, 70] at frame 10 because group 1 keeps its own
    first frame (frame 4) and reads it against frame 0's keys. Corrected, from the rules: at frame 10 WM
    holds frames 0, 3, 4, 7, 10 (175 elements), group 1 covers frames 4, 7, 10 (105). Compression keeps
    frames 0 and 10; candidates are frames 3, 4, 7, so group 1 keeps frame 10 only ([70, 35]) and frame 13
    adds one frame to both ([105, 70]). Its LT values are the prototypes whose source lies in frames 4 or 7,
    i.e. 16 minus the prototypes copied from a frame-3 key (XMem stores none for group 1 here).
    """
    config = InferenceConfig(mem_every=3, max_mid_term_frames=5, min_mid_term_frames=2, num_prototypes=16)
    keys: dict[str, torch.Tensor] = {}

    def record(t: int, core: InferenceCore) -> None:
        if t == 3:
            keys["frame 3"] = core.memory.working.key[:, HW:].clone()
        if t == 15:
            keys["long-term"] = core.memory.long_term.key.clone()

    results = run(official, config, 16, late_frame=4, after=record)
    same = keys["long-term"][:, :, None] == keys["frame 3"][:, None, :]
    late = 16 - int(same.all(dim=0).any(dim=1).sum())
    assert trace(results, "working") == [35] * 3 + [70] + [105] * 3 + [140] * 3 + [70] * 3 + [105] * 3
    assert trace(results, "working_groups") == (
        [[35]] * 3 + [[70]] + [[105, 35]] * 3 + [[140, 70]] * 3 + [[70, 35]] * 3 + [[105, 70]] * 3)
    assert trace(results, "long_term") == [0] * 10 + [16] * 6
    assert trace(results, "long_term_groups") == [[0]] * 4 + [[0, 0]] * 6 + [[16, late]] * 6
    assert trace(results, "sensory_objects") == [2] * 4 + [3] * 12
    assert all(frame.prob.shape == ((3 if t < 4 else 4), 75, 100) for t, frame in enumerate(results))


def test_s4_without_long_term_memory(official: XMemNetwork) -> None:
    results = run(official, {"enable_long_term": False, "mem_every": 2}, 10)
    assert trace(results, "working") == [35, 35, 70, 70, 105, 105, 140, 140, 175, 175]
    assert trace(results, "working_groups") == [[size] for size in trace(results, "working")]
    assert trace(results, "long_term") == [0] * 10


def test_s5_late_object_reaches_long_term_memory(official: XMemNetwork) -> None:
    """Object 3 enters at frame 1 as group 1; every frame but the last is a memory frame.

    XMem gives [70, 70] WM and [16, 7] LT at frame 4. Corrected, from the rules: at frame 4 WM holds frames
    0-4 (175), group 1 covers frames 1-4 (140); candidates are frames 1-3, all inside group 1, so all 16
    prototypes are valid for it; WM keeps frames 0 and 4, of which group 1 covers frame 4 ([70, 35]). From
    then on group 1 spans all of WM but frame 0, so every later compression gives it all 16 prototypes too.
    """
    config = InferenceConfig(mem_every=1, max_mid_term_frames=5, min_mid_term_frames=2, num_prototypes=16)
    results = run(official, config, 14, late_frame=1)
    assert trace(results, "working") == [35, 70, 105, 140] + [70, 105, 140] * 3 + [140]
    assert trace(results, "working_groups") == (
        [[35], [70, 35], [105, 70], [140, 105]] + [[70, 35], [105, 70], [140, 105]] * 3 + [[140, 105]])
    assert trace(results, "long_term") == [0] * 4 + [16] * 3 + [32] * 3 + [48] * 4
    assert trace(results, "long_term_groups") == (
        [[0], [0, 0], [0, 0], [0, 0]] + [[16, 16]] * 3 + [[32, 32]] * 3 + [[48, 48]] * 4)


def test_late_object_mask_overrides_predictions_of_older_objects(official: XMemNetwork) -> None:
    """At frame 4 the prediction for objects 1-2 (same as in a run without object 3) is zeroed inside object
    3's mask, and the three channels are aggregated."""
    config = InferenceConfig(mem_every=3, max_mid_term_frames=5, min_mid_term_frames=2, num_prototypes=16)
    without = run(official, config, 5)
    with_late = run(official, config, 5, late_frame=4)
    outside = 1 - one_hot([3], [3])[0]
    objects = torch.cat([without[4].prob[1:] * outside, one_hot([1, 2, 3], [3])[2:]])
    torch.testing.assert_close(with_late[4].prob, aggregate(objects, dim=0), atol=1e-5, rtol=1e-4)
    assert (with_late[4].prob.argmax(dim=0)[one_hot([3], [3])[0] > 0] == 3).all()


def test_top_k_30_on_a_64x64_video(official: XMemNetwork) -> None:
    core = InferenceCore(official, InferenceConfig(mem_every=1))
    frames = video(4, 64, 64)
    core.set_all_labels([1])
    mask = torch.zeros(1, 64, 64)
    mask[0, 10:40, 20:50] = 1
    outputs = [core.step(frames[0], mask, valid_labels=[1])] + [core.step(f) for f in frames[1:]]
    assert core.memory_stats()["working"] == 4 * 16
    for prob in outputs:
        assert prob.shape == (2, 64, 64) and torch.isfinite(prob).all()
        torch.testing.assert_close(prob.sum(dim=0), torch.ones(64, 64))


class Recording:
    """Runs a real network and records which steps the core asked for, with their flags."""

    def __init__(self, network: XMemNetwork) -> None:
        self.network = network
        self.spec = network.spec
        self.calls: list[tuple] = []
        self.frame = -1

    def encode_key(self, image, *, need_shrinkage, need_selection):
        self.frame += 1
        self.calls.append((self.frame, "key", need_shrinkage, need_selection))
        return self.network.encode_key(image, need_shrinkage=need_shrinkage, need_selection=need_selection)

    def encode_value(self, image, f16, hidden, masks, *, deep_update):
        self.calls.append((self.frame, "value", masks.shape[1], deep_update))
        return self.network.encode_value(image, f16, hidden, masks, deep_update=deep_update)

    def segment(self, f16, f8, f4, hidden, readout, *, update_hidden):
        self.calls.append((self.frame, "segment", readout.shape[1], update_hidden))
        return self.network.segment(f16, f8, f4, hidden, readout, update_hidden=update_hidden)

    def of(self, kind: str) -> list[tuple]:
        return [call for call in self.calls if call[1] == kind]


def run_small(network: XMemNetwork | Recording, config: InferenceConfig, frames: int,
              late: dict[int, int] | None = None) -> InferenceCore:
    """A 48x64 video with object 1 on frame 0 and late objects {frame: label}."""
    late = late or {}
    core = InferenceCore(network, config)
    labels = [1]
    for t, image in enumerate(video(frames, 48, 64, seed=3)):
        mask = valid = None
        if t == 0 or t in late:
            new = 1 if t == 0 else late[t]
            labels = labels if t == 0 else [*labels, new]
            core.set_all_labels(labels)
            mask = torch.zeros(len(labels), 48, 64)
            mask[-1, 4 + 10 * len(labels) : 20 + 10 * len(labels), 8 : 30] = 1
            valid = [new]
        core.step(image, mask, valid_labels=valid, end=t == frames - 1)
    return core


def test_memory_frames_and_hidden_updates_in_sync_mode(small: XMemNetwork) -> None:
    """Spec 2.3: mem_every 3, annotations at 0 and 4, 16 frames -> memory frames 0, 3, 4, 7, 10, 13; the
    decoder updates the hidden state on other segmented frames, the value encoder on memory frames."""
    recording = Recording(small)
    run_small(recording, InferenceConfig(mem_every=3), 16, late={4: 2})
    values = recording.of("value")
    assert [call[0] for call in values] == [0, 3, 4, 7, 10, 13]
    assert all(call[3] for call in values)
    assert [call[2] for call in values] == [1, 1, 2, 2, 2, 2]
    segments = recording.of("segment")
    assert [call[0] for call in segments] == list(range(1, 16))
    assert [call[0] for call in segments if call[3]] == [1, 2, 5, 6, 8, 9, 11, 12, 14]
    assert [call[2] for call in segments] == [1] * 4 + [2] * 11
    keys = recording.of("key")
    assert [call[0] for call in keys if call[2]] == [0, 3, 4, 7, 10, 13]
    assert all(call[3] for call in keys)


def test_non_synchronised_deep_updates(small: XMemNetwork) -> None:
    """deep_update_every 3 with mem_every 2: the counter starts at -3, so memory frames 0, 4, 8 deep-update
    (2, 6 come too soon after the last one) and the decoder updates the hidden state on every segmented
    frame except the last."""
    recording = Recording(small)
    run_small(recording, InferenceConfig(mem_every=2, deep_update_every=3), 10)
    assert [(call[0], call[3]) for call in recording.of("value")] == [
        (0, True), (2, False), (4, True), (6, False), (8, True)]
    assert [call[0] for call in recording.of("segment") if call[3]] == list(range(1, 9))


def test_without_long_term_memory_no_selection_is_computed_for_unsegmented_frames(small: XMemNetwork) -> None:
    recording = Recording(small)
    run_small(recording, InferenceConfig(enable_long_term=False, mem_every=2), 4)
    assert [call[3] for call in recording.of("key")] == [False, True, True, True]


def test_mask_frames_without_valid_labels_or_covering_every_object(small: XMemNetwork) -> None:
    core = run_small(small, InferenceConfig(mem_every=2), 3)
    image = video(4, 48, 64, seed=3)[3]
    gui_mask = torch.zeros(1, 48, 64)
    gui_mask[0, 5:25, 5:25] = 0.8
    torch.testing.assert_close(core.step(image, gui_mask), aggregate(gui_mask, dim=0))
    full_mask = torch.zeros(1, 48, 64)
    full_mask[0, 20:30, 20:40] = 1
    torch.testing.assert_close(core.step(image, full_mask, valid_labels=[1]), aggregate(full_mask, dim=0))


def test_shapes_at_sizes_that_are_not_multiples_of_16(small: XMemNetwork) -> None:
    for height, width in [(33, 47), (48, 50), (17, 64)]:
        core = InferenceCore(small, InferenceConfig())
        core.set_all_labels([1, 2])
        mask = torch.zeros(2, height, width)
        mask[0, : height // 2] = 1
        mask[1, height // 2 :, : width // 3] = 1
        frames = video(3, height, width)
        first = core.step(frames[0], mask, valid_labels=[1, 2])
        torch.testing.assert_close(first, aggregate(mask, dim=0))
        for image in frames[1:]:
            prob = core.step(image)
            assert prob.shape == (3, height, width)
            torch.testing.assert_close(prob.sum(dim=0), torch.ones(height, width))


def test_no_sensory_network_runs_without_hidden_state() -> None:
    network = make_random_network(NetworkSpec.small(hidden_dim=0), seed=2,
                                  options=InitOptions(batches=1, batch_size=1, image_size=(48, 64)))
    core = run_small(network, InferenceConfig(mem_every=2), 5, late={2: 2})
    assert core.memory_stats()["sensory_objects"] == 0
    assert core.memory_stats()["working_groups"] == [2 * 12, 12]


def test_clear_memory_and_input_errors(small: XMemNetwork) -> None:
    core = run_small(small, InferenceConfig(mem_every=2), 3)
    image = video(1, 48, 64)[0]
    with pytest.raises(ValueError, match="channels"):
        core.step(image, torch.zeros(2, 48, 64), valid_labels=[2])
    with pytest.raises(ValueError, match="image"):
        core.step(image[:2])
    core.clear_memory()
    assert core.memory_stats() == {"working": 0, "long_term": 0, "working_groups": [], "long_term_groups": [],
                                   "sensory_objects": 0}
    with pytest.raises(ValueError, match="first frame"):
        core.step(image)


def test_config_names_defaults_and_validation() -> None:
    defaults = InferenceConfig()
    assert dataclasses.asdict(defaults) == {
        "mem_every": 5, "top_k": 30, "deep_update_every": -1, "enable_long_term": True,
        "enable_long_term_count_usage": True, "max_mid_term_frames": 10, "min_mid_term_frames": 5,
        "num_prototypes": 128, "max_long_term_elements": 10000}
    assert defaults.deep_update_sync and not InferenceConfig(deep_update_every=0).deep_update_sync
    mapped = InferenceConfig.from_mapping({"mem_every": 10, "top_k": 16})
    assert mapped == InferenceConfig(mem_every=10, top_k=16)
    with pytest.raises(ValueError, match="unknown XMem inference options \\['mem_evry'\\]"):
        InferenceConfig.from_mapping({"mem_evry": 3})
    with pytest.raises(ValueError, match="smaller than max_mid_term_frames"):
        InferenceConfig(min_mid_term_frames=10)
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        InferenceConfig(top_k=0)
    with pytest.raises(ValueError, match="must not exceed max_long_term_elements"):
        InferenceConfig(num_prototypes=200, max_long_term_elements=100)
    with pytest.raises(TypeError, match="enable_long_term must be bool"):
        InferenceConfig(enable_long_term=1)
    with pytest.raises(TypeError, match="mem_every must be int"):
        InferenceConfig(mem_every=2.5)


def test_padding_split_and_round_trip() -> None:
    assert padding_for(75, 100) == Padding(top=2, bottom=3, left=6, right=6)
    assert padding_for(64, 48) == Padding(0, 0, 0, 0)
    image = torch.randn(3, 75, 100)
    padded = pad(image, padding_for(75, 100))
    assert padded.shape == (3, 80, 112)
    assert padded[:, :2].eq(0).all() and padded[:, -3:].eq(0).all() and padded[..., :6].eq(0).all()
    assert torch.equal(unpad(padded, padding_for(75, 100)), image)

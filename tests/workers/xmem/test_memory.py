"""MemoryManager on synthetic memory (no network): groups, compression, eviction and the three fixes.

Every memory element e gets the key 10 * one_hot(e), so distinct keys are far apart (similarity -200 /
sqrt(Ck)): a query equal to a stored key reads exactly that element, and consolidation maps every prototype
onto its own source element. Object `label` stores the value (label, e, 100 * label + e) at element e, so a
readout names the key it came from.
"""

from __future__ import annotations

import copy

import pytest
import torch

from workers.xmem.config import InferenceConfig
from workers.xmem.memory import MemoryManager

CK, CV = 64, 3
FRAME = 2
"""Memory elements per frame (h, w) = (1, 2)."""


def key_of(elements: list[int]) -> torch.Tensor:
    """(1, Ck, 1, len) keys of the given element ids."""
    key = torch.zeros(1, CK, 1, len(elements))
    for position, element in enumerate(elements):
        key[0, element, 0, position] = 10.0
    return key


def value_of(label: int, element: int) -> torch.Tensor:
    return torch.tensor([float(label), float(element), 100.0 * label + element])


def add_frame(memory: MemoryManager, frame: int, labels: list[int], shrinkage: float = 1.0) -> None:
    elements = [FRAME * frame + i for i in range(FRAME)]
    value = torch.stack([torch.stack([value_of(label, e) for e in elements], dim=-1) for label in labels])
    memory.add_memory(key_of(elements), torch.full((1, 1, 1, FRAME), shrinkage),
                      value.view(1, len(labels), CV, 1, FRAME), labels, torch.ones(1, CK, 1, FRAME))


def query(memory: MemoryManager, elements: list[int]) -> torch.Tensor:
    """Readout (N_mem, Cv, len(elements)) for queries equal to the keys of `elements`."""
    result = memory.match_memory(key_of(elements), torch.ones(1, CK, 1, len(elements)))
    return result.flatten(2)


def element_ids(key: torch.Tensor) -> list[int]:
    return key.argmax(dim=0).tolist()


def assert_values_match_keys(memory: MemoryManager) -> None:
    """Every element a group has values for reads back exactly the value stored with its key."""
    probe = copy.deepcopy(memory)
    lt_ids = element_ids(memory.long_term.key) if memory.long_term.size else []
    wm_ids = element_ids(memory.working.key)
    for group_index, group in enumerate(memory.groups):
        covered = lt_ids[len(lt_ids) - memory.long_term.group_size(group_index) :]
        covered += wm_ids[len(wm_ids) - memory.working.group_size(group_index) :]
        first_object = memory.objects.index(group[0])
        for element in covered:
            read = query(probe, [element])
            for offset, label in enumerate(group):
                torch.testing.assert_close(read[first_object + offset, :, 0], value_of(label, element))


def config(**options) -> InferenceConfig:
    return InferenceConfig(top_k=1, **options)


def manager(**options) -> MemoryManager:
    """A memory without sensory state."""
    return MemoryManager(config(**options), hidden_dim=0)


def test_working_memory_adds_frames_and_forms_object_groups() -> None:
    memory = MemoryManager(config(enable_long_term=False), hidden_dim=4)
    add_frame(memory, 0, [1, 2])
    add_frame(memory, 1, [1, 2, 3])
    add_frame(memory, 2, [1, 2, 3])
    stats = memory.stats()
    assert stats["working"] == 6 and stats["working_groups"] == [6, 4] and stats["long_term"] == 0
    assert memory.groups == [[1, 2], [3]]
    assert memory.working.selection is None and memory.working.use_count is None
    read = query(memory, [0, 5])
    assert read.shape == (3, CV, 2)
    torch.testing.assert_close(read[1, :, 0], value_of(2, 0))
    torch.testing.assert_close(read[2, :, 1], value_of(3, 5))
    with pytest.raises(ValueError, match="no value"):
        add_frame(memory, 3, [1, 3])
    with pytest.raises(ValueError, match="ascending"):
        add_frame(memory, 3, [1, 2, 3, 5, 4])


def test_sensory_memory_starts_at_zero_and_grows_with_new_objects() -> None:
    memory = MemoryManager(config(), hidden_dim=4)
    key = key_of([0, 1])
    memory.create_hidden_state(2, key)
    assert memory.hidden.shape == (1, 2, 4, 1, 2) and not memory.hidden.any()
    memory.set_hidden(torch.ones(1, 2, 4, 1, 2))
    memory.create_hidden_state(3, key)
    assert memory.hidden.shape == (1, 3, 4, 1, 2)
    assert memory.hidden[:, :2].eq(1).all() and not memory.hidden[:, 2].any()
    assert memory.stats()["sensory_objects"] == 3
    no_sensory = MemoryManager(config(), hidden_dim=0)
    no_sensory.create_hidden_state(2, key)
    assert no_sensory.hidden is None and no_sensory.stats()["sensory_objects"] == 0


def test_usage_counts_reads_of_group_zero_per_query_frame() -> None:
    memory = MemoryManager(config(), hidden_dim=0)
    add_frame(memory, 0, [1])
    add_frame(memory, 1, [1])
    query(memory, [3, 3])
    query(memory, [0, 3])
    assert memory.working.use_count.tolist() == [1.0, 0.0, 0.0, 3.0]
    torch.testing.assert_close(memory.working.life_count, torch.full((4,), 2 + 1e-7))
    torch.testing.assert_close(memory.working.usage(), torch.tensor([0.5, 0.0, 0.0, 1.5]))


def test_compression_keeps_first_and_newest_frames_and_makes_prototypes_of_the_most_used() -> None:
    memory = manager(max_mid_term_frames=4, min_mid_term_frames=2, num_prototypes=2)
    for frame in range(3):
        add_frame(memory, frame, [1], shrinkage=1.0 + frame)
    query(memory, [4, 4])
    query(memory, [3, 0])
    add_frame(memory, 3, [1], shrinkage=4.0)
    # WM hit 4 frames: candidates are frames 1-2 (elements 2..5); most used are 4 (usage 1) and 3 (0.5).
    assert memory.stats() == {"working": 4, "long_term": 2, "working_groups": [4], "long_term_groups": [2],
                              "sensory_objects": 0}
    assert element_ids(memory.working.key) == [0, 1, 6, 7]
    assert element_ids(memory.long_term.key) == [3, 4]
    torch.testing.assert_close(memory.long_term.shrinkage, torch.tensor([[2.0, 3.0]]))
    assert memory.long_term.selection is None
    assert memory.long_term.use_count.tolist() == [0.0, 0.0]
    assert_values_match_keys(memory)


def test_potentiation_averages_candidates_that_share_a_key() -> None:
    memory = manager(max_mid_term_frames=3, min_mid_term_frames=1, num_prototypes=1)
    add_frame(memory, 0, [1])
    shared = key_of([7, 7])
    values = torch.tensor([[1.0, 3.0], [0.0, 0.0], [10.0, 30.0]]).view(1, 1, CV, 1, 2)
    memory.add_memory(shared, torch.tensor([1.0, 3.0]).view(1, 1, 1, 2), values, [1], torch.ones(1, CK, 1, 2))
    query(memory, [7, 7])
    add_frame(memory, 2, [1])
    # T_min = 1: every frame but the first is a candidate; the prototype is a copy of key 7 (the only one
    # read), and both elements with that key are equally similar to it, so they get weight 1/2 each.
    assert memory.stats()["working"] == 2 and memory.stats()["long_term"] == 1
    torch.testing.assert_close(memory.long_term.values[0].flatten(), torch.tensor([2.0, 0.0, 20.0]))
    torch.testing.assert_close(memory.long_term.shrinkage.flatten(), torch.tensor([2.0]))


def test_late_group_values_stay_aligned_with_their_keys_through_compression() -> None:
    memory = manager(max_mid_term_frames=5, min_mid_term_frames=3, num_prototypes=2)
    add_frame(memory, 0, [1])
    add_frame(memory, 1, [1])
    add_frame(memory, 2, [1, 2])
    query(memory, [5, 5])
    query(memory, [2, 0])
    add_frame(memory, 3, [1, 2])
    add_frame(memory, 4, [1, 2])
    # Candidates: frames 1-2 (elements 2..5); object 2's group covers frames 2-4, so of the two most used
    # candidates (5: usage 1, 2: usage 0.5) only element 5 is valid for it. XMem would keep the group's own
    # first frame (elements 4, 5) in WM and read it against frame 0's keys, and store its LT value in usage
    # order, paired with the last LT key (element 2's). Here the group keeps frames 3-4 and LT element 5.
    assert memory.stats()["working_groups"] == [6, 4]
    assert memory.stats()["long_term_groups"] == [2, 1]
    assert element_ids(memory.long_term.key) == [2, 5]
    assert_values_match_keys(memory)
    add_frame(memory, 5, [1, 2])
    add_frame(memory, 6, [1, 2])
    assert memory.stats()["working_groups"] == [6, 4]
    assert memory.stats()["long_term_groups"] == [4, 3]
    assert_values_match_keys(memory)


def test_a_group_that_ends_exactly_at_the_kept_frames_loses_no_keys_of_its_own() -> None:
    memory = manager(max_mid_term_frames=4, min_mid_term_frames=2, num_prototypes=2)
    add_frame(memory, 0, [1])
    add_frame(memory, 1, [1])
    add_frame(memory, 2, [1, 2])
    add_frame(memory, 3, [1, 2])
    # Object 2 covers frames 2-3 = T_min frames; only frame 3 survives in WM, frame 2 is a candidate.
    assert memory.stats()["working_groups"] == [4, 2]
    assert memory.stats()["long_term_groups"][1] <= 2
    assert_values_match_keys(memory)


def random_run(memory: MemoryManager, frames: int, late_frame: int, seed: int) -> None:
    """Add frames (object 2 from `late_frame` on) with random queries in between; check bounds every frame."""
    generator = torch.Generator().manual_seed(seed)
    options = memory.config
    for frame in range(frames):
        add_frame(memory, frame, [1] if frame < late_frame else [1, 2])
        stats = memory.stats()
        assert stats["working"] <= options.max_mid_term_frames * FRAME
        assert stats["long_term"] <= options.max_long_term_elements
        stored = element_ids(memory.working.key)
        query(memory, [stored[int(i)] for i in torch.randint(len(stored), (2,), generator=generator)])


def test_long_term_eviction_with_two_groups_keeps_bounds_and_alignment() -> None:
    options = config(max_mid_term_frames=4, min_mid_term_frames=2, num_prototypes=3, max_long_term_elements=7)
    memory = MemoryManager(options, hidden_dim=0)
    random_run(memory, 30, late_frame=9, seed=0)
    stats = memory.stats()
    assert 4 <= stats["long_term"] <= 7 and stats["long_term_groups"][1] > 0
    assert_values_match_keys(memory)


def test_eviction_drops_the_least_used_long_term_elements() -> None:
    options = config(max_mid_term_frames=3, min_mid_term_frames=2, num_prototypes=2, max_long_term_elements=4)
    memory = MemoryManager(options, hidden_dim=0)
    for frame in range(4):
        add_frame(memory, frame, [1])
    # Every frame from 2 on fills WM (3 frames); each compression turns one frame into 2 prototypes.
    assert element_ids(memory.long_term.key) == [2, 3, 4, 5]
    query(memory, [3, 4])
    query(memory, [3, 0])
    add_frame(memory, 4, [1])
    # LT was full (4 >= 4 - 2): the two never-read elements 2 and 5 go, then frame 3's prototypes come in.
    assert element_ids(memory.long_term.key) == [3, 4, 6, 7]


def test_without_usage_counting_the_oldest_prototypes_are_evicted() -> None:
    options = config(max_mid_term_frames=3, min_mid_term_frames=2, num_prototypes=2, max_long_term_elements=5,
                     enable_long_term_count_usage=False)
    memory = MemoryManager(options, hidden_dim=0)
    random_run(memory, 12, late_frame=4, seed=1)
    assert memory.long_term.use_count is None
    # Frames 1..10 were compressed in order (ids 2..21); before each compression LT is cut to the newest
    # 5 - 2 = 3 elements, so it ends with the newest 5 prototypes.
    assert element_ids(memory.long_term.key) == [17, 18, 19, 20, 21]
    assert_values_match_keys(memory)


def test_without_long_term_memory_working_memory_keeps_every_frame_as_xmem() -> None:
    memory = manager(enable_long_term=False, max_mid_term_frames=3, min_mid_term_frames=2)
    for frame in range(3):
        add_frame(memory, frame, [1])
    add_frame(memory, 3, [1, 2])
    add_frame(memory, 4, [1, 2])
    assert element_ids(memory.working.key) == list(range(10))
    assert memory.stats()["working_groups"] == [10, 4]
    assert memory.long_term.size == 0
    assert_values_match_keys(memory)

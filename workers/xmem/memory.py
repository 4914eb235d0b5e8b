"""MemoryManager: XMem's working, long-term and sensory memory for one video.

Working memory (WM) holds whole memory frames (HW elements each). With long-term memory on, when WM reaches
max_mid_term_frames frames everything but the first frame and the newest min_mid_term_frames - 1 frames is
consolidated into at most num_prototypes long-term (LT) prototypes, and LT is kept within
max_long_term_elements by evicting its least used (without usage counting: oldest) elements first.
Deliberate differences from the official code, each keeping memory consistent or bounded:
* object groups added after the first frame keep values for exactly the newest keys they cover, through
  compression and eviction (official: their values drift against the keys);
  prototypes are stored in candidate order so that each group's valid prototypes are the newest LT keys;
* LT eviction works with several object groups (official: NotImplementedError) and without usage
  counting, where the oldest prototypes go (official: RuntimeError).
With long-term memory off, WM keeps every memory frame, as the official code does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from workers.xmem.config import InferenceConfig
from workers.xmem.kv_store import KeyValueStore, restore, snapshot
from workers.xmem.similarity import (
    readout,
    similarity,
    similarity_by_query,
    sparse_readout,
    sparse_usage,
    thread_workspace,
    top_k_softmax,
    top_k_weights,
    usage,
)


class MemoryManager:
    """All memory of one video: WM and LT key-value stores, object groups, and the hidden state."""

    def __init__(self, config: InferenceConfig, hidden_dim: int, *, fast: bool = True) -> None:
        self.config = config
        self.fast = fast
        self.hidden_dim = hidden_dim
        self.working = KeyValueStore(count_usage=config.enable_long_term)
        self.long_term = KeyValueStore(
            count_usage=config.enable_long_term and config.enable_long_term_count_usage)
        self.groups: list[list[int]] = []
        self.hidden: Tensor | None = None
        self.frame_elements: int | None = None

    @property
    def objects(self) -> list[int]:
        """Labels of the objects in memory, in readout order."""
        return [label for group in self.groups for label in group]

    def match_memory(self, query_key: Tensor, query_selection: Tensor | None) -> Tensor:
        """Read memory for a query frame: key / selection (1, Ck, h, w) -> readout (N_mem, Cv, h, w).

        Similarities against [LT ; WM] are computed once; each object group takes a top-k softmax over the
        rows it has values for. Group 0 (which covers every element) also counts usage. With `fast` the
        readout reads only the top-k elements of each position (`sparse_readout`; the same scores and
        weights, summed in another order) instead of a dense affinity product.
        """
        if not self.groups:
            raise RuntimeError("memory is empty: the first frame must come with a mask")
        height, width = query_key.shape[-2:]
        q_key = query_key[0].flatten(1)
        q_selection = None if query_selection is None else query_selection[0].flatten(1)
        working, long_term = self.working, self.long_term
        lt_size = long_term.size
        assert working.key is not None and working.shrinkage is not None, "the first frame's memory is here"
        if lt_size:
            assert long_term.key is not None and long_term.shrinkage is not None
            key = torch.cat([long_term.key, working.key], dim=-1)
            shrinkage = torch.cat([long_term.shrinkage, working.shrinkage], dim=-1)
        else:
            key, shrinkage = working.key, working.shrinkage
        if self.fast:
            result = self.sparse_match(key, shrinkage, q_key, q_selection)
            return result.view(*result.shape[:2], height, width)
        scores = similarity(key, shrinkage, q_key, q_selection)
        readouts = []
        for group in range(len(self.groups)):
            rows, lt_rows = self._group_scores(scores, group, memory_dim=0)
            affinity = top_k_softmax(rows, self.config.top_k)
            if group == 0:
                self._record_usage(usage(affinity), lt_rows)
            readouts.append(readout(self._group_values(group, lt_rows), affinity))
        result = torch.cat(readouts, dim=0)
        return result.view(*result.shape[:2], height, width)

    def sparse_match(
        self, key: Tensor, shrinkage: Tensor, q_key: Tensor, q_selection: Tensor | None
    ) -> Tensor:
        """`match_memory`'s readout through top-k weights: memory key (Ck, M), shrinkage (1, M), query
        (Ck, P) -> (N_mem, Cv, P). Usage is counted as in the dense path."""
        scores = similarity_by_query(key, shrinkage, q_key, q_selection, thread_workspace())
        readouts = []
        for group in range(len(self.groups)):
            rows, lt_rows = self._group_scores(scores, group, memory_dim=1)
            weights, indices = top_k_weights(rows, self.config.top_k)
            if group == 0:
                self._record_usage(sparse_usage(weights, indices, rows.shape[1]), lt_rows)
            readouts.append(sparse_readout(self._group_values(group, lt_rows), weights, indices))
        return torch.cat(readouts, dim=0)

    def _group_scores(self, scores: Tensor, group: int, *, memory_dim: int) -> tuple[Tensor, int]:
        """The scores against the memory that object group `group` has (LT then WM elements, along
        `memory_dim`), and how many of them are long-term."""
        working, long_term = self.working, self.long_term
        lt_size, total = long_term.size, long_term.size + working.size
        lt_rows, wm_rows = long_term.group_size(group), working.group_size(group)
        if lt_rows == lt_size and wm_rows == working.size:
            return scores, lt_rows
        lt_part = scores.narrow(memory_dim, lt_size - lt_rows, lt_rows)
        wm_part = scores.narrow(memory_dim, total - wm_rows, wm_rows)
        return torch.cat([lt_part, wm_part], dim=memory_dim), lt_rows

    def _group_values(self, group: int, lt_rows: int) -> Tensor:
        """Values of group `group` in the order of `_group_scores`: long-term first, then working."""
        values = self.working.values[group]
        return torch.cat([self.long_term.values[group], values], dim=-1) if lt_rows else values

    def _record_usage(self, read: Tensor, lt_rows: int) -> None:
        """Credit each memory element with how much it was read (LT elements first in `read`)."""
        self.working.record_usage(read[lt_rows:])
        if lt_rows:
            self.long_term.record_usage(read[:lt_rows])

    def add_memory(
        self, key: Tensor, shrinkage: Tensor, value: Tensor, objects: list[int], selection: Tensor | None
    ) -> None:
        """Store a memory frame, then keep WM and LT within their bounds.

        key (1, Ck, h, w), shrinkage (1, 1, h, w), value (1, N, Cv, h, w) for `objects` (N labels, every
        object already in memory plus new ones, ascending), selection (1, Ck, h, w) | None (kept only when
        long-term memory is on: consolidation needs it).
        """
        elements = key.shape[-2] * key.shape[-1]
        if self.frame_elements is None:
            self.frame_elements = elements
        if elements != self.frame_elements:
            raise ValueError(f"frame size changed: {elements} memory elements per frame, "
                             f"{self.frame_elements} before")
        if value.shape[1] != len(objects):
            raise ValueError(f"{value.shape[1]} object values for {len(objects)} objects")
        flat_value = value[0].flatten(2)
        blocks = [flat_value[[objects.index(label) for label in group]] for group in self.register(objects)]
        kept_selection = selection if self.config.enable_long_term else None
        self.working.append(
            key[0].flatten(1), shrinkage[0].flatten(1),
            None if kept_selection is None else kept_selection[0].flatten(1), blocks)
        self.bound_working_memory()

    def register(self, objects: list[int]) -> list[list[int]]:
        """Make the labels in `objects` not yet in memory a new group; returns all groups in order."""
        known = self.objects
        missing = [label for label in known if label not in objects]
        if missing:
            raise ValueError(f"objects {missing} are in memory but have no value")
        new = [label for label in objects if label not in known]
        if new:
            if new != sorted(new) or (known and min(new) <= max(known)):
                raise ValueError(f"new objects {new} must be ascending and after the known objects {known}")
            self.groups.append(new)
        return self.groups

    def bound_working_memory(self) -> None:
        """Compress WM into LT when it is full. With long-term memory off, WM grows with the video, as in
        XMem (that is the paper's ablation); only long-term memory keeps memory bounded."""
        if not self.config.enable_long_term:
            return
        if self.working.size >= self.config.max_mid_term_frames * (self.frame_elements or 0):
            self.bound_long_term(self.config.max_long_term_elements - self.config.num_prototypes)
            self.compress()

    def bound_long_term(self, target: int) -> None:
        """Evict LT elements down to `target`: the least used (as XMem, ties at the threshold all go, so LT
        may end below `target`), or the oldest when usage is not counted."""
        size = self.long_term.size
        surplus = size - target
        if surplus <= 0:
            return
        if self.long_term.count_usage:
            lt_usage = self.long_term.usage()
            keep = lt_usage > torch.kthvalue(lt_usage, surplus).values
        else:
            assert self.long_term.key is not None  # size > 0
            keep = torch.arange(size, device=self.long_term.key.device) >= surplus
        self.long_term.keep(keep)

    def compress(self) -> None:
        """Consolidate the WM candidates (all but the first frame and the newest min_mid_term_frames - 1
        frames) into prototypes appended to LT, then drop the candidates from WM."""
        working, frame = self.working, self.frame_elements or 0
        assert working.key is not None and working.shrinkage is not None, "compress runs on a full memory"
        size = working.size
        start, end = frame, size - self.config.min_mid_term_frames * frame + frame
        count = end - start
        chosen = torch.topk(working.usage()[start:end], min(self.config.num_prototypes, count)).indices
        chosen = chosen.sort().values
        cand_key, cand_shrinkage = working.key[:, start:end], working.shrinkage[:, start:end]
        proto_key = cand_key[:, chosen]
        cand_selection = working.selection[:, start:end] if working.selection is not None else None
        proto_selection = cand_selection[:, chosen] if cand_selection is not None else None
        scores = similarity(cand_key, cand_shrinkage, proto_key, proto_selection)
        affinity = torch.softmax(scores, dim=0)
        proto_shrinkage = cand_shrinkage @ affinity
        proto_values = []
        for values in working.values:
            group_start = size - values.shape[-1]
            first = max(0, group_start - start)
            if first >= count:
                proto_values.append(values[..., :0])
                continue
            valid = int((chosen < first).sum())
            group_affinity = affinity if first == 0 else torch.softmax(scores[first:, valid:], dim=0)
            candidates = values[..., start + first - group_start : end - group_start]
            proto_values.append(readout(candidates, group_affinity))
        self.long_term.append(proto_key, proto_shrinkage, None, proto_values)
        keep = torch.ones(size, dtype=torch.bool, device=working.key.device)
        keep[start:end] = False
        working.keep(keep)

    def create_hidden_state(self, num_objects: int, key: Tensor) -> None:
        """Zero sensory memory (1, N, Ch, h, w) for objects without any; h, w come from key (1, Ck, h, w)."""
        if self.hidden_dim == 0:
            return
        have = 0 if self.hidden is None else self.hidden.shape[1]
        if num_objects <= have:
            return
        zeros = key.new_zeros(1, num_objects - have, self.hidden_dim, *key.shape[-2:])
        self.hidden = zeros if self.hidden is None else torch.cat([self.hidden, zeros], dim=1)

    def set_hidden(self, hidden: Tensor | None) -> None:
        """Replace the sensory memory (1, N, Ch, h, w) after a decoder or deep update."""
        if self.hidden_dim:
            self.hidden = hidden

    def state_dict(self) -> dict:
        """Everything this memory holds, as CPU tensors and plain types (a checkpoint of the video)."""
        return {
            "working": self.working.state_dict(),
            "long_term": self.long_term.state_dict(),
            "groups": [list(group) for group in self.groups],
            "hidden": snapshot(self.hidden),
            "frame_elements": self.frame_elements,
        }

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        """Continue from a `state_dict` of a memory built with the same config and hidden size."""
        hidden = state["hidden"]
        if hidden is not None and hidden.shape[2] != self.hidden_dim:
            raise ValueError(
                f"saved sensory memory has {hidden.shape[2]} channels, the network {self.hidden_dim}")
        self.working.load_state_dict(state["working"], device)
        self.long_term.load_state_dict(state["long_term"], device)
        self.groups = [list(group) for group in state["groups"]]
        self.hidden = restore(hidden, device)
        self.frame_elements = state["frame_elements"]

    def stats(self) -> dict:
        """Element counts of WM and LT, in total and per object group, and objects with sensory memory."""
        groups = range(len(self.groups))
        return {
            "working": self.working.size,
            "long_term": self.long_term.size,
            "working_groups": [self.working.group_size(g) for g in groups],
            "long_term_groups": [self.long_term.group_size(g) for g in groups],
            "sensory_objects": 0 if self.hidden is None else self.hidden.shape[1],
        }

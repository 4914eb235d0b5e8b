"""KeyValueStore: one XMem memory (working or long-term) with keys shared by all objects.

Keys, shrinkage, selection and usage counters hold one column per memory element (M in all). Values are
kept per object group (objects first annotated in the same frame): group g has values for the *last* M_g
elements only, because it did not exist when the older elements were stored. The store keeps that
invariant under every operation (append, keep), so a group's values always belong to the keys they were
stored with.
"""

from __future__ import annotations

import torch
from torch import Tensor

NEW_LIFE = 1e-7
"""Life count of a new element (as in XMem): usage = use / life is 0, not 0/0, before its first read."""


class KeyValueStore:
    """Keys (Ck, M), shrinkage (1, M), selection (Ck, M) | None, values per group (n_g, Cv, M_g)."""

    def __init__(self, *, count_usage: bool) -> None:
        self.count_usage = count_usage
        self.key: Tensor | None = None
        self.shrinkage: Tensor | None = None
        self.selection: Tensor | None = None
        self.values: list[Tensor] = []
        self.use_count: Tensor | None = None
        self.life_count: Tensor | None = None

    @property
    def size(self) -> int:
        """Number of memory elements M."""
        return 0 if self.key is None else self.key.shape[-1]

    def group_size(self, group: int) -> int:
        """M_g: how many of the last elements group `group` has values for (0 for groups not stored here)."""
        return self.values[group].shape[-1] if group < len(self.values) else 0

    def append(self, key: Tensor, shrinkage: Tensor, selection: Tensor | None, values: list[Tensor]) -> None:
        """Append n elements: key (Ck, n), shrinkage (1, n), selection (Ck, n) | None, and per group g
        values[g] (n_g, Cv, n'_g).

        values[g] belongs to the last n'_g <= n new elements. A group that already has values must get all
        n (otherwise its values would stop covering a contiguous run of the newest keys); groups beyond the
        current ones are new.
        """
        count = key.shape[-1]
        if self.key is not None and (selection is None) != (self.selection is None):
            raise ValueError("a store keeps selections for all of its elements or for none")
        for group, block in enumerate(values):
            if block.shape[-1] > count or (self.group_size(group) and block.shape[-1] != count):
                raise ValueError(
                    f"group {group} has {self.group_size(group)} values; cannot append {block.shape[-1]} "
                    f"values for {count} new keys")
        self.key = append_columns(self.key, key)
        self.shrinkage = append_columns(self.shrinkage, shrinkage)
        self.selection = None if selection is None else append_columns(self.selection, selection)
        for group, block in enumerate(values):
            if group < len(self.values):
                self.values[group] = torch.cat([self.values[group], block], dim=-1)
            else:
                self.values.append(block)
        if self.count_usage:
            self.use_count = append_columns(self.use_count, key.new_zeros(count, dtype=torch.float32))
            new_life = key.new_full((count,), NEW_LIFE, dtype=torch.float32)
            self.life_count = append_columns(self.life_count, new_life)

    def keep(self, mask: Tensor) -> None:
        """Keep the elements where `mask` (M,) bool is set, in order, in keys, counters and every group."""
        if self.key is None:
            return
        assert self.shrinkage is not None, "keys and shrinkage are stored together"
        size = self.size
        self.key = self.key[:, mask]
        self.shrinkage = self.shrinkage[:, mask]
        if self.selection is not None:
            self.selection = self.selection[:, mask]
        self.values = [values[..., mask[size - values.shape[-1] :]] for values in self.values]
        if self.use_count is not None and self.life_count is not None:
            self.use_count = self.use_count[mask]
            self.life_count = self.life_count[mask]

    def usage(self) -> Tensor:
        """Mean read weight per frame it has lived through, (M,); requires usage counting."""
        if self.use_count is None or self.life_count is None:
            raise RuntimeError("this store does not count usage")
        return self.use_count / self.life_count

    def state_dict(self) -> dict:
        """Every tensor copied to the CPU (a copy, so a view does not save its whole base storage)."""
        return {
            "count_usage": self.count_usage,
            "key": snapshot(self.key),
            "shrinkage": snapshot(self.shrinkage),
            "selection": snapshot(self.selection),
            "values": [snapshot(values) for values in self.values],
            "use_count": snapshot(self.use_count),
            "life_count": snapshot(self.life_count),
        }

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        """Replace this store's content by a `state_dict` taken from a store of the same kind."""
        if state["count_usage"] != self.count_usage:
            raise ValueError("the saved store counts usage differently from this one (another config)")
        names = ("key", "shrinkage", "selection", "use_count", "life_count")
        self.key, self.shrinkage, self.selection, self.use_count, self.life_count = (
            restore(state[name], device) for name in names)
        self.values = [values.to(device) for values in state["values"]]

    def record_usage(self, read: Tensor) -> None:
        """Add one query frame's read weights (M,) to the use counts and one frame to every life count."""
        if not self.count_usage or self.use_count is None or self.life_count is None:
            return
        self.use_count = self.use_count + read.float()
        self.life_count = self.life_count + 1


def append_columns(existing: Tensor | None, new: Tensor) -> Tensor:
    """Concatenate along the last (element) axis; `existing` None means empty."""
    return new if existing is None else torch.cat([existing, new], dim=-1)


def snapshot(tensor: Tensor | None) -> Tensor | None:
    """A CPU copy with storage of its own, for saving."""
    return None if tensor is None else tensor.detach().to("cpu", copy=True)


def restore(tensor: Tensor | None, device: torch.device) -> Tensor | None:
    return None if tensor is None else tensor.to(device)

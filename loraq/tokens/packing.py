"""Packing several short examples into one training sequence: one rule for the worker and the estimate."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence


def pack_by_length(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group example indices into packs whose lengths add up to at most `capacity`: best-fit decreasing.

    Longest first, each example joins the open pack it fills most tightly, else starts a new one:
    at most 11/9 of the fewest packs possible, plus one. Deterministic; a pack lists its examples in
    file order.
    """
    open_packs = _OpenPacks(capacity)
    packs: list[list[int]] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        length = lengths[index]
        if not 0 < length <= capacity:
            raise ValueError(f"example {index} has {length} tokens; a pack holds 1 to {capacity}")
        tightest = open_packs.take_tightest(length)
        if tightest is None:
            pack, free = len(packs), capacity
            packs.append([])
        else:
            pack, free = tightest
        packs[pack].append(index)
        if free > length:
            open_packs.add(pack, free - length)
    return [sorted(pack) for pack in packs]


class _OpenPacks:
    """Packs with room left, indexed by free space, so the tightest fit is found in O(log capacity)."""

    def __init__(self, capacity: int) -> None:
        self._leaves = 1 << capacity.bit_length()  # one leaf per amount of free space, 0..capacity
        self._counts = [0] * (2 * self._leaves)  # a node's count: open packs under it
        self._by_free: dict[int, list[int]] = defaultdict(list)

    def add(self, pack: int, free: int) -> None:
        self._by_free[free].append(pack)
        self._update(free, +1)

    def take_tightest(self, length: int) -> tuple[int, int] | None:
        """Remove and return (pack, free space) of the pack with the least free space >= length, if any."""
        free = self._smallest_free_at_least(length)
        if free is None:
            return None
        self._update(free, -1)
        return self._by_free[free].pop(), free

    def _update(self, free: int, delta: int) -> None:
        node = free + self._leaves
        while node:
            self._counts[node] += delta
            node //= 2

    def _smallest_free_at_least(self, length: int) -> int | None:
        node = length + self._leaves
        if self._counts[node]:
            return length
        # Climb until a right sibling holds an open pack: everything under it has more free space.
        while node > 1:
            if node % 2 == 0 and self._counts[node + 1]:
                node += 1
                break
            node //= 2
        else:
            return None
        while node < self._leaves:  # then descend to its leftmost (tightest) non-empty leaf
            node = 2 * node if self._counts[2 * node] else 2 * node + 1
        return node - self._leaves

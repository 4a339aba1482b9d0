"""A dialect's in-process memory of recent names: a mapping that keeps its newest entries.

Some dialect state is not a job and lives in the API process (A1111's per-caller options and
``force_task_id`` names, Cog's client-chosen prediction ids). Clients choose those keys, so
the memory is bounded: :class:`RecentMap` forgets the least recently set entry first.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class RecentMap(Generic[K, V]):
    """At most ``limit`` entries; setting one makes it the newest, the oldest goes first."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._entries: OrderedDict[K, V] = OrderedDict()

    def put(self, key: K, value: V) -> None:
        """Set ``key`` (now the newest), forgetting the oldest entries beyond the limit."""
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)

    def get(self, key: K, default: V | None = None) -> V | None:
        """The value of ``key``, or ``default`` (reading does not make an entry newer)."""
        return self._entries.get(key, default)

    def __len__(self) -> int:
        return len(self._entries)

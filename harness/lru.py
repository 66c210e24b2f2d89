"""A least-recently-used mapping bounded by entry count and/or total size, with hit counts: the one
in-memory cache primitive (caption embeddings, optical flows)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class LRUCache(Generic[V]):
    """``max_entries`` and ``max_bytes`` (by ``size(value)``) bound what is kept; ``None`` is no bound,
    ``max_entries <= 0`` keeps nothing. The most recent entry is always kept, even when larger than ``max_bytes``."""

    def __init__(self, max_entries: int | None = None, max_bytes: int | None = None,
                 size: Callable[[V], int] | None = None):
        if max_bytes is not None and size is None:
            raise ValueError("max_bytes needs a size function")
        self.max_entries, self.max_bytes, self._size = max_entries, max_bytes, size
        self._store: OrderedDict[Hashable, V] = OrderedDict()
        self.nbytes = 0
        self.hits = self.misses = 0

    def get(self, key: Hashable) -> V | None:
        value = self._store.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._store.move_to_end(key)
        return value

    def put(self, key: Hashable, value: V) -> V:
        if self.max_entries is not None and self.max_entries <= 0:
            return value
        if key in self._store:
            self._drop(key)
        self._store[key] = value
        self.nbytes += self._size(value) if self._size else 0
        while len(self._store) > 1 and (
                (self.max_entries is not None and len(self._store) > self.max_entries)
                or (self.max_bytes is not None and self.nbytes > self.max_bytes)):
            self._drop(next(iter(self._store)))
        return value

    def _drop(self, key: Hashable) -> None:
        value = self._store.pop(key)
        self.nbytes -= self._size(value) if self._size else 0

    def clear(self) -> None:
        self._store.clear()
        self.nbytes = self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

"""Bounded caches of what gradxform computes once per structure, and `clear_caches` for all.

gradxform remembers a few things per structure of optimizer and params, so that a step traced
again does not redo them: the state structure that `init` gives (for the tree check), the fast
path's compiled steps and kernel programs. Each such cache keeps at most a fixed number of
entries and forgets the least recently used one first, so a long-running process that builds
many optimizers or models does not grow without bound; `clear_caches()` empties all of them
(e.g. between experiments in one process, or to measure first-call costs).

A module that keeps a cache makes it with `LRUCache` or `lru_cache`, which register it here.
"""

from __future__ import annotations

import collections
import functools
import threading
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

_T = TypeVar("_T")

_CLEARERS: list[Callable[[], None]] = []


def register(clear: Callable[[], None]) -> Callable[[], None]:
    """Adds `clear` (a function emptying one cache) to what `clear_caches` calls."""
    _CLEARERS.append(clear)
    return clear


def clear_caches() -> None:
    """Empties every cache gradxform keeps: state structures, compiled steps, kernel programs.

    Nothing is lost but time: the next step recomputes (and, for the fast path, recompiles)
    what it needs. jax's own caches are not touched (see `jax.clear_caches`).
    """
    for clear in _CLEARERS:
        clear()


class LRUCache:
    """A mapping of at most `maxsize` entries that forgets the least recently used one first."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._data: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()
        register(self.clear)

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value stored under `key` (now the most recently used), or `default`."""
        with self._lock:
            if key not in self._data:
                return default
            self._data.move_to_end(key)
            return self._data[key]

    def setdefault(self, key: Hashable, value: Any) -> Any:
        """The value stored under `key`, storing `value` there first if there is none."""
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
            self._data[key] = value
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)
            return value

    def get_or_compute(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The value stored under `key`, computed by `compute()` and stored the first time."""
        missing = object()
        value = self.get(key, missing)
        if value is missing:
            # Computed outside the lock: it may trace, compile, or use another cache.
            value = self.setdefault(key, compute())
        return value

    def __contains__(self, key: Hashable) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


def lru_cache(maxsize: int
              ) -> Callable[[Callable[..., _T]], functools._lru_cache_wrapper[_T]]:
    """`functools.lru_cache(maxsize)`, emptied by `clear_caches`."""

    def decorate(fn: Callable[..., _T]) -> functools._lru_cache_wrapper[_T]:
        cached = functools.lru_cache(maxsize=maxsize)(fn)
        register(cached.cache_clear)
        return cached

    return decorate

"""A bounded in-memory cache of decoded cases, so each file is read, cropped and resampled once per run.

Sample builders split their work into a deterministic decode (read DICOM/NIfTI/PNG, crop, resample,
normalise) and a random augmentation; :class:`DecodedCache` keeps the decoded result per case, up to a
memory bound. It never evicts: the cases that fit first are kept for the whole run and the rest are decoded
every time, so the cached set is the same in every epoch and a shuffled epoch order cannot make the cache
thrash.

Cached values are shared, read-only data: numpy arrays in them are made non-writeable (so an in-place change
by a caller fails loudly instead of corrupting later epochs); tensors cannot be protected and must not be
modified either. The cache is not thread-safe and needs not be: DataLoader workers are processes, so each
worker holds its own copy - entries filled before the workers start (e.g. by ``check_cases``) are inherited
from the main process, entries a worker adds stay in that worker, and are lost when the workers are
recreated unless the loader keeps ``persistent_workers``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")


def _walk(value: Any, visit: Callable[[np.ndarray | torch.Tensor], None], seen: set[int]) -> None:
    """Call ``visit`` once on every numpy array and tensor in ``value``, through containers and dataclasses."""
    if id(value) in seen:
        return
    if isinstance(value, np.ndarray | torch.Tensor):
        seen.add(id(value))
        visit(value)
    elif isinstance(value, tuple | list | set | frozenset):
        seen.add(id(value))
        for item in value:
            _walk(item, visit, seen)
    elif isinstance(value, dict):
        seen.add(id(value))
        for item in value.values():
            _walk(item, visit, seen)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        seen.add(id(value))
        for f in dataclasses.fields(value):
            _walk(getattr(value, f.name), visit, seen)


def nbytes_of(value: Any) -> int:
    """Total bytes of the numpy arrays and tensors in ``value`` (tuples, lists, dicts, dataclasses searched).

    Other objects (numbers, strings, boxes) count as 0: next to image data they are negligible. An array
    reached twice is counted once.
    """
    total = 0

    def add(array: np.ndarray | torch.Tensor) -> None:
        nonlocal total
        total += int(array.nbytes) if isinstance(array, np.ndarray) else array.element_size() * array.nelement()

    _walk(value, add, set())
    return total


def freeze(value: T) -> T:
    """Make every numpy array in ``value`` non-writeable (in place) and return ``value``."""

    def lock(array: np.ndarray | torch.Tensor) -> None:
        if isinstance(array, np.ndarray):
            array.setflags(write=False)

    _walk(value, lock, set())
    return value


class DecodedCache:
    """Decoded cases by key, bounded by their total array size; first come, first kept.

    Args:
        max_bytes: Memory bound on the stored arrays; 0 disables the cache (every call decodes).
        on_full: Called once, with a one-line message, the first time an entry does not fit.
    """

    def __init__(self, max_bytes: int, *, on_full: Callable[[str], None] | None = None) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = int(max_bytes)
        self.on_full = on_full
        self.hits = 0
        self.misses = 0
        self._entries: dict[str, Any] = {}
        self._nbytes = 0
        self._full = False

    @property
    def enabled(self) -> bool:
        """Whether the cache stores anything at all (``max_bytes > 0``)."""
        return self.max_bytes > 0

    @property
    def nbytes(self) -> int:
        """Total array bytes of the stored entries (never above ``max_bytes``)."""
        return self._nbytes

    @property
    def full(self) -> bool:
        """Whether some entry has not fitted (later cases may be decoded every time)."""
        return self._full

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def get_or_make(self, key: str, make: Callable[[], T]) -> T:
        """The stored value of ``key``, or ``make()``, stored if it fits in what is left of ``max_bytes``.

        An entry that does not fit is returned but not stored, and nothing is evicted; a smaller entry that
        still fits later is stored. Numpy arrays of the returned value are read-only, whether it was stored
        or not, so code that writes into them fails in every run and not only in those with room in the
        cache. An exception of ``make`` propagates and stores nothing.
        """
        if key in self._entries:
            self.hits += 1
            return self._entries[key]
        self.misses += 1
        value = freeze(make())
        if not self.enabled:
            return value
        size = nbytes_of(value)
        if self._nbytes + size <= self.max_bytes:
            self._entries[key] = value
            self._nbytes += size
        elif not self._full:
            self._full = True
            if self.on_full is not None:
                self.on_full(
                    f"decoded-data cache full at {self.max_bytes / 2**20:.1f} MB after {len(self)} cases; "
                    "later cases are decoded every epoch (raise data.cache_mb)"
                )
        return value

    def clear(self) -> None:
        """Drop every entry and reset the counters and the full flag."""
        self._entries.clear()
        self._nbytes = 0
        self._full = False
        self.hits = self.misses = 0

"""The decoded-data cache: decodes each case once, stays within its bound, says once when it is full."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from osteoscope.data.cache import DecodedCache, nbytes_of

MB = 2**20


class Maker:
    """Counts the decodes per key; each makes a float32 array of ``size`` bytes."""

    def __init__(self, size: int = 1000) -> None:
        self.size = size
        self.calls: dict[str, int] = {}

    def __call__(self, key: str):
        def make() -> dict[str, np.ndarray]:
            self.calls[key] = self.calls.get(key, 0) + 1
            return {"image": np.full(self.size // 4, len(self.calls), np.float32)}

        return make


def test_make_is_called_once_per_key():
    cache, maker = DecodedCache(10 * MB), Maker()
    for _epoch in range(3):
        for key in ("a", "b", "c"):
            value = cache.get_or_make(key, maker(key))
            assert value["image"].nbytes == 1000
    assert maker.calls == {"a": 1, "b": 1, "c": 1}
    assert (cache.misses, cache.hits, len(cache), cache.nbytes) == (3, 6, 3, 3000)
    assert "b" in cache and "d" not in cache and not cache.full
    first = cache.get_or_make("a", maker("a"))
    assert first is cache.get_or_make("a", maker("a"))  # the stored object itself, not a fresh decode


def test_bound_is_respected_and_full_reported_once():
    messages: list[str] = []
    cache, maker = DecodedCache(3500, on_full=messages.append), Maker(1000)
    for _epoch in range(3):
        for key in "abcdef":
            cache.get_or_make(key, maker(key))
            assert cache.nbytes <= 3500
    assert len(cache) == 3 and cache.nbytes == 3000 and cache.full
    assert set("abc") <= set(k for k in "abcdef" if k in cache)  # first come, first kept; no eviction
    assert maker.calls == {"a": 1, "b": 1, "c": 1, "d": 3, "e": 3, "f": 3}  # the rest decode every epoch
    assert len(messages) == 1 and "\n" not in messages[0]
    assert "0.0 MB" in messages[0] and "3 cases" in messages[0]

    messages.clear()
    big = DecodedCache(int(1.5 * MB), on_full=messages.append)
    for key in "abc":
        big.get_or_make(key, Maker(MB // 2)(key))
    assert messages == [] and not big.full  # exactly at the bound still fits
    big.get_or_make("d", Maker(MB // 2)("d"))
    assert len(messages) == 1 and "1.5 MB" in messages[0] and "data.cache_mb" in messages[0]


def test_a_later_smaller_entry_that_fits_is_still_kept():
    cache = DecodedCache(2500)
    cache.get_or_make("a", Maker(2000)("a"))
    cache.get_or_make("big", Maker(2000)("big"))
    cache.get_or_make("small", Maker(400)("small"))
    assert "big" not in cache and "small" in cache and cache.nbytes == 2400 and cache.full


def test_disabled_cache_never_stores():
    messages: list[str] = []
    cache, maker = DecodedCache(0, on_full=messages.append), Maker()
    for _ in range(3):
        cache.get_or_make("a", maker("a"))
    assert maker.calls == {"a": 3} and len(cache) == 0 and cache.nbytes == 0
    assert not cache.full and messages == [] and "a" not in cache
    with pytest.raises(ValueError):
        DecodedCache(-1)


def test_returned_arrays_are_read_only():
    cache = DecodedCache(10 * MB)
    value = cache.get_or_make("a", lambda: ((np.zeros((4, 4)), (1, 2, 3, 4)), [np.ones(3)]))
    (region, _box), (extra,) = value
    with pytest.raises(ValueError, match="read-only"):
        region[0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        cache.get_or_make("a", lambda: None)[1][0] += 1  # the stored value on a hit too
    assert not extra.flags.writeable
    unstored = DecodedCache(0).get_or_make("b", lambda: {"image": np.zeros(3)})
    assert not unstored["image"].flags.writeable  # the same behaviour whether the cache had room or not


@dataclass
class Decoded:
    image: np.ndarray
    spacing: tuple[float, ...]
    extra: dict


def test_nested_values_are_sized_correctly():
    shared = np.zeros((10, 10), np.float32)  # 400 bytes, reached twice, counted once
    value = {
        "case": Decoded(np.zeros((2, 3, 4), np.float64), (1.0, 1.0, 2.0), {"mask": np.zeros(5, np.uint8)}),
        "rois": [shared, (shared, torch.zeros(6, dtype=torch.float16))],
        "name": "not counted",
        "count": 3,
    }
    assert nbytes_of(value) == 2 * 3 * 4 * 8 + 5 + 400 + 6 * 2
    cache = DecodedCache(10 * MB)
    cache.get_or_make("a", lambda: value)
    assert cache.nbytes == nbytes_of(value)


def test_a_failing_make_stores_nothing():
    cache = DecodedCache(10 * MB)

    def broken() -> np.ndarray:
        raise OSError("unreadable")

    with pytest.raises(OSError):
        cache.get_or_make("a", broken)
    assert "a" not in cache and cache.nbytes == 0
    assert cache.get_or_make("a", lambda: np.zeros(2)).shape == (2,)

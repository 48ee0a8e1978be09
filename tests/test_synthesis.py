"""The audio cache's bounds: what a budget of 0 keeps, and how many entries a budget holds."""
from __future__ import annotations

import numpy as np

from kokoro_daemon.synthesis import AudioCache

EMPTY = np.zeros(0, dtype=np.float32)


def test_a_budget_of_zero_keeps_nothing():
    cache = AudioCache(0)
    cache.put(("af_sky", 1.0, "..."), EMPTY.copy())
    cache.put(("af_sky", 1.0, "Hello."), np.ones(2400, dtype=np.float32))
    assert cache.get(("af_sky", 1.0, "...")) is None
    assert len(cache) == 0


def test_empty_and_tiny_entries_are_bounded_in_number():
    budget = 64 * 1024
    cache = AudioCache(budget)
    for n in range(10_000):
        cache.put(("af_sky", 1.0, f"segment {n}"), EMPTY.copy())
    assert cache.get(("af_sky", 1.0, "segment 0")) is None
    assert cache.get(("af_sky", 1.0, "segment 9999")) is not None  # the newest are kept
    assert 0 < len(cache) < budget // 256


def test_hits_are_the_identical_read_only_samples_and_the_oldest_go_first():
    second = 24000 * 4
    cache = AudioCache(3 * second)
    clips = {text: np.full(24000, n, dtype=np.float32) for n, text in enumerate(["one", "two", "three"])}
    for text, audio in clips.items():
        cache.put(("af_sky", 1.0, text), audio)
    assert cache.get(("af_sky", 1.0, "one")) is None  # three seconds of samples and their keys
    assert len(cache) == 2  # do not fit in three seconds' budget
    hit = cache.get(("af_sky", 1.0, "three"))
    assert hit is clips["three"] and not hit.flags.writeable

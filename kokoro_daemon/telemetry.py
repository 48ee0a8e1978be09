"""Recent first-audio times and engine busy time, in buckets for the operator page's chart.

Prometheus counters say how much in total; this says how it went over the last minutes,
without a Prometheus server. Events older than KEEP_S are forgotten, so memory stays bounded.
"""
from __future__ import annotations

import math
import statistics
import threading
import time
from collections import deque

KEEP_S = 900.0


class Telemetry:
    def __init__(self, workers: int = 1, clock=time.time):
        self.workers = workers
        self._clock = clock
        self._first_audio: deque[tuple[float, float]] = deque()   # (when, seconds)
        self._engine_busy: deque[tuple[float, float]] = deque()   # (when the model call ended, seconds)
        self._lock = threading.Lock()

    def record_first_audio(self, call_id: str, seconds: float) -> None:
        """A reply's first audio left ``seconds`` after its text arrived."""
        self._record(self._first_audio, seconds)

    def record_engine_busy(self, seconds: float) -> None:
        """One model call kept the engine busy for ``seconds``."""
        self._record(self._engine_busy, seconds)

    def _record(self, events: deque, value: float) -> None:
        now = self._clock()
        with self._lock:
            events.append((now, value))
            while events and events[0][0] < now - KEEP_S:
                events.popleft()

    def saturation(self, window_s: float = 10.0) -> float:
        """Share of the engine workers' time spent synthesizing over the last ``window_s``."""
        since = self._clock() - window_s
        with self._lock:
            busy = sum(seconds for when, seconds in self._engine_busy if when >= since)
        return min(1.0, busy / (window_s * self.workers))

    def history(self, window_s: float = 300, bucket_s: float = 5) -> dict:
        """Per bucket of the last ``window_s``: bucket start (epoch s), first audio p50 and max (None where no
        reply began), and engine load (the workers' busy share of the bucket, 0..1)."""
        now = self._clock()
        count = max(1, math.ceil(min(window_s, KEEP_S) / bucket_s))
        start = now - count * bucket_s
        first: list[list[float]] = [[] for _ in range(count)]
        busy = [0.0] * count
        with self._lock:
            first_audio, engine_busy = list(self._first_audio), list(self._engine_busy)
        for when, seconds in first_audio:
            if when >= start:
                first[min(count - 1, int((when - start) // bucket_s))].append(seconds)
        for when, seconds in engine_busy:
            if when >= start:
                busy[min(count - 1, int((when - start) // bucket_s))] += seconds
        return {
            "t": [start + n * bucket_s for n in range(count)],
            "first_audio_p50": [statistics.median(values) if values else None for values in first],
            "first_audio_max": [max(values) if values else None for values in first],
            "engine_load": [min(1.0, seconds / (bucket_s * self.workers)) for seconds in busy],
        }


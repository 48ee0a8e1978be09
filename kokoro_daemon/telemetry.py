"""Recent first-audio times and engine busy time, for the operator page and the saturation gauge."""
from __future__ import annotations

import threading
import time
from collections import deque


class Telemetry:
    """Timestamped samples of the last ``keep_s`` seconds, bucketed on request."""

    def __init__(self, workers: int = 1, keep_s: float = 900.0):
        self.workers = workers
        self.keep_s = keep_s
        self._first_audio: deque[tuple[float, float]] = deque()
        self._busy: deque[tuple[float, float]] = deque()
        self._lock = threading.Lock()

    def record_first_audio(self, call_id: str, seconds: float) -> None:
        self._record(self._first_audio, seconds)

    def record_engine_busy(self, seconds: float) -> None:
        self._record(self._busy, seconds)

    def _record(self, samples: deque, value: float) -> None:
        now = time.time()
        with self._lock:
            samples.append((now, value))
            while samples and samples[0][0] < now - self.keep_s:
                samples.popleft()

    def saturation(self, window_s: float = 10.0) -> float:
        """Fraction of the engine workers' time spent synthesizing over the last ``window_s``."""
        since = time.time() - window_s
        with self._lock:
            busy = sum(seconds for at, seconds in self._busy if at >= since)
        return min(1.0, busy / (window_s * self.workers))

    def history(self, window_s: float = 300.0, bucket_s: float = 5.0) -> dict:
        """Per bucket: bucket end (epoch s), first-audio p50 and max (None when no reply began), engine load."""
        now = time.time()
        count = max(1, int(window_s // bucket_s))
        starts = [now - (count - n) * bucket_s for n in range(count)]
        with self._lock:
            first_audio, busy = list(self._first_audio), list(self._busy)
        out = {"t": [], "first_audio_p50": [], "first_audio_max": [], "engine_load": []}
        for start in starts:
            values = sorted(v for at, v in first_audio if start <= at < start + bucket_s)
            out["t"].append(round(start + bucket_s, 3))
            out["first_audio_p50"].append(values[len(values) // 2] if values else None)
            out["first_audio_max"].append(values[-1] if values else None)
            load = sum(v for at, v in busy if start <= at < start + bucket_s) / (bucket_s * self.workers)
            out["engine_load"].append(round(min(1.0, load), 4))
        return out

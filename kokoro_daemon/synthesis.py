"""Text segment -> audio: phonemes, the one shared engine behind its lock, and an audio cache."""
from __future__ import annotations

import logging
import sys
import threading
import time
from collections import OrderedDict

import numpy as np

from . import metrics
from .engines import Engine
from .g2p import G2PRegistry
from .voices import Voice

log = logging.getLogger(__name__)

# About what the key tuple, the dict slot and the array object of an entry take besides its samples.
_ENTRY_OVERHEAD_BYTES = 384


def trim_silence(audio: np.ndarray, sample_rate: int, lead_s: float = 0.04, tail_s: float = 0.15,
                 threshold: float = 0.01) -> np.ndarray:
    """Cut the model's leading and trailing silence down to short pads.

    The caller should hear a segment's first syllable as soon as its frame arrives; the
    short tail keeps a natural pause between consecutive segments.
    """
    loud = np.flatnonzero(np.abs(audio) > threshold)
    if loud.size == 0:
        return audio
    start = max(0, loud[0] - int(lead_s * sample_rate))
    end = min(audio.size, loud[-1] + 1 + int(tail_s * sample_rate))
    return audio[start:end]


class AudioCache:
    """LRU of synthesized segments keyed by (voice, speed, text), bounded in bytes.

    Stock phrases ("Thank you for calling.") then cost no engine time. Cached arrays are
    read-only and returned as they are, so a hit gives the identical samples. An entry
    costs its key and bookkeeping as well as its samples, so empty or tiny segments
    cannot pile up in numbers, and a budget of 0 keeps nothing.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, tuple[np.ndarray, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple) -> np.ndarray | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: tuple, audio: np.ndarray) -> None:
        cost = audio.nbytes + sum(map(sys.getsizeof, key)) + _ENTRY_OVERHEAD_BYTES
        if cost > self.max_bytes:
            return
        audio.flags.writeable = False
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = (audio, cost)
            self._bytes += cost
            while self._bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._bytes -= evicted


class Synthesizer:
    """Speaks segments on one or more engines (one per worker), each behind its own lock, never held across I/O."""

    def __init__(self, engines: list[Engine], g2p: G2PRegistry, cache: AudioCache, telemetry=None):
        self.engines = engines
        self.engine = engines[0]
        self.g2p = g2p
        self.cache = cache
        self.telemetry = telemetry
        self._locks = [threading.Lock() for _ in engines]

    @property
    def workers(self) -> int:
        return len(self.engines)

    def phonemize(self, text: str, voice: Voice) -> str:
        return self.g2p.get(voice.lang)(text)

    def speak(self, text: str, voice: Voice, speed: float, worker: int = 0) -> tuple[np.ndarray, bool]:
        """The segment's audio, and whether an engine made it (False: from the cache)."""
        key = (voice.spec, round(speed, 3), text)
        audio = self.cache.get(key)
        if audio is not None:
            metrics.CACHE_HITS.inc()
            return audio, False
        phonemes = self.phonemize(text, voice)
        with self._locks[worker]:
            started = time.monotonic()
            audio = self.engines[worker].synthesize(phonemes, voice.pack, speed)
            busy = time.monotonic() - started
        metrics.ENGINE_BUSY.inc(busy)
        if self.telemetry is not None:
            self.telemetry.record_engine_busy(busy)
        audio = trim_silence(audio, self.engine.sample_rate)
        metrics.SEGMENTS_SYNTHESIZED.inc()
        self.cache.put(key, audio)
        return audio, True

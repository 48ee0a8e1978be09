"""Text segment -> audio: phonemes, the engines behind their locks, window by window, and an audio cache."""
from __future__ import annotations

import logging
import sys
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np

from . import metrics
from .engines import Engine
from .engines.windows import WHOLE, Window, WindowPlan
from .g2p import G2PRegistry
from .voices import Voice

log = logging.getLogger(__name__)

# About what the key tuple, the dict slot and the array object of an entry take besides its samples.
_ENTRY_OVERHEAD_BYTES = 384


def trim_silence(audio: np.ndarray, sample_rate: int, lead_s: float | None = 0.04, tail_s: float | None = 0.15,
                 threshold: float = 0.01) -> np.ndarray:
    """Cut the model's leading and trailing silence down to short pads (None: leave that end as it is).

    The caller should hear a segment's first syllable as soon as its frame arrives; the
    short tail keeps a natural pause between consecutive segments.
    """
    loud = np.flatnonzero(np.abs(audio) > threshold)
    if loud.size == 0:
        return audio
    start = 0 if lead_s is None else max(0, loud[0] - int(lead_s * sample_rate))
    end = audio.size if tail_s is None else min(audio.size, loud[-1] + 1 + int(tail_s * sample_rate))
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


@dataclass(eq=False)
class SpeechJob:
    """A segment on its way through an engine: its windows still to render and the audio sent so far.

    The engine's front end runs with the first window (``windows`` is None until then); every
    window is one unit of engine work, and the segment's audio goes to the cache once whole.
    """
    key: tuple
    phonemes: str
    pack: np.ndarray
    speed: float
    plan: WindowPlan = WHOLE
    windows: deque[Window] | None = None
    made: list[np.ndarray] = field(default_factory=list)

    @property
    def started(self) -> bool:
        return self.windows is not None

    @property
    def done(self) -> bool:
        return self.windows is not None and not self.windows

    def next_frames(self) -> int:
        """Frames the next window renders, its context included (0 before the front end has run)."""
        if not self.windows:
            return 0
        window = self.windows[0]
        return window.frames + sum(window.context())


class Synthesizer:
    """Speaks segments on one or more engines (one per worker), each behind its own lock, never held across I/O.

    ``plan`` cuts each model call into windows when the engine streams; WHOLE makes each model
    call one window. Any worker may render any window: a prepared sentence is plain data.
    """

    def __init__(self, engines: list[Engine], g2p: G2PRegistry, cache: AudioCache, telemetry=None,
                 plan: WindowPlan = WHOLE):
        self.engines = engines
        self.engine = engines[0]
        self.g2p = g2p
        self.cache = cache
        self.telemetry = telemetry
        self.plan = plan if self.engine.streams else WHOLE
        self._locks = [threading.Lock() for _ in engines]

    @property
    def workers(self) -> int:
        return len(self.engines)

    @property
    def streams(self) -> bool:
        """Whether a segment's audio comes in several windows (the first one small)."""
        return self.plan is not WHOLE

    def phonemize(self, text: str, voice: Voice) -> str:
        return self.g2p.get(voice.lang)(text)

    def begin(self, text: str, voice: Voice, speed: float,
              windowed: bool = True) -> tuple[np.ndarray | None, SpeechJob | None]:
        """The cached audio of a segment, or the job that will speak it (its phonemes made, no engine used yet),
        in windows by the plan if ``windowed``, else whole."""
        key = (voice.spec, round(speed, 3), text)
        audio = self.cache.get(key)
        if audio is not None:
            metrics.CACHE_HITS.inc()
            return audio, None
        return None, SpeechJob(key, self.phonemize(text, voice), voice.pack, speed, self.plan if windowed else WHOLE)

    def step(self, job: SpeechJob, worker: int = 0) -> np.ndarray:
        """Render the job's next window on ``worker``'s engine (its front end first, if not yet run)."""
        engine = self.engines[worker]
        with self._locks[worker]:
            started = time.monotonic()
            if job.windows is None:
                job.windows = deque(engine.prepare(job.phonemes, job.pack, job.speed, job.plan))
            window = job.windows.popleft() if job.windows else None
            audio = engine.render(window) if window is not None else np.zeros(0, dtype=np.float32)
            busy = time.monotonic() - started
        metrics.ENGINE_BUSY.inc(busy)
        if self.telemetry is not None:
            self.telemetry.record_engine_busy(busy)
        if window is not None and (window.first or window.last):
            audio = trim_silence(audio, engine.sample_rate, 0.04 if window.first else None,
                                 0.15 if window.last else None)
        job.made.append(audio)
        if job.done:
            metrics.SEGMENTS_SYNTHESIZED.inc()
            self.cache.put(job.key, np.concatenate(job.made) if len(job.made) > 1 else job.made[0])
        return audio

    def speak(self, text: str, voice: Voice, speed: float, worker: int = 0,
              windowed: bool = True) -> tuple[np.ndarray, bool]:
        """The segment's whole audio, and whether an engine made it (False: from the cache)."""
        audio, job = self.begin(text, voice, speed, windowed)
        if job is None:
            return audio, False
        pieces = [self.step(job, worker)]
        while not job.done:
            pieces.append(self.step(job, worker))
        return (np.concatenate(pieces) if len(pieces) > 1 else pieces[0]), True

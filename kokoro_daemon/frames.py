"""A call's outgoing audio: a bounded queue and a playout clock, with no thread and no socket.

The queue holds audio not yet written to any transport. It is bounded in bytes (the
oldest audio goes first) and, optionally, in age; every drop is counted by reason, so
that the writer can log and export it. The playout clock models the consumer playing
what it was sent in real time: each piece ends at ``max(end, now) + duration``. Its lead
(audio sent but not yet played) is what pacing bounds and what the scheduler sorts by.
"""
from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

BYTES_PER_SAMPLE = 4


@dataclass
class Audio:
    """A piece of one reply's audio, at the output rate."""
    samples: np.ndarray
    rate: int
    reply: int
    queued_at: float
    ends_reply: bool = False

    @property
    def duration_s(self) -> float:
        return self.samples.size / self.rate

    @property
    def nbytes(self) -> int:
        return self.samples.size * BYTES_PER_SAMPLE


class PlayoutClock:
    """When the audio sent so far finishes playing, if the consumer plays it in real time."""

    def __init__(self) -> None:
        self.end = 0.0

    def lead_s(self, now: float) -> float:
        return max(0.0, self.end - now)

    def dry_at(self, now: float, queued_s: float = 0.0) -> float:
        """When the consumer runs out of audio: the end of what it was sent, which is in the past if it
        already has (the time it fell silent), later by ``queued_s`` still to be sent."""
        return max(self.end, now) + queued_s if queued_s else self.end

    def sent(self, duration_s: float, now: float) -> None:
        self.end = max(self.end, now) + duration_s

    def room_at(self, duration_s: float, max_lead_s: float) -> float:
        """The earliest time ``duration_s`` more can be sent without the lead passing ``max_lead_s``.

        A piece longer than the bound itself goes once everything before it has played.
        """
        return self.end - max(0.0, max_lead_s - duration_s)


@dataclass
class FrameQueue:
    """Unsent audio of one call, oldest first, bounded by ``max_bytes`` and ``max_age_s``."""

    max_bytes: int
    max_age_s: float | None = None
    dropped: Counter = field(default_factory=Counter)
    _items: deque = field(default_factory=deque)
    _bytes: int = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def queued_s(self) -> float:
        return sum(item.duration_s for item in self._items)

    def put(self, audio: Audio) -> list[Audio]:
        """Queue ``audio``; return the older pieces dropped to stay within the byte budget."""
        self._items.append(audio)
        self._bytes += audio.nbytes
        dropped = []
        while self._bytes > self.max_bytes and len(self._items) > 1:
            dropped.append(self._pop_left())
        self._count(dropped, "overflow")
        return dropped

    def peek(self) -> Audio | None:
        return self._items[0] if self._items else None

    def take(self, max_samples: int | None = None) -> Audio:
        """The oldest audio, or its first ``max_samples`` when it is longer (the rest stays queued)."""
        head = self._items[0]
        if max_samples is None or head.samples.size <= max_samples:
            return self._pop_left()
        piece = Audio(head.samples[:max_samples], head.rate, head.reply, head.queued_at)
        head.samples = head.samples[max_samples:]
        self._bytes -= piece.nbytes
        return piece

    def requeue(self, audio: Audio) -> None:
        """Put back a piece that could not be written, to go first."""
        self._items.appendleft(audio)
        self._bytes += audio.nbytes

    def expire(self, now: float) -> list[Audio]:
        """Drop and return audio held longer than ``max_age_s``."""
        expired = []
        while self._items and self.max_age_s is not None and now - self._items[0].queued_at > self.max_age_s:
            expired.append(self._pop_left())
        self._count(expired, "expired")
        return expired

    def next_expiry(self) -> float | None:
        if self.max_age_s is None or not self._items:
            return None
        return self._items[0].queued_at + self.max_age_s

    def clear(self, reason: str) -> list[Audio]:
        """Discard and return everything queued (the call is over)."""
        cleared = list(self._items)
        self._items.clear()
        self._bytes = 0
        self._count(cleared, reason)
        return cleared

    def _count(self, pieces: list[Audio], reason: str) -> None:
        """Reply-end markers carry no audio and are not counted as drops."""
        audible = sum(1 for piece in pieces if piece.samples.size)
        if audible:
            self.dropped[reason] += audible

    def _pop_left(self) -> Audio:
        item = self._items.popleft()
        self._bytes -= item.nbytes
        return item

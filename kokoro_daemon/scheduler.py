"""Who speaks next: per-call segment queues served round-robin in front of the one engine.

One worker thread takes one segment at a time, so a long reply on one call cannot starve
another call's first words, and each call's frames leave in its own order. A call that is
cancelled loses its queue at once; the engine only finishes the segment it is on.

While other calls are waiting, a call's turn takes its following queued segments along
(up to MERGE_MAX_CHARS, never a reply's first segment): each model call pays for its own
lead-in and trailing silence, so a busy engine speaks more per second in fewer, longer
pieces, while an idle one keeps short pieces that reach the caller before the previous
one has finished playing.
"""
from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Callable

from . import metrics
from .calls import Call
from .synthesis import Synthesizer
from .voices import Voice

log = logging.getLogger(__name__)

MERGE_MAX_CHARS = 240


@dataclass(frozen=True)
class Segment:
    text: str
    opens_reply: bool = False


class Scheduler:
    def __init__(self, synthesizer: Synthesizer, current_voice: Callable[[], tuple[Voice, float]]):
        self.synthesizer = synthesizer
        self.current_voice = current_voice
        self._ready: deque[Call] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def submit(self, call: Call, segments: list[str], opens_reply: bool = False) -> None:
        """Queue a call's segments; ``opens_reply`` when the first of them starts a reply (it is never merged)."""
        if not segments:
            return
        with self._cond:
            call.pending.extend(Segment(text, opens_reply and not n) for n, text in enumerate(segments))
            if call not in self._ready and not call.in_flight:
                self._ready.append(call)
            self._cond.notify_all()

    def cancel(self, call: Call) -> None:
        with self._cond:
            dropped = len(call.pending)
            call.pending.clear()
            if call in self._ready:
                self._ready.remove(call)
            self._cond.notify_all()
        if dropped:
            metrics.SEGMENTS_CANCELLED.inc(dropped)
            log.info("call %s: dropped %d queued segment(s)", call.call_id, dropped)

    def wait_drained(self, call: Call, timeout: float | None = None) -> bool:
        """Block until every segment submitted for ``call`` has been delivered (or dropped)."""
        with self._cond:
            return self._cond.wait_for(lambda: not call.pending and not call.in_flight, timeout)

    def _take(self) -> tuple[Call, str] | None:
        with self._cond:
            self._cond.wait_for(lambda: self._ready or self._stopping)
            if self._stopping:
                return None
            call = self._ready.popleft()
            call.in_flight = True
            return call, self._next_text(call)

    def _next_text(self, call: Call) -> str:
        """The call's next segment, joined by its following ones while other calls wait (see module doc)."""
        head = call.pending.popleft()
        if head.opens_reply or not self._ready:
            return head.text
        texts, size = [head.text], len(head.text)
        while call.pending and not call.pending[0].opens_reply and size + 1 + len(call.pending[0].text) <= MERGE_MAX_CHARS:
            texts.append(call.pending.popleft().text)
            size += 1 + len(texts[-1])
        return " ".join(texts)

    def _done(self, call: Call) -> None:
        with self._cond:
            call.in_flight = False
            if call.pending and call not in self._ready:
                self._ready.append(call)
            self._cond.notify_all()

    def _run(self) -> None:
        while (work := self._take()) is not None:
            call, text = work
            try:
                if not call.ended.is_set():
                    voice, speed = call.voice or self.current_voice()
                    audio = self.synthesizer.speak(text, voice, speed)
                    if not call.ended.is_set():
                        call.deliver(audio, self.synthesizer.engine.sample_rate)
            except Exception:
                metrics.SEGMENTS_FAILED.inc()
                log.exception("call %s: could not speak segment %r", call.call_id, text[:80])
            finally:
                self._done(call)

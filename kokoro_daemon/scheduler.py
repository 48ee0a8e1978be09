"""Who speaks next: the segments waiting for the engine, per listener, and the order they go in.

A listener is a phone call (priority 0) or an HTTP request (priority 1, served only when no
call needs the engine). Each has at most one segment in an engine at a time, so its audio
leaves in order; ``--engine-workers`` engines serve different listeners at once.

``playout`` (the default) serves the listener whose caller runs out of audio soonest: a
new reply's first segment counts as out of audio FIRST_WORDS_GRACE_S after it arrived (so
replies start in arrival order, and a caller about to fall silent mid-reply goes first), a
listener holding ``max_lead_s`` of audio waits, and a segment's size follows its deadline:
the next sentence alone (or only its first clause) when the caller is about to run dry,
following sentences joined into one model call when there is lead to spare (each model
call pays for its own lead-in and trailing silence, so fewer calls speak more per second),
up to MAX_JOIN_S of engine time, which bounds how long a new reply on another call can wait
for a worker. When more calls wait than there are free workers, segments are joined
regardless of deadlines: the engine must catch up, and cutting would slow it down.
With several workers, the last free one is kept for the next reply's first
segment: a continuation takes it only when its caller would otherwise run dry, and an HTTP
request never does. An HTTP request waits for calls, but not for ever: once its next segment has waited
HTTP_MAX_WAIT_S it competes as a call would, so a stream of calls cannot starve it.
``round-robin`` serves listeners in turn, one segment each, joining a listener's queued
sentences while others wait; it is kept to compare against.

When the engine streams (``--synthesis stream``), a reply's first segment is spoken in windows:
its first unit of engine work runs the engine's front end and a small first window, and each
further window goes back to the head of its listener's queue as a continuation, with the deadline
of any mid-reply audio. So first audio no longer grows with the first sentence's length (and the
first sentence is spoken whole, with no clause cut), and a new reply's first window waits for at
most one window of another reply's first sentence. While a reply's first window runs, no other
work starts on another worker unless its own caller would run dry first: on a machine whose
workers share the cores, the first window then gets them all. A later segment is spoken in windows
too when its caller's audio would run out before it could be made whole; otherwise it is spoken
whole, as the caller has audio while it is made: each window boundary costs some quality (the
generator's instance norms see only their window; bench/README.md has the figures), so windows are
used only where the caller would wait.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import metrics
from .protocol import printable
from .segmenter import split_text
from .synthesis import SpeechJob, Synthesizer
from .voices import Voice

log = logging.getLogger(__name__)

SCHEDULES = ("playout", "round-robin")
MERGE_MAX_CHARS = 240
SPLIT_MIN_CHARS = 40
SAFETY_S = 0.3
MAX_JOIN_S = 2.0
RESERVE_MARGIN_S = 0.5
FIRST_WORDS_GRACE_S = 0.3
UNDERRUN_S = 0.25
HTTP_MAX_WAIT_S = 5.0
WARN_INTERVAL_S = 60.0


@dataclass
class Segment:
    text: str
    reply: int = 0
    opens_reply: bool = False
    ends_reply: bool = False
    arrived_at: float = field(default_factory=time.monotonic)
    job: SpeechJob | None = None   # a segment part-way through the engine: its next window is the work

    @property
    def opening(self) -> bool:
        """The reply's first unit of engine work: its first segment, not yet started."""
        return self.opens_reply and self.job is None


@dataclass(eq=False)
class _Work:
    """One listener's waiting segments (owned by the scheduler) and whether one is in an engine."""
    listener: object
    segments: deque = field(default_factory=deque)
    in_flight: bool = False
    opening: bool = False   # what is in flight is a reply's first unit
    cancelled: bool = False  # cancelled while in flight: what is left of that segment goes
    waiting_since: float = field(default_factory=time.monotonic)  # when its next segment became ready

    @property
    def priority(self) -> int:
        return self.listener.priority

    def priority_at(self, now: float) -> int:
        """Its priority, that of a call once an HTTP request's next segment has waited HTTP_MAX_WAIT_S."""
        return 0 if now - self.waiting_since >= HTTP_MAX_WAIT_S else self.priority


class SynthesisCost:
    """Engine seconds a unit of n characters (or frames) is expected to take, learnt from the units spoken.

    A unit costs a fixed part (a segment's front end, lead-in and tail) plus a part per character
    or frame; the fixed part is counted as ``overhead`` of them.
    """

    def __init__(self, seconds_per_unit: float = 0.02, overhead: int = 20):
        self.seconds_per_unit = seconds_per_unit
        self.overhead = overhead
        self._lock = threading.Lock()

    def estimate(self, units: int) -> float:
        return (units + self.overhead) * self.seconds_per_unit

    def observe(self, units: int, seconds: float) -> None:
        with self._lock:
            self.seconds_per_unit += 0.2 * (seconds / (units + self.overhead) - self.seconds_per_unit)


def first_clause(text: str) -> tuple[str, str] | None:
    """(clause, rest) for a caller about to run out of audio: the sentence's first clause, so that it
    hears something sooner. None when the sentence has no clause mark: a cut anywhere else is heard
    (cut before "to", "the Kokoro text | to speech service" was transcribed "text, to speech serve as"), or when
    it is under SPLIT_MIN_CHARS, too short for the cut to be worth a second model call."""
    if len(text) < SPLIT_MIN_CHARS:
        return None
    pieces = split_text(text)
    return (pieces[0], " ".join(pieces[1:])) if len(pieces) > 1 else None


class Scheduler:
    def __init__(self, synthesizer: Synthesizer, current_voice: Callable[[], tuple[Voice, float]],
                 schedule: str = "playout", max_lead_s: float = 6.0):
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, not {schedule!r}")
        self.synthesizer = synthesizer
        self.current_voice = current_voice
        self.schedule = schedule
        self.max_lead_s = max_lead_s
        # one estimate per number of workers busy at once, since segments that share the cores take longer;
        # per character for a segment's first unit, per frame for a window after it
        self.costs = [SynthesisCost(0.02 * sharing) for sharing in range(1, synthesizer.workers + 1)]
        self.window_costs = [SynthesisCost(0.03 * sharing, overhead=0) for sharing in range(1, synthesizer.workers + 1)]
        self._busy = 0
        self._work: dict[int, _Work] = {}
        self._turns: deque[_Work] = deque()  # round-robin order of listeners with waiting segments
        self._cond = threading.Condition()
        self._stopping = False
        self._underruns = 0
        self._last_capacity_warning = 0.0
        self._threads = [threading.Thread(target=self._run, args=(n,), name=f"engine-worker-{n}", daemon=True)
                         for n in range(synthesizer.workers)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=30)

    # -- the listeners' side -----------------------------------------------------------
    def submit(self, listener, texts: list[str], reply: int = 0, opens_reply: bool = True,
               ends_reply: bool = False) -> None:
        """Queue ``texts`` for ``listener``; ``opens_reply`` marks the first as a reply's start (never joined to
        earlier text), ``ends_reply`` the last as its end (with no texts, the end of what was queued before)."""
        if not texts and not ends_reply:
            return
        now = time.monotonic()
        segments = [Segment(text, reply, opens_reply and n == 0, False, now) for n, text in enumerate(texts)]
        if ends_reply:
            segments.append(Segment("", reply, False, True, now))
        with self._cond:
            work = self._work.get(id(listener))
            if work is None:
                work = self._work[id(listener)] = _Work(listener)
            work.segments.extend(segments)
            if work not in self._turns and not work.in_flight:
                work.waiting_since = now
                self._turns.append(work)
            self._cond.notify_all()

    def cancel(self, listener) -> int:
        """Drop the listener's waiting segments; return how many went."""
        with self._cond:
            work = self._work.get(id(listener))
            if work is None:
                return 0
            dropped = sum(1 for segment in work.segments if segment.text)
            work.segments.clear()
            work.cancelled = work.in_flight   # the rest of the segment in flight is dropped too
            self._forget(work)
            self._cond.notify_all()
        if dropped:
            metrics.SEGMENTS_CANCELLED.inc(dropped)
        return dropped

    def wait_drained(self, listener, timeout: float | None = None) -> bool:
        """Block until every segment submitted for ``listener`` has been delivered (or dropped)."""
        with self._cond:
            return self._cond.wait_for(lambda: id(listener) not in self._work, timeout)

    def pending_chars(self, listener) -> int:
        with self._cond:
            work = self._work.get(id(listener))
            return sum(len(segment.text) for segment in work.segments) if work else 0

    def _forget(self, work: _Work) -> None:
        """Lock held: a listener with nothing waiting or in flight is not tracked."""
        if work in self._turns and not work.segments:
            self._turns.remove(work)
        if not work.segments and not work.in_flight:
            self._work.pop(id(work.listener), None)

    # -- choosing -----------------------------------------------------------------------
    def _choose(self, now: float) -> tuple[_Work | None, float | None]:
        """Lock held: the work to serve next, or None and when to look again (None: when something changes)."""
        candidates = [work for work in self._turns if not work.in_flight and work.segments]
        if len(self._threads) > 1 and sum(1 for w in self._work.values() if w.in_flight and w.priority) \
                >= len(self._threads) - 1:
            candidates = [work for work in candidates if not work.priority]  # keep a worker free for calls
        if self.schedule == "round-robin":
            ordered = sorted(candidates, key=lambda w: w.priority_at(now))  # stable: turn order within a priority
            return (ordered[0] if ordered else None), None
        best, best_key, wake_at = None, None, None
        last_worker = self._busy == len(self._threads) - 1 > 0
        # a reply's first window gets the machine: nothing else starts beside it unless its caller needs it now
        first_window_running = self.synthesizer.streams and any(w.in_flight and w.opening for w in self._work.values())
        for work in candidates:
            head = work.segments[0]
            if head.opening or not head.text:
                deadline = head.arrived_at + FIRST_WORDS_GRACE_S
            else:
                deadline = work.listener.dry_at()
                # the last free worker is kept for the next reply's first words, unless this caller needs it now
                wait_until = deadline - (self.max_lead_s if not (last_worker or first_window_running) else
                                         self._estimate(head) + RESERVE_MARGIN_S)
                if now < wait_until:
                    wake_at = wait_until if wake_at is None else min(wake_at, wait_until)
                    continue
            key = (work.priority_at(now), deadline)
            if best_key is None or key < best_key:
                best, best_key = work, key
        head = best.segments[0] if best is not None else None
        if head is not None and best.priority == 0 and head.text and not head.opening \
                and best_key[1] < now - UNDERRUN_S:
            self._underrun(now, len(candidates))
        return best, wake_at

    def _waited_for(self, segment: Segment, listener) -> bool:
        """Whether the caller would wait for this segment made whole: a reply's first, or one its caller's
        audio runs out before: those are spoken in windows (when the engine streams)."""
        return segment.opens_reply or \
            self.costs[-1].estimate(len(segment.text)) + SAFETY_S > listener.dry_at() - time.monotonic()

    def _estimate(self, head: Segment) -> float:
        """Lock held: engine seconds the head's next unit will take with every worker busy."""
        if head.job is not None and head.job.started:
            return self.window_costs[-1].estimate(head.job.next_frames())
        return self.costs[-1].estimate(len(head.text))

    def _underrun(self, now: float, waiting: int) -> None:
        """A caller ran out of audio mid-reply while the engine was busy elsewhere: warn once a minute."""
        self._underruns += 1
        metrics.UNDERRUNS.inc()
        if now - self._last_capacity_warning >= WARN_INTERVAL_S:
            self._last_capacity_warning = now
            log.warning("over capacity: %d listener(s) waiting for %d engine worker(s); callers ran out of audio "
                        "mid-reply %d time(s) since the last warning", waiting, len(self._threads), self._underruns)
            self._underruns = 0

    def _next_segment(self, work: _Work, now: float, cost: SynthesisCost) -> Segment:
        """Lock held: the work's next segment, joined with or cut to fit the time its caller has left."""
        head = work.segments.popleft()
        if not head.text or head.opens_reply or head.job is not None:
            return head
        if self.schedule == "round-robin":
            joinable = any(other is not work and other.segments for other in self._turns)
            budget = float("inf") if joinable else 0.0
        elif self._overloaded(work):
            budget = MAX_JOIN_S  # fewer, longer model calls: more audio per engine second, to catch up
        else:
            budget = min(work.listener.dry_at() - now - SAFETY_S, MAX_JOIN_S)
        if self.schedule == "playout" and budget < cost.estimate(len(head.text)):
            cut = first_clause(head.text)
            if cut is not None:
                work.segments.appendleft(Segment(cut[1], head.reply, False, head.ends_reply, head.arrived_at))
                return Segment(cut[0], head.reply, False, False, head.arrived_at)
        texts, ends_reply = [head.text], head.ends_reply
        while work.segments and not ends_reply and not work.segments[0].opens_reply:
            following = work.segments[0]
            if not following.text:
                ends_reply = work.segments.popleft().ends_reply
                continue
            size = sum(len(t) + 1 for t in texts) + len(following.text)
            if size > MERGE_MAX_CHARS or cost.estimate(size) > budget:
                break
            texts.append(work.segments.popleft().text)
            ends_reply = following.ends_reply
        return Segment(" ".join(texts), head.reply, False, ends_reply, head.arrived_at)

    def _overloaded(self, work: _Work) -> bool:
        """Lock held: more calls are waiting for the engine than it has workers free."""
        waiting = sum(1 for other in self._turns if other is not work and other.segments and not other.in_flight
                      and not other.priority)
        return waiting > len(self._threads) - self._busy

    def _take(self) -> tuple[_Work, Segment, int] | None:
        """The next work, its segment, and how many other workers were busy when it was taken."""
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                work, wake_at = self._choose(now)
                if work is not None:
                    work.in_flight = True
                    work.opening = work.segments[0].opening
                    self._turns.remove(work)
                    self._busy += 1
                    return work, self._next_segment(work, now, self.costs[self._busy - 1]), self._busy - 1
                self._cond.wait(None if wake_at is None else max(0.0, wake_at - now))
            return None

    def _done(self, work: _Work, continuation: Segment | None) -> None:
        """The unit is spoken: the rest of its segment, if any, is the listener's next work."""
        with self._cond:
            self._busy -= 1
            if continuation is not None and not work.cancelled:
                work.segments.appendleft(continuation)
            work.in_flight = work.opening = work.cancelled = False
            if work.segments:
                work.waiting_since = time.monotonic()
                self._turns.append(work)
            else:
                self._forget(work)
            self._cond.notify_all()

    # -- speaking -------------------------------------------------------------------------
    def _run(self, worker: int) -> None:
        while (taken := self._take()) is not None:
            work, segment, sharing = taken
            continuation = None
            try:
                continuation = self._speak(work.listener, segment, worker, sharing)
            except Exception:
                metrics.SEGMENTS_FAILED.inc()
                log.exception("%s: could not speak segment %s", printable(work.listener.call_id),
                              printable(segment.text))
            finally:
                self._done(work, continuation)

    def _speak(self, listener, segment: Segment, worker: int, sharing: int) -> Segment | None:
        """Speak the segment's next unit of engine work; return what is left of the segment, if anything."""
        rate = self.synthesizer.engine.sample_rate
        audio = np.zeros(0, dtype=np.float32)
        job, continuation = segment.job, None
        if segment.text:
            if listener.ended.is_set():
                metrics.SEGMENTS_CANCELLED.inc()
                return None
            if job is None:
                voice, speed = listener.voice or self.current_voice()
                audio, job = self.synthesizer.begin(segment.text, voice, speed, windowed=self._waited_for(segment,
                                                                                                         listener))
        if job is not None:
            first, frames = not job.started, job.next_frames()
            cost = self.costs[sharing] if first else self.window_costs[sharing]
            units = len(segment.text) if first else frames
            started = time.monotonic()
            needed_in = listener.dry_at() - started
            audio = self.synthesizer.step(job, worker)
            took = time.monotonic() - started
            if not first or job.done:   # a window, or a whole segment (a first window's cost is the front end's too)
                cost.observe(units, took)
            log.debug("%s: %s of %d characters in %.3f s (%.3f s expected) for %.3f s of audio; its caller had "
                      "%.3f s left", printable(listener.call_id), "first unit" if first else f"{frames} frames",
                      len(segment.text), took, cost.estimate(units), audio.size / rate, needed_in)
            if not job.done:
                continuation = Segment(segment.text, segment.reply, False, segment.ends_reply, segment.arrived_at,
                                       job)
            elif not any(piece.size for piece in job.made):
                metrics.SEGMENTS_SILENT.inc()
                log.warning("%s: segment %s has nothing speakable; skipped", printable(listener.call_id),
                            printable(segment.text))
        ends_reply = segment.ends_reply and continuation is None
        if audio.size or ends_reply:
            listener.deliver(audio, rate, reply=segment.reply, ends_reply=ends_reply)
        return continuation

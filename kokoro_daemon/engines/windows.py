"""The engine's unit of work: one window of a prepared sentence's audio.

Kokoro's decoder makes audio from frame-rate features; its generator (about 90 % of the time,
linear in audio length) is the part worth slicing. An engine *prepares* a sentence once: the
front end predicts durations, prosody (F0, energy) and the generator's input features, and the
harmonic source is made for the whole sentence, so that pitch, timing and phase never depend on
where a window is cut. Each *window* is then rendered on its own, with context frames on both
sides, and consecutive windows are crossfaded over CROSSFADE_SAMPLES. The scheduler hands out
windows as the unit of engine work, so a reply's first audio costs the front end and one small
window, and never waits behind the whole first sentence of another reply. ``WHOLE`` makes each
model call one window: the silence is still skipped, and nothing else changes.

The frames of the boundary tokens (the pad before the first phoneme and the pad and closing
punctuation after the last) are silence that the service used to make and throw away: prepare
keeps only LEAD_FRAMES of them before the speech and TAIL_FRAMES after it. The generator's first
and last samples are not to be trusted (its inverse STFT divides by a window sum that is small at
the edges, which is harmless only where the audio is silent), so every window is rendered with at
least EDGE_FRAMES beyond each of its ends where the model call has them, and those are dropped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Silence kept around the speech, in frames of 25 ms: the short pads the service has always sent.
LEAD_FRAMES = 2
TAIL_FRAMES = 6
EDGE_FRAMES = 4
CROSSFADE_SAMPLES = 240          # 10 ms at 24 kHz
SILENT_SYMBOLS = " ;:,.!?¡¿—…\"«»“”()"


@dataclass(frozen=True)
class WindowPlan:
    """How a sentence's frames are cut into windows: a small first one, then growing ones.

    Each window must be made while the caller hears the ones before it: on 2 cores the generator
    makes about 2.5 s of audio (context included) per second, so a window may be at most about
    1.6 times the audio already sent, less its context (bench/first_audio.py). A remainder shorter
    than ``min_last_frames`` joins the window before it, so no window is a sliver that pays more
    for its context than for its audio.
    """
    first_frames: int = 24
    growth: float = 1.6
    max_frames: int = 160
    context_frames: int = 8
    min_last_frames: int = 16

    def spans(self, frames: int) -> list[tuple[int, int]]:
        spans, start, size = [], 0, self.first_frames
        while frames - start > size + self.min_last_frames:
            spans.append((start, start + size))
            start += size
            size = min(int(size * self.growth), self.max_frames)
        spans.append((start, frames))
        return spans


WHOLE = WindowPlan(first_frames=1 << 30, context_frames=0)


def edges(start: int, stop: int, total: int) -> tuple[int, int]:
    """Frames the model call has before ``start`` and after ``stop``, up to EDGE_FRAMES: rendered, never sent."""
    return min(EDGE_FRAMES, start), min(EDGE_FRAMES, total - stop)


def speech_span(symbols: str, durations: np.ndarray) -> tuple[int, int]:
    """[start, stop) in frames of a model call whose tokens are ``symbols`` between two pads.

    ``durations`` has one entry per token (the pads included). The span keeps LEAD_FRAMES of the
    silence before the first spoken symbol and TAIL_FRAMES after the last one.
    """
    durations = np.asarray(durations).reshape(-1).astype(np.int64)
    spoken = [n + 1 for n, ch in enumerate(symbols) if ch not in SILENT_SYMBOLS]
    ends = np.cumsum(durations)
    total = int(ends[-1]) if ends.size else 0
    if not spoken or len(durations) != len(symbols) + 2:
        return 0, total
    first, last = spoken[0], spoken[-1]
    start = int(ends[first - 1]) - LEAD_FRAMES
    stop = int(ends[last]) + TAIL_FRAMES
    return max(0, start), min(total, stop)


@dataclass(eq=False)
class Utterance:
    """One model call after the engine's front end: what its windows are rendered from.

    ``features`` is the engine's own (arrays or tensors) for the whole model call; the spoken span is
    ``frames`` frames from ``offset``, and ``before`` and ``after`` frames beyond it (at most EDGE_FRAMES)
    may be rendered as context, never sent;
    ``held`` is the end of the last window rendered, kept back to crossfade into the next.
    """
    frames: int
    features: Any
    frame_samples: int
    before: int = 0
    after: int = 0
    offset: int = 0          # where the spoken span starts in ``features``, in frames
    context_frames: int = 0
    held: np.ndarray | None = None


@dataclass(eq=False)
class Window:
    """Frames [start, stop) of an utterance: one unit of engine work."""
    utterance: Utterance
    start: int
    stop: int
    first: bool = False        # the first window of its segment (opens its audio)
    last: bool = False         # the last window of its segment (closes it)
    final: bool = field(init=False)

    def __post_init__(self):
        self.final = self.stop >= self.utterance.frames   # the last window of its utterance

    @property
    def frames(self) -> int:
        return self.stop - self.start

    def context(self) -> tuple[int, int]:
        """Frames rendered beyond each side of the window, as far as the model call reaches."""
        utterance = self.utterance
        context = max(utterance.context_frames, EDGE_FRAMES)
        return (min(context, self.start + utterance.before),
                min(context, utterance.frames - self.stop + utterance.after))

    def assemble(self, rendered: np.ndarray) -> np.ndarray:
        """Cut the window (with its context) to what is sent now, crossfading with the previous window.

        ``rendered`` covers frames [start - left, stop + right). What is returned runs from half a
        crossfade before ``start`` (the utterance's beginning for its first window) to half a
        crossfade before ``stop``; the rest is held for the next window (all of it for the last).
        """
        fs, half = self.utterance.frame_samples, CROSSFADE_SAMPLES // 2
        left, _ = self.context()   # at least EDGE_FRAMES: more than half a crossfade
        begin = left * fs - (half if self.start > 0 else 0)
        end = (left + self.frames) * fs + (0 if self.final else half)
        audio = rendered[max(0, begin):end].astype(np.float32, copy=True)
        held = self.utterance.held
        if held is not None and self.start > 0:
            n = min(held.size, audio.size)
            fade = np.linspace(0.0, 1.0, n, endpoint=False, dtype=np.float32)
            audio[:n] = held[:n] * (1.0 - fade) + audio[:n] * fade
        if self.final:
            self.utterance.held = None
            return audio
        keep = min(CROSSFADE_SAMPLES, audio.size)
        self.utterance.held = audio[audio.size - keep:]
        return audio[:audio.size - keep]


SYNTHESIS_MODES = ("stream", "whole")
# Whole sentences by default: windows cost quality that the speech judge hears (bench/README.md).
DEFAULT_SYNTHESIS = "whole"


def window_plan(mode: str) -> WindowPlan:
    """``stream``: windows as WindowPlan() cuts them; ``whole``: each model call in one window."""
    if mode not in SYNTHESIS_MODES:
        raise ValueError(f"synthesis must be one of {SYNTHESIS_MODES}, not {mode!r}")
    return WindowPlan() if mode == "stream" else WHOLE

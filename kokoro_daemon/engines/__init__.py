"""Synthesis engines: phonemes and a voice pack in, 24 kHz mono float32 audio out.

Two engines share this interface: ``kokoro`` (the kokoro package's KModel on torch, the
path for cuda and mps) and ``onnx`` (onnxruntime on a Kokoro-82M ONNX export, by default
the int8 one embedded from PyPI, as shipped or as the "fast" graph derived from it; see
fast_graph.py). Callers serialise access: one inference at a time.
"""
from __future__ import annotations

import logging
from abc import ABC

import numpy as np

from .windows import WHOLE, Utterance, Window, WindowPlan, edges, speech_span

log = logging.getLogger(__name__)

SAMPLE_RATE = 24000
MAX_PHONEMES = 510
# Kokoro's decoder makes this many samples per predicted duration step (25 ms at 24 kHz).
FRAME_SAMPLES = 600
_CLAUSE_MARKS = ".!?;:,—…"
# Checks at load that a streaming engine's frame arithmetic holds: "Thank you for calling." in Kokoro phonemes.
CHECK_PHONEMES = "θˈæŋk ju fɔɹ kˈɔlɪŋ."
STYLE_WIDTH = 256


def split_phonemes(phonemes: str, limit: int = MAX_PHONEMES) -> list[str]:
    """Split a phoneme string at spaces (punctuation first) into pieces the model accepts."""
    pieces: list[str] = []
    rest = phonemes.strip()
    while len(rest) > limit:
        window = rest[: limit + 1]
        cut = max(window.rfind(mark + " ") + 1 for mark in _CLAUSE_MARKS)
        if cut <= 0:
            cut = window.rfind(" ")
        if cut <= 0:
            cut = limit
        pieces.append(rest[:cut].strip())
        rest = rest[cut:].strip()
    if rest:
        pieces.append(rest)
    return pieces


class Engine(ABC):
    """A loaded model; ``prepare`` and ``render`` are not thread-safe and are called under an engine lock.

    An engine that ``streams`` runs its front end in ``prepare`` and its generator per window in
    ``render`` (see windows.py); one that does not makes each model call whole, in ``render``.
    """

    name: str
    device: str = "cpu"
    sample_rate = SAMPLE_RATE
    streams = False
    frame_samples = FRAME_SAMPLES

    def __init__(self, vocab: dict[str, int]):
        self.vocab = vocab

    @property
    def label(self) -> str:
        """The engine as the ready line names it."""
        return self.name

    def prepare(self, phonemes: str, pack: np.ndarray, speed: float = 1.0, plan: WindowPlan = WHOLE) -> list[Window]:
        """The windows that speak a phoneme string of any length; characters outside the vocabulary are dropped."""
        known = "".join(ch for ch in phonemes if ch in self.vocab)
        windows: list[Window] = []
        for piece in split_phonemes(known):
            if not piece.strip():
                continue
            if not self.streams:
                windows.append(Window(Utterance(1, (piece, pack, speed), self.frame_samples), 0, 1))
                continue
            utterance = self._front(piece, pack, speed)
            if utterance.frames <= 0:
                continue
            utterance.context_frames = plan.context_frames
            windows += [Window(utterance, start, stop) for start, stop in plan.spans(utterance.frames)]
        if windows:
            windows[0].first = windows[-1].last = True
        return windows

    def render(self, window: Window) -> np.ndarray:
        """One window's audio, ready to send: crossfaded into the one before, its own end held for the next."""
        if not self.streams:
            return self._infer(*window.utterance.features)
        left, right = window.context()
        return window.assemble(self._generate(window.utterance, window.start - left, window.stop + right))

    def synthesize(self, phonemes: str, pack: np.ndarray, speed: float = 1.0) -> np.ndarray:
        """Speak a phoneme string of any length in one go (each model call as one window)."""
        pieces = [self.render(window) for window in self.prepare(phonemes, pack, speed)]
        if not pieces:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(pieces).astype(np.float32, copy=False)

    def _infer(self, phonemes: str, pack: np.ndarray, speed: float) -> np.ndarray:
        """One whole model call on at most MAX_PHONEMES in-vocabulary phonemes (engines that do not stream)."""
        raise NotImplementedError

    # -- streaming: the engine gives _features and _run_generator, the rest is the same for every engine --
    def _features(self, phonemes: str, pack: np.ndarray, speed: float) -> tuple:
        """A whole model call's durations (frames per token, pads included), the generator's input, its
        harmonic source and the style the generator reads; the source made once, for every window to slice."""
        raise NotImplementedError

    def _run_generator(self, features, source, style) -> np.ndarray:
        """The generator on a stretch of the features and the matching stretch of the source."""
        raise NotImplementedError

    def _set_up_streaming(self) -> bool:
        """Stream if a check phrase's frame arithmetic holds exactly: so many generator input and source
        steps per frame, so many samples per frame. Otherwise say why; the engine then runs whole."""
        phonemes = "".join(ch for ch in CHECK_PHONEMES if ch in self.vocab)
        self.streams = False
        try:
            durations, features, source, style = self._features(
                phonemes, np.zeros((MAX_PHONEMES, 1, STYLE_WIDTH), dtype=np.float32), 1.0)
            frames = int(np.asarray(durations).sum())
            self._feature_steps, extra = divmod(features.shape[-1], frames)
            self._source_steps, source_extra = divmod(source.shape[-1] - 1, frames)
            if extra or source_extra or not self._feature_steps:
                raise ValueError(f"generator input {tuple(features.shape)} and source {tuple(source.shape)} "
                                 f"do not line up with {frames} frames")
            samples = self._run_generator(features, source, style).size
            self.frame_samples, extra = divmod(samples, frames)
            if extra or not self.frame_samples:
                raise ValueError(f"{samples} samples for {frames} frames")
        except (AttributeError, RuntimeError, ValueError) as exc:
            log.warning("%s cannot be run in windows (%s): synthesizing whole segments", self.label, exc)
            return False
        self.streams = True
        log.info("%s streams in windows (%d samples per frame)", self.label, self.frame_samples)
        return True

    def _front(self, phonemes: str, pack: np.ndarray, speed: float) -> Utterance:
        """The model call's features, with its spoken span and the edges beyond it that windows may render."""
        durations, features, source, style = self._features(phonemes, pack, speed)
        durations = np.asarray(durations).reshape(-1)
        start, stop = speech_span(phonemes, durations)
        before, after = edges(start, stop, int(durations.sum()))
        return Utterance(stop - start, (features, source, style), self.frame_samples, before, after, offset=start)

    def _generate(self, utterance: Utterance, start: int, stop: int) -> np.ndarray:
        """The audio of frames [start, stop) of the spoken span (either end may reach into its edges)."""
        features, source, style = utterance.features
        start, stop = start + utterance.offset, stop + utterance.offset
        return self._run_generator(features[..., start * self._feature_steps: stop * self._feature_steps],
                                   source[..., start * self._source_steps: stop * self._source_steps + 1], style)


ENGINE_CHOICES = ("auto", "kokoro", "onnx")
CPU_ONNX_WORKERS = 2


def default_workers(engine: Engine) -> int:
    """How many copies of ``engine`` speak at once when the operator does not say.

    On CPU, two ONNX sessions that may each use every core gave one caller the same latency
    as one session and 1.15x its throughput on a 2-core machine (bench/engine_layout.py);
    an accelerator runs one model copy.
    """
    return CPU_ONNX_WORKERS if engine.name == "onnx" and engine.device == "cpu" else 1
ONNX_GRAPHS = ("int8", "fast")
DEFAULT_ONNX_GRAPH = "int8"


def create_engine(kind: str = "auto", device: str = "mps", model: str | None = None,
                  model_config: str | None = None, threads: int | None = None,
                  onnx_graph: str = DEFAULT_ONNX_GRAPH) -> Engine:
    """Load the asked engine; ``auto`` never touches the network.

    auto: a given ``.onnx`` file runs on onnxruntime, other given weights on torch; with
    nothing given, torch when an accelerator is present and the weights are already in
    the Hugging Face cache, else the embedded int8 ONNX model.
    """
    if kind not in ENGINE_CHOICES:
        raise ValueError(f"engine must be one of {ENGINE_CHOICES}, not {kind!r}")
    if kind == "auto":
        kind, reason = _auto_choice(device, model)
        log.info("engine auto-selected: %s (%s)", kind, reason)
    if kind == "onnx":
        from .onnx_engine import OnnxEngine
        return OnnxEngine(model, model_config, threads, onnx_graph)
    from .torch_engine import TorchEngine, resolve_device
    return TorchEngine(resolve_device(device), model, model_config)


def _auto_choice(device: str, model: str | None) -> tuple[str, str]:
    if model:
        return ("onnx", f"{model} is an ONNX file") if model.endswith(".onnx") else ("kokoro", f"weights {model}")
    from .torch_engine import local_weights, resolve_device
    resolved = resolve_device(device)
    if resolved == "cpu":
        return "onnx", "no accelerator; the int8 ONNX model is the fastest on CPU"
    if local_weights() is None:
        return "onnx", "Kokoro-82M weights are not in the Hugging Face cache"
    return "kokoro", f"{resolved} present and weights cached"

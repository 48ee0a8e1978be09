"""Synthesis engines: phonemes and a voice pack in, 24 kHz mono float32 audio out.

Two engines share this interface: ``kokoro`` (the kokoro package's KModel on torch, the
path for cuda and mps) and ``onnx`` (onnxruntime on a Kokoro-82M ONNX export, by default
the int8 one embedded from PyPI, as shipped or as the "fast" graph derived from it; see
fast_graph.py). Callers serialise access: one inference at a time.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod

import numpy as np

log = logging.getLogger(__name__)

SAMPLE_RATE = 24000
MAX_PHONEMES = 510
_CLAUSE_MARKS = ".!?;:,—…"


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
    """A loaded model; ``synthesize`` is not thread-safe and is called under the service's engine lock."""

    name: str
    device: str = "cpu"
    sample_rate = SAMPLE_RATE

    def __init__(self, vocab: dict[str, int]):
        self.vocab = vocab

    @property
    def label(self) -> str:
        """The engine as the ready line names it."""
        return self.name

    def synthesize(self, phonemes: str, pack: np.ndarray, speed: float = 1.0) -> np.ndarray:
        """Speak a phoneme string of any length; characters outside the model's vocabulary are dropped."""
        known = "".join(ch for ch in phonemes if ch in self.vocab)
        pieces = [self._infer(piece, pack, speed) for piece in split_phonemes(known) if piece.strip()]
        if not pieces:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(pieces).astype(np.float32, copy=False)

    @abstractmethod
    def _infer(self, phonemes: str, pack: np.ndarray, speed: float) -> np.ndarray:
        """One model call on at most MAX_PHONEMES in-vocabulary phonemes."""


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

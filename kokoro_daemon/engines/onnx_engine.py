"""Kokoro-82M on onnxruntime: a user's ONNX file, or the int8 export embedded from PyPI.

The model is cut into its front end and its generator (stream_graph.py), so that a sentence's
audio can be rendered in windows and its boundary silence is never generated. A model that
cannot be cut, or whose halves fail the check at load, runs whole, with a log line saying why.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from . import DEFAULT_ONNX_GRAPH, ONNX_GRAPHS, Engine
from .model_asset import default_vocab, embedded_model_path, session_options
from .stream_graph import StreamGraphError, split

log = logging.getLogger(__name__)


def graph_path(graph: str) -> Path:
    """The embedded model as the named graph: ``int8`` as shipped, ``fast`` converted from it (cached)."""
    if graph == "fast":
        from .fast_graph import fast_model_path
        return fast_model_path()
    if graph != "int8":
        raise ValueError(f"onnx graph must be one of {ONNX_GRAPHS}, not {graph!r}")
    return embedded_model_path()


class OnnxEngine(Engine):
    name = "onnx"

    def __init__(self, model_path: str | Path | None = None, config_path: str | Path | None = None,
                 threads: int | None = None, graph: str = DEFAULT_ONNX_GRAPH):
        """A given ``model_path`` is used as is; otherwise the embedded model as ``graph`` (int8 or fast)."""
        import onnxruntime as ort
        super().__init__(default_vocab(config_path))
        self.model_path = Path(model_path) if model_path else graph_path(graph)
        self.graph = None if model_path else graph
        self._providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
                           if p in ort.get_available_providers()]
        self._options = session_options(threads)
        self.session = self.front = self.generator = None
        try:
            self._load_split()
        except StreamGraphError as exc:
            log.warning("%s cannot be cut into front end and generator (%s): synthesizing whole segments",
                        self.model_path.name, exc)
            self.session = self._session(str(self.model_path))
        self.device = "cuda" if self._sessions()[0].get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    def _session(self, model):
        import onnxruntime as ort
        return ort.InferenceSession(model, sess_options=self._options, providers=self._providers)

    def _sessions(self) -> list:
        return [s for s in (self.session, self.front, self.generator) if s is not None]

    def _load_split(self) -> None:
        """Cut the model and load both halves, which must then pass the engine's check at load."""
        halves = split(self.model_path)
        try:
            self.front, self.generator = self._session(halves.front), self._session(halves.generator)
        except Exception as exc:  # noqa: BLE001 - onnxruntime refuses the extracted graph: run whole instead
            self.front = self.generator = None
            raise StreamGraphError(f"onnxruntime refuses a half: {exc}") from None
        self._generator_inputs = (halves.cuts.generator_input, halves.cuts.harmonic_source, halves.cuts.style)
        if not self._set_up_streaming():
            self.front = self.generator = None
            raise StreamGraphError("its halves fail the check at load")

    @property
    def label(self) -> str:
        return f"onnx ({self.graph} graph)" if self.graph else f"onnx ({self.model_path.name})"

    def _inputs(self, phonemes: str, pack: np.ndarray, speed: float) -> dict[str, np.ndarray]:
        tokens = [0, *(self.vocab[ch] for ch in phonemes if ch in self.vocab), 0]
        return {"tokens": np.array([tokens], dtype=np.int64),
                "style": pack[min(len(tokens) - 3, len(pack) - 1)].reshape(1, -1).astype(np.float32, copy=False),
                "speed": np.array([speed], dtype=np.float32)}

    def _infer(self, phonemes: str, pack: np.ndarray, speed: float) -> np.ndarray:
        audio = self.session.run(None, self._inputs(phonemes, pack, speed))[0]
        return np.asarray(audio, dtype=np.float32).reshape(-1)

    def _features(self, phonemes: str, pack: np.ndarray, speed: float) -> tuple:
        inputs = self._inputs(phonemes, pack, speed)
        return (*self.front.run(None, inputs), inputs["style"])

    def _run_generator(self, features: np.ndarray, source: np.ndarray, style: np.ndarray) -> np.ndarray:
        audio = self.generator.run(None, dict(zip(self._generator_inputs, (features, source, style))))[0]
        return np.asarray(audio, dtype=np.float32).reshape(-1)

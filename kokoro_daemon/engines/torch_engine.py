"""Kokoro-82M through the kokoro package (KModel, driven by KPipeline's inference step) on torch."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from . import Engine

log = logging.getLogger(__name__)

HUB_REPO = "hexgrad/Kokoro-82M"
DEVICE_PREFERENCE = ("mps", "cuda", "cpu")


def resolve_device(requested: str) -> str:
    """The asked device if present, else the next of mps -> cuda -> cpu that is, with one log line."""
    import torch
    present = {"mps": torch.backends.mps.is_available(), "cuda": torch.cuda.is_available(), "cpu": True}
    if present.get(requested):
        return requested
    fallback = next(d for d in DEVICE_PREFERENCE[DEVICE_PREFERENCE.index(requested) if requested in DEVICE_PREFERENCE else 0:]
                    if present[d])
    log.warning("device %r is not available here; using %r", requested, fallback)
    return fallback


def local_weights() -> tuple[Path, Path] | None:
    """(weights, config) already in the Hugging Face cache, found without the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    from kokoro import KModel
    weights = try_to_load_from_cache(HUB_REPO, KModel.MODEL_NAMES[HUB_REPO])
    config = try_to_load_from_cache(HUB_REPO, "config.json")
    if isinstance(weights, str) and isinstance(config, str):
        return Path(weights), Path(config)
    return None


class TorchEngine(Engine):
    name = "kokoro"

    def __init__(self, device: str = "cpu", model_path: str | Path | None = None,
                 config: str | Path | dict | None = None):
        import torch
        from kokoro import KModel, KPipeline
        if model_path is None and config is None and (cached := local_weights()):
            model_path, config = cached
        if isinstance(config, (str, Path)):
            config = json.loads(Path(config).read_text(encoding="utf-8"))
        self.device = device
        self._torch = torch
        self._infer_step = KPipeline.infer
        self.model = KModel(repo_id=HUB_REPO, config=config, model=str(model_path) if model_path else None)
        self.model = self.model.to(device).eval()
        super().__init__(self.model.vocab)
        self._packs: dict[int, tuple] = {}

    def _pack_tensor(self, pack: np.ndarray):
        """Voice packs stay numpy service-wide; each is moved to the device once."""
        cached = self._packs.get(id(pack))
        if cached is None or cached[0] is not pack:
            if len(self._packs) >= 32:
                self._packs.clear()
            cached = self._packs[id(pack)] = (pack, self._torch.from_numpy(pack).to(self.device))
        return cached[1]

    def _infer(self, phonemes: str, pack: np.ndarray, speed: float) -> np.ndarray:
        with self._torch.inference_mode():
            output = self._infer_step(self.model, phonemes, self._pack_tensor(pack), speed)
        return output.audio.detach().float().cpu().numpy().reshape(-1)

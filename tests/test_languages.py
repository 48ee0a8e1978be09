"""Every language the model speaks: the right phonemizer for each voice prefix, and audio through the service."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from misaki import en, espeak

from kokoro_daemon.g2p import G2PRegistry, G2PUnavailable
from conftest import speaking_with, spoken_outside
from peers import checked_audio, reply_frames

# (prefix, voice, espeak language, one sentence in that language)
ESPEAK_CASES = [
    ("e", "ef_dora", "es", "Hola, gracias por llamar."),
    ("f", "ff_siwis", "fr-fr", "Bonjour, merci de votre appel."),
    ("i", "if_sara", "it", "Buongiorno, grazie per la chiamata."),
    ("p", "pf_dora", "pt-br", "Olá, obrigada por ligar."),
    ("h", "hf_alpha", "hi", "नमस्ते, कॉल करने के लिए धन्यवाद।"),
]
# the modules each optional misaki extra brings (misaki's own metadata)
EXTRAS = {
    "j": ("misaki[ja]", ["fugashi", "jaconv", "mojimoji", "pyopenjtalk", "unidic"]),
    "z": ("misaki[zh]", ["cn2an", "jieba", "ordered_set", "pypinyin", "pypinyin_dict"]),
}


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64))))


@pytest.mark.slow
@pytest.mark.parametrize("lang, voice_name, code, text", ESPEAK_CASES, ids=[c[0] for c in ESPEAK_CASES])
def test_espeak_language_speaks_through_the_service(service, g2p, lang, voice_name, code, text):
    phonemizer = g2p.get(lang)
    assert phonemizer.backend == "espeak"
    assert isinstance(phonemizer._convert, espeak.EspeakG2P)  # noqa: SLF001
    assert phonemizer._convert.language == code  # noqa: SLF001
    phonemes = phonemizer(text)
    assert phonemes and phonemes == espeak.EspeakG2P(language=code)(text)[0].strip()
    assert phonemes != g2p.get("a")(text)
    with speaking_with(service, voice_name) as current:
        assert current.lang == lang
        assert service.synthesizer.phonemize(text, current) == phonemes
        audio = checked_audio(reply_frames(service.tcp_address, f"lang-{lang}", text))
    assert rms(audio) > 0.02, rms(audio)
    seconds = audio.size / 24000
    assert 0.03 * len(text) < seconds < 0.2 * len(text), (seconds, len(text))


@pytest.mark.parametrize("lang", ["j", "z"])
def test_cjk_without_misaki_extras_names_the_package(lang):
    package, modules = EXTRAS[lang]
    if all(importlib.util.find_spec(m) is not None for m in modules):
        pytest.skip(f"{package} is installed here")
    with pytest.raises(G2PUnavailable) as info:
        G2PRegistry().get(lang)
    assert package in str(info.value)


@pytest.mark.slow
def test_british_voice_uses_the_british_phonemizer(service, engine, g2p):
    text = "I can't find the schedule for tomorrow."
    british, american = g2p.get("b"), g2p.get("a")
    assert british.backend == american.backend
    if british.backend == "misaki":
        assert isinstance(british._convert, en.G2P)  # noqa: SLF001
        assert british._convert.british and not american._convert.british  # noqa: SLF001
    else:  # no spaCy model: espeak's British English
        assert british._convert.language == "en-gb"  # noqa: SLF001
    phonemes = british(text)
    assert phonemes and phonemes != american(text)
    with speaking_with(service, "bf_emma") as current:
        assert current.lang == "b"
        audio = checked_audio(reply_frames(service.tcp_address, "lang-b", text))
    assert rms(audio) > 0.02
    # the service spoke exactly the British phonemes with bf_emma's pack
    expected = spoken_outside(engine, g2p, text, current, service.synthesizer.plan)
    np.testing.assert_array_equal(audio, expected)

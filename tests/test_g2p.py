"""Building a language's phonemizer runs outside the registry's lock: one build per language,
and nobody else's phonemizing waits for it. Real phonemizers throughout; the test only holds a
build open (an event in the build step) to look at the registry while it is in progress."""
from __future__ import annotations

import threading
from collections import Counter

import pytest

from kokoro_daemon import g2p as g2p_module
from kokoro_daemon.g2p import G2PRegistry, G2PUnavailable

WAIT_S = 20.0  # far above a phonemize call (milliseconds) or an espeak build (a fraction of a second)


class HeldBuilds:
    """Wraps the real build step: counts builds per language and holds each open until released."""

    def __init__(self, monkeypatch):
        self.started = threading.Event()
        self.release = threading.Event()
        self.builds: Counter[str] = Counter()
        real_build = g2p_module._build

        def held(lang, prefer_misaki):
            self.builds[lang] += 1
            self.started.set()
            self.release.wait(WAIT_S)
            return real_build(lang, prefer_misaki)

        monkeypatch.setattr(g2p_module, "_build", held)


def in_thread(target, *args) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run():
        try:
            result["value"] = target(*args)
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


@pytest.mark.slow
def test_english_is_phonemized_while_another_language_is_being_built(monkeypatch):
    registry = G2PRegistry()
    text = "Your order has shipped today."
    expected = registry.get("a")(text)
    held = HeldBuilds(monkeypatch)
    builder, built = in_thread(registry.get, "f")
    second, also_built = in_thread(registry.get, "f")  # asks for the same language meanwhile
    assert held.started.wait(WAIT_S)
    second.join(0.2)
    try:
        english, spoken = in_thread(lambda: registry.get("a")(text))
        english.join(WAIT_S)
        assert not english.is_alive(), "English phonemizing waited for the French build"
        assert spoken == {"value": expected}
        assert builder.is_alive() and second.is_alive()  # the build was still in progress
    finally:
        held.release.set()
    builder.join(WAIT_S)
    second.join(WAIT_S)
    assert built["value"] is also_built["value"]
    assert held.builds == Counter(f=1)
    assert built["value"]("Bonjour, merci de votre appel.")


def test_a_failed_build_reaches_every_caller_and_is_tried_again(monkeypatch):
    registry = G2PRegistry()
    held = HeldBuilds(monkeypatch)
    callers = [in_thread(registry.get, "q") for _ in range(3)]
    assert held.started.wait(WAIT_S)
    for thread, _ in callers:
        thread.join(0.2)  # the others arrive and wait for the build in progress
    held.release.set()
    for thread, result in callers:
        thread.join(WAIT_S)
        assert isinstance(result.get("error"), G2PUnavailable), result
    tried = held.builds["q"]
    with pytest.raises(G2PUnavailable, match="no phonemizer for language prefix 'q'"):
        registry.get("q")
    assert held.builds["q"] == tried + 1  # the failure was not kept

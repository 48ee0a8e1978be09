"""The operator page in a real headless Chromium (Debian's, installed by run-tests.sh), driven by Playwright.

The page must load without console errors, show a phone call while it runs, and play an
audition of the right length. A screenshot taken during the call is left in the test's tmp
folder (``operator-page.png``; the README's copy is docs/operator-page.png).
"""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import running_service
from peers import LlamaClient, checked_audio

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--autoplay-policy=no-user-gesture-required"]
CALL_TEXT = ("Let me check that for you. I can see your order from last week. It left our warehouse on Monday, "
             "and the driver expects to reach you tomorrow before noon. Is there anything else I can do?")
AUDITION = "Good afternoon, and thank you for calling."
AUDITION_VOICE = "af_sky(2)+am_adam(1)"


@pytest.fixture(scope="module")
def page_service(engine, g2p):
    with running_service(engine, g2p, http_port=0) as service:
        yield service


@pytest.fixture
def browser_page():
    from playwright.sync_api import sync_playwright
    assert CHROMIUM.exists(), "Debian's chromium is missing: ./run-tests.sh installs it (apt-get install chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        try:
            yield browser.new_page(viewport={"width": 1100, "height": 1250})
        finally:
            browser.close()


def pcm_seconds(service, text: str, voice: str) -> float:
    """The audition's length, as the HTTP API gives it to any other client."""
    body = json.dumps({"model": "kokoro", "input": text, "voice": voice, "response_format": "pcm"}).encode()
    request = urllib.request.Request("http://%s:%d/v1/audio/speech" % service.http.address, data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return len(response.read()) / 2 / 24000


@pytest.mark.slow
def test_the_page_shows_a_live_call_and_plays_an_audition(page_service, browser_page, tmp_path):
    page = browser_page
    problems = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto("http://%s:%d/" % page_service.http.address)
    page.wait_for_function("document.getElementById('engine').textContent.startsWith('onnx')")
    assert page.text_content("#voice") == "af_sky" and page.text_content("#device") == "cpu"

    with LlamaClient(page_service.tcp_address, "7001") as call:
        call.text(CALL_TEXT)
        # the call's row: waiting for a processor at first, then speaking on the reply path
        page.wait_for_function("(document.querySelector(\"#calls tr[data-call-id='7001']\") || {}).textContent"
                               "?.includes('reply')", timeout=15000)
        first = call.read_frame()   # its first audio: the row now shows a first-audio time
        page.wait_for_function("document.querySelector(\"#calls tr[data-call-id='7001']\").cells[5]"
                               ".textContent.endsWith(' s')", timeout=15000)
        page.wait_for_selector("#chart .u-over", timeout=5000)
        page.screenshot(path=str(tmp_path / "operator-page.png"), full_page=True)
        call.bye()
        checked_audio([first, *call.read_until_bye()])

    page.fill("#audition-text", AUDITION)
    page.fill("#audition-voice", AUDITION_VOICE)
    page.click("#play")
    page.wait_for_selector("#audition-status[data-state='played']", timeout=120000)
    played = float(page.get_attribute("#audition-status", "data-duration"))
    expected = pcm_seconds(page_service, AUDITION, AUDITION_VOICE)
    print(f"\naudition played {played:.3f} s; the API gives {expected:.3f} s for the same request")
    assert 1.5 < played and abs(played - expected) < 0.01
    assert problems == []


def post_settings(service, settings: dict) -> tuple[int, dict]:
    request = urllib.request.Request("http://%s:%d/api/settings" % service.http.address,
                                     data=json.dumps(settings).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.slow
def test_without_a_database_the_page_sets_voice_and_speed_directly(page_service):
    before = page_service.voice_setting.get()
    try:
        assert post_settings(page_service, {"voice": "am_michael", "speed": 1.25}) == (
            200, {"applied_via": "service", "voice": "am_michael", "speed": 1.25})
        voice, speed = page_service.voice_setting.get()
        assert (voice.spec, speed) == ("am_michael", 1.25)
        for bad, param in (({"voice": "af_nobody"}, "voice"), ({"speed": 2.5}, "speed"), ({}, None)):
            status, body = post_settings(page_service, bad)
            assert status == 400 and body["error"]["param"] == param, body
        assert page_service.voice_setting.get() == (voice, speed)
    finally:
        page_service.voice_setting.set(*before)

"""A fresh checkout, with no model hub and no voices folder given, speaks English in af_sky.

The daemon runs as ``./start-kokoro.sh`` starts it (no options but its ports), with an empty
Hugging Face cache; its HTTP flags are checked on the same run.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import soundfile

from conftest import ROOT, judge
from kokoro_daemon.voices import SHIPPED_VOICES_DIR, VoiceLibrary, load_pack_file
from peers import free_port

SHIPPED = ("af_sky", "af_heart", "af_bella", "am_adam", "am_michael", "bf_emma", "bm_george")
SMOKE_TEXT = "Hello, this is a test of the Kokoro text to speech service."


def test_the_shipped_voices_are_found_without_a_voices_folder():
    library = VoiceLibrary()
    available = library.available()
    for name in SHIPPED:
        assert available[name] == "shipped"
        np.testing.assert_array_equal(library.load(name).pack, load_pack_file(SHIPPED_VOICES_DIR / f"{name}.pt"))


def test_a_voices_folder_overrides_a_shipped_voice(tmp_path):
    bella = load_pack_file(SHIPPED_VOICES_DIR / "af_bella.pt")
    np.save(tmp_path / "af_sky.npy", bella)
    library = VoiceLibrary(tmp_path)
    np.testing.assert_array_equal(library.load("af_sky").pack, bella)
    assert library.available()["af_sky"] == "directory" and library.available()["am_adam"] == "shipped"


def http_status(url: str, key: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.judge
def test_a_fresh_checkout_speaks_english_in_af_sky(tmp_path):
    tcp_port, http_port = free_port(), free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("KOKORO_", "HF_"))}
    env.update(HF_HOME=str(tmp_path / "empty-hub-cache"), KOKORO_API_KEY="s3cret", PYTHONUNBUFFERED="1")
    log_path = tmp_path / "service.log"
    with open(log_path, "w") as log:
        # its ports only, the smoke call's (999) processor port among them: a free one, as tests run side by side
        proc = subprocess.Popen([sys.executable, str(ROOT / "kokoro_service.py"), "-t", str(tcp_port),
                                 "-u", str(free_port()), "--http-port", str(http_port),
                                 "--processor-base-port", str(free_port() - 999)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 180
        while "ready in" not in log_path.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        output = log_path.read_text()
        ready = next((line for line in output.splitlines() if "ready in" in line), None)
        assert ready is not None, output[-3000:]
        assert "voice af_sky (" in ready and f"HTTP 127.0.0.1:{http_port}" in ready, ready
        assert "embedded voice" not in output, output   # no stand-in for af_sky
        wav = tmp_path / "reply.wav"
        smoke = subprocess.run([sys.executable, str(ROOT / "test_kokoro_service.py"), "--port", str(tcp_port),
                                "--wav", str(wav)], capture_output=True, text=True, timeout=120)
        assert smoke.returncode == 0 and "Test completed successfully" in smoke.stdout, smoke.stdout + smoke.stderr
        url = f"http://127.0.0.1:{http_port}"
        assert http_status(url + "/health") == 200
        assert (http_status(url + "/v1/models"), http_status(url + "/v1/models", "s3cret")) == (401, 200)
    finally:
        proc.terminate()
        proc.wait(30)
    assert soundfile.info(str(wav)).duration > 2.0
    heard = judge(tmp_path, [(wav, SMOKE_TEXT)])
    assert heard["overall_wer"] <= 0.05, heard

"""Shared fixtures: the real embedded model, loaded once, behind real services on free ports."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile
from prometheus_client import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kokoro_daemon.calls import Routing  # noqa: E402
from kokoro_daemon.engines import create_engine  # noqa: E402
from kokoro_daemon.g2p import G2PRegistry  # noqa: E402
from kokoro_daemon.server import KokoroService, ServiceConfig  # noqa: E402
from kokoro_daemon.synthesis import AudioCache, Synthesizer  # noqa: E402

SHARED = ROOT.parent / "shared"
VOICES_DIR = SHARED / "voices" / "v1_0"
JUDGE = SHARED / "speech-judge" / "judge.sh"
PHRASES = [line.strip() for line in (SHARED / "speech-judge" / "phrases.txt").read_text().splitlines()
           if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="session")
def engine():
    return create_engine("onnx")


@pytest.fixture(scope="session")
def g2p():
    return G2PRegistry()


def worker_routing() -> Routing:
    """The routing of this test worker's services. Workers (pytest-xdist) run side by side and speak the same
    numbered calls (4101, 7001...): each gets processor and announce ports of its own, 7500 apart (more than
    any two of those ids), all below the ephemeral range, where a free port minus the base is a call id."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")) % 4
    return Routing(processor_base_port=9002 + 7500 * worker, announce_base_port=13000 + 7500 * worker)


@contextmanager
def running_service(engine, g2p, **overrides):
    routing = overrides.pop("routing", None) or worker_routing()
    # one engine worker unless a test asks for more: every service here shares the session's one model
    config = replace(ServiceConfig(host="127.0.0.1", tcp_port=0, udp_port=0, device="cpu", engine_workers=1,
                                   voices_dir=str(VOICES_DIR), routing=routing), **overrides)
    service = KokoroService(config, engine=engine, g2p=g2p)
    service.start()
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="session")
def service(engine, g2p):
    with running_service(engine, g2p) as svc:
        yield svc


@pytest.fixture
def make_service(engine, g2p):
    """Start a service with other settings, stopped at the end of the test."""
    started = []

    def make(**overrides):
        ctx = running_service(engine, g2p, **overrides)
        started.append(ctx)
        return ctx.__enter__()

    yield make
    for ctx in reversed(started):
        ctx.__exit__(None, None, None)


def write_wav(path: Path, samples: np.ndarray, rate: int) -> Path:
    soundfile.write(path, np.clip(samples, -1.0, 1.0), rate, subtype="PCM_16")
    return path


def judge(tmp_path: Path, items: list[tuple[Path, str]]) -> dict:
    """Score WAVs with the offline Whisper judge: {"overall_wer": x, "files": [{"wav", "wer", "transcript"}...]}."""
    import json
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text("".join(f"{wav}\t{text}\n" for wav, text in items))
    result = tmp_path / "judge.json"
    proc = subprocess.run(["bash", str(JUDGE), "score", str(manifest), "--json", str(result)],
                          capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(result.read_text())


@contextmanager
def speaking_with(service, spec: str):
    """Speak with ``spec`` inside the block; the service's previous voice comes back afterwards."""
    previous = service.voice_setting.get()[0]
    try:
        service.set_voice(spec)
        yield service.voice_setting.get()[0]
    finally:
        service.voice_setting.set(voice=previous)


def spoken_outside(engine, g2p, text: str, voice, plan) -> np.ndarray:
    """What the service's own path (phonemes, engine windows by ``plan``, trimming) gives, made outside it."""
    return Synthesizer([engine], g2p, AudioCache(0), plan=plan).speak(text, voice, 1.0)[0]


def expected_audio(service, engine, g2p, *texts: str) -> np.ndarray:
    """What ``service`` says for each text as a segment of its own, in its current voice, made outside it."""
    voice = service.voice_setting.get()[0]
    return np.concatenate([spoken_outside(engine, g2p, text, voice, service.synthesizer.plan) for text in texts])


def counter(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels or None) or 0.0


def wait_for(predicate, timeout: float = 120.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds: for state another thread sets just after the bytes a test reads."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True

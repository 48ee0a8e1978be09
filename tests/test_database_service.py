"""The real CLI (``kokoro_service.py``) against the phone system's SQLite file: status through
start and SIGTERM, refused starts, voice changes at run time, a busy database, operator commands.

One full daemon start serves the module (it loads the model: 10-20 s); the refused starts fail
before the model is loaded.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, VOICES_DIR, spoken_outside
from kokoro_daemon.config_db import ConfigDB
from kokoro_daemon.engines.windows import DEFAULT_SYNTHESIS, window_plan
from kokoro_daemon.voices import VoiceLibrary
from peers import LlamaClient, checked_audio, free_port, reply_frames

SERVICE = [sys.executable, str(ROOT / "kokoro_service.py")]
START_TIMEOUT_S = 120.0


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*SERVICE, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@dataclass
class Daemon:
    proc: subprocess.Popen
    db_path: Path
    log_path: Path
    address: tuple[str, int]
    http_port: int
    statuses: list[str] = field(default_factory=list)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 10.0, start: int = 0) -> bool:
        deadline = time.monotonic() + timeout
        while text not in self.log[start:]:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                return False
            time.sleep(0.05)
        return True

    def wait_status(self, wanted: str, timeout: float) -> bool:
        """Poll the database's status until it is ``wanted``, noting each one seen on the way."""
        db, deadline = ConfigDB(self.db_path), time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            status = db.get_kokoro_service_status()
            if not self.statuses or self.statuses[-1] != status:
                self.statuses.append(status)
            if status == wanted:
                return True
            time.sleep(0.05)
        return False

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def launch(tmp: Path, *extra: str) -> Daemon:
    """The real daemon on free ports with the database ``tmp/system.db``, its output in ``tmp/daemon.log``."""
    db_path, log_path = tmp / "system.db", tmp / "daemon.log"
    tcp_port, udp_port, http_port = free_port(), free_port(), free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([*SERVICE, "--engine", "onnx", "--device", "cpu", "-t", str(tcp_port),
                                 "-u", str(udp_port), "--http-port", str(http_port), "--voices-dir", str(VOICES_DIR),
                                 "--db", str(db_path), *extra],
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return Daemon(proc, db_path, log_path, ("127.0.0.1", tcp_port), http_port)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """The daemon started with --force on a database that disables it; statuses seen while it starts."""
    tmp = tmp_path_factory.mktemp("daemon")
    ConfigDB(tmp / "system.db").set_kokoro_enabled(False)
    daemon = launch(tmp, "--force")
    daemon.wait_status("running", START_TIMEOUT_S)
    try:
        yield daemon
    finally:
        daemon.terminate()


# 9 -------------------------------------------------------------------------------------------
def test_disabled_in_the_database_refuses_to_start(tmp_path):
    db_path = tmp_path / "system.db"
    ConfigDB(db_path).set_kokoro_enabled(False)
    proc = cli("-t", str(free_port()), "-u", str(free_port()), "--db", str(db_path), timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert "disabled" in proc.stderr and "--force" in proc.stderr and "db enable" in proc.stderr
    assert ConfigDB(db_path).get_kokoro_service_status() == "stopped"  # untouched: it never started


def test_failed_start_leaves_status_error(tmp_path):
    db_path = tmp_path / "system.db"
    proc = cli("--engine", "onnx", "--device", "cpu", "-t", str(free_port()), "-u", str(free_port()),
               "--voices-dir", str(VOICES_DIR), "--db", str(db_path), "--strict-voice", "-v", "no_such_voice")
    assert proc.returncode not in (0, None), proc.stderr
    assert "failed to start" in proc.stderr and "no_such_voice" in proc.stderr
    assert ConfigDB(db_path).get_kokoro_service_status() == "error"


@pytest.mark.slow
def test_force_starts_a_disabled_service_and_reports_running(daemon):
    assert daemon.proc.poll() is None, daemon.log[-3000:]
    assert daemon.statuses[-2:] == ["starting", "running"], daemon.statuses
    assert "ready in" in daemon.log
    assert ConfigDB(daemon.db_path).is_kokoro_enabled() is False  # --force does not rewrite the setting


# 10 ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_voice_change_in_the_database_is_heard_on_the_next_reply(daemon, engine, g2p):
    text = "Thank you for holding."
    sky = checked_audio(reply_frames(daemon.address, "voice-1", text))
    # what the service's own path (phonemes, engine, trimming) gives for this text in am_adam
    adam = spoken_outside(engine, g2p, text, VoiceLibrary(str(VOICES_DIR)).load("am_adam"),
                          window_plan(DEFAULT_SYNTHESIS))
    assert sky.shape != adam.shape or not np.allclose(sky, adam, atol=1e-3)

    mark = len(daemon.log)
    changed = time.monotonic()
    ConfigDB(daemon.db_path).set_kokoro_voice("am_adam")
    assert daemon.wait_log("voice is now am_adam", 5, mark), daemon.log[mark:]
    print(f"\nvoice change applied {time.monotonic() - changed:.2f} s after the database write")
    heard = checked_audio(reply_frames(daemon.address, "voice-2", text))
    assert heard.shape == adam.shape and np.allclose(heard, adam, atol=1e-3)
    print(f"am_adam reply {'identical to' if np.array_equal(heard, adam) else 'close to'} the reference")
    assert heard.shape != sky.shape or not np.allclose(heard, sky, atol=1e-3)

    nan_pack = daemon.db_path.parent / "broken.npy"
    np.save(nan_pack, np.full((510, 256), np.nan, dtype=np.float32))
    for bad, reason in (("no_such_voice", "not found"), (str(nan_pack), "NaN")):
        mark = len(daemon.log)
        with LlamaClient(daemon.address, f"in-progress-{reason}") as call:  # a call in progress meanwhile
            call.text("One moment while I check. I am looking at your account now.")
            ConfigDB(daemon.db_path).set_kokoro_voice(bad)
            assert daemon.wait_log(f"database voice {bad!r} refused", 5, mark), daemon.log[mark:]
            assert " ERROR " in daemon.log[mark:] and reason in daemon.log[mark:]
            call.bye()
            # both sentences, each whole, still in am_adam
            sentences = [spoken_outside(engine, g2p, sentence, VoiceLibrary(str(VOICES_DIR)).load("am_adam"),
                                        window_plan(DEFAULT_SYNTHESIS))
                         for sentence in ("One moment while I check.", "I am looking at your account now.")]
            assert np.allclose(checked_audio(call.read_until_bye()), np.concatenate(sentences), atol=1e-3)
        still = checked_audio(reply_frames(daemon.address, f"voice-after-{reason}", text))
        assert still.shape == adam.shape and np.allclose(still, adam, atol=1e-3)
    assert daemon.proc.poll() is None


@pytest.mark.slow
def test_the_operator_page_changes_the_voice_through_the_database(daemon):
    """The page writes system_config; the service hears of it from its watcher, like any other change there."""
    mark = len(daemon.log)
    request = urllib.request.Request(f"http://127.0.0.1:{daemon.http_port}/api/settings",
                                     data=json.dumps({"voice": "bf_emma", "speed": 1.1}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.loads(response.read())["applied_via"] == "database"
    db = ConfigDB(daemon.db_path)
    assert (db.get_kokoro_voice(), db.get_kokoro_speed()) == ("bf_emma", 1.1)
    assert daemon.wait_log("voice is now bf_emma", 5, mark) and daemon.wait_log("speed is now 1.10", 5, mark)
    db.set_kokoro_voice("am_adam")
    db.set_kokoro_speed(1.0)
    assert daemon.wait_log("voice is now am_adam", 5, mark), daemon.log[mark:]


# 11 ------------------------------------------------------------------------------------------
WRITER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=5, isolation_level=None)
n = 0
while True:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO system_config (key, value) VALUES ('llama_model', ?) "
                 "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (str(n),))
    conn.execute("INSERT INTO system_config (key, value) VALUES ('whisper_threads', ?) "
                 "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (str(n % 8),))
    time.sleep(0.002)  # hold the write lock a moment, as a busy host would
    conn.execute("COMMIT")
    n += 1
"""


@pytest.mark.slow
def test_another_process_writing_the_database_in_a_tight_loop(daemon):
    mark = len(daemon.log)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(daemon.db_path)], stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)
        started = time.monotonic()
        texts = ["Your call is important to us.", "Thank you for holding.", "We will be right with you."]
        for n, text in enumerate(texts):
            assert checked_audio(reply_frames(daemon.address, f"busy-db-{n}", text)).size > 12000
        while time.monotonic() - started < 3.0:  # let the watcher poll a few times under the writes
            assert checked_audio(reply_frames(daemon.address, "busy-db-again", texts[1])).size > 12000
        assert writer.poll() is None, writer.stderr.read()
    finally:
        writer.kill()
        writer.wait()
    writes = int(ConfigDB(daemon.db_path).get("llama_model"))
    print(f"\n{writes} writes by the other process during the calls")
    assert writes > 100
    assert daemon.proc.poll() is None
    assert ConfigDB(daemon.db_path).get_kokoro_service_status() == "running"
    tail = daemon.log[mark:]
    assert "Traceback" not in tail and " ERROR " not in tail, tail[-3000:]


# issue 10: faults after start cost an ERROR line, never the running service ----------------------
@pytest.mark.slow
def test_metrics_port_taken_and_database_locked_after_start(tmp_path):
    """Another socket holds the metrics port, and another connection holds the database in an
    EXCLUSIVE transaction when the service writes 'running' (its busy timeout, 5 s, runs out):
    the service serves throughout, and writes 'running' once the lock is gone."""
    db = ConfigDB(tmp_path / "system.db")
    with socket.create_server(("127.0.0.1", 0)) as metrics_holder:
        daemon = launch(tmp_path, "--metrics-port", str(metrics_holder.getsockname()[1]))
        try:
            assert daemon.wait_status("starting", START_TIMEOUT_S), daemon.log[-3000:]
            locker = sqlite3.connect(daemon.db_path, isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")
            try:
                assert daemon.wait_log("ready in", START_TIMEOUT_S), daemon.log[-3000:]
                assert daemon.wait_log("serving without metrics", 10), daemon.log[-3000:]
                assert daemon.wait_log("Writing status 'running'", 30), daemon.log[-3000:]
                checked_audio(reply_frames(daemon.address, "while-locked", "Thank you for holding."))
                assert db.get_kokoro_service_status() == "starting"  # not written while the lock is held
            finally:
                locker.execute("ROLLBACK")
                locker.close()
            assert daemon.wait_status("running", 30), daemon.log[-3000:]
            checked_audio(reply_frames(daemon.address, "after-lock", "Thank you for holding."))
            daemon.proc.send_signal(signal.SIGTERM)
            assert daemon.proc.wait(30) == 0, daemon.log[-3000:]
        finally:
            daemon.terminate()
    assert db.get_kokoro_service_status() == "stopped"
    errors = [line for line in daemon.log.splitlines() if " ERROR " in line]
    assert len(errors) == 2 and "metrics port" in errors[0] and "database is locked" in errors[1], errors
    assert "Traceback" not in daemon.log


# 12 ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_operator_commands(tmp_path):
    db = str(tmp_path / "system.db")
    status = cli("db", "status", "--db", db)
    assert status.returncode == 0, status.stderr
    assert "kokoro_service_enabled = true" in status.stdout and "kokoro_voice = af_sky" in status.stdout

    disabled = cli("db", "disable", "--db", db)
    assert disabled.returncode == 0 and "kokoro_service_enabled = false" in disabled.stdout
    assert ConfigDB(db).is_kokoro_enabled() is False
    enabled = cli("db", "enable", "--db", db)
    assert enabled.returncode == 0 and "kokoro_service_enabled = true" in enabled.stdout
    assert ConfigDB(db).is_kokoro_enabled() is True

    voice = cli("db", "set-voice", "bf_emma", "--db", db, "--voices-dir", str(VOICES_DIR))
    assert voice.returncode == 0 and "kokoro_voice = bf_emma" in voice.stdout, voice.stderr
    bad = cli("db", "set-voice", "no_such_voice", "--db", db, "--voices-dir", str(VOICES_DIR))
    assert bad.returncode == 2 and "error:" in bad.stderr and "no_such_voice" in bad.stderr
    assert ConfigDB(db).get_kokoro_voice() == "bf_emma"

    listed = cli("--list-voices", "--voices-dir", str(VOICES_DIR))
    assert listed.returncode == 0, listed.stderr
    names = {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}
    assert {path.stem for path in VOICES_DIR.glob("*.pt")} <= names and {"af_sky", "am_adam"} <= names


# 9, last: it stops the module's daemon ----------------------------------------------------------
@pytest.mark.slow
def test_sigterm_stops_cleanly_with_status_stopped(daemon):
    assert daemon.proc.poll() is None
    assert ConfigDB(daemon.db_path).get_kokoro_service_status() == "running"
    daemon.proc.send_signal(signal.SIGTERM)
    assert daemon.proc.wait(30) == 0, daemon.log[-3000:]
    assert ConfigDB(daemon.db_path).get_kokoro_service_status() == "stopped"
    assert "received SIGTERM" in daemon.log and "stopped" in daemon.log

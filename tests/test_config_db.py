"""Tests for kokoro_daemon.config_db against real SQLite files and real other processes."""

import logging
import math
import queue
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing

import pytest

from kokoro_daemon.config_db import DEFAULTS, SERVICE_STATUSES, ConfigDB, ConfigWatcher, StatusReporter

POLL_S = 0.05
WAIT_S = 5.0


def query(path, sql, params=()):
    with closing(sqlite3.connect(path)) as conn, conn:
        return conn.execute(sql, params).fetchall()


def start_other_process(path, code):
    """Run code in a separate Python process, with `sqlite3`, `sys`, `time` and `path` at hand."""
    prelude = "import sqlite3, sys, time\npath = sys.argv[1]\n"
    return subprocess.Popen(
        [sys.executable, "-c", prelude + textwrap.dedent(code), str(path)],
        stdout=subprocess.PIPE, text=True,
    )


def finish(process):
    """Wait for an other-process helper, insist it succeeded, and return its output."""
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0
    return output


class Recorder:
    """Collects on_change calls from the watcher thread."""

    def __init__(self, fail_first=False):
        self.calls = queue.Queue()
        self.fail_first = fail_first

    def __call__(self, changed):
        self.calls.put(changed)
        if self.fail_first:
            self.fail_first = False
            raise RuntimeError("handler failure")

    def next(self, timeout=WAIT_S):
        return self.calls.get(timeout=timeout)

    def wait_for(self, key, value, timeout=WAIT_S):
        deadline = time.monotonic() + timeout
        while True:
            changed = self.calls.get(timeout=max(0.0, deadline - time.monotonic()))
            if changed.get(key) == value:
                return changed


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "config.db"


@pytest.fixture
def db(db_path):
    return ConfigDB(db_path)


@pytest.fixture
def watch(db):
    watchers = []

    def make(recorder, config=db, interval_s=POLL_S):
        watcher = ConfigWatcher(config, recorder, interval_s=interval_s)
        watcher.start()
        watchers.append(watcher)
        return watcher

    yield make
    for watcher in watchers:
        watcher.stop()


def test_new_file_gets_schema_defaults_and_wal(db_path):
    ConfigDB(db_path)
    columns = [row[1] for row in query(db_path, "PRAGMA table_info(system_config)")]
    assert columns == ["key", "value", "updated_at"]
    assert dict(query(db_path, "SELECT key, value FROM system_config")) == DEFAULTS
    assert query(db_path, "PRAGMA journal_mode") == [("wal",)]


def test_existing_database_is_left_untouched_except_missing_keys(db_path):
    with closing(sqlite3.connect(db_path)) as conn, conn:
        conn.executescript("""
            CREATE TABLE system_config (key TEXT PRIMARY KEY, value TEXT NOT NULL,
                                        updated_at DATETIME DEFAULT CURRENT_TIMESTAMP);
            CREATE TABLE extensions (number TEXT, name TEXT);
            INSERT INTO extensions VALUES ('100', 'Reception'), ('101', 'Sales');
            INSERT INTO system_config VALUES
                ('sip_port', '5060', '2020-01-01 00:00:00'),
                ('kokoro_voice', 'am_adam', '2020-01-01 00:00:00');
        """)

    config = ConfigDB(db_path)

    assert query(db_path, "SELECT * FROM extensions") == [("100", "Reception"), ("101", "Sales")]
    rows = {key: (value, stamp) for key, value, stamp in query(db_path, "SELECT * FROM system_config")}
    assert rows.pop("sip_port") == ("5060", "2020-01-01 00:00:00")
    assert rows.pop("kokoro_voice") == ("am_adam", "2020-01-01 00:00:00")
    assert {key: value for key, (value, _) in rows.items()} == {
        key: value for key, value in DEFAULTS.items() if key != "kokoro_voice"
    }
    assert config.get_kokoro_voice() == "am_adam"


def test_get_and_set_arbitrary_keys(db):
    assert db.get("missing") is None
    assert db.get("missing", "fallback") == "fallback"
    db.set("missing", "now present")
    db.set("missing", "replaced")
    assert db.get("missing") == "replaced"


def test_typed_getters_and_setters_round_trip(db):
    assert db.is_kokoro_enabled() is True
    assert db.get_kokoro_voice() == "af_sky"
    assert db.get_kokoro_service_status() == "stopped"
    assert db.get_kokoro_speed() == 1.0

    db.set_kokoro_enabled(False)
    assert db.is_kokoro_enabled() is False
    assert db.get("kokoro_service_enabled") == "false"
    db.set_kokoro_enabled(True)
    assert db.get("kokoro_service_enabled") == "true"

    db.set_kokoro_voice("bf_emma")
    assert db.get_kokoro_voice() == "bf_emma"

    for status in SERVICE_STATUSES:
        db.set_kokoro_service_status(status)
        assert db.get_kokoro_service_status() == status

    for speed in (0.5, 1.25, 2.0):
        db.set_kokoro_speed(speed)
        assert db.get_kokoro_speed() == speed


def test_set_refreshes_updated_at(db, db_path):
    query(db_path, "UPDATE system_config SET updated_at = '2000-01-01 00:00:00'"
                   " WHERE key = 'kokoro_voice'")
    db.set_kokoro_voice("af_bella")
    ((age_s,),) = query(db_path, "SELECT strftime('%s', 'now') - strftime('%s', updated_at)"
                                 " FROM system_config WHERE key = 'kokoro_voice'")
    assert 0 <= age_s <= 5


@pytest.mark.parametrize("status", ["", "Running", "paused", None])
def test_invalid_status_is_rejected(db, status):
    with pytest.raises(ValueError, match="status"):
        db.set_kokoro_service_status(status)
    assert db.get_kokoro_service_status() == "stopped"


@pytest.mark.parametrize("speed", [0.49, 2.01, 0.0, -1.0, math.nan, math.inf])
def test_out_of_range_speed_is_rejected(db, speed):
    with pytest.raises(ValueError, match="speed"):
        db.set_kokoro_speed(speed)
    assert db.get_kokoro_speed() == 1.0


@pytest.mark.parametrize("text", ["fast", "", "nan", "1,5"])
def test_non_numeric_stored_speed_raises_clear_error(db, text):
    db.set("kokoro_speed", text)
    with pytest.raises(ValueError, match=rf"kokoro_speed .* {text!r}.* not a number"):
        db.get_kokoro_speed()


@pytest.mark.parametrize("text, expected", [
    ("true", True), ("TRUE", True), ("True", True), ("1", True), ("yes", True),
    ("on", True), (" On ", True),
    ("false", False), ("0", False), ("no", False), ("off", False), ("", False),
    ("enabled", False),
])
def test_enabled_parsing(db, text, expected):
    db.set("kokoro_service_enabled", text)
    assert db.is_kokoro_enabled() is expected


def test_snapshot_holds_only_kokoro_keys(db):
    db.set("sip_port", "5060")
    db.set("kokoroX", "not ours")
    db.set_kokoro_voice("af_nicole")
    assert db.snapshot() == {**DEFAULTS, "kokoro_voice": "af_nicole"}


def test_watcher_reports_change_from_another_process(db_path, db, watch):
    recorder = Recorder()
    watch(recorder)
    finish(start_other_process(db_path, """
        with sqlite3.connect(path) as conn:
            conn.execute("UPDATE system_config SET value = 'am_michael' WHERE key = 'kokoro_voice'")
    """))
    assert recorder.next() == {"kokoro_voice": "am_michael"}


def test_watcher_reports_only_changed_keys(db, watch):
    recorder = Recorder()
    watch(recorder)

    db.set("sip_port", "5061")                  # not a kokoro key
    db.set_kokoro_voice(db.get_kokoro_voice())  # same value, new updated_at
    db.set_kokoro_speed(1.5)
    db.set_kokoro_service_status("running")

    changes = {}
    while changes != {"kokoro_speed": "1.5", "kokoro_service_status": "running"}:
        changes.update(recorder.next())
    time.sleep(5 * POLL_S)
    assert recorder.calls.empty()


def test_watcher_stop_is_prompt_and_final(db, watch):
    recorder = Recorder()
    watcher = watch(recorder, interval_s=30)
    started = time.monotonic()
    watcher.stop()
    assert time.monotonic() - started < 1.0

    watcher = watch(recorder)
    watcher.stop()
    db.set_kokoro_voice("af_bella")
    time.sleep(5 * POLL_S)
    assert recorder.calls.empty()


def test_watcher_survives_on_change_exception(db, watch, caplog):
    recorder = Recorder(fail_first=True)
    watch(recorder)

    db.set_kokoro_voice("af_bella")
    assert recorder.next() == {"kokoro_voice": "af_bella"}
    db.set_kokoro_voice("af_sarah")
    assert recorder.next() == {"kokoro_voice": "af_sarah"}

    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 1
    assert failures[0].exc_info[0] is RuntimeError


def lock_out_readers(path, hold_s):
    """Another process that sets kokoro_voice to bm_george, then keeps even WAL readers out of the
    file for ``hold_s`` (exclusive locking mode holds the lock until the connection closes)."""
    locker = start_other_process(path, f"""
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        conn.execute("BEGIN EXCLUSIVE")
        conn.execute("UPDATE system_config SET value = 'bm_george' WHERE key = 'kokoro_voice'")
        conn.execute("COMMIT")
        print("locked", flush=True)
        time.sleep({hold_s})
        conn.close()
    """)
    assert locker.stdout.readline().strip() == "locked"
    return locker


def test_watcher_survives_database_locked_by_another_process(db_path, watch, caplog):
    config = ConfigDB(db_path, busy_timeout_s=0.2)
    recorder = Recorder()
    watch(recorder, config=config)
    locker = lock_out_readers(db_path, 1.0)
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            config.snapshot()
        finish(locker)

        # Reported only after the lock is gone, so the watcher lived through it.
        assert recorder.wait_for("kokoro_voice", "bm_george") == {"kokoro_voice": "bm_george"}
    finally:
        locker.kill()
        locker.communicate()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "locked" in warnings[0].getMessage()


def test_watcher_starts_while_the_database_cannot_be_read(db_path, db, watch, caplog):
    caplog.set_level(logging.INFO, logger="kokoro_daemon.config_db")
    config = ConfigDB(db_path, busy_timeout_s=0.2)
    locker = lock_out_readers(db_path, 60)  # until killed
    try:
        recorder = Recorder()
        watch(recorder, config=config)  # the baseline cannot be read: no exception, an error line
        assert any("locked" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    finally:
        locker.kill()
        locker.communicate()
    deadline = time.monotonic() + WAIT_S  # the first read that works becomes the baseline
    while "watching it for changes" not in caplog.text and time.monotonic() < deadline:
        time.sleep(POLL_S)
    db.set_kokoro_voice("af_bella")
    assert recorder.wait_for("kokoro_voice", "af_bella") == {"kokoro_voice": "af_bella"}


def test_status_reporter_writes_the_latest_status_once_the_lock_is_gone(db_path, caplog):
    config = ConfigDB(db_path, busy_timeout_s=0.2)
    reporter = StatusReporter(config, retry_s=0.05)
    locker = sqlite3.connect(db_path, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    try:
        assert reporter.report("running") is False
        assert reporter.report("stopped") is False
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    deadline = time.monotonic() + WAIT_S
    while config.get_kokoro_service_status() != "stopped" and time.monotonic() < deadline:
        time.sleep(POLL_S)
    reporter.close()
    assert config.get_kokoro_service_status() == "stopped"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "'running'" in errors[0] and "locked" in errors[0], errors
    assert reporter.report("running") is True


def test_stress_with_concurrent_writer_process(db_path, db, watch, caplog):
    recorder = Recorder()
    watch(recorder)
    writer = start_other_process(db_path, """
        deadline = time.monotonic() + 2.0
        count = 0
        while time.monotonic() < deadline:
            with sqlite3.connect(path, timeout=30) as conn:
                conn.execute("INSERT OR REPLACE INTO system_config (key, value)"
                             " VALUES ('stress_counter', ?)", (str(count),))
            conn.close()
            count += 1
        print(count)
    """)

    voices = ["af_sky", "af_bella"]
    rounds = 0
    while writer.poll() is None:
        db.set_kokoro_voice(voices[rounds % 2])
        db.set_kokoro_speed(1.0 + (rounds % 10) / 10)
        assert db.get_kokoro_voice() == voices[rounds % 2]
        assert db.snapshot()["kokoro_speed"] == str(1.0 + (rounds % 10) / 10)
        rounds += 1
    written = int(finish(writer))
    db.set_kokoro_voice("am_final")

    assert written > 0 and rounds > 0
    assert db.get("stress_counter") == str(written - 1)
    recorder.wait_for("kokoro_voice", "am_final")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

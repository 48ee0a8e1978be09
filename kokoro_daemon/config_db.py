"""Kokoro settings stored in the phone system's SQLite configuration file.

The host process and others write this file while the daemon runs, so every
operation opens its own short-lived connection (sqlite3 connections must not
cross threads) and relies on WAL plus a busy timeout to share the file.
"""

from __future__ import annotations

import logging
import math
import os
import pathlib
import sqlite3
import threading
from collections.abc import Callable
from contextlib import closing

logger = logging.getLogger(__name__)

SERVICE_STATUSES = ("starting", "running", "stopped", "error")

MIN_SPEED = 0.5
MAX_SPEED = 2.0

DEFAULTS = {
    "kokoro_service_enabled": "true",
    "kokoro_voice": "af_sky",
    "kokoro_service_status": "stopped",
    "kokoro_speed": "1.0",
}

_TRUE_WORDS = frozenset({"true", "1", "yes", "on"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS system_config (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at DATETIME DEFAULT CURRENT_TIMESTAMP
)
"""


class ConfigDB:
    """Typed access to the kokoro_* rows of the host's system_config table."""

    def __init__(self, path: str | os.PathLike, busy_timeout_s: float = 5.0):
        self.path = pathlib.Path(path)
        self.busy_timeout_s = busy_timeout_s
        with closing(self._connect()) as conn:
            # WAL lets our reads proceed while the host writes.
            conn.execute("PRAGMA journal_mode=WAL")
            with conn:
                conn.execute(_SCHEMA)
                # OR IGNORE: values the host already chose are left alone.
                conn.executemany(
                    "INSERT OR IGNORE INTO system_config (key, value) VALUES (?, ?)",
                    DEFAULTS.items(),
                )

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self.busy_timeout_s)
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_s * 1000)}")
        return conn

    def get(self, key: str, default: str | None = None) -> str | None:
        with closing(self._connect()) as conn:
            row = conn.execute(
                "SELECT value FROM system_config WHERE key = ?", (key,)
            ).fetchone()
        return default if row is None else row[0]

    def set(self, key: str, value: str) -> None:
        """Insert or replace one value; updated_at tells the host when it changed."""
        with closing(self._connect()) as conn, conn:
            conn.execute(
                "INSERT INTO system_config (key, value, updated_at)"
                " VALUES (?, ?, CURRENT_TIMESTAMP)"
                " ON CONFLICT(key) DO UPDATE"
                " SET value = excluded.value, updated_at = CURRENT_TIMESTAMP",
                (key, value),
            )

    def snapshot(self) -> dict[str, str]:
        """All kokoro_* values from a single query, so they are mutually consistent."""
        with closing(self._connect()) as conn:
            # GLOB, unlike LIKE, treats '_' literally and is case-sensitive.
            rows = conn.execute(
                "SELECT key, value FROM system_config WHERE key GLOB 'kokoro_*'"
            ).fetchall()
        return dict(rows)

    def is_kokoro_enabled(self) -> bool:
        value = self.get("kokoro_service_enabled", DEFAULTS["kokoro_service_enabled"])
        return value.strip().lower() in _TRUE_WORDS

    def set_kokoro_enabled(self, enabled: bool) -> None:
        self.set("kokoro_service_enabled", "true" if enabled else "false")

    def get_kokoro_voice(self) -> str:
        return self.get("kokoro_voice", DEFAULTS["kokoro_voice"])

    def set_kokoro_voice(self, voice: str) -> None:
        self.set("kokoro_voice", voice)

    def get_kokoro_service_status(self) -> str:
        return self.get("kokoro_service_status", DEFAULTS["kokoro_service_status"])

    def set_kokoro_service_status(self, status: str) -> None:
        if status not in SERVICE_STATUSES:
            raise ValueError(
                f"invalid kokoro service status {status!r}; expected one of {SERVICE_STATUSES}"
            )
        self.set("kokoro_service_status", status)

    def get_kokoro_speed(self) -> float:
        """The stored speed; other processes write this text, so it is checked here."""
        text = self.get("kokoro_speed", DEFAULTS["kokoro_speed"])
        try:
            speed = float(text)
        except ValueError:
            speed = math.nan
        if not math.isfinite(speed):
            raise ValueError(f"kokoro_speed in {self.path} is {text!r}, which is not a number")
        return speed

    def set_kokoro_speed(self, speed: float) -> None:
        speed = float(speed)
        # Written as a negated range so that NaN is rejected too.
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise ValueError(
                f"kokoro speed {speed} is outside {MIN_SPEED}..{MAX_SPEED}"
            )
        self.set("kokoro_speed", str(speed))


class ConfigWatcher:
    """Polls the database (SQLite has no change notification) and reports changed kokoro_* values."""

    def __init__(
        self,
        db: ConfigDB,
        on_change: Callable[[dict[str, str]], None],
        interval_s: float = 1.0,
    ):
        self._db = db
        self._on_change = on_change
        self._interval_s = interval_s
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: dict[str, str] | None = {}

    def start(self) -> None:
        """Take the baseline snapshot, then poll in a daemon thread.

        If the baseline cannot be read (the file locked or unreadable), the first
        snapshot that can be read becomes the baseline.
        """
        if self._thread is not None:
            raise RuntimeError("ConfigWatcher is already running")
        try:
            self._last = self._db.snapshot()
        except sqlite3.Error as exc:
            logger.error("Reading %s failed (%s: %s); changes are watched from the first read that works",
                         self._db.path, type(exc).__name__, exc)
            self._last = None
        self._stop_event.clear()
        self._thread = threading.Thread(
            target=self._run, name="kokoro-config-watcher", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is None:
            return
        self._stop_event.set()
        self._thread.join()
        self._thread = None

    def _run(self) -> None:
        # Event.wait rather than sleep, so stop() takes effect at once.
        while not self._stop_event.wait(self._interval_s):
            self._poll()

    def _poll(self) -> None:
        try:
            current = self._db.snapshot()
        except Exception as exc:  # the watcher must outlive any bad poll
            logger.warning(
                "Reading %s failed (%s: %s); retrying in %.1f s",
                self._db.path, type(exc).__name__, exc, self._interval_s,
            )
            return
        if self._last is None:
            logger.info("Reading %s works again; watching it for changes", self._db.path)
            self._last = current
            return
        changed = {k: v for k, v in current.items() if self._last.get(k) != v}
        # Move the baseline first, so a failing callback is not re-fed the same change.
        self._last = current
        if not changed:
            return
        try:
            self._on_change(changed)
        except Exception:
            logger.exception("Config change handler failed for %s", sorted(changed))


class StatusReporter:
    """Keeps kokoro_service_status up to date without ever stopping the service.

    The host may hold the file locked, or it may be read-only: a write that fails is
    logged as an error once and retried in a daemon thread, with the latest status and
    a growing delay, until it lands.
    """

    def __init__(self, db: ConfigDB, retry_s: float = 1.0, max_retry_s: float = 30.0):
        self._db = db
        self._retry_s = retry_s
        self._max_retry_s = max_retry_s
        self._lock = threading.Lock()  # guards _pending and _retrying
        self._write_lock = threading.Lock()  # one write at a time, so an older status never lands last
        self._pending: str | None = None
        self._retrying = False
        self._failing = False
        self._closed = threading.Event()

    def report(self, status: str) -> bool:
        """Write ``status`` now if the database lets us; True when it is written."""
        with self._lock:
            self._pending = status
        if self._write():
            return True
        with self._lock:
            if self._pending is not None and not self._retrying:
                self._retrying = True
                threading.Thread(target=self._retry, name="kokoro-status-retry", daemon=True).start()
        return False

    def close(self) -> None:
        """Stop retrying (at exit); a status still unwritten was logged when its write failed."""
        self._closed.set()

    def _write(self) -> bool:
        with self._write_lock:
            with self._lock:
                status = self._pending
            if status is None:
                return True
            try:
                self._db.set_kokoro_service_status(status)
            except sqlite3.Error as exc:
                if not self._failing:
                    logger.error("Writing status %r to %s failed (%s: %s); retrying in the background",
                                 status, self._db.path, type(exc).__name__, exc)
                self._failing = True
                return False
            if self._failing:
                logger.info("Status %r written to %s", status, self._db.path)
            self._failing = False
            with self._lock:
                if self._pending == status:
                    self._pending = None
            return True

    def _retry(self) -> None:
        delay = self._retry_s
        while not self._closed.wait(delay):
            if self._write():
                with self._lock:
                    if self._pending is None:
                        self._retrying = False
                        return
            delay = min(delay * 2, self._max_retry_s)

"""Log lines about floods, at most one per kind per interval: a flood of bad input must not flood the log."""
from __future__ import annotations

import logging
import threading
import time


class LogThrottle:
    """Logs a message of a given kind only if none of that kind was logged in the last ``interval_s``;
    the rest are left to the counters."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def log(self, kind: str, interval_s: float, level: int, message: str, *args) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(kind, -interval_s) < interval_s:
                return
            self._last[kind] = now
        self.logger.log(level, message, *args)

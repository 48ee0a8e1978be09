"""Where a call's frames go: the LLaMA reply socket or the call's outbound audio processor.

Each destination has a bounded queue and its own writer thread, started on first use, so
a reader that is slow, stalled or never reads (the LLaMA client never does) blocks only
its own thread. When the queue is over its byte budget the oldest audio is dropped, with
a warning and a counter.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from . import metrics
from .protocol import END_OF_STREAM_HEADER, encode_hello

log = logging.getLogger(__name__)


@dataclass
class _Item:
    data: bytes
    audio: bool
    queued_at: float = field(default_factory=time.monotonic)


class BoundedWriter:
    """A byte-bounded frame queue drained by one thread; ``put`` never blocks."""

    destination = "reply"

    def __init__(self, name: str, max_bytes: int, max_age_s: float | None = None):
        self.name = name
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._items: deque[_Item] = deque()
        self._queued_bytes = 0
        self._cond = threading.Condition()
        self._busy = False
        self._closing = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self.sock: socket.socket | None = None

    # -- producer side -------------------------------------------------------------
    def put(self, data: bytes, audio: bool = True) -> None:
        with self._cond:
            if self._closing:
                if audio:
                    self._drop(1, "closed")
                return
            self._items.append(_Item(data, audio))
            self._queued_bytes += len(data)
            self._trim()
            self._start()
            self._cond.notify_all()

    def take_pending(self) -> list[bytes]:
        """Hand over queued, unsent audio (to the connection that supersedes this one)."""
        with self._cond:
            audio = [item.data for item in self._items if item.audio]
            self._items.clear()
            self._queued_bytes = 0
            return audio

    def close(self, final: bytes | None = None, discard_pending: bool = False) -> None:
        """Send what is queued (unless discarded), then ``final``, then close the socket."""
        with self._cond:
            if self._closing:
                return
            if discard_pending:
                dropped = sum(1 for item in self._items if item.audio)
                self._items.clear()
                self._queued_bytes = 0
                if dropped:
                    self._drop(dropped, "call_ended")
            if final is not None:
                self._items.append(_Item(final, audio=False))
            self._closing = True
            self._start()
            self._cond.notify_all()

    def wait_closed(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._closed, timeout)

    def wait_sent(self, timeout: float | None = None) -> bool:
        """True once everything queued so far has been written (or dropped)."""
        with self._cond:
            return self._cond.wait_for(lambda: (not self._items and not self._busy) or self._closed, timeout)

    # -- writer thread ------------------------------------------------------------
    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"writer-{self.name}", daemon=True)
            self._thread.start()

    def _trim(self) -> None:
        dropped = 0
        while self._queued_bytes > self.max_bytes:
            oldest = next((item for item in self._items if item.audio), None)
            if oldest is None:
                break
            self._items.remove(oldest)
            self._queued_bytes -= len(oldest.data)
            dropped += 1
        if dropped:
            log.warning("%s: consumer is not keeping up; dropped %d oldest frame(s) over the %d-byte budget",
                        self.name, dropped, self.max_bytes)
            self._drop(dropped, "overflow")

    def _drop(self, count: int, reason: str) -> None:
        metrics.FRAMES_DROPPED.labels(reason).inc(count)

    def _ready(self) -> bool:
        return True

    def _next(self) -> _Item | None:
        with self._cond:
            self._cond.wait_for(lambda: (self._items and self._ready()) or (self._closing and not self._items))
            if not self._items:
                return None
            item = self._items.popleft()
            self._queued_bytes -= len(item.data)
            self._busy = True
            return item

    def _run(self) -> None:
        try:
            while (item := self._next()) is not None:
                try:
                    if item.audio and self.max_age_s is not None and time.monotonic() - item.queued_at > self.max_age_s:
                        log.warning("%s: dropped a frame held %.1f s, over the %.1f s limit",
                                    self.name, time.monotonic() - item.queued_at, self.max_age_s)
                        self._drop(1, "expired")
                        continue
                    if not self._write(item):
                        self._abandon()
                        return
                finally:
                    with self._cond:
                        self._busy = False
                        self._cond.notify_all()
        finally:
            self._finish()

    def _write(self, item: _Item) -> bool:
        try:
            self.sock.sendall(item.data)
        except OSError as exc:
            log.info("%s: write failed (%s); dropping its queued audio", self.name, exc)
            if item.audio:
                self._drop(1, "consumer_gone")
            return False
        if item.audio:
            metrics.FRAMES_SENT.labels(self.destination).inc()
        return True

    def _abandon(self) -> None:
        with self._cond:
            dropped = sum(1 for item in self._items if item.audio)
            self._items.clear()
            self._queued_bytes = 0
            self._closing = True
        if dropped:
            self._drop(dropped, "consumer_gone")

    def _finish(self) -> None:
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
        with self._cond:
            self._closing = True
            self._closed = True
            self._cond.notify_all()


class ReplyWriter(BoundedWriter):
    """Frames back on the LLaMA connection they answer."""

    destination = "reply"

    def __init__(self, sock: socket.socket, name: str, max_bytes: int):
        super().__init__(name, max_bytes)
        self.sock = sock

    def _finish(self) -> None:
        """The connection's handler owns the socket; the writer only ends its own side."""
        with self._cond:
            self._closing = True
            self._closed = True
            self._cond.notify_all()


class ProcessorWriter(BoundedWriter):
    """Frames to call N's outbound audio processor on port base+N, with HELLO(N) on each connect.

    Until the processor registers, frames are held (bounded by bytes and age). A refused
    connect is retried with backoff, since a processor may register just before it listens.
    """

    destination = "processor"

    def __init__(self, call_id: str, host: str, port: int, max_bytes: int, max_age_s: float,
                 connect_deadline_s: float = 10.0):
        super().__init__(f"processor-{call_id}@{host}:{port}", max_bytes, max_age_s)
        self.call_id = call_id
        self.address = (host, port)
        self.connect_deadline_s = connect_deadline_s
        self.registered = threading.Event()

    def activate(self) -> None:
        with self._cond:
            self.registered.set()
            self._start()
            self._cond.notify_all()

    def _ready(self) -> bool:
        return self.registered.is_set()

    def _expire_held(self) -> float | None:
        """Drop held frames over the age limit; return the seconds until the oldest left expires."""
        now, expired = time.monotonic(), 0
        while self._items and self._items[0].audio and now - self._items[0].queued_at > self.max_age_s:
            self._queued_bytes -= len(self._items.popleft().data)
            expired += 1
        if expired:
            log.warning("%s: processor not registered; dropped %d frame(s) held over the %.1f s limit",
                        self.name, expired, self.max_age_s)
            self._drop(expired, "expired")
        return max(0.0, self._items[0].queued_at + self.max_age_s - now) if self._items else None

    def _next(self) -> _Item | None:
        with self._cond:
            # Held audio is bounded in time too, while the processor has not registered (it may never).
            while not self.registered.is_set() and not self._closing:
                self._cond.wait(self._expire_held())
            if self._closing and not self.registered.is_set():
                dropped = sum(1 for item in self._items if item.audio)
                self._items.clear()
                if dropped:
                    log.warning("%s: call ended before its processor registered; dropped %d frame(s)", self.name, dropped)
                    self._drop(dropped, "never_registered")
                return None
        return super()._next()

    def _connect(self) -> bool:
        delay, deadline = 0.05, time.monotonic() + self.connect_deadline_s
        while True:
            try:
                sock = socket.create_connection(self.address, timeout=2.0)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(None)
                sock.sendall(encode_hello(self.call_id))
                self.sock = sock
                log.info("%s: connected", self.name)
                return True
            except OSError as exc:
                if time.monotonic() + delay > deadline:
                    log.error("%s: cannot connect for %.0f s (%s); giving up", self.name, self.connect_deadline_s, exc)
                    return False
                with self._cond:
                    if self._cond.wait_for(lambda: self._closing and not self._items, delay):
                        return False
                delay = min(delay * 2, 1.0)

    def _write(self, item: _Item) -> bool:
        for attempt in range(2):
            if self.sock is None and not self._connect():
                if item.audio:
                    self._drop(1, "consumer_gone")
                return False
            try:
                self.sock.sendall(item.data)
            except OSError as exc:
                log.warning("%s: connection lost (%s); reconnecting", self.name, exc)
                self.sock.close()
                self.sock = None
                continue
            if item.audio:
                metrics.FRAMES_SENT.labels(self.destination).inc()
            return True
        if item.audio:
            self._drop(1, "consumer_gone")
        return False

    def end(self) -> None:
        """The call is over: discard unsent audio, send the zero header if connected, close."""
        self.close(final=END_OF_STREAM_HEADER if self.sock is not None else None, discard_pending=True)

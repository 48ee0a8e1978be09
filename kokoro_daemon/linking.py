"""Making a call's processor link, in either direction, and noticing when it closes.

Today's processor for call N waits for the datagram ``REGISTER:N`` on UDP 13000+N, then
dials in to TCP 9002+N and sends HELLO(N): the service listens there and announces itself
(every 200 ms for the first second, then every second) until it does. The Piper-era
processor listens on 9002+N itself and sends ``REGISTER:N`` to UDP 13001: the service dials
out and sends HELLO(N). Either way, once linked the processor only reads, so the thread
that made the link then waits for its end: a processor is killed when its call ends, and
its link closing is how the service learns that the call is over.
"""
from __future__ import annotations

import errno
import logging
import socket
import struct
import threading
import time
from typing import Callable

from .protocol import PeerClosed, encode_hello, printable, recv_exact
from .transports import LinkTransport

log = logging.getLogger(__name__)

LINK_WINDOW_S = 10.0
ANNOUNCE_FAST_S = 0.2
ANNOUNCE_FAST_FOR_S = 1.0
ANNOUNCE_SLOW_S = 1.0
HELLO_TIMEOUT_S = 2.0


def announce_times(window_s: float = LINK_WINDOW_S):
    """Offsets from the start at which REGISTER:N is sent: 0, 0.2, ... 1.0, then each second."""
    t = 0.0
    while t < window_s:
        yield t
        t = round(t + (ANNOUNCE_FAST_S if t < ANNOUNCE_FAST_FOR_S else ANNOUNCE_SLOW_S), 6)


class Linker(threading.Thread):
    """Makes one link for a call, hands it over, then waits for it to close."""

    kind = ""

    def __init__(self, call_id: str, port: int, on_link: Callable[[LinkTransport], bool],
                 on_closed: Callable[[LinkTransport], None], on_gave_up: Callable[[], None]):
        super().__init__(name=f"{self.kind}-{printable(call_id, 20)}", daemon=True)
        self.call_id = call_id
        self.port = port
        self.on_link = on_link
        self.on_closed = on_closed
        self.on_gave_up = on_gave_up
        self.cancelled = threading.Event()
        self.failed = False

    def cancel(self) -> None:
        self.cancelled.set()

    def run(self) -> None:
        link = self.establish()
        if link is None:
            self.on_gave_up()
            return
        if not self.on_link(link):
            link.close()
            return
        self._watch(link)

    def establish(self) -> LinkTransport | None:
        raise NotImplementedError

    def _watch(self, link: LinkTransport) -> None:
        """Block until the processor closes the link (it never sends anything after HELLO)."""
        while True:
            try:
                data = link.sock.recv(4096)
            except OSError:
                data = b""
            if not data:
                break
            log.debug("%s: ignored %d unexpected byte(s) from the processor", link.name, len(data))
        self.on_closed(link)


class DialIn(Linker):
    """Listen on base+N and announce REGISTER:N until the processor dials in with HELLO(N)."""

    kind = "dial-in"

    def __init__(self, call_id: str, listen_host: str, port: int, announce_to: tuple[str, int],
                 announcer: socket.socket, on_link, on_closed, on_gave_up, on_busy: Callable[[], None],
                 window_s: float = LINK_WINDOW_S):
        super().__init__(call_id, port, on_link, on_closed, on_gave_up)
        self.listen_host = listen_host
        self.announce_to = announce_to
        self.announcer = announcer
        self.on_busy = on_busy
        self.window_s = window_s
        self._listener: socket.socket | None = None

    def cancel(self) -> None:
        super().cancel()
        listener = self._listener
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def establish(self) -> LinkTransport | None:
        listener = self._listen()
        if listener is None:
            return None
        self._listener = listener
        try:
            return self._await_processor(listener)
        finally:
            self._listener = None
            listener.close()

    def _listen(self) -> socket.socket | None:
        """Bind base+N. A taken port may be a Piper-era processor listening there (``on_busy`` dials it)
        or a socket that only holds it for a while: keep trying the bind within the window as well."""
        deadline = time.monotonic() + self.window_s
        taken = False
        while not self.cancelled.is_set():
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind((self.listen_host, self.port))
                listener.listen(4)
            except OSError as exc:
                listener.close()
                if exc.errno != errno.EADDRINUSE:
                    self.failed = True
                    log.error("call %s: cannot listen on %s:%d for its processor: %s",
                              printable(self.call_id), self.listen_host, self.port, exc)
                    return None
            else:
                if taken:
                    log.info("call %s: %s:%d is free again; listening there for its processor",
                             printable(self.call_id), self.listen_host, self.port)
                return listener
            if not taken:
                taken = True
                log.info("call %s: %s:%d is taken, as by a Piper-era processor listening there; trying the bind "
                         "again for %.0f s", printable(self.call_id), self.listen_host, self.port, self.window_s)
                self.on_busy()
            if time.monotonic() + ANNOUNCE_FAST_S > deadline:
                self.failed = True
                log.warning("call %s: %s:%d stayed taken for %.0f s", printable(self.call_id), self.listen_host,
                            self.port, self.window_s)
                return None
            self.cancelled.wait(ANNOUNCE_FAST_S)
        return None

    def _await_processor(self, listener: socket.socket) -> LinkTransport | None:
        started = time.monotonic()
        datagram = f"REGISTER:{self.call_id}".encode()
        for offset in announce_times(self.window_s):
            if self.cancelled.is_set():
                return None
            self._announce(datagram)
            until = started + offset + (ANNOUNCE_FAST_S if offset < ANNOUNCE_FAST_FOR_S else ANNOUNCE_SLOW_S)
            while (left := min(until, started + self.window_s) - time.monotonic()) > 0:
                listener.settimeout(left)
                try:
                    conn, peer = listener.accept()
                except socket.timeout:
                    break
                except OSError:
                    return None  # cancelled: the listener was shut down
                link = self._check_hello(conn, peer)
                if link is not None:
                    return link
        if not self.cancelled.is_set():
            self.failed = True
            log.warning("call %s: no processor dialled in to %s:%d within %.0f s of REGISTER:%s to %s:%d; "
                        "the next reply announces again", printable(self.call_id), self.listen_host, self.port,
                        self.window_s, printable(self.call_id), *self.announce_to)
        return None

    def _announce(self, datagram: bytes) -> None:
        try:
            self.announcer.sendto(datagram, self.announce_to)
        except OSError as exc:
            log.debug("call %s: REGISTER to %s:%d failed: %s", printable(self.call_id), *self.announce_to, exc)

    def _check_hello(self, conn: socket.socket, peer) -> LinkTransport | None:
        conn.settimeout(HELLO_TIMEOUT_S)
        expected = self.call_id.encode()
        try:
            size = struct.unpack(">I", recv_exact(conn, 4))[0]
            got = recv_exact(conn, size) if size <= 1024 else None
        except (OSError, PeerClosed) as exc:
            log.warning("call %s: a processor connection from %s:%d sent no HELLO (%s)",
                        printable(self.call_id), *peer[:2], exc)
            conn.close()
            return None
        if got != expected:
            log.error("call %s: refused a processor connection from %s:%d: HELLO %s, expected %s",
                      printable(self.call_id), *peer[:2], printable(got.decode("utf-8", "replace")) if got else
                      f"length {size}", printable(self.call_id))
            conn.close()
            return None
        conn.settimeout(None)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return LinkTransport(conn, f"call {printable(self.call_id)} processor (dial-in {peer[0]}:{peer[1]})", "dial-in")


class DialOut(Linker):
    """Connect to a Piper-era processor listening on base+N, retrying while it starts, and send HELLO(N)."""

    kind = "dial-out"

    def __init__(self, call_id: str, address: tuple[str, int], on_link, on_closed, on_gave_up,
                 window_s: float = LINK_WINDOW_S):
        super().__init__(call_id, address[1], on_link, on_closed, on_gave_up)
        self.address = address
        self.window_s = window_s

    def establish(self) -> LinkTransport | None:
        delay, deadline = 0.05, time.monotonic() + self.window_s
        while not self.cancelled.is_set():
            try:
                sock = socket.create_connection(self.address, timeout=2.0)
            except OSError as exc:
                if time.monotonic() + delay > deadline:
                    self.failed = True
                    log.error("call %s: cannot connect to its processor at %s:%d for %.0f s (%s); "
                              "its next REGISTER tries again", printable(self.call_id), *self.address,
                              self.window_s, exc)
                    return None
                self.cancelled.wait(delay)
                delay = min(delay * 2, 1.0)
                continue
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.sendall(encode_hello(self.call_id))
                sock.settimeout(None)
            except OSError as exc:
                log.warning("call %s: processor at %s:%d dropped the connection at HELLO: %s",
                            printable(self.call_id), *self.address, exc)
                sock.close()
                continue
            return LinkTransport(sock, f"call {printable(self.call_id)} processor (dial-out {self.address[0]}:"
                                       f"{self.address[1]})", "dial-out")
        return None

"""Where a call's frames are written: the LLaMA reply socket, or a link to its outbound audio processor.

Both write with a kernel send timeout (SO_SNDTIMEO) in short steps, so a writer blocked on
a peer that does not read can be told to stop. The LLaMA client never reads and does not
ignore SIGPIPE, so the reply transport never closes its socket: the connection's handler
owns it and LLaMA may write to it again. A processor link is the service's own socket.
"""
from __future__ import annotations

import logging
import socket
import struct
import time
from typing import Callable

from .protocol import BYE_BYTES, END_OF_STREAM_HEADER

log = logging.getLogger(__name__)

SEND_STEP_S = 0.2
LINK_SEND_TIMEOUT_S = 5.0


def set_send_timeout(sock: socket.socket, seconds: float) -> None:
    whole = int(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", whole, int((seconds - whole) * 1e6)))


class Transport:
    """One destination. ``send`` returns True when all of ``data`` was written."""

    kind = "reply"
    paced = False

    def __init__(self, sock: socket.socket, name: str):
        self.sock = sock
        self.name = name
        self.broken = False
        set_send_timeout(sock, SEND_STEP_S)

    def send(self, data: bytes, stop: Callable[[], bool]) -> bool:
        """Write ``data`` whole; give up when the socket fails or ``stop()`` says so while it is blocked.

        A frame given up on part-way leaves the stream unreadable, so the transport is then
        marked broken and never written again.
        """
        view, sent = memoryview(data), 0
        while sent < len(data):
            try:
                sent += self.sock.send(view[sent:])
            except (BlockingIOError, TimeoutError):
                if stop():
                    self.broken = self.broken or sent > 0
                    return False
            except OSError as exc:
                log.info("%s: write failed: %s", self.name, exc)
                self.broken = True
                return False
        return True


class ReplyTransport(Transport):
    """Frames back on the LLaMA connection they answer; only read by test clients, never closed here."""

    def send_bye(self, within_s: float = LINK_SEND_TIMEOUT_S) -> None:
        """The Piper service's answer to a TCP BYE: 0xFFFFFFFF, once the reply audio is out."""
        deadline = time.monotonic() + within_s
        self.send(BYE_BYTES, lambda: time.monotonic() > deadline)


class LinkTransport(Transport):
    """A processor link, dialled in by today's processor or out to a Piper-era one."""

    paced = True

    def __init__(self, sock: socket.socket, name: str, kind: str):
        super().__init__(sock, name)
        self.kind = kind

    def send(self, data: bytes, stop: Callable[[], bool]) -> bool:
        """As Transport.send, also giving up on a processor that reads nothing for LINK_SEND_TIMEOUT_S."""
        deadline = time.monotonic() + LINK_SEND_TIMEOUT_S

        def stalled() -> bool:
            if time.monotonic() > deadline:
                log.error("%s: the processor read nothing for %.0f s; dropping the link", self.name, LINK_SEND_TIMEOUT_S)
                self.broken = True
                return True
            return stop()
        return super().send(data, stalled)

    def end_stream(self) -> None:
        """The zero header (the processor's BYE), then close; best effort on a link that may be gone."""
        if not self.broken:
            self.send(END_OF_STREAM_HEADER, lambda: True)
        self.close()

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()

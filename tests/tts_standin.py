"""A TTS stand-in that speaks the service's byte protocol over real sockets, for testing the peers
(and the conversation benchmark's bookkeeping) without a model."""
from __future__ import annotations

import socket
import struct

import numpy as np

from peers import recv_exact, send_datagram

RATE = 24000


def tone(seconds: float, seed: int = 0, rate: int = RATE) -> np.ndarray:
    """Audio that can be told apart from any other stretch: a seeded random-frequency sine with noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * rng.uniform(200, 800) * t) + 0.01 * rng.standard_normal(t.size)).astype("<f4")


def frame(samples: np.ndarray, chunk_id: int, rate: int = RATE) -> bytes:
    payload = np.asarray(samples, dtype="<f4").tobytes()
    return struct.pack(">III", len(payload), rate, chunk_id) + payload


END = struct.pack(">III", 0, 0, 0)


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DialInTTS:
    """The TTS side of call N's dial-in link: listens on tts_base+N, announces REGISTER:N, checks HELLO."""

    def __init__(self, call_id: int, tts_base: int, announce_base: int, listen: bool = True):
        self.call_id = call_id
        self.port = tts_base + call_id
        self.announce_address = ("127.0.0.1", announce_base + call_id)
        self.listener = self.listen() if listen else None

    def listen(self) -> socket.socket:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.listener.settimeout(10.0)
        return self.listener

    def announce(self, payload: str | bytes | None = None) -> None:
        send_datagram(self.announce_address, payload if payload is not None else f"REGISTER:{self.call_id}")

    def accept(self) -> socket.socket:
        """The processor's link, after checking its HELLO(N)."""
        conn, _ = self.listener.accept()
        conn.settimeout(10.0)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        size = struct.unpack(">I", recv_exact(conn, 4))[0]
        assert recv_exact(conn, size) == str(self.call_id).encode()
        return conn

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()

"""A TTS stand-in that speaks the service's byte protocol over real sockets, for testing the peers
(and the conversation benchmark's bookkeeping) without a model."""
from __future__ import annotations

import itertools
import socket
import struct
import threading
import time

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


class StandInService:
    """The service's side of whole conversations, without a model: for each LLaMA connection, it
    announces and accepts call N's dial-in processor; for each reply, it sends frames of a tone as
    ``script(reply_number)`` says ((seconds, pause before) per frame), then logs the reply done."""

    def __init__(self, tts_base: int, announce_base: int, script, on_line, logged_frames=None):
        self.tts_base, self.announce_base = tts_base, announce_base
        self.script, self.on_line = script, on_line
        self.logged_frames = logged_frames or (lambda reply, sent: sent)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = self.server.getsockname()
        self.links: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                llama, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._call, args=(llama,), daemon=True).start()

    def _call(self, llama: socket.socket) -> None:
        with llama:
            call_id = int(recv_exact(llama, struct.unpack(">I", recv_exact(llama, 4))[0]))
            tts = DialInTTS(call_id, self.tts_base, self.announce_base)
            tts.announce()
            link = tts.accept()
            tts.close()
            self.links.append(link)
            chunk_id = 0
            for reply in itertools.count(1):
                try:
                    recv_exact(llama, struct.unpack(">I", recv_exact(llama, 4))[0])
                except ConnectionError:
                    return
                audio = 0.0
                for seconds, pause in self.script(reply):
                    time.sleep(pause)
                    chunk_id += 1
                    link.sendall(frame(tone(seconds, chunk_id), chunk_id))
                    audio += seconds
                frames = self.logged_frames(reply, len(self.script(reply)))
                self.on_line(f"2025-01-01 12:00:00 INFO kokoro_daemon.calls: call {call_id}: reply {reply} done: "
                             f"{frames} frames, {audio:.3f} s audio, first audio 0.050 s")

    def close(self) -> None:
        self.server.close()
        for link in self.links:
            link.close()

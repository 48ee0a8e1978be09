"""Emulations of the real peers, speaking the exact byte protocol over real sockets."""
from __future__ import annotations

import socket
import struct
import threading
import time
from dataclasses import dataclass, field

import numpy as np

BYE = b"\xff\xff\xff\xff"


@dataclass
class Frame:
    rate: int
    chunk_id: int
    samples: np.ndarray
    received_at: float


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


class LlamaClient:
    """The LLaMA side: HELLO, text chunks, BYE; reads frames when asked (the real one never does)."""

    def __init__(self, address, call_id: str | None = None, timeout: float = 120.0, rcvbuf: int | None = None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sent_at: float | None = None
        if call_id is not None:
            self.hello(call_id)

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def hello(self, call_id: str) -> None:
        raw = call_id.encode()
        self.sock.sendall(struct.pack(">I", len(raw)) + raw)

    def text(self, text: str) -> None:
        raw = text.encode("utf-8")
        self.sent_at = time.monotonic()
        self.sock.sendall(struct.pack(">I", len(raw)) + raw)

    def bye(self) -> None:
        self.sock.sendall(BYE)

    def read_frame(self) -> Frame | None:
        """The next frame, or None for the service's BYE."""
        head = recv_exact(self.sock, 4)
        if head == BYE:
            return None
        size = struct.unpack(">I", head)[0]
        rate, chunk_id = struct.unpack(">II", recv_exact(self.sock, 8))
        samples = np.frombuffer(recv_exact(self.sock, size), dtype="<f4")
        return Frame(rate, chunk_id, samples, time.monotonic())

    def read_until_bye(self) -> list[Frame]:
        frames = []
        while (frame := self.read_frame()) is not None:
            frames.append(frame)
        return frames

    def is_closed_by_peer(self, timeout: float = 10.0) -> bool:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def send_datagram(address, text: str | bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(text.encode() if isinstance(text, str) else text, address)


@dataclass
class ProcessorPeer:
    """Call N's outbound audio processor: listens on base+N, demands HELLO(N) first, then reads frames;
    keeps only frames whose chunk_id is above the last it saw, and stops at the zero header."""

    call_id: int
    port: int
    frames: list[Frame] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    connections: int = 0
    ended: threading.Event = field(default_factory=threading.Event)
    first_frame: threading.Event = field(default_factory=threading.Event)
    frames_after_end: int = 0

    def __post_init__(self):
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.listener.settimeout(0.5)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        last_id = self.frames[-1].chunk_id if self.frames else 0
        with conn:
            try:
                size = struct.unpack(">I", recv_exact(conn, 4))[0]
                call_id = recv_exact(conn, size).decode()
                if call_id != str(self.call_id):
                    self.errors.append(f"HELLO {call_id!r} != {self.call_id}")
                    return
                while True:
                    size, rate, chunk_id = struct.unpack(">III", recv_exact(conn, 12))
                    if size == 0:
                        self.ended.set()
                        conn.settimeout(2.0)
                        try:
                            if conn.recv(1):
                                self.frames_after_end += 1
                        except OSError:
                            pass
                        return
                    samples = np.frombuffer(recv_exact(conn, size), dtype="<f4")
                    if size % 4:
                        self.errors.append(f"payload of {size} bytes is not whole float32 samples")
                    if chunk_id <= last_id:
                        self.errors.append(f"chunk_id {chunk_id} not above {last_id}; dropped")
                        continue
                    last_id = chunk_id
                    self.frames.append(Frame(rate, chunk_id, samples, time.monotonic()))
                    self.first_frame.set()
            except (ConnectionError, OSError) as exc:
                if not self.ended.is_set():
                    self.errors.append(f"connection broke: {exc}")

    def close(self) -> None:
        self._stop.set()
        self.listener.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reply_frames(address, call_id: str, *texts: str, timeout: float = 120.0) -> list[Frame]:
    """One call as the seed's tests make it: HELLO, the texts, BYE; every frame up to the service's BYE."""
    with LlamaClient(address, call_id, timeout=timeout) as client:
        for text in texts:
            client.text(text)
        client.bye()
        return client.read_until_bye()


def checked_audio(frames: list[Frame], rate: int = 24000) -> np.ndarray:
    """A reply's audio, after checking chunk ids 1..n, the header rate, and finite, audible samples."""
    assert frames, "no audio"
    assert [f.chunk_id for f in frames] == list(range(1, len(frames) + 1))
    assert all(f.rate == rate for f in frames)
    audio = np.concatenate([f.samples for f in frames])
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0.05
    return audio

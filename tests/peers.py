"""Emulations of the real peers, speaking the exact byte protocol over real sockets."""
from __future__ import annotations

import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field, replace

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


# -- the real phone system's peers, exactly as its C++ code behaves (issue 8) --------------

MAX_FRAME_BYTES = 10 * 1024 * 1024     # a header announcing more makes the processor drop the link
PLAYOUT_BUFFER_S = 12.0                # unplayed audio the processor keeps; beyond it the OLDEST is erased
CONNECT_DELAYS_S = (0.2,) * 4 + (1.0,) * 5   # pauses between the dial-in processor's 10 connect attempts


@dataclass(frozen=True)
class Played:
    """A stretch of one frame the caller hears without a break, from ``start`` to ``end`` (monotonic s)."""
    start: float
    end: float
    frame: int          # index into the processor's ``frames``
    chunk_id: int
    first_sample: int   # the stretch is frames[frame].samples[first_sample:end_sample]
    end_sample: int
    rate: int


@dataclass(frozen=True)
class Erased:
    """Unplayed audio thrown away at ``at`` to make room for a newer frame: the caller never hears it."""
    at: float
    frame: int
    chunk_id: int
    first_sample: int
    end_sample: int
    seconds: float


class Playout:
    """Real-time playout with the processor's bounded buffer, computed instead of clocked.

    A frame that arrives at t plays from max(t, end of the audio before it). When it would
    take the unplayed audio past ``buffer_s``, the oldest unplayed audio is erased first (the
    head of the new frame too, if the frame alone is longer than the buffer) and what is left
    plays on from t. Audio counts as heard at its scheduled time unless a later frame erases
    it or ``stop`` cuts it. Not thread-safe: its owner locks.
    """

    def __init__(self, buffer_s: float = PLAYOUT_BUFFER_S):
        self.buffer_s = buffer_s
        self.pieces: list[Played] = []
        self.erased: list[Erased] = []
        self.stopped_at: float | None = None
        self.cut_s = 0.0    # audio received but still unplayed when playout stopped

    def end(self) -> float | None:
        """When everything received so far has played."""
        return self.pieces[-1].end if self.pieces else None

    def add(self, t: float, frame: int, chunk_id: int, samples: int, rate: int) -> None:
        if self.stopped_at is not None or samples == 0:
            return
        queue_end = max(t, self.end() or t)
        excess = queue_end - t + samples / rate - self.buffer_s
        head = 0
        if excess > 0:
            excess -= self._erase_unplayed(t, excess)
            head = min(samples, round(excess * rate))
            if head:
                self.erased.append(Erased(t, frame, chunk_id, 0, head, head / rate))
            queue_end = max(t, self.end() or t)
        if head < samples:
            self.pieces.append(Played(queue_end, queue_end + (samples - head) / rate, frame, chunk_id, head, samples,
                                      rate))

    def _erase_unplayed(self, t: float, seconds: float) -> float:
        """Erase up to ``seconds`` of the oldest audio unplayed at t; the rest plays on from t. Returns seconds erased."""
        keep = [p for p in self.pieces if p.end <= t]
        unplayed = [p for p in self.pieces if p.end > t]
        if unplayed and unplayed[0].start < t:      # playing now: what has played stays heard
            playing = unplayed[0]
            split = playing.first_sample + round((t - playing.start) * playing.rate)
            keep.append(replace(playing, end=t, end_sample=split))
            unplayed[0] = replace(playing, start=t, first_sample=split)
        erased, clock = 0.0, t
        for piece in unplayed:
            cut = min(piece.end_sample - piece.first_sample, round((seconds - erased) * piece.rate))
            if cut:
                self.erased.append(Erased(t, piece.frame, piece.chunk_id, piece.first_sample,
                                          piece.first_sample + cut, cut / piece.rate))
                erased += cut / piece.rate
            if piece.first_sample + cut < piece.end_sample:
                length = (piece.end_sample - piece.first_sample - cut) / piece.rate
                keep.append(replace(piece, start=clock, end=clock + length, first_sample=piece.first_sample + cut))
                clock += length
        self.pieces = [p for p in keep if p.end_sample > p.first_sample]
        return erased

    def stop(self, t: float) -> None:
        """The process is killed at t: nothing after t is heard."""
        if self.stopped_at is not None:
            return
        self.stopped_at = t
        kept = []
        for piece in self.pieces:
            if piece.end <= t:
                kept.append(piece)
            elif piece.start < t:
                kept.append(replace(piece, end=t, end_sample=piece.first_sample + round((t - piece.start) * piece.rate)))
                self.cut_s += piece.end - t
            else:
                self.cut_s += piece.end - piece.start
        self.pieces = [p for p in kept if p.end_sample > p.first_sample]

    def gaps(self, t0: float, t1: float, min_s: float) -> list[tuple[float, float]]:
        """(start, length) of each silence of at least ``min_s`` between played audio, clipped to [t0, t1)."""
        found = []
        for before, after in zip(self.pieces, self.pieces[1:]):
            start, end = max(before.end, t0), min(after.start, t1)
            if end - start >= min_s:
                found.append((start, end - start))
        return found


@dataclass
class Link:
    """One TCP link between a processor and the TTS, and why it ended."""
    connected_at: float
    ended_at: float | None = None
    end: str | None = None      # "end of stream", "oversize", "closed: ...", "killed"


@dataclass(frozen=True)
class Datagram:
    at: float
    payload: bytes
    accepted: bool


class _Killed(Exception):
    """The processor process was killed: its thread unwinds, closing its sockets as the kernel would."""


class _Processor:
    """What both outbound audio processors share: frame reading, playout, recording, and waiting on them.

    Everything recorded is guarded by one condition, notified on every change.
    """

    def __init__(self, call_id: int, expected_rate: int, buffer_s: float):
        self.call_id = call_id
        self.expected_rate = expected_rate
        self.frames: list[Frame] = []
        self.links: list[Link] = []
        self.errors: list[str] = []
        self._playout = Playout(buffer_s)
        self._changed = threading.Condition()
        self._killed = threading.Event()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_reader, selectors.EVENT_READ)
        self._thread = threading.Thread(target=self._run, name=f"processor-{call_id}", daemon=True)

    # -- the process ---------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._serve_call()
        except _Killed:
            pass

    def _serve_call(self) -> None:
        """The process's main loop, for the length of the call."""
        raise NotImplementedError

    def kill(self) -> None:
        """SIGTERM, then SIGKILL: the sockets close as the kernel closes a dead process's sockets
        (FIN, or RST if unread data is left); nothing is sent, no BYE."""
        with self._changed:
            if self._killed.is_set():
                return
            self._killed.set()
            self._playout.stop(time.monotonic())
            self._changed.notify_all()
        self._wake_writer.send(b"k")
        self._thread.join(timeout=5.0)
        self._selector.close()
        self._wake_reader.close()
        self._wake_writer.close()

    def _wait_readable(self, sock: socket.socket) -> None:
        """Block until ``sock`` has data (or EOF); raise _Killed when the process is killed meanwhile."""
        self._selector.register(sock, selectors.EVENT_READ)
        try:
            while True:
                for key, _ in self._selector.select():
                    if key.fileobj is self._wake_reader:
                        raise _Killed
                    return
        finally:
            self._selector.unregister(sock)

    def _pause(self, seconds: float) -> None:
        if self._killed.wait(seconds):
            raise _Killed

    def _recv_exact(self, sock: socket.socket, size: int) -> bytes:
        buf = bytearray()
        while len(buf) < size:
            self._wait_readable(sock)
            chunk = sock.recv(size - len(buf))
            if not chunk:
                raise ConnectionError(f"closed by the TTS after {len(buf)} of {size} bytes")
            buf += chunk
        return bytes(buf)

    def _receive(self, sock: socket.socket) -> None:
        """One link's frames, after HELLO, until the zero header, an oversized header or a broken link."""
        link = Link(time.monotonic())
        with self._changed:
            self.links.append(link)
            self._changed.notify_all()
        try:
            while True:
                size, rate, chunk_id = struct.unpack(">III", self._recv_exact(sock, 12))
                if size == 0:
                    link.end = "end of stream"
                    break
                if size > MAX_FRAME_BYTES:
                    link.end = "oversize"
                    self._error(f"frame header announces {size} bytes, over {MAX_FRAME_BYTES}; link dropped")
                    break
                payload = self._recv_exact(sock, size)
                self._add_frame(Frame(rate, chunk_id, np.frombuffer(payload[:size - size % 4], dtype="<f4"),
                                      time.monotonic()), size)
        except _Killed:
            link.end = "killed"
            raise
        except OSError as exc:
            link.end = f"closed: {exc}"
        finally:
            with self._changed:
                link.ended_at = time.monotonic()
                self._changed.notify_all()

    def _add_frame(self, frame: Frame, size: int) -> None:
        with self._changed:
            if size % 4:
                self.errors.append(f"chunk {frame.chunk_id}: payload of {size} bytes is not whole float32 samples")
            if frame.rate != self.expected_rate:
                self.errors.append(f"chunk {frame.chunk_id}: rate {frame.rate}, expected {self.expected_rate}")
            if self.frames and frame.chunk_id != self.frames[-1].chunk_id + 1:
                self.errors.append(f"chunk_id {frame.chunk_id} after {self.frames[-1].chunk_id}")
            self.frames.append(frame)
            if frame.rate > 0:
                self._playout.add(frame.received_at, len(self.frames) - 1, frame.chunk_id, len(frame.samples),
                                  frame.rate)
            self._changed.notify_all()

    def _error(self, message: str) -> None:
        with self._changed:
            self.errors.append(message)
            self._changed.notify_all()

    # -- what the caller heard -------------------------------------------------------
    @property
    def played(self) -> list[Played]:
        """Audio in playout order; audio still queued counts at its scheduled time."""
        with self._changed:
            return list(self._playout.pieces)

    @property
    def erased(self) -> list[Erased]:
        with self._changed:
            return list(self._playout.erased)

    @property
    def erased_s(self) -> float:
        with self._changed:
            return sum(e.seconds for e in self._playout.erased)

    @property
    def cut_s(self) -> float:
        """Audio received but still unplayed when the process was killed."""
        with self._changed:
            return self._playout.cut_s

    @property
    def audio_s(self) -> float:
        """Audio received (heard, erased or cut)."""
        with self._changed:
            return sum(len(f.samples) / f.rate for f in self.frames if f.rate > 0)

    def playout_end(self) -> float | None:
        """When all audio received so far has played."""
        with self._changed:
            return self._playout.end()

    def played_audio(self, t0: float | None = None, t1: float | None = None) -> np.ndarray:
        """What the caller heard, in playout order; only stretches that started playing in [t0, t1) if given."""
        with self._changed:
            parts = [self.frames[p.frame].samples[p.first_sample:p.end_sample] for p in self._playout.pieces
                     if (t0 is None or p.start >= t0) and (t1 is None or p.start < t1)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def first_played_after(self, t: float) -> float | None:
        """When the first audio that starts playing at or after t starts."""
        with self._changed:
            return next((p.start for p in self._playout.pieces if p.start >= t), None)

    def gaps(self, t0: float, t1: float, min_s: float = 0.1) -> list[tuple[float, float]]:
        """(start, length) of the silences of at least ``min_s`` between played audio within [t0, t1)."""
        with self._changed:
            return self._playout.gaps(t0, t1, min_s)

    # -- waiting -------------------------------------------------------------------------
    def _wait(self, ready, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(ready, timeout)

    def wait_frames(self, count: int, timeout: float) -> bool:
        """Until ``count`` frames have arrived in this call."""
        return self._wait(lambda: len(self.frames) >= count, timeout)

    def wait_links(self, count: int, timeout: float, ended: bool = False) -> bool:
        """Until ``count`` links have been made (and, with ``ended``, have ended)."""
        return self._wait(lambda: len(self.links) >= count
                          and (not ended or self.links[count - 1].ended_at is not None), timeout)

    def wait_played(self, count: int, timeout: float) -> bool:
        """Until ``count`` frames have arrived and all audio received by then has played."""
        deadline = time.monotonic() + timeout
        if not self.wait_frames(count, timeout):
            return False
        with self._changed:
            while True:
                end = self._playout.end()
                now = time.monotonic()
                if end is None or end <= now or self._killed.is_set():
                    return True
                if now >= deadline:
                    return False
                self._changed.wait(min(end, deadline) - now)

    def wait_idle(self, quiet_s: float, timeout: float) -> bool:
        """Until everything received has played and no frame has arrived for ``quiet_s`` (from now, at the least)."""
        began = time.monotonic()
        deadline = began + timeout
        while (left := deadline - time.monotonic()) > 0:
            with self._changed:
                count = len(self.frames)
                last = max(self.frames[-1].received_at, began) if self.frames else began
            if not self.wait_played(count, left):
                return False
            quiet_until = max(last + quiet_s, time.monotonic())
            if not self._wait(lambda: len(self.frames) > count, min(quiet_until - time.monotonic(), left)):
                return time.monotonic() >= quiet_until
        return False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


class DialInProcessor(_Processor):
    """Today's outbound audio processor for call N: it dials in to the TTS.

    Binds UDP 0.0.0.0:(announce_base+N) at call start and waits for the datagram exactly
    ``REGISTER:N``; then connects to TCP 127.0.0.1:(tts_base+N), 10 attempts (CONNECT_DELAYS_S
    apart), sends HELLO(N), reads frames until the zero header or an oversized one, and waits
    for the next REGISTER:N. One thread does all of it in turn, as the C++ loop does, so
    datagrams that arrive while it is linked wait in the socket and are read afterwards.
    """

    def __init__(self, call_id: int, tts_base: int = 9002, announce_base: int = 13000,
                 expected_rate: int = 24000, buffer_s: float = PLAYOUT_BUFFER_S,
                 connect_delays_s: tuple[float, ...] = CONNECT_DELAYS_S):
        super().__init__(call_id, expected_rate, buffer_s)
        self.tts_address = ("127.0.0.1", tts_base + call_id)
        self.connect_delays_s = connect_delays_s
        self.attempts: list[float] = []          # start of every connect attempt
        self.datagrams: list[Datagram] = []
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("0.0.0.0", announce_base + call_id))
        self._thread.start()

    def _serve_call(self) -> None:
        with self.udp:
            while True:
                self._await_register()
                sock = self._dial()
                if sock is None:
                    continue
                with sock:
                    try:
                        sock.sendall(encode_hello(self.call_id))
                    except OSError as exc:
                        self._error(f"HELLO not sent: {exc}")
                        continue
                    self._receive(sock)

    def _await_register(self) -> None:
        expected = f"REGISTER:{self.call_id}".encode()
        while True:
            self._wait_readable(self.udp)
            payload, _ = self.udp.recvfrom(65535)
            with self._changed:
                self.datagrams.append(Datagram(time.monotonic(), payload, payload == expected))
                self._changed.notify_all()
            if payload == expected:
                return

    def _dial(self) -> socket.socket | None:
        for attempt in range(len(self.connect_delays_s) + 1):
            if attempt:
                self._pause(self.connect_delays_s[attempt - 1])
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            with self._changed:
                self.attempts.append(time.monotonic())
                self._changed.notify_all()
            try:
                sock.connect(self.tts_address)
                return sock
            except OSError:
                sock.close()
        self._error(f"no TTS on {self.tts_address[1]} after {len(self.connect_delays_s) + 1} attempts")
        return None

    def wait_attempts(self, count: int, timeout: float) -> bool:
        return self._wait(lambda: len(self.attempts) >= count, timeout)

    def wait_datagrams(self, count: int, timeout: float) -> bool:
        return self._wait(lambda: len(self.datagrams) >= count, timeout)


class PiperProcessor(_Processor):
    """The Piper-era processor for call N: listens on TCP 127.0.0.1:(base+N), sends ``REGISTER:N``
    to the service's UDP port once listening and ``BYE:N`` when the call ends (``end_call``).

    Takes one link at a time: HELLO(N) must come first, then frames until the zero header.
    """

    def __init__(self, call_id: int, service_udp: tuple[str, int] = ("127.0.0.1", 13001), base: int = 9002,
                 expected_rate: int = 24000, buffer_s: float = PLAYOUT_BUFFER_S):
        super().__init__(call_id, expected_rate, buffer_s)
        self.service_udp = service_udp
        self.listener = socket.create_server(("127.0.0.1", base + call_id))
        self._thread.start()

    def _serve_call(self) -> None:
        with self.listener:
            send_datagram(self.service_udp, f"REGISTER:{self.call_id}")
            while True:
                self._wait_readable(self.listener)
                sock, _ = self.listener.accept()
                with sock:
                    try:
                        size = struct.unpack(">I", self._recv_exact(sock, 4))[0]
                        hello = self._recv_exact(sock, size).decode("utf-8", "replace")
                    except OSError as exc:
                        self._error(f"link broke before HELLO: {exc}")
                        continue
                    if hello != str(self.call_id):
                        self._error(f"HELLO {hello!r} != {self.call_id}; link closed")
                        continue
                    self._receive(sock)

    def end_call(self) -> None:
        """The call ends: BYE:N to the service, then the process exits."""
        send_datagram(self.service_udp, f"BYE:{self.call_id}")
        self.kill()


class LlamaDied(RuntimeError):
    """A send failed: the real LLaMA process, which does not ignore SIGPIPE, would be dead."""


class LlamaPeer:
    """The real LLaMA client: one connection per call id, opened at the call's first reply, kept for good.

    HELLO(N) goes in two send() calls (length, then id), each reply in two (length, then
    text). It never reads (the service's audio just fills the kernel buffer), never sends
    BYE and never closes; ``close`` is LLaMA restarting. Default socket options. A failed
    send sets ``died``: from then on every reply raises LlamaDied.
    """

    def __init__(self, address):
        self.address = address
        self.connections: dict[str, socket.socket] = {}
        self.died: str | None = None
        self._lock = threading.Lock()

    def reply(self, call_id: str | int, text: str) -> float:
        """Send one whole reply; returns when its first byte was handed to the kernel (monotonic s)."""
        call_id = str(call_id)
        with self._lock:
            if self.died:
                raise LlamaDied(self.died)
            try:
                sock = self.connections.get(call_id)
                if sock is None:
                    sock = socket.create_connection(self.address)
                    self.connections[call_id] = sock
                    self._send_message(sock, call_id.encode())
                sent_at = time.monotonic()
                self._send_message(sock, text.encode("utf-8"))
            except OSError as exc:
                self.died = f"call {call_id}: {type(exc).__name__}: {exc}"
                raise LlamaDied(self.died) from exc
        return sent_at

    @staticmethod
    def _send_message(sock: socket.socket, raw: bytes) -> None:
        sock.sendall(struct.pack(">I", len(raw)))
        sock.sendall(raw)

    def close(self) -> None:
        with self._lock:
            for sock in self.connections.values():
                sock.close()
            self.connections.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def encode_hello(call_id: int | str) -> bytes:
    raw = str(call_id).encode()
    return struct.pack(">I", len(raw)) + raw

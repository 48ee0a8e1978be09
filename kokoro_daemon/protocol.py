"""The byte protocol shared with the phone system's C++ peers (the Piper service's, unchanged).

Every integer is 4 bytes, unsigned, big-endian; text is UTF-8.

LLaMA -> service:  HELLO ``[len][call_id]``, text ``[len][utf-8]``, BYE ``[0xFFFFFFFF]``.
service -> consumer: frame ``[payload bytes][sample_rate][chunk_id]`` + float32 LE samples;
a header whose payload length is 0 ends the stream (the processor's BYE).
processor -> service (UDP): ``REGISTER:<call_id>`` and ``BYE:<call_id>``.
"""
from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

import numpy as np

BYE_MARKER = 0xFFFFFFFF
BYE_BYTES = struct.pack(">I", BYE_MARKER)
MAX_CALL_ID_BYTES = 1024
MAX_TEXT_BYTES = 10 * 1024 * 1024
FRAME_HEADER = struct.Struct(">III")
END_OF_STREAM_HEADER = FRAME_HEADER.pack(0, 0, 0)
_LENGTH = struct.Struct(">I")


class ProtocolError(Exception):
    """The peer sent bytes that break the protocol: a bad HELLO ends the connection, a bad text
    chunk (over-long, or not UTF-8) costs only that chunk, since the stream stays in step."""


class PeerClosed(Exception):
    """The peer closed the connection; ``mid_message`` when it did so part-way through a message."""

    def __init__(self, detail: str = "", mid_message: bool = False):
        super().__init__(detail or "peer closed the connection")
        self.mid_message = mid_message


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Bye:
    pass


def recv_exact(sock: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes however TCP segments them; EOF on the first byte is a clean close."""
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(min(size - len(buf), 1 << 20))
        if not chunk:
            raise PeerClosed(f"peer closed after {len(buf)} of {size} bytes", mid_message=bool(buf))
        buf += chunk
    return bytes(buf)


def _read_length(sock: socket.socket) -> int:
    return _LENGTH.unpack(recv_exact(sock, 4))[0]


def _read_payload(sock: socket.socket, length: int, what: str) -> bytes:
    try:
        return recv_exact(sock, length)
    except PeerClosed as exc:
        raise PeerClosed(f"peer closed inside a {length}-byte {what} ({exc})", mid_message=True) from None


def read_hello(sock: socket.socket) -> str:
    """Read the HELLO that opens every connection and return its call_id."""
    length = _read_length(sock)
    if length == BYE_MARKER:
        raise ProtocolError("BYE received before HELLO")
    if not 1 <= length <= MAX_CALL_ID_BYTES:
        raise ProtocolError(f"HELLO call_id length {length} outside 1..{MAX_CALL_ID_BYTES}")
    raw = _read_payload(sock, length, "HELLO")
    try:
        call_id = raw.decode("utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"HELLO call_id is not valid UTF-8: {exc}") from None
    if not call_id:
        raise ProtocolError("HELLO call_id is blank")
    return call_id


def _skip_payload(sock: socket.socket, length: int) -> None:
    left = length
    while left:
        try:
            left -= len(recv_exact(sock, min(left, 1 << 20)))
        except PeerClosed:
            raise PeerClosed(f"peer closed inside a {length}-byte text, {length - left} bytes in",
                             mid_message=True) from None


def read_message(sock: socket.socket) -> Text | Bye:
    """Read one text chunk or BYE: the 0xFFFFFFFF marker, or a chunk that is exactly ``BYE`` (as Piper read it).

    An over-long chunk is read past and refused on its own, so the stream stays in step and
    the connection, which LLaMA may write to again, stays open.
    """
    length = _read_length(sock)
    if length == BYE_MARKER:
        return Bye()
    if length > MAX_TEXT_BYTES:
        _skip_payload(sock, length)
        raise ProtocolError(f"text length {length} exceeds the {MAX_TEXT_BYTES}-byte limit; chunk skipped")
    raw = _read_payload(sock, length, "text")
    if raw == b"BYE":
        return Bye()
    try:
        return Text(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"text chunk of {length} bytes is not valid UTF-8 ({exc}); chunk skipped") from None


def encode_hello(call_id: str) -> bytes:
    raw = call_id.encode("utf-8")
    return _LENGTH.pack(len(raw)) + raw


def encode_text(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _LENGTH.pack(len(raw)) + raw


def encode_frame(samples: np.ndarray, sample_rate: int, chunk_id: int) -> bytes:
    """One audio frame, header and payload in one buffer so a single send carries the header whole."""
    payload = np.ascontiguousarray(samples, dtype="<f4").tobytes()
    return FRAME_HEADER.pack(len(payload), sample_rate, chunk_id) + payload


def parse_datagram(data: bytes) -> tuple[str, str]:
    """``REGISTER:<id>`` / ``BYE:<id>`` -> (command, call_id); ValueError for anything else."""
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ValueError(f"datagram of {len(data)} bytes is not UTF-8: {data[:64]!r}") from None
    command, sep, call_id = text.partition(":")
    call_id = call_id.strip()
    if not sep or command not in ("REGISTER", "BYE") or not call_id or len(call_id) > MAX_CALL_ID_BYTES:
        raise ValueError(f"unrecognised datagram of {len(data)} bytes: '{printable(text, 64)}'")
    return command, call_id


def printable(text: str, limit: int = 80) -> str:
    """``text`` from a peer, safe for one log line: newlines, control and other unprintable
    characters (and backslashes) escaped as repr escapes them, cut after ``limit`` characters
    of the result with an ellipsis. No more than ``limit`` + 1 characters of ``text`` are read."""
    pieces, size = [], 0
    for char in text:
        piece = char if char.isprintable() and char != "\\" else repr(char)[1:-1]
        size += len(piece)
        if size > limit:
            return "".join(pieces) + "…"
        pieces.append(piece)
    return "".join(pieces)

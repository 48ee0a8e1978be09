"""Framing against the byte layout the C++ peers use, including hostile input."""
from __future__ import annotations

import socket
import struct
import threading

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from kokoro_daemon.protocol import (BYE_BYTES, END_OF_STREAM_HEADER, MAX_CALL_ID_BYTES, Bye, PeerClosed, ProtocolError,
                                    Text, encode_frame, encode_hello, encode_text, parse_datagram, printable,
                                    read_hello, read_message)


def feed(data: bytes, close: bool = True) -> socket.socket:
    """A real socket whose peer has sent ``data`` (and closed, by default)."""
    ours, theirs = socket.socketpair()
    theirs.sendall(data)
    if close:
        theirs.close()
    ours.settimeout(5)
    return ours


def test_frame_layout_is_byte_exact():
    frame = encode_frame(np.array([0.0, 1.0, -0.5], dtype=np.float32), 24000, 7)
    assert frame.hex() == "0000000c" "00005dc0" "00000007" "00000000" "0000803f" "000000bf"


def test_bye_and_end_of_stream_bytes():
    assert BYE_BYTES == b"\xff\xff\xff\xff"
    assert END_OF_STREAM_HEADER == bytes(12)


def test_hello_text_bye_sequence():
    sock = feed(encode_hello("999") + encode_text("Hello world.") + BYE_BYTES)
    assert read_hello(sock) == "999"
    assert read_message(sock) == Text("Hello world.")
    assert read_message(sock) == Bye()
    with pytest.raises(PeerClosed) as closed:
        read_message(sock)
    assert not closed.value.mid_message


def test_text_spelled_bye_is_bye_as_the_piper_service_read_it():
    sock = feed(encode_hello("load_test_001") + encode_text("BYE") + encode_text("BYE!"))
    read_hello(sock)
    assert read_message(sock) == Bye()
    assert read_message(sock) == Text("BYE!")


@pytest.mark.parametrize("data, message", [
    (struct.pack(">I", 0), "length 0"),
    (struct.pack(">I", MAX_CALL_ID_BYTES + 1), f"length {MAX_CALL_ID_BYTES + 1}"),
    (BYE_BYTES, "BYE received before HELLO"),
    (struct.pack(">I", 2) + b"\xc3\x28", "not valid UTF-8"),
    (struct.pack(">I", 3) + b"   ", "blank"),
])
def test_bad_hello(data, message):
    with pytest.raises(ProtocolError, match=message):
        read_hello(feed(data))


def test_text_over_limit_is_skipped_and_the_stream_continues():
    size = 10 * 1024 * 1024 + 1
    sock, peer = socket.socketpair()
    sock.settimeout(5)
    sender = threading.Thread(target=peer.sendall, args=(struct.pack(">I", size) + b"x" * size + encode_text("next"),))
    sender.start()
    with pytest.raises(ProtocolError, match="chunk skipped"):
        read_message(sock)
    assert read_message(sock) == Text("next")
    sender.join()
    peer.close()


def test_invalid_utf8_text_costs_only_that_chunk():
    sock = feed(struct.pack(">I", 2) + b"\xc3\x28" + encode_text("next"))
    with pytest.raises(ProtocolError):
        read_message(sock)
    assert read_message(sock) == Text("next")


@pytest.mark.parametrize("data", [b"\x00\x00", struct.pack(">I", 10) + b"abc"])
def test_disconnect_mid_message(data):
    with pytest.raises(PeerClosed) as closed:
        read_message(feed(data))
    assert closed.value.mid_message


def test_header_split_across_segments():
    ours, theirs = socket.socketpair()
    data = encode_hello("42") + encode_text("Split.")
    for byte in data:
        theirs.send(bytes([byte]))
    assert read_hello(ours) == "42"
    assert read_message(ours) == Text("Split.")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_text_round_trips(text):
    sock = feed(encode_text(text))
    assert read_message(sock) == Text(text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_crash_the_reader(data):
    sock = feed(data)
    try:
        read_hello(sock)
        while True:
            read_message(sock)
    except (ProtocolError, PeerClosed):
        pass


@pytest.mark.parametrize("datagram, expected", [
    (b"REGISTER:5", ("REGISTER", "5")),
    (b"BYE:5\n", ("BYE", "5")),
    (b"REGISTER:12 \r\n", ("REGISTER", "12")),
    (b"BYE:load_test_001", ("BYE", "load_test_001")),
])
def test_datagrams(datagram, expected):
    assert parse_datagram(datagram) == expected


@pytest.mark.parametrize("datagram", [b"", b"REGISTER", b"REGISTER:", b"HELLO:5", b"\xff", b"bye:5",
                                      b"REGISTER:" + b"9" * 1025])
def test_bad_datagrams(datagram):
    with pytest.raises(ValueError):
        parse_datagram(datagram)


# --- peer text in log lines ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("load_test_001", "load_test_001"),
    ("café ☎ 42", "café ☎ 42"),
    ("5\nkokoro ERROR forged line", "5\\nkokoro ERROR forged line"),
    ("a\r\x1b[31mred\x00\x7f\u2028\t", "a\\r\\x1b[31mred\\x00\\x7f\\u2028\\t"),
    ("back\\slash", "back\\\\slash"),
    ("", ""),
])
def test_printable_escapes_what_would_break_a_log_line(text, expected):
    assert printable(text) == expected


def test_printable_cuts_long_text_with_an_ellipsis():
    assert printable("x" * 80) == "x" * 80
    assert printable("x" * 81) == "x" * 80 + "…"
    assert printable("\n" * 50, limit=10) == "\\n" * 5 + "…"  # the limit counts escaped characters
    assert printable("y" * 10_000_000, limit=20) == "y" * 20 + "…"


@settings(max_examples=300)
@given(st.text(), st.integers(0, 40))
def test_printable_gives_one_bounded_line(text, limit):
    shown = printable(text, limit)
    assert shown.isprintable() and len(shown) <= limit + 1
    if len(text) <= limit and text.isprintable() and "\\" not in text:
        assert shown == text


def test_a_datagram_is_reported_on_one_line():
    with pytest.raises(ValueError) as info:
        parse_datagram(b"HELLO\nkokoro ERROR forged line")
    assert "\n" not in str(info.value) and "HELLO\\nkokoro" in str(info.value)
    with pytest.raises(ValueError) as info:
        parse_datagram(b"\xff\nBYE:1")
    assert "\n" not in str(info.value)

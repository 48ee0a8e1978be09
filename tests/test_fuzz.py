"""Hypothesis fuzz of the two ports, through the public wire protocol only.

The LLaMA stream gets 10,000 random frames: valid HELLO/text/BYE frames mixed with wrong and
huge lengths, invalid UTF-8, truncated frames and random bytes, split across several send()
calls, the connection then closed or left open. The UDP port gets random REGISTER/BYE
datagrams, garbage and oversize datagrams. Throughout, the service must not crash: it keeps
answering a normal call correctly (every FUZZ_ROUND examples and at the end), no thread dies
with an exception (those go to stderr), and nothing but protocol errors is logged as an
error. Text the fuzzer sends is unspeakable or a single word, so the engine stays idle.
"""
from __future__ import annotations

import logging
import re
import socket
import struct
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from peers import LlamaClient, ProcessorPeer, checked_audio, free_port, reply_frames, send_datagram

pytestmark = pytest.mark.slow  # ./run-tests.sh --quick leaves these out

FRAMES_WANTED = 10_000
FUZZ_ROUND = 100  # examples between two normal calls
MAX_OPEN = 64  # connections left open at once; the oldest is closed beyond this
# What the service may log as an error while it is fed garbage: the protocol errors it reports.
PROTOCOL_ERROR = re.compile(r"HELLO|UTF-8|length|limit|BYE|protocol|closing the connection|refused", re.IGNORECASE)

UNSPEAKABLE = " .,;:!?-—…\n\t()\"'*"
# Bytes that decode to no letter or digit: ASCII punctuation and controls, and bytes invalid in UTF-8.
NOISE = bytes([*range(0x00, 0x30), *range(0x3A, 0x41), *range(0x5B, 0x61), *range(0x7B, 0xC2), *range(0xF5, 0x100)])
INVALID_UTF8 = [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"ok\xff", b"\xe2\x82"]
BYE = b"\xff\xff\xff\xff"
MAX_TEXT_BYTES = 10 * 1024 * 1024


def length(n: int) -> bytes:
    return struct.pack(">I", n)


def framed(raw: bytes) -> bytes:
    return length(len(raw)) + raw


call_ids = st.one_of(
    st.sampled_from(["fz-1", "fz-2", "fz-3"]),  # shared ids: connections supersede one another
    st.integers(1, 500).map(str),
    st.text(min_size=1, max_size=12).map(lambda text: "fz" + text),  # newlines, controls, any script
)
texts = st.tuples(st.integers(0, 39), st.text(alphabet=UNSPEAKABLE, max_size=20)).map(
    lambda drawn: "Okay." if drawn[0] == 0 else drawn[1])  # one text in 40 is a word to speak
noise = st.binary(max_size=48).map(lambda data: bytes(NOISE[b % len(NOISE)] for b in data))

# After the HELLO a call-id-shaped frame is only text, and spoken: numbers and names would make this a test
# of the engine's speed. Texts keep speech to one in 40.
valid_frames = st.one_of(
    texts.map(lambda text: framed(text.encode())),
    st.just(BYE),
)
frames = st.one_of(
    valid_frames,
    valid_frames,
    st.tuples(texts, st.integers(-3, 1000).filter(bool)).map(  # a length that is not the payload's
        lambda drawn: length(max(0, len(drawn[0].encode()) + drawn[1])) + drawn[0].encode()),
    st.tuples(st.integers(MAX_TEXT_BYTES + 1, 0xFFFFFFFE), noise).map(lambda drawn: length(drawn[0]) + drawn[1]),
    st.sampled_from(INVALID_UTF8).map(framed),
    st.tuples(valid_frames, st.floats(0, 1, exclude_max=True)).map(  # a frame cut short
        lambda drawn: drawn[0][: int(len(drawn[0]) * drawn[1])]),
    noise,
)


@st.composite
def connections(draw):
    """One connection: its frames, the send() calls they are cut into, and whether it is closed after."""
    sent = ([draw(call_ids.map(lambda call_id: framed(call_id.encode())))] if draw(st.booleans()) else [])
    sent += draw(st.lists(frames, min_size=1, max_size=30))
    stream = b"".join(sent)
    cuts = sorted(set(draw(st.lists(st.integers(0, len(stream)), max_size=4))))
    bounds = [0, *cuts, len(stream)]
    return len(sent), [stream[a:b] for a, b in zip(bounds, bounds[1:]) if b > a], draw(st.booleans())


def unexpected(records) -> list[str]:
    """Log records that are not protocol errors: anything with a traceback, or an error about something else."""
    return [record.getMessage() for record in records
            if record.exc_info or "Traceback" in record.getMessage()
            or (record.levelno >= logging.ERROR and not PROTOCOL_ERROR.search(record.getMessage()))]


def assert_serves_a_normal_call(service, call_id: str) -> None:
    audio = checked_audio(reply_frames(service.tcp_address, call_id, "Thank you for holding."))
    assert 0.5 < audio.size / 24000 < 5
    assert not service.stopped.is_set()


def test_llama_stream_fuzz(service, caplog, capfd):
    assert_serves_a_normal_call(service, "fuzz-before")
    left_open: list[LlamaClient] = []
    total = {"frames": 0, "examples": 0}

    @settings(max_examples=FUZZ_ROUND, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.lists(connections(), min_size=1, max_size=3))
    def fuzz(example):
        for count, pieces, close in example:
            client = LlamaClient(service.tcp_address, timeout=5)
            try:
                for piece in pieces:
                    client.send_raw(piece)
            except OSError:  # the service closed it after a fatal framing error
                close = True
            total["frames"] += count
            if close:
                client.close()
            else:
                left_open.append(client)
                if len(left_open) > MAX_OPEN:
                    left_open.pop(0).close()
        total["examples"] += 1

    try:
        while total["frames"] < FRAMES_WANTED:
            fuzz()
            assert_serves_a_normal_call(service, f"fuzz-round-{total['examples']}")
            assert unexpected(caplog.records) == []
    finally:
        for client in left_open:
            client.close()
    time.sleep(0.5)  # the handlers of the connections just closed finish
    assert_serves_a_normal_call(service, "fuzz-after")
    assert unexpected(caplog.records) == []
    reported = sum(1 for r in caplog.records if r.levelno >= logging.WARNING and PROTOCOL_ERROR.search(r.getMessage()))
    assert reported > 0  # the garbage reached the service's error paths
    stderr = capfd.readouterr().err
    assert "Traceback" not in stderr and "Exception in thread" not in stderr, stderr[-3000:]
    with capfd.disabled():
        print(f"\n{total['frames']} frames in {total['examples']} examples; {reported} protocol errors reported")


def udp_call_id(text: str) -> str:
    """A random id, except that an ASCII number whose processor port exists gets a prefix: the fuzz must not
    make the shared service dial out to ports other tests may use."""
    stripped = text.strip()
    if stripped.isascii() and stripped.isdigit() and int(stripped) <= 65535:
        return "fz" + stripped
    return text


datagram_ids = st.one_of(st.text(max_size=30), st.integers(65536, 10**12).map(str),
                         st.integers(-99, 0).map(str)).map(udp_call_id)
datagrams = st.one_of(
    st.tuples(st.sampled_from(["REGISTER", "BYE"]), datagram_ids).map(lambda drawn: f"{drawn[0]}:{drawn[1]}"),
    st.binary(max_size=200),
    st.tuples(st.sampled_from([b"REGISTER:", b"BYE:", b""]), st.integers(1025, 65000), st.randoms()).map(
        lambda drawn: drawn[0] + drawn[2].randbytes(drawn[1])),  # oversize
)


def test_udp_fuzz(service, caplog, capfd):
    named: set[str] = set()

    @settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(datagrams, min_size=1, max_size=10))
    def fuzz(example):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            for datagram in example:
                if isinstance(datagram, str):
                    named.add(datagram.partition(":")[2].strip())
                    datagram = datagram.encode()
                udp.sendto(datagram, service.udp_address)

    fuzz()
    for call_id in named:  # end whatever the fuzz registered
        send_datagram(service.udp_address, f"BYE:{call_id}")
    time.sleep(1.0)  # the datagrams still queued are handled (each takes well under a millisecond)
    # The registration port still works: a processor registered by UDP gets the call's audio.
    port = free_port()
    call_id = port - service.config.routing.processor_base_port
    peer = ProcessorPeer(call_id, port)
    try:
        with LlamaClient(service.tcp_address, str(call_id)) as llama:
            send_datagram(service.udp_address, f"REGISTER:{call_id}")
            time.sleep(0.5)  # far longer than a loopback datagram takes to apply
            llama.text("Thank you for holding.")
            assert peer.first_frame.wait(60), f"no audio reached the processor registered after the fuzz {peer.errors}"
            send_datagram(service.udp_address, f"BYE:{call_id}")
            assert peer.ended.wait(10) and peer.errors == [] and peer.connections == 1
        checked_audio(peer.frames)
    finally:
        peer.close()
    assert_serves_a_normal_call(service, "udp-fuzz-after")
    assert unexpected(caplog.records) == []
    stderr = capfd.readouterr().err
    assert "Traceback" not in stderr and "Exception in thread" not in stderr, stderr[-3000:]

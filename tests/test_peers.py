"""The real peers' emulations, checked against a TTS stand-in over real sockets (no model, a few seconds)."""
from __future__ import annotations

import socket
import struct
import time

import numpy as np
import pytest

from peers import (MAX_FRAME_BYTES, DialInProcessor, LlamaDied, LlamaPeer, PiperProcessor, Playout, free_port,
                   recv_exact)
from tts_standin import END, RATE, DialInTTS, frame, free_udp_port, tone

CALL = 7


@pytest.fixture
def ports():
    """(tts_base, announce_base) such that base + CALL is free for the TTS listener and the processor's UDP."""
    return free_port() - CALL, free_udp_port() - CALL


@pytest.fixture
def linked(ports):
    """A dial-in processor linked to the stand-in: (processor, stand-in, link socket)."""
    tts = DialInTTS(CALL, *ports)
    processor = DialInProcessor(CALL, *ports)
    tts.announce()
    conn = tts.accept()
    yield processor, tts, conn
    processor.kill()
    conn.close()
    tts.close()


# -- playout, computed ---------------------------------------------------------------

def add(playout: Playout, t: float, frame_index: int, seconds: float) -> None:
    playout.add(t, frame_index, frame_index + 1, round(seconds * RATE), RATE)


def test_playout_plays_frames_back_to_back_and_finds_the_silence_between():
    playout = Playout()
    add(playout, 0.0, 0, 1.0)
    add(playout, 0.5, 1, 1.0)      # queued behind the first
    add(playout, 2.3, 2, 1.0)      # the buffer ran dry at 2.0
    assert [(p.start, p.end) for p in playout.pieces] == [(0.0, 1.0), (1.0, 2.0), (2.3, 3.3)]
    assert playout.gaps(0.0, 10.0, 0.1) == [(2.0, pytest.approx(0.3))]
    assert playout.gaps(0.0, 10.0, 0.5) == []
    assert playout.gaps(2.1, 10.0, 0.1) == [(2.1, pytest.approx(0.2))]
    assert playout.erased == []


def test_playout_erases_the_oldest_unplayed_audio_past_twelve_seconds():
    playout = Playout()
    for i in range(20):             # 20 s arrive at once
        add(playout, 0.0, i, 1.0)
    assert sum(e.seconds for e in playout.erased) == pytest.approx(8.0)
    assert [e.frame for e in playout.erased] == list(range(8))
    assert [p.frame for p in playout.pieces] == list(range(8, 20))
    assert playout.pieces[0].start == 0.0 and playout.end() == pytest.approx(12.0)


def test_playout_keeps_what_was_heard_and_erases_what_the_caller_was_about_to_hear():
    playout = Playout()
    add(playout, 0.0, 0, 10.0)
    add(playout, 2.0, 1, 6.0)       # 8 s unplayed + 6 s: 2 s of the first frame go, from second 2 on
    assert [(p.frame, p.start, p.end, p.first_sample, p.end_sample) for p in playout.pieces] == [
        (0, 0.0, 2.0, 0, 2 * RATE), (0, 2.0, 8.0, 4 * RATE, 10 * RATE), (1, 8.0, 14.0, 0, 6 * RATE)]
    assert [(e.frame, e.first_sample, e.end_sample) for e in playout.erased] == [(0, 2 * RATE, 4 * RATE)]


def test_playout_of_one_frame_longer_than_the_buffer_keeps_its_last_twelve_seconds():
    playout = Playout()
    add(playout, 0.0, 0, 20.0)
    assert [(e.first_sample, e.end_sample) for e in playout.erased] == [(0, 8 * RATE)]
    assert [(p.first_sample, p.end_sample, p.start, p.end) for p in playout.pieces] == [(8 * RATE, 20 * RATE, 0.0, 12.0)]


def test_playout_stopped_hears_nothing_after():
    playout = Playout()
    add(playout, 0.0, 0, 2.0)
    add(playout, 0.0, 1, 2.0)
    playout.stop(1.5)
    add(playout, 1.6, 2, 1.0)
    assert [(p.frame, p.end, p.end_sample) for p in playout.pieces] == [(0, 1.5, round(1.5 * RATE))]
    assert playout.cut_s == pytest.approx(2.5)


# -- the dial-in processor ------------------------------------------------------------------

def test_only_the_exact_register_for_its_call_makes_it_dial(ports):
    tts = DialInTTS(CALL, *ports)
    with DialInProcessor(CALL, *ports) as processor:
        wrong = [b"REGISTER:7\n", b"REGISTER: 7", b"register:7", b"REGISTER:70", b"REGISTER:8", b"BYE:7",
                 b" REGISTER:7", b"REGISTER:7\x00"]
        for payload in wrong:
            tts.announce(payload)
        assert processor.wait_datagrams(len(wrong), 2.0)
        time.sleep(0.1)
        assert processor.attempts == [] and processor.links == []
        assert [d.payload for d in processor.datagrams] == wrong and not any(d.accepted for d in processor.datagrams)
        tts.announce()
        tts.accept().close()
        assert len(processor.attempts) == 1 and processor.datagrams[-1].accepted
    tts.close()


def test_connect_attempts_come_200_ms_apart_five_times_then_1_s_apart(ports):
    tts = DialInTTS(CALL, *ports, listen=False)
    with DialInProcessor(CALL, *ports) as processor:
        tts.announce()
        assert processor.wait_attempts(5, 2.0)
        time.sleep(0.1)
        tts.listen()                  # up between the 5th attempt and the 6th
        conn = tts.accept()
        assert processor.wait_links(1, 2.0)
        steps = np.diff(processor.attempts)
        assert len(processor.attempts) == 6
        assert steps[:4] == pytest.approx([0.2] * 4, abs=0.1) and steps[4] == pytest.approx(1.0, abs=0.1)
        conn.close()
    tts.close()


def test_after_ten_failed_attempts_it_waits_for_the_next_register(ports):
    tts = DialInTTS(CALL, *ports, listen=False)
    with DialInProcessor(CALL, *ports, connect_delays_s=(0.01,) * 9) as processor:
        tts.announce()
        assert processor.wait_attempts(10, 2.0)
        time.sleep(0.1)
        assert len(processor.attempts) == 10 and processor.errors == [f"no TTS on {ports[0] + CALL} after 10 attempts"]
        tts.listen()
        tts.announce()
        tts.accept().close()
        assert len(processor.attempts) == 11
    tts.close()


def test_twenty_seconds_at_once_erases_eight_and_the_caller_hears_the_last_twelve(linked):
    processor, _, conn = linked
    audio = tone(20.0)
    conn.sendall(b"".join(frame(audio[i * RATE:(i + 1) * RATE], i + 1) for i in range(20)))
    assert processor.wait_frames(20, 5.0)
    heard = processor.played_audio()
    assert 7.9 < processor.erased_s <= 8.0
    assert len(heard) + round(processor.erased_s * RATE) == len(audio)
    np.testing.assert_array_equal(heard[-12 * RATE:], audio[-12 * RATE:])
    assert [e.chunk_id for e in processor.erased] == list(range(1, 9))
    assert processor.errors == []


def test_gaps_are_the_silences_between_played_audio(linked):
    processor, _, conn = linked
    started = time.monotonic()
    conn.sendall(frame(tone(0.2, 1), 1))
    assert processor.wait_frames(1, 2.0)
    time.sleep(0.5)
    conn.sendall(frame(tone(0.2, 2), 2) + frame(tone(0.2, 3), 3))
    assert processor.wait_played(3, 2.0)
    first = processor.first_played_after(started)
    assert first == processor.frames[0].received_at
    [(start, length)] = processor.gaps(started, time.monotonic(), min_s=0.1)
    assert start == pytest.approx(first + 0.2) and 0.28 < length < 0.45
    assert processor.gaps(started, start, min_s=0.1) == []
    assert len(processor.played_audio(start, time.monotonic())) == round(0.4 * RATE)


def test_idle_means_all_played_and_nothing_new_for_a_while(linked):
    processor, _, conn = linked
    began = time.monotonic()
    assert processor.wait_idle(0.2, 2.0) and time.monotonic() - began >= 0.2
    conn.sendall(frame(tone(0.3), 1))
    assert processor.wait_frames(1, 2.0)
    assert processor.wait_idle(0.1, 2.0) and time.monotonic() >= processor.playout_end()
    assert not processor.wait_idle(0.5, 0.2)


def test_a_header_over_10_mib_drops_the_link(linked):
    processor, _, conn = linked
    conn.sendall(frame(np.zeros(MAX_FRAME_BYTES // 4, dtype="<f4"), 1))   # exactly 10 MiB is a frame
    assert processor.wait_frames(1, 5.0)
    conn.sendall(struct.pack(">III", MAX_FRAME_BYTES + 4, RATE, 2) + bytes(65536))
    assert processor.wait_links(1, 2.0, ended=True)
    assert processor.links[0].end == "oversize" and len(processor.frames) == 1
    with pytest.raises(ConnectionResetError):    # closed with the payload unread: the kernel answers RST
        conn.recv(1)


def test_a_second_register_after_the_end_of_stream_links_again(linked):
    processor, tts, conn = linked
    conn.sendall(frame(tone(0.1), 1) + END)
    assert processor.wait_links(1, 2.0, ended=True) and processor.links[0].end == "end of stream"
    assert conn.recv(1) == b""
    time.sleep(0.2)
    assert len(processor.links) == 1
    tts.announce()
    second = tts.accept()
    second.sendall(frame(tone(0.1), 2))
    assert processor.wait_frames(2, 2.0)
    assert len(processor.links) == 2 and processor.errors == []
    second.close()


def test_a_register_that_came_while_linked_makes_it_dial_again_at_once(linked):
    processor, tts, conn = linked
    tts.announce()                  # the service's cadence goes on until it sees the link
    conn.sendall(END)
    tts.accept().close()
    assert processor.wait_links(2, 2.0) and processor.links[0].end == "end of stream"


def test_frames_it_would_complain_about_are_recorded_and_played(linked):
    processor, _, conn = linked
    conn.sendall(frame(tone(0.1), 1) + frame(tone(0.1), 3) + frame(tone(0.1, rate=16000), 4, rate=16000)
                 + struct.pack(">III", 6, RATE, 5) + bytes(6))
    assert processor.wait_frames(4, 2.0)
    assert processor.errors == ["chunk_id 3 after 1", "chunk 4: rate 16000, expected 24000",
                                "chunk 5: payload of 6 bytes is not whole float32 samples"]
    assert processor.audio_s == pytest.approx(0.3 + 1 / RATE)


def test_kill_closes_the_link_without_a_word(linked):
    processor, _, conn = linked
    conn.sendall(frame(tone(1.0), 1))
    assert processor.wait_frames(1, 2.0)
    time.sleep(0.2)
    processor.kill()
    assert conn.recv(1) == b""      # FIN, nothing before it
    assert processor.links[0].end == "killed"
    [heard] = processor.played
    assert heard.end - heard.start == pytest.approx(0.2, abs=0.1) and heard.end <= time.monotonic()
    assert processor.cut_s == pytest.approx(1.0 - (heard.end - heard.start))


def test_kill_while_dialling_is_immediate(ports):
    tts = DialInTTS(CALL, *ports, listen=False)
    processor = DialInProcessor(CALL, *ports, connect_delays_s=(5.0,) * 9)
    tts.announce()
    assert processor.wait_attempts(1, 2.0)      # now in a pause before the next attempt
    began = time.monotonic()
    processor.kill()
    assert time.monotonic() - began < 0.2 and not processor._thread.is_alive()


# -- the Piper-era processor --------------------------------------------------------------

def test_piper_processor_registers_takes_the_link_and_says_bye():
    service_udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    service_udp.bind(("127.0.0.1", 0))
    service_udp.settimeout(2.0)
    base = free_port() - CALL
    processor = PiperProcessor(CALL, service_udp.getsockname(), base)
    assert service_udp.recv(64) == b"REGISTER:7"
    with socket.create_connection(("127.0.0.1", base + CALL)) as wrong:
        wrong.sendall(struct.pack(">I", 1) + b"8")
        assert wrong.recv(1) == b""
    with socket.create_connection(("127.0.0.1", base + CALL)) as conn:
        conn.sendall(struct.pack(">I", 1) + b"7" + frame(tone(0.2), 1) + frame(tone(0.2), 2) + END)
        assert processor.wait_links(1, 2.0, ended=True)
    assert len(processor.frames) == 2 and processor.errors == ["HELLO '8' != 7; link closed"]
    processor.end_call()
    assert service_udp.recv(64) == b"BYE:7"
    service_udp.close()


# -- the LLaMA client ------------------------------------------------------------------------

def test_llama_opens_one_connection_per_call_and_sends_replies_whole_without_bye():
    with socket.create_server(("127.0.0.1", 0)) as server, LlamaPeer(server.getsockname()) as llama:
        server.settimeout(2.0)
        llama.reply(7, "Hello there.")
        first, _ = server.accept()
        llama.reply("7", "Second reply.")
        llama.reply(8, "Other call.")
        second, _ = server.accept()
        first.settimeout(2.0)
        second.settimeout(2.0)
        assert recv_exact(first, 4 + 1 + 4 + 12 + 4 + 13) == (
            b"\0\0\0\x017" + b"\0\0\0\x0cHello there." + b"\0\0\0\x0dSecond reply.")
        assert recv_exact(second, 4 + 1 + 4 + 11) == b"\0\0\0\x018" + b"\0\0\0\x0bOther call."
        first.sendall(bytes(200_000))           # audio it never reads
        first.settimeout(0.2)
        with pytest.raises(socket.timeout):     # no BYE, no close
            first.recv(1)
        llama.reply(7, "Third.")
        assert llama.died is None and len(llama.connections) == 2
        first.close()
        second.close()


def test_llama_dies_when_it_writes_to_a_closed_connection():
    with socket.create_server(("127.0.0.1", 0)) as server, LlamaPeer(server.getsockname()) as llama:
        llama.reply(7, "Hello.")
        conn, _ = server.accept()
        conn.close()
        with pytest.raises(LlamaDied):
            for _ in range(5):
                time.sleep(0.05)
                llama.reply(7, "Are you there?")
        assert llama.died
        with pytest.raises(LlamaDied):
            llama.reply(8, "Anyone?")

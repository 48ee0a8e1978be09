"""The service as the phone system really runs it: today's processor dials in after REGISTER:N on
13000+N, plays in real time with a 12 s erase-oldest buffer and is killed at call end; the LLaMA
client keeps one connection per call for ever, sends each reply whole, never reads, never says BYE.
"""
from __future__ import annotations

import contextlib
import logging
import socket
import time

import numpy as np
import pytest

from conftest import PHRASES, expected_audio, judge, wait_for, write_wav
from kokoro_daemon import metrics
from kokoro_daemon.calls import Routing
from kokoro_daemon.engines.windows import SYNTHESIS_MODES
from peers import (PLAYOUT_BUFFER_S, DialInProcessor, LlamaClient, LlamaPeer, PiperProcessor, checked_audio, free_port,
                   send_datagram)

pytestmark = pytest.mark.slow  # ./run-tests.sh --quick leaves these out

CALL = 7
WAIT_S = 120.0
TURNS = [
    "Thank you for calling. How can I help you today?",
    "I can help you with that. May I have your account number, please?",
    "Your order number is 48213, and it should arrive within 3 to 5 business days.",
    "Is there anything else I can help you with?",
]


def counter(metric) -> float:
    return metric._value.get()  # noqa: SLF001


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def phone_routing(**overrides) -> Routing:
    """Base ports that put call CALL's listener (base+N) and announce port (announce base+N) on free ports."""
    return Routing(processor_base_port=free_port() - CALL, announce_base_port=free_udp_port() - CALL, **overrides)


def dial_in_processor(service) -> DialInProcessor:
    r = service.config.routing
    return DialInProcessor(CALL, tts_base=r.processor_base_port, announce_base=r.announce_base_port)


def wait_reply_heard(service, processor: DialInProcessor, replies: int) -> None:
    """Until the call's first ``replies`` replies are spoken, sent, received and played (its first link: chunk
    ids from 1)."""
    deadline = time.monotonic() + 10
    while (call := service.registry.get(str(CALL))) is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert call is not None and call.wait_replies_done(replies, WAIT_S)
    assert processor.wait_played(call.next_chunk_id - 1, WAIT_S)  # sent is not yet read by the processor


def wait_call_gone(service, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while service.registry.get(str(CALL)) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def phone(make_service):
    return make_service(routing=phone_routing())


@pytest.mark.judge
def test_a_four_turn_conversation_is_heard_whole_and_the_next_call_reuses_the_connection(phone, tmp_path):
    turns = []
    with dial_in_processor(phone) as processor, LlamaPeer(phone.tcp_address) as llama:
        for n, text in enumerate(TURNS):
            sent = llama.reply(CALL, text)
            wait_reply_heard(phone, processor, n + 1)
            turns.append((sent, processor.playout_end(), text))
            time.sleep(0.3)  # the caller answers
        first_audio = [processor.first_played_after(sent) - sent for sent, _, _ in turns]
        gaps = [processor.gaps(processor.first_played_after(sent), end, 0.001) for sent, end, _ in turns]
        print("\nfirst audio played per turn (s): " + ", ".join(f"{t:.3f}" for t in first_audio))
        # how long the caller waits and any silence inside a reply hang on the CPU: bench/conversation.py
        print("longest mid-reply gap per turn (s): " + ", ".join(f"{max((g for _, g in gs), default=0):.3f}"
                                                              for gs in gaps))
        assert processor.errors == [] and len(processor.links) == 1
        assert processor.erased_s == 0
        assert [f.chunk_id for f in processor.frames] == list(range(1, len(processor.frames) + 1))
        wavs = [(write_wav(tmp_path / f"turn{n}.wav", processor.played_audio(sent, end + 0.01), 24000), text)
                for n, (sent, end, text) in enumerate(turns)]
        last_id = processor.frames[-1].chunk_id

        processor.kill()  # the call ends: the processor is killed, its link closes
        assert wait_call_gone(phone), "the call outlived its processor link"
        with dial_in_processor(phone) as second:  # the same call id comes back on the same LLaMA connection
            llama.reply(CALL, "Welcome back.")
            assert second.wait_frames(1, WAIT_S), second.errors
            assert second.frames[0].chunk_id == last_id + 1
        assert llama.died is None
    result = judge(tmp_path, wavs)
    print(f"WER {result['overall_wer']:.3f}: " + "; ".join(f["transcript"] for f in result["files"]))
    assert result["overall_wer"] <= 0.05, result


def test_a_reply_twice_the_12_second_buffer_is_paced_and_heard_whole(phone):
    text = " ".join(PHRASES[:10])
    with dial_in_processor(phone) as processor, LlamaPeer(phone.tcp_address) as llama:
        llama.reply(CALL, text)
        wait_reply_heard(phone, processor, 1)
        arrivals = [f.received_at for f in processor.frames]
        heard = processor.played_audio()
        assert processor.audio_s >= 2 * PLAYOUT_BUFFER_S, f"only {processor.audio_s:.1f} s of audio"
        assert processor.erased_s == 0 and processor.errors == []
        assert heard.size == sum(f.samples.size for f in processor.frames)
        # paced: sent as it plays, not all at once (at most max-lead + one frame ahead of playout)
        assert arrivals[-1] - arrivals[0] >= processor.audio_s - phone.config.routing.max_lead_s - 1.5
        assert llama.died is None


def test_the_processor_link_closing_ends_the_call_and_its_engine_work(phone):
    long_reply = " ".join(PHRASES[:8])
    with LlamaPeer(phone.tcp_address) as llama:
        with dial_in_processor(phone) as processor:
            llama.reply(CALL, long_reply)
            assert processor.wait_frames(1, WAIT_S)
            cancelled = counter(metrics.SEGMENTS_CANCELLED)
        synthesized_at_kill = counter(metrics.SEGMENTS_SYNTHESIZED)
        assert wait_call_gone(phone)
        time.sleep(1.0)
        assert counter(metrics.SEGMENTS_SYNTHESIZED) - synthesized_at_kill <= 1  # only what was in the engine
        assert counter(metrics.SEGMENTS_CANCELLED) > cancelled
        with dial_in_processor(phone) as processor:
            llama.reply(CALL, "Are you still there?")
            assert processor.wait_frames(1, WAIT_S)
        assert llama.died is None


def test_audio_waits_for_a_processor_then_falls_back_to_the_llama_socket_and_a_late_processor_takes_over(
        make_service, engine, g2p):
    service = make_service(routing=phone_routing(processor_wait_s=1.0))
    with LlamaClient(service.tcp_address, str(CALL)) as client:
        hello_at = time.monotonic()
        client.text("Hello there, thanks for waiting.")
        frames = [client.read_frame()]
        assert frames[0].chunk_id == 1 and frames[0].received_at - hello_at >= 1.0
        expected = expected_audio(service, engine, g2p, "Hello there, thanks for waiting.")
        while sum(f.samples.size for f in frames) < expected.size:   # the rest of the reply follows its first window
            frames.append(client.read_frame())
        np.testing.assert_array_equal(checked_audio(frames), expected)
        with dial_in_processor(service) as processor:  # it links at the next REGISTER, up to 1 s from now

            def linked() -> bool:
                return any(s.call_id == str(CALL) and s.link == "dial-in" for s in service.registry.snapshot())
            assert wait_for(linked, 10), processor.errors
            client.text("A processor has joined now.")
            assert processor.wait_frames(1, WAIT_S), processor.errors
            assert processor.frames[0].chunk_id == len(frames) + 1
            client.sock.settimeout(1.0)
            with pytest.raises(TimeoutError):
                client.read_frame()


def test_a_processor_that_links_in_time_gets_everything_and_the_llama_socket_nothing(phone):
    with dial_in_processor(phone) as processor, LlamaClient(phone.tcp_address, str(CALL)) as client:
        client.text("Everything goes to the processor.")
        assert processor.wait_frames(1, WAIT_S)
        client.sock.settimeout(1.5)
        with pytest.raises(TimeoutError):
            client.read_frame()
        assert [len(processor.datagrams), len(processor.links)] >= [1, 1]


def test_auto_dials_out_when_a_piper_era_processor_already_listens(phone):
    r = phone.config.routing
    unused = ("127.0.0.1", free_udp_port())  # its REGISTER goes nowhere: the taken port alone says dial out
    with PiperProcessor(CALL, service_udp=unused, base=r.processor_base_port) as processor, \
            LlamaPeer(phone.tcp_address) as llama:
        llama.reply(CALL, "Dialling out works too.")
        assert processor.wait_frames(1, WAIT_S), processor.errors
        assert processor.errors == []


def test_a_listen_port_held_for_a_while_by_another_socket_is_listened_on_once_free(phone, caplog):
    """Any socket can hold 9002+N for a while (an outgoing connection gets it as its own port): nobody
    listens there, so dialling out is refused, and today's processor must be announced to once it is free."""
    caplog.set_level(logging.INFO, logger="kokoro_daemon")
    holder = socket.socket()
    holder.bind(("127.0.0.1", phone.config.routing.processor_base_port + CALL))  # bound, never listening
    with dial_in_processor(phone) as processor, LlamaPeer(phone.tcp_address) as llama:
        llama.reply(CALL, "The line is free again.")
        assert wait_for(lambda: "is taken, as by a Piper-era processor" in caplog.text, 10)
        holder.close()
        wait_reply_heard(phone, processor, 1)
        assert processor.errors == []
    assert "is free again; listening there for its processor" in caplog.text


def test_dial_in_only_ignores_a_piper_register(make_service, caplog):
    caplog.set_level(logging.INFO, logger="kokoro_daemon")
    service = make_service(routing=phone_routing(link="dial-in", processor_wait_s=0.5))
    with LlamaClient(service.tcp_address, str(CALL)) as client:
        client.text("Hello.")
        client.read_frame()
        send_datagram(service.udp_address, f"REGISTER:{CALL}")
        deadline = time.monotonic() + 5
        while "REGISTER ignored" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
    assert "REGISTER ignored: processors dial in" in caplog.text


@pytest.mark.parametrize("synthesis", SYNTHESIS_MODES)
def test_every_reply_on_a_long_lived_connection_starts_as_a_first_reply(make_service, synthesis):
    """Whole: a segment a sentence (a long first one cut at a clause); stream: a short first window, then more."""
    service = make_service(cache_mb=0, synthesis=synthesis)   # a cached segment would come whole, in one frame
    reply = "Sure, I can look into that for you right now. It will only take a moment."
    with LlamaClient(service.tcp_address, "first-reply") as fresh:
        fresh.text(reply)
        fresh.bye()
        alone = fresh.read_until_bye()
    if synthesis == "stream":
        assert len(alone) > 2 and alone[0].samples.size <= service.synthesizer.plan.first_frames * 600
    else:
        assert len(alone) == 2   # one sentence a segment
    with LlamaClient(service.tcp_address, "long-lived") as client:
        for _ in range(3):
            client.text(reply)
            total = sum(f.samples.size for f in alone)
            frames = [client.read_frame()]
            while sum(f.samples.size for f in frames) < total - 2400:
                frames.append(client.read_frame())
            client.sock.settimeout(2.0)   # the reply's last frames, if any
            with contextlib.suppress(TimeoutError):
                while True:
                    frames.append(client.read_frame())
            client.sock.settimeout(120.0)
            # the same first unit as a fresh call's; under stream a later sentence comes in windows or whole
            # by how much audio its caller has left (a few samples apart), so only whole frames it the same way
            assert np.array_equal(frames[0].samples, alone[0].samples)
            assert abs(sum(f.samples.size for f in frames) - total) <= 2400
            if synthesis == "whole":
                assert [f.samples.size for f in frames] == [f.samples.size for f in alone]

"""End to end with the Piper-era processor (it listens on 9002+N, sends REGISTER:N and BYE:N to
UDP 13001, the service dials out), the routing modes, and consumers that are slow or never read."""
from __future__ import annotations

import logging
import statistics
import time
from contextlib import contextmanager

import numpy as np
import pytest

from conftest import PHRASES, counter, expected_audio, judge, wait_for, write_wav
from kokoro_daemon.calls import Routing
from kokoro_daemon.segmenter import split_text
from peers import LlamaClient, LlamaPeer, PiperProcessor, free_port, reply_frames, send_datagram

pytestmark = pytest.mark.slow  # ./run-tests.sh --quick leaves these out

WAIT_S = 120.0  # generous: the engine shares two cores with everything else


def processor_port(service) -> tuple[int, int]:
    """(call id N, port P) with P free and P = processor_base_port + N."""
    port = free_port()
    call_id = port - service.config.routing.processor_base_port
    assert call_id > 0
    return call_id, port


@contextmanager
def piper_processor(service):
    call_id, _ = processor_port(service)
    with PiperProcessor(call_id, service_udp=service.udp_address,
                        base=service.config.routing.processor_base_port) as processor:
        yield call_id, processor


def wait_call(service, call_id) -> object:
    assert wait_for(lambda: service.registry.get(str(call_id)) is not None, 10)
    return service.registry.get(str(call_id))


def wait_replies(service, call_id, count: int = 1) -> None:
    assert wait_call(service, call_id).wait_replies_done(count, WAIT_S)


def end_call(service, call_id: int) -> None:
    send_datagram(service.udp_address, f"BYE:{call_id}")
    assert wait_for(lambda: service.registry.get(str(call_id)) is None, 10)


def assert_call_frames(frames, count: int | None = None, first_id: int = 1, rate: int = 24000) -> np.ndarray:
    count = len(frames) if count is None else count
    assert [f.chunk_id for f in frames] == list(range(first_id, first_id + count))
    assert all(f.rate == rate for f in frames)
    audio = np.concatenate([f.samples for f in frames])
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0.05
    return audio


# 1 -------------------------------------------------------------------------------------------
@pytest.mark.judge
def test_registered_call_audio_goes_to_its_processor_and_8k_is_as_intelligible(service, make_service, tmp_path):
    text = " ".join(PHRASES[:2])
    with piper_processor(service) as (call_id, processor), LlamaPeer(service.tcp_address) as llama:
        llama.reply(call_id, text)
        wait_replies(service, call_id)
        end_call(service, call_id)
        assert processor.wait_links(1, 10, ended=True)  # every frame written is read before the end of stream
        audio24 = assert_call_frames(processor.frames)
        assert processor.links[0].end == "end of stream" and processor.errors == []
        assert len(processor.links) == 1

    narrowband = make_service(routing=Routing(output_rate=8000))
    # The same sentences, the same (deterministic) engine: share the segments already spoken, so
    # the 8 kHz run costs no engine time; what it tests is the service's 8 kHz output path.
    narrowband.synthesizer.cache = service.synthesizer.cache
    frames8 = reply_frames(narrowband.tcp_address, "narrowband-1", text)
    audio8 = assert_call_frames(frames8, rate=8000)
    assert abs(audio8.size / 8000 - audio24.size / 24000) < 0.1 * audio24.size / 24000  # segments may be joined

    result = judge(tmp_path, [(write_wav(tmp_path / "24k.wav", audio24, 24000), text),
                              (write_wav(tmp_path / "8k.wav", audio8, 8000), text)])
    wer = {f["wav"].rsplit("/", 1)[-1]: f["wer"] for f in result["files"]}
    print(f"\nWER 24 kHz {wer['24k.wav']:.3f}, 8 kHz {wer['8k.wav']:.3f}")
    assert wer["24k.wav"] <= 0.1, result
    assert abs(wer["24k.wav"] - wer["8k.wav"]) <= 0.02, result


# 2 -------------------------------------------------------------------------------------------
def test_processor_that_registers_before_listening_still_gets_its_audio(service):
    call_id, _ = processor_port(service)
    send_datagram(service.udp_address, f"REGISTER:{call_id}")  # kept a few seconds for its HELLO
    with LlamaPeer(service.tcp_address) as llama:
        llama.reply(call_id, "Connecting you now.")
        call = wait_call(service, call_id)
        assert service.scheduler.wait_drained(call, WAIT_S)  # spoken and held: the connects are refused
        time.sleep(0.5)
        with PiperProcessor(call_id, service_udp=service.udp_address,
                            base=service.config.routing.processor_base_port) as processor:
            assert processor.wait_frames(1, 15), processor.errors
            assert_call_frames(processor.frames)
            assert processor.errors == [] and len(processor.links) == 1
            end_call(service, call_id)
            assert processor.wait_links(1, 10, ended=True)


# 3 -------------------------------------------------------------------------------------------
def test_processor_bye_mid_reply_stops_the_call_and_the_engine_moves_on(service):
    text = ("Let me read you the full list of options. The first option is our basic plan. "
            "The second option adds evening support. The third option includes weekend visits. "
            "The fourth option covers the whole family. The last option is the premium service.")
    assert len(split_text(text)) >= 6
    with piper_processor(service) as (call_id, processor), piper_processor(service) as (other_id, other), \
            LlamaPeer(service.tcp_address) as llama:
        llama.reply(call_id, text)
        assert processor.wait_frames(1, WAIT_S), processor.errors
        call = service.registry.get(str(call_id))
        cancelled = counter("kokoro_segments_cancelled_total")
        synthesized = counter("kokoro_segments_synthesized_total")
        send_datagram(service.udp_address, f"BYE:{call_id}")
        assert processor.wait_links(1, 10, ended=True) and processor.links[0].end == "end of stream"
        assert service.registry.get(str(call_id)) is None
        assert service.scheduler.wait_drained(call, WAIT_S)
        # at most the segment that was in the engine when BYE came
        assert counter("kokoro_segments_synthesized_total") - synthesized <= 1
        assert counter("kokoro_segments_cancelled_total") > cancelled
        heard_s = processor.audio_s
        assert 0 < heard_s < 12
        assert [f.chunk_id for f in processor.frames] == list(range(1, len(processor.frames) + 1))

        llama.reply(other_id, "The next caller is served.")
        assert other.wait_frames(1, WAIT_S)
        assert_call_frames(other.frames)
        end_call(service, other_id)
        assert llama.died is None
    assert other.errors == [] and processor.errors == []


# 4 -------------------------------------------------------------------------------------------
def test_unregistered_and_non_numeric_calls_get_audio_on_the_llama_connection(service, engine, g2p, caplog):
    caplog.set_level(logging.INFO, logger="kokoro_daemon")
    sent = counter("kokoro_frames_sent_total", destination="reply")
    expected = expected_audio(service, engine, g2p, "You are caller number one.")
    with LlamaClient(service.tcp_address, "4401") as numeric:  # numeric, its processor never shows up
        numeric.text("You are caller number one.")
        frames = [numeric.read_frame()]
        while sum(f.samples.size for f in frames) < expected.size:
            frames.append(numeric.read_frame())
    np.testing.assert_array_equal(assert_call_frames(frames), expected)
    send_datagram(service.udp_address, "REGISTER:agent-x")  # non-numeric: no processor port to use
    assert wait_for(lambda: "REGISTER:agent-x before its call" in caplog.text, 10)
    named = reply_frames(service.tcp_address, "agent-x", "Named calls work too.")
    np.testing.assert_array_equal(assert_call_frames(named), expected_audio(service, engine, g2p, "Named calls work too."))
    assert "call agent-x registered, but it has no processor port" in caplog.text
    send_datagram(service.udp_address, "REGISTER:99999")  # 9002 + 99999 is no TCP port
    big = reply_frames(service.tcp_address, "99999", "Big numbers work too.")
    np.testing.assert_array_equal(assert_call_frames(big), expected_audio(service, engine, g2p, "Big numbers work too."))
    assert counter("kokoro_frames_sent_total", destination="reply") - sent == len(frames) + len(named) + len(big)


# 5 -------------------------------------------------------------------------------------------
def test_processor_only_holds_audio_until_register_and_expires_what_never_registers(make_service, caplog):
    held = make_service(routing=Routing(mode="processor-only", link="dial-out", hold_seconds=1.0))
    text = "Good morning. Your table is ready."
    voice, speed = held.voice_setting.get()
    # stock phrases, cached: each reply is queued at once, one frame a segment, whatever the CPU load
    for segment in [*split_text(text), "Nobody will hear this."]:
        held.synthesizer.speak(segment, voice, speed)
    expired = counter("kokoro_frames_dropped_total", reason="expired")

    lost_id, _ = processor_port(held)
    with LlamaPeer(held.tcp_address) as llama:
        llama.reply(lost_id, "Nobody will hear this.")  # its processor never registers; the connection stays
        wait_replies(held, lost_id)  # its audio is done: the frame is held or already expired
        call_id, port = processor_port(held)
        llama.reply(call_id, text)
        call = wait_call(held, call_id)
        assert held.scheduler.wait_drained(call, WAIT_S)
        time.sleep(0.3)
        with PiperProcessor(call_id, service_udp=held.udp_address,
                            base=held.config.routing.processor_base_port) as processor:
            assert processor.wait_frames(1, 10)
            assert wait_for(lambda: processor.audio_s > 2.0, 10), "the reply was not delivered whole"
            assert_call_frames(processor.frames)
            assert processor.errors == []
            end_call(held, call_id)
        assert wait_for(lambda: counter("kokoro_frames_dropped_total", reason="expired") - expired >= 1, 5), \
            "held audio of an unregistered call never expired"
        assert counter("kokoro_frames_dropped_total", reason="expired") - expired == 1
    assert f"call {lost_id}: dropped 1 frame(s) of audio (expired)" in caplog.text


def test_processor_only_keeps_a_calls_audio_for_hold_seconds_after_its_llama_connection_goes(make_service):
    held = make_service(routing=Routing(mode="processor-only", link="dial-out", hold_seconds=30.0))
    call_id, _ = processor_port(held)
    with LlamaPeer(held.tcp_address) as llama:
        llama.reply(call_id, "Your table is ready.")
        call = wait_call(held, call_id)
        assert held.scheduler.wait_drained(call, WAIT_S)
    time.sleep(0.5)  # LLaMA restarted; the processor registers a moment later
    assert held.registry.get(str(call_id)) is call
    with PiperProcessor(call_id, service_udp=held.udp_address,
                        base=held.config.routing.processor_base_port) as processor:
        assert processor.wait_frames(1, 10) and processor.errors == []


# 6 -------------------------------------------------------------------------------------------
def test_a_second_llama_connection_for_a_call_takes_its_audio_and_the_first_stays_open(service):
    with piper_processor(service) as (call_id, processor):
        first = LlamaClient(service.tcp_address, str(call_id))  # never reads, keeps the connection
        try:
            first.text("Your order has shipped.")
            assert processor.wait_frames(1, WAIT_S)
            time.sleep(0.5)  # idle between replies, as the LLaMA client is
            with LlamaClient(service.tcp_address, str(call_id)) as second:
                second.text("It should arrive on Friday.")
                assert wait_call(service, call_id).wait_replies_done(2, WAIT_S)
                first.sock.settimeout(1.0)
                with pytest.raises(TimeoutError):  # never closed under LLaMA (SIGPIPE would kill it)
                    first.sock.recv(1)
                first.text("Anything else today?")  # both connections still speak for the call
                assert wait_call(service, call_id).wait_replies_done(3, WAIT_S)
            assert processor.wait_frames(3, 10)
            assert_call_frames(processor.frames)
        finally:
            first.close()
        assert processor.errors == [] and len(processor.links) == 1
        end_call(service, call_id)


# 7 -------------------------------------------------------------------------------------------
def test_a_stalled_reader_never_delays_another_call(make_service):
    """A caller that never reads (4 KiB receive buffer) still has uncached text waiting when another call starts.

    Until its socket buffers are full, its audio counts as playing in real time and it is served like any
    call; once they are, its unsent audio is its lead, and with max-lead seconds of it the scheduler parks
    it, so it costs the other call nothing, and its own writer is the only thread it blocks.
    """
    busy = make_service(cache_mb=0)

    def ttfa(call_id: str, text: str) -> float:
        with LlamaClient(busy.tcp_address, call_id) as client:
            client.text(text)
            frame = client.read_frame()
            assert frame.chunk_id == 1 and frame.samples.size > 0
            return frame.received_at - client.sent_at

    def socket_full(call) -> bool:
        """Its socket takes nothing more: what it was sent has played, and max-lead seconds wait unsent."""
        now = time.monotonic()
        return call._clock.lead_s(now) == 0 and call._frames.queued_s >= busy.config.routing.max_lead_s  # noqa: SLF001

    def quiet_engine() -> bool:
        before = counter("kokoro_segments_synthesized_total")
        time.sleep(1.0)
        return counter("kokoro_segments_synthesized_total") == before

    unloaded = [ttfa("ttfa-1", "Please hold while I check your file."),
                ttfa("ttfa-2", "Please wait while I find your order.")]
    with LlamaClient(busy.tcp_address, "stalled-A", rcvbuf=4096) as stalled:  # never reads
        stalled.text(" ".join(f"Item number {n} is on the list." for n in range(1, 60)))
        call = wait_call(busy, "stalled-A")
        assert wait_for(lambda: socket_full(call) and quiet_engine(), WAIT_S)
        waiting_before = busy.scheduler.pending_chars(call)
        synthesized = counter("kokoro_segments_synthesized_total")
        loaded = ttfa("ttfa-3", "Please pause while I read your notes.")
        made_before_its_audio = counter("kokoro_segments_synthesized_total") - synthesized
    assert waiting_before > 0, "the stalled call's text was all spoken"
    base = statistics.median(unloaded)
    print(f"\nTTFA unloaded {', '.join(f'{t:.3f}' for t in unloaded)} s (median {base:.3f}); "
          f"beside a stalled reader with {waiting_before} characters waiting {loaded:.3f} s ({loaded / base:.2f}x)")
    # it cost the other call nothing: the engine's next unit of work was the new call's (how long that took
    # depends on the CPU, so the times are only printed)
    assert made_before_its_audio == 1

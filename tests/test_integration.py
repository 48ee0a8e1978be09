"""End to end against the real peers' behaviour: the LLaMA client that never reads, the outbound
audio processor (REGISTER/BYE over UDP, HELLO then frames over TCP), slow and idle consumers."""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager

import numpy as np
import pytest
from prometheus_client import REGISTRY

from conftest import PHRASES, judge, write_wav
from kokoro_daemon.calls import Routing
from kokoro_daemon.segmenter import split_text
from peers import LlamaClient, ProcessorPeer, free_port, reply_frames, send_datagram

WAIT_S = 90.0  # generous: the engine shares two cores with everything else


def counter(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels or None) or 0.0


def wait_for(predicate, timeout: float = WAIT_S, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def rss_kib() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def processor_port(service) -> tuple[int, int]:
    """(call id N, port P) with P free and P = processor_base_port + N."""
    port = free_port()
    call_id = port - service.config.routing.processor_base_port
    assert call_id > 0
    return call_id, port


@contextmanager
def processor(service):
    call_id, port = processor_port(service)
    peer = ProcessorPeer(call_id, port)
    try:
        yield call_id, peer
    finally:
        peer.close()


def register(service, call_id: int) -> None:
    send_datagram(service.udp_address, f"REGISTER:{call_id}")

    def registered():
        call = service.registry.get(str(call_id))
        return call is not None and call.processor is not None and call.processor.registered.is_set()
    assert wait_for(registered, 10), f"REGISTER:{call_id} not applied"


def end_call(service, call_id: int) -> None:
    send_datagram(service.udp_address, f"BYE:{call_id}")
    assert wait_for(lambda: service.registry.get(str(call_id)) is None, 10)


def segments_done() -> float:
    """Segments the scheduler has finished with (spoken, from the cache, or failed), across services."""
    return sum(counter(f"kokoro_{name}_total") for name in ("segments_synthesized", "cache_hits", "segments_failed"))


def wait_spoken(service, call_id, before: float, count: int) -> None:
    """Wait until ``count`` segments are done since ``before`` and call_id's audio is queued for its destination."""
    assert wait_for(lambda: segments_done() - before >= count), f"{segments_done() - before} of {count} segments"
    call = service.registry.get(str(call_id))
    assert call is not None and service.scheduler.wait_drained(call, WAIT_S)


def wait_frames(peer: ProcessorPeer, count: int, timeout: float = WAIT_S) -> list:
    assert wait_for(lambda: len(peer.frames) >= count, timeout), \
        f"{len(peer.frames)} of {count} frames arrived; errors {peer.errors}"
    return peer.frames


def assert_call_frames(frames, count: int, first_id: int = 1, rate: int = 24000) -> np.ndarray:
    assert [f.chunk_id for f in frames] == list(range(first_id, first_id + count))
    assert all(f.rate == rate for f in frames)
    audio = np.concatenate([f.samples for f in frames])
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0.05
    return audio


# 1 -------------------------------------------------------------------------------------------
@pytest.mark.judge
def test_registered_call_audio_goes_to_its_processor_and_8k_is_as_intelligible(service, make_service, tmp_path):
    text = " ".join(PHRASES[:2])
    count = len(split_text(text))
    with processor(service) as (call_id, peer):
        register(service, call_id)
        with LlamaClient(service.tcp_address, str(call_id)) as llama:  # never reads
            llama.text(text)
            frames = wait_frames(peer, count)
            audio24 = assert_call_frames(frames, count)
            time.sleep(0.2)
            assert len(peer.frames) == count and peer.errors == [] and peer.connections == 1
        end_call(service, call_id)
        assert peer.ended.wait(10) and peer.frames_after_end == 0

    narrowband = make_service(routing=Routing(output_rate=8000))
    # The same sentences, the same (deterministic) engine: share the segments already spoken, so
    # the 8 kHz run costs no engine time; what it tests is the service's 8 kHz output path.
    narrowband.synthesizer.cache = service.synthesizer.cache
    frames8 = reply_frames(narrowband.tcp_address, "narrowband-1", text)
    audio8 = assert_call_frames(frames8, count, rate=8000)
    assert abs(audio8.size / 8000 - audio24.size / 24000) < 0.01 * len(frames8)

    result = judge(tmp_path, [(write_wav(tmp_path / "24k.wav", audio24, 24000), text),
                              (write_wav(tmp_path / "8k.wav", audio8, 8000), text)])
    wer = {f["wav"].rsplit("/", 1)[-1]: f["wer"] for f in result["files"]}
    print(f"\nWER 24 kHz {wer['24k.wav']:.3f}, 8 kHz {wer['8k.wav']:.3f}")
    assert wer["24k.wav"] <= 0.1, result
    assert abs(wer["24k.wav"] - wer["8k.wav"]) <= 0.02, result


# 2 -------------------------------------------------------------------------------------------
def test_processor_that_registers_before_listening_still_gets_its_audio(service):
    call_id, port = processor_port(service)
    register(service, call_id)
    with LlamaClient(service.tcp_address, str(call_id)) as llama:
        before = segments_done()
        llama.text("Connecting you now.")
        wait_spoken(service, call_id, before, 1)  # queued; the writer's connects are being refused
        time.sleep(0.5)
        peer = ProcessorPeer(call_id, port)
        try:
            assert_call_frames(wait_frames(peer, 1, 15), 1)
            assert peer.errors == [] and peer.connections == 1
            end_call(service, call_id)
            assert peer.ended.wait(10)
        finally:
            peer.close()


# 3 -------------------------------------------------------------------------------------------
def test_processor_bye_mid_reply_stops_the_call_and_the_engine_moves_on(service):
    text = ("Let me read you the full list of options. The first option is our basic plan. "
            "The second option adds evening support. The third option includes weekend visits. "
            "The fourth option covers the whole family. The last option is the premium service.")
    count = len(split_text(text))
    assert count >= 6
    with processor(service) as (call_id, peer), processor(service) as (other_id, other):
        register(service, call_id)
        with LlamaClient(service.tcp_address, str(call_id)) as llama:
            llama.text(text)
            assert peer.first_frame.wait(WAIT_S), peer.errors
            call = service.registry.get(str(call_id))
            cancelled = counter("kokoro_segments_cancelled_total")
            synthesized = counter("kokoro_segments_synthesized_total")
            send_datagram(service.udp_address, f"BYE:{call_id}")
            assert peer.ended.wait(10), "no zero header after BYE"
            assert service.registry.get(str(call_id)) is None
            assert service.scheduler.wait_drained(call, WAIT_S)
            # at most the segment that was in the engine when BYE came
            assert counter("kokoro_segments_synthesized_total") - synthesized <= 1
            assert counter("kokoro_segments_cancelled_total") > cancelled
            time.sleep(0.3)
            assert peer.frames_after_end == 0
            assert 1 <= len(peer.frames) < count
            assert [f.chunk_id for f in peer.frames] == list(range(1, len(peer.frames) + 1))

            register(service, other_id)
            with LlamaClient(service.tcp_address, str(other_id)) as second:
                second.text("The next caller is served.")
                assert_call_frames(wait_frames(other, 1), 1)
            end_call(service, other_id)
    assert other.errors == [] and peer.errors == []


# 4 -------------------------------------------------------------------------------------------
def test_unregistered_and_non_numeric_calls_get_audio_on_the_llama_connection(service):
    sent = counter("kokoro_frames_sent_total", destination="reply")
    with LlamaClient(service.tcp_address, "4401") as numeric:  # numeric, never registered
        numeric.text("You are caller number one.")
        frame = numeric.read_frame()
        assert (frame.chunk_id, frame.rate) == (1, 24000) and frame.samples.size > 12000
    send_datagram(service.udp_address, "REGISTER:agent-x")  # non-numeric: no processor port to use
    assert wait_for(lambda: service.registry.get("agent-x") is not None, 10)
    assert_call_frames(reply_frames(service.tcp_address, "agent-x", "Named calls work too."), 1)
    send_datagram(service.udp_address, "REGISTER:99999")  # 9002 + 99999 is no TCP port
    assert wait_for(lambda: service.registry.get("99999") is not None, 10)
    assert_call_frames(reply_frames(service.tcp_address, "99999", "Big numbers work too."), 1)
    assert counter("kokoro_frames_sent_total", destination="reply") - sent == 3


# 5 -------------------------------------------------------------------------------------------
def test_processor_only_holds_audio_until_register_and_expires_what_never_registers(make_service, caplog):
    held = make_service(routing=Routing(mode="processor-only", hold_seconds=1.0))
    text = "Good morning. Your table is ready."
    segments = split_text(text)
    for segment in segments:  # stock phrases, cached: all of the reply is queued at once, whatever the CPU load
        held.synthesizer.speak(segment, *held.voice_setting.get())
    expired = counter("kokoro_frames_dropped_total", reason="expired")
    never = counter("kokoro_frames_dropped_total", reason="never_registered")

    def dropped():
        return (counter("kokoro_frames_dropped_total", reason="expired") - expired
                + counter("kokoro_frames_dropped_total", reason="never_registered") - never)

    lost_id, _ = processor_port(held)
    with LlamaClient(held.tcp_address, str(lost_id)) as lost, processor(held) as (call_id, peer):
        before = segments_done()
        lost.text("Nobody will hear this.")  # its processor never registers; the connection stays open
        wait_spoken(held, lost_id, before, 1)
        with LlamaClient(held.tcp_address, str(call_id)) as llama:
            llama.text(text)
            wait_spoken(held, call_id, before + 1, len(segments))
            assert peer.connections == 0 and peer.frames == []  # held, not sent anywhere
            register(held, call_id)
            assert_call_frames(wait_frames(peer, len(segments), 10), len(segments))
            assert peer.errors == []
            end_call(held, call_id)
            assert peer.ended.wait(10)
        assert wait_for(lambda: dropped() >= 1, 5), "held audio of an unregistered call never expired"
        assert dropped() == 1
    assert f"processor-{lost_id}@" in caplog.text


# 6 -------------------------------------------------------------------------------------------
def test_long_lived_llama_connection_and_a_superseding_one(service):
    with processor(service) as (call_id, peer):
        register(service, call_id)
        first = LlamaClient(service.tcp_address, str(call_id))  # never reads, keeps the connection
        try:
            first.text("Your order has shipped.")
            wait_frames(peer, 1)
            time.sleep(0.5)  # idle between replies, as the LLaMA client is
            first.text("It should arrive on Friday.")
            wait_frames(peer, 2)
            with LlamaClient(service.tcp_address, str(call_id)) as second:
                assert first.is_closed_by_peer(10), "superseded connection left open"
                second.text("Anything else today?")
                assert_call_frames(wait_frames(peer, 3), 3)
        finally:
            first.close()
        assert peer.errors == [] and peer.connections == 1
        end_call(service, call_id)
        assert peer.ended.wait(10)


# 7 -------------------------------------------------------------------------------------------
def test_stalled_reader_never_delays_another_call(service, caplog):
    def ttfa(call_id: str, text: str) -> float:
        with LlamaClient(service.tcp_address, call_id) as client:
            client.text(text)
            frame = client.read_frame()
            assert frame.chunk_id == 1 and frame.samples.size > 0
            return frame.received_at - client.sent_at

    # same word count, none cached
    unloaded = [ttfa("ttfa-1", "Please hold while I check your file."),
                ttfa("ttfa-2", "Please wait while I find your order.")]
    overflow = counter("kokoro_frames_dropped_total", reason="overflow")
    with LlamaClient(service.tcp_address, "stalled-A", rcvbuf=4096) as stalled:  # never reads
        before = segments_done()
        stalled.text(" ".join(["Hello there."] * 150))
        wait_spoken(service, "stalled-A", before, 150)
        assert counter("kokoro_frames_dropped_total", reason="overflow") > overflow
        assert "consumer is not keeping up" in caplog.text
        loaded = ttfa("ttfa-3", "Please pause while I read your notes.")
    base = statistics.median(unloaded)
    print(f"\nTTFA unloaded {', '.join(f'{t:.3f}' for t in unloaded)} s (median {base:.3f}); "
          f"with a stalled reader {loaded:.3f} s ({loaded / base:.2f}x); "
          f"overflow drops {counter('kokoro_frames_dropped_total', reason='overflow') - overflow:.0f}")
    assert loaded <= 1.5 * base


# 8 -------------------------------------------------------------------------------------------
def test_300_idle_llama_connections(service):
    gauge = "kokoro_llama_connections"
    connections_before = counter(gauge)
    rss_before = rss_kib()
    idle = []
    try:
        for n in range(300):
            idle.append(LlamaClient(service.tcp_address, f"idle-{n}"))
        assert wait_for(lambda: all(service.registry.get(f"idle-{n}") for n in range(300)), 30)
        assert counter(gauge) - connections_before == 300
        rss_open = rss_kib()
        started = time.monotonic()
        text = "All lines are open."
        audio = assert_call_frames(reply_frames(service.tcp_address, "busy-1", text), len(split_text(text)))
        served = time.monotonic() - started
        print(f"\nRSS {rss_before / 1024:.1f} MiB before, {rss_open / 1024:.1f} MiB with 300 idle connections "
              f"(+{(rss_open - rss_before) / 1024:.1f} MiB); a call beside them served in {served:.2f} s "
              f"({audio.size / 24000:.2f} s of audio)")
    finally:
        for client in idle:
            client.close()
    assert wait_for(lambda: counter(gauge) == connections_before, 30)
    assert not any(service.registry.get(f"idle-{n}") for n in range(300))

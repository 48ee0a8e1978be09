"""The daemon end to end: real server, real sockets, the real embedded model and voice packs."""
from __future__ import annotations

import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import ROOT, expected_audio
from kokoro_daemon import metrics
from peers import BYE, LlamaClient, checked_audio, reply_frames, send_datagram

SEED_VOICES = ["af_sky", "af_bella", "af_sarah", "am_adam", "am_michael", "bf_emma", "bf_isabella", "bm_george",
               "bm_lewis"]


def counter(name: str, **labels) -> float:
    return metrics.FRAMES_SENT._registry.get_sample_value(name, labels or None) or 0.0  # noqa: SLF001


def test_smoke_script_against_the_service(service):
    host, port = service.tcp_address
    proc = subprocess.run([sys.executable, str(ROOT / "test_kokoro_service.py"), "--host", host, "--port", str(port)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for line in ("Connected", "Sent HELLO", "Sent text", "bytes of audio data", "Test completed successfully"):
        assert line in proc.stdout


def test_smoke_script_fails_without_a_service():
    from peers import free_port
    proc = subprocess.run([sys.executable, str(ROOT / "test_kokoro_service.py"), "--port", str(free_port())],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "Test failed" in proc.stderr


def test_bye_after_text_delivers_its_audio_then_bye(service, engine, g2p):
    frames = reply_frames(service.tcp_address, "4101", "Thank you for calling. How can I help you today?")
    audio = checked_audio(frames)
    # both sentences, each whole, and nothing else
    np.testing.assert_array_equal(audio, expected_audio(service, engine, g2p, "Thank you for calling.",
                                                        "How can I help you today?"))
    assert 1.5 < audio.size / 24000 < 8


@pytest.mark.slow
def test_every_seed_voice_speaks(service):
    before = {}
    for voice in SEED_VOICES:
        service.set_voice(voice)
        frames = reply_frames(service.tcp_address, f"v-{voice}", "Hello there.")
        before[voice] = checked_audio(frames)
    service.set_voice("af_sky")
    assert len({a.tobytes() for a in before.values()}) == len(SEED_VOICES)


def test_header_split_across_segments(service):
    hello = struct.pack(">I", 4) + b"4102"
    text = "Split headers work."
    message = struct.pack(">I", len(text)) + text.encode()
    with LlamaClient(service.tcp_address) as client:
        for part in (hello + message)[:6], (hello + message)[6:9], (hello + message)[9:]:
            for byte in part:
                client.send_raw(bytes([byte]))
                time.sleep(0.002)
        client.send_raw(BYE[:1])
        time.sleep(0.05)
        client.send_raw(BYE[1:])
        checked_audio(client.read_until_bye())


def two_calls_at_once(service) -> None:
    """Two callers' replies spoken at the same time, each heard whole and in order on its own connection."""
    results = {}

    def run(call_id, text):
        results[call_id] = reply_frames(service.tcp_address, call_id, text)

    threads = [threading.Thread(target=run, args=(cid, text)) for cid, text in
               (("4103", "The first caller hears this. Then a second sentence."),
                ("4104", "The second caller hears something else entirely."))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    a, b = checked_audio(results["4103"]), checked_audio(results["4104"])
    assert a.size != b.size


@pytest.mark.slow
def test_two_calls_at_once(service):
    two_calls_at_once(service)


def test_piper_load_test_style_call(service):
    """Non-numeric call_id, one text, then the text 'BYE' as a normal chunk; one reply header read."""
    with LlamaClient(service.tcp_address, "load_test_001") as client:
        client.text("This is a load test message.")
        client.text("BYE")
        frame = client.read_frame()
        assert frame.chunk_id == 1 and frame.rate == 24000 and frame.samples.size > 0


@pytest.mark.slow
def test_long_lived_connection_keeps_working(service):
    with LlamaClient(service.tcp_address, "4105") as client:
        client.text("First reply.")
        first = client.read_frame()
        time.sleep(1.5)  # idle, as the LLaMA client is between replies
        client.text("Second reply, a while later.")
        second = client.read_frame()
        assert (first.chunk_id, second.chunk_id) == (1, 2)


def _assert_served_after(service):
    frames = reply_frames(service.tcp_address, "4199", "Still here.")
    checked_audio(frames)


@pytest.mark.parametrize("raw, log_text", [
    (struct.pack(">I", 0), "HELLO call_id length 0"),
    (struct.pack(">I", 2000) + b"x" * 2000, "HELLO call_id length 2000"),
    (struct.pack(">I", 3) + b"\xff\xfe\xfd", "not valid UTF-8"),
    (BYE, "BYE received before HELLO"),
])
def test_bad_hello_is_refused(service, caplog, raw, log_text):
    with LlamaClient(service.tcp_address) as client:
        client.send_raw(raw)
        assert client.is_closed_by_peer()
    assert log_text in caplog.text
    _assert_served_after(service)


@pytest.mark.slow
def test_oversized_text_is_skipped_and_the_connection_goes_on(service, engine, g2p, caplog):
    """LLaMA may write to its connection again at any time: closing it would kill LLaMA (SIGPIPE)."""
    with LlamaClient(service.tcp_address, "4106") as bad, LlamaClient(service.tcp_address, "4107") as good:
        size = 10 * 1024 * 1024 + 1
        bad.send_raw(struct.pack(">I", size) + b"x" * size)
        good.text("The other caller is unaffected.")
        good.bye()
        checked_audio(good.read_until_bye())
        bad.text("This one is spoken.")
        bad.bye()
        frames = bad.read_until_bye()
    np.testing.assert_array_equal(checked_audio(frames), expected_audio(service, engine, g2p, "This one is spoken."))
    assert "exceeds the 10485760-byte limit; chunk skipped" in caplog.text


@pytest.mark.slow
def test_text_bye_ends_the_call_like_the_marker(service, engine, g2p):
    """The Piper service read a chunk that is exactly 'BYE' as BYE; so does this one."""
    with LlamaClient(service.tcp_address, "piper-bye") as client:
        client.text("Goodbye for now.")
        client.text("BYE")
        frames = client.read_until_bye()
        assert client.is_closed_by_peer()
    np.testing.assert_array_equal(checked_audio(frames), expected_audio(service, engine, g2p, "Goodbye for now."))


@pytest.mark.slow
def test_a_peer_that_sends_no_hello_is_closed(make_service, caplog):
    quick = make_service(hello_timeout_s=0.5)
    with LlamaClient(quick.tcp_address) as silent:
        assert silent.is_closed_by_peer(5)
    assert "no HELLO within 0.5 s" in caplog.text
    checked_audio(reply_frames(quick.tcp_address, "after-silence", "Still here."))


@pytest.mark.slow
def test_invalid_utf8_text_costs_only_that_chunk(service, engine, g2p, caplog):
    with LlamaClient(service.tcp_address, "4108") as client:
        client.send_raw(struct.pack(">I", 4) + b"ok\xc3\x28")
        client.text("This sentence still arrives.")
        client.bye()
        frames = client.read_until_bye()
    np.testing.assert_array_equal(checked_audio(frames),
                                  expected_audio(service, engine, g2p, "This sentence still arrives."))
    assert "not valid UTF-8" in caplog.text


def test_peer_disconnect_mid_frame(service, caplog):
    with LlamaClient(service.tcp_address, "4109") as client:
        client.send_raw(struct.pack(">I", 100) + b"only part of it")
    deadline = time.monotonic() + 10
    while "peer closed inside a 100-byte text" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "peer closed inside a 100-byte text" in caplog.text
    _assert_served_after(service)


@pytest.mark.parametrize("datagram", [b"HELLO", b"REGISTER:", b"\xff\xfe", b"BYE", b"REGISTER 5", b"x" * 2000])
def test_garbage_datagrams_are_ignored(service, caplog, datagram):
    send_datagram(service.udp_address, datagram)
    deadline = time.monotonic() + 5
    while "ignored datagram" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "ignored datagram" in caplog.text
    _assert_served_after(service)


@pytest.mark.slow
def test_text_streamed_in_pieces_is_joined_into_sentences(service, engine, g2p):
    """LLaMA may send a reply in pieces cut anywhere; the caller still hears whole sentences."""
    with LlamaClient(service.tcp_address, "4110") as client:
        for piece in ("Thank you for cal", "ling. How can", " I help", " you today?"):
            client.text(piece)
            time.sleep(0.05)
        client.bye()
        frames = client.read_until_bye()
    audio = checked_audio(frames)
    np.testing.assert_array_equal(audio, expected_audio(service, engine, g2p, "Thank you for calling.",
                                                        "How can I help you today?"))
    assert audio.size / 24000 > 2.0


@pytest.mark.slow
def test_trailing_text_without_punctuation_is_spoken_after_a_pause(service, engine, g2p):
    """The real LLaMA never sends BYE: a reply without final punctuation must not wait forever."""
    expected = expected_audio(service, engine, g2p, "Sure, one moment please")
    with LlamaClient(service.tcp_address, "4111") as client:
        client.text("Sure, one moment please")
        frames = [client.read_frame()]
        while sum(f.samples.size for f in frames) < expected.size:
            frames.append(client.read_frame())
    np.testing.assert_array_equal(checked_audio(frames), expected)


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=48), st.booleans())
def test_random_bytes_never_take_the_service_down(service, data, after_hello):
    with LlamaClient(service.tcp_address, "4112" if after_hello else None, timeout=10) as client:
        client.send_raw(data)
    checked_audio(reply_frames(service.tcp_address, "4113", "Still fine."))


@pytest.mark.slow
def test_two_engine_workers_speak_two_calls_at_once(make_service):
    """The default on CPU: a second ONNX session beside the first, each call's frames still in order."""
    doubled = make_service(engine_workers=2, cache_mb=0)
    assert doubled.synthesizer.workers == 2
    two_calls_at_once(doubled)

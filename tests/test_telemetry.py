"""Recent first-audio times and engine load, and the registry's view of live calls."""
from __future__ import annotations

import pytest

from kokoro_daemon.telemetry import KEEP_S, Telemetry
from conftest import wait_for
from peers import LlamaClient


def test_history_puts_events_in_their_buckets():
    now = [1000.0]
    telemetry = Telemetry(clock=lambda: now[0])
    telemetry.record_first_audio("1", 0.4)
    telemetry.record_first_audio("2", 0.6)
    telemetry.record_engine_busy(2.5)
    now[0] = 1007.0
    telemetry.record_first_audio("1", 1.0)
    telemetry.record_engine_busy(5.0)
    history = telemetry.history(window_s=20, bucket_s=5)   # buckets from 987: [987, 992, 997, 1002)
    assert history["t"] == [987.0, 992.0, 997.0, 1002.0]
    assert history["first_audio_p50"] == [None, None, 0.5, 1.0]
    assert history["first_audio_max"] == [None, None, 0.6, 1.0]
    assert history["engine_load"] == [0.0, 0.0, 0.5, 1.0]


def test_events_older_than_the_keep_window_are_forgotten():
    now = [0.0]
    telemetry = Telemetry(clock=lambda: now[0])
    telemetry.record_first_audio("1", 9.0)
    now[0] = KEEP_S + 1
    telemetry.record_first_audio("1", 0.5)
    assert [v for v in telemetry.history(window_s=10 * KEEP_S)["first_audio_max"] if v is not None] == [0.5]


@pytest.mark.slow
def test_a_live_call_shows_its_link_state_and_first_audio(service):
    with LlamaClient(service.tcp_address, "6101") as call:
        call.text("One moment please. I am looking that up.")
        call.read_frame()  # its first audio is recorded just after the frame is written

        def current():
            return next(s for s in service.registry.snapshot() if s.call_id == "6101")
        assert wait_for(lambda: current().last_first_audio_s is not None, 10)
        status = current()
        assert (status.link, status.replies) == ("reply", 1)
        assert 0 < status.last_first_audio_s < 60 and status.state in ("speaking", "idle")
        call.bye()
        call.read_until_bye()
    assert all(s.call_id != "6101" for s in service.registry.snapshot())
    assert any(v is not None for v in service.telemetry.history()["first_audio_max"])


@pytest.mark.slow
def test_each_reply_on_a_kept_connection_is_timed(service):
    """The LLaMA client keeps its connection and sends each reply whole, never BYE."""
    with LlamaClient(service.tcp_address, "6102") as call:
        for n, text in enumerate(("Good morning.", "Of course.", "Goodbye now.")):
            call.text(text)
            call.read_frame()
            status = next(s for s in service.registry.snapshot() if s.call_id == "6102")
            assert status.replies == n + 1

"""The conversation benchmark's bookkeeping, against a service stand-in over real sockets (no model)."""
from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from conversation import (ReplyLog, TurnPlan, calls_sustained, converse, plan_calls,  # noqa: E402
                          shortfalls, summarize)
from peers import DialInProcessor, LlamaPeer  # noqa: E402
from tts_standin import StandInService, free_udp_port  # noqa: E402

CALL = 7


@pytest.fixture
def conversation():
    """converse(script, plan, logged_frames=None) through a stand-in service; returns (Conversation, processor)."""
    started = []

    def run(script, plan, logged_frames=None, timeout_s=5.0):
        tts_base, announce_base = free_tcp_port() - CALL, free_udp_port() - CALL
        replies = ReplyLog()
        service = StandInService(tts_base, announce_base, script, replies.feed, logged_frames)
        llama = LlamaPeer(service.address)
        processor = DialInProcessor(CALL, tts_base, announce_base)
        started.append((service, llama, processor))
        return converse(llama, processor, replies, plan, timeout_s), processor

    yield run
    for service, llama, processor in started:
        processor.kill()
        llama.close()
        service.close()


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_reply_log_gives_each_call_its_replies_in_order():
    log = ReplyLog()
    log.feed("2025-01-01 12:00:00 INFO kokoro_daemon.server: call 12: reply 1 done: 3 frames, 4.250 s audio, "
             "first audio 0.412 s")
    log.feed("INFO call 12: reply 1 queued")
    log.feed("INFO call 5: reply 1 done: 1 frames, 0.800 s audio, first audio n/a s")
    log.feed("INFO call 12: reply 2 done: 2 frames, 1.500 s audio, first audio 0.300 s")
    first, second = log.wait("12", 1, 0.1), log.wait("12", 2, 0.1)
    assert (first.reply, first.frames, first.audio_s, first.first_audio_s) == (1, 3, 4.25, 0.412)
    assert (second.reply, second.frames) == (2, 2)
    assert log.wait("5", 1, 0.1).first_audio_s is None
    assert log.wait("12", 3, 0.05) is None and log.wait("1", 1, 0.05) is None


def test_turns_measure_first_audio_played_and_the_silence_inside_each_reply(conversation):
    script = lambda reply: [(0.3, 0.0), (0.3, 0.5)]      # the second frame comes 0.2 s after the first ran out
    result, processor = conversation(script, [TurnPlan(0.05, "One."), TurnPlan(0.05, "Two.")])
    assert result.error is None and [t.error for t in result.turns] == [None, None]
    for turn in result.turns:
        assert turn.frames == 2 and turn.audio_s == pytest.approx(0.6) and turn.erased_s == 0
        assert 0 < turn.first_audio_s < 0.2 and turn.service_first_audio_s == 0.05
        [gap] = turn.gaps_s
        assert 0.18 < gap < 0.35 and turn.playout_s == pytest.approx(0.6 + gap)
    second = result.turns[1]
    assert second.sent_at >= processor.played[1].end + 0.05      # sent after the first reply had played, and talk
    level = summarize([result], [processor], 2, wall_s=2.0, cpu_s=0.0, engine_busy_s=None)
    assert (level["turns"], level["gaps_over_100ms"], level["error_count"]) == (2, 2, 0)
    assert level["gap_total_s"] == pytest.approx(sum(result.turns[0].gaps_s + second.gaps_s))
    assert level["audio_s"] == pytest.approx(1.2) and level["agent_audio_s"] == pytest.approx(1.2)
    assert level["first_audio_max_s"] == max(t.first_audio_s for t in result.turns)
    assert shortfalls(level, single_call_s=1.0) == [
        f"silence inside replies {level['gap_total_s']:.2f} s > 1% of the audio"]


def test_a_reply_whose_frames_do_not_all_arrive_ends_the_conversation(conversation):
    result, _ = conversation(lambda reply: [(0.2, 0.0)], [TurnPlan(0.05, "One."), TurnPlan(0.05, "Two.")],
                             logged_frames=lambda reply, sent: sent + 1, timeout_s=0.3)
    [turn] = result.turns
    assert turn.error == "1 of its 2 frames reached the processor"


def test_frames_beyond_what_the_service_logged_are_caught_before_the_next_turn(conversation):
    result, _ = conversation(lambda reply: [(0.1, 0.0), (0.1, 0.0)], [TurnPlan(0.05, "One."), TurnPlan(0.05, "Two.")],
                             logged_frames=lambda reply, sent: 1)
    assert len(result.turns) == 1 and result.error == "1 frame(s) beyond the 1 the service logged for its replies"


def test_calls_sustained_is_the_last_level_before_the_first_shortfall():
    levels = {1: {"shortfalls": []}, 2: {"shortfalls": []}, 3: {"shortfalls": ["late"]}, 4: {"shortfalls": []}}
    assert calls_sustained(levels) == 2
    assert calls_sustained({1: {"shortfalls": ["late"]}}) == 0


def test_every_scheduler_gets_the_same_conversations_for_a_number_of_calls():
    plans = plan_calls(1, 3, 4)
    assert plans == plan_calls(1, 3, 4) and plans != plan_calls(2, 3, 4)
    assert all(2.0 <= step.talk_s <= 5.0 for plan in plans for step in plan)

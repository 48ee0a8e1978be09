"""The soak benchmark's bookkeeping: call ids, log lines by call, and the reconciliation of replies (no model)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from conversation import TurnPlan  # noqa: E402
from soak import (CALLERS, COUNTED, CUT, HEARD, JUNK, LOST, STALLED, CallBook, CallPlan, Drops,  # noqa: E402
                  ReplyCheck, Sample, drop_table, growth, per_minute, reconcile, rss_slope_mb_per_h)

PLAIN = CallPlan([TurnPlan(2.0, "One.")])
CUT_PLAN = CallPlan([TurnPlan(2.0, "One."), TurnPlan(2.0, "Two.")], cut_after_s=0.5)


def line(logger: str, level: str, message: str) -> str:
    """A log line as the service writes it."""
    return f"2025-01-01 12:00:00,000 {level} kokoro_daemon.{logger}: {message}"


def ended(call_id: str, segments: int = 0) -> str:
    return line("calls", "INFO", f"call {call_id}: ended (processor link closed)"
                + (f"; {segments} queued segment(s) dropped" if segments else ""))


def test_an_id_is_handed_out_again_only_once_the_service_has_ended_its_last_call():
    book = CallBook(3)
    first, second, third = (book.take(PLAIN, 0.1) for _ in range(3))
    assert [r.call_id for r in (first, second, third)] == ["1", "2", "3"]
    assert book.take(PLAIN, 0.05) is None                  # all in use
    book.give_back(second)
    book.give_back(first)
    assert book.take(PLAIN, 0.05) is None                  # given back, but the service has not ended them
    book.feed(ended("1"))
    book.feed(ended("2"))
    again = book.take(PLAIN, 0.1)
    assert again.call_id == "2" and again.seq == 4         # the one free longest
    book.feed(line("calls", "INFO", "call 2: reply 1 done: 3 frames, 2.500 s audio, first audio 0.300 s"))
    assert again.replies.wait("2", 1, 0).frames == 3 and second.replies.wait("2", 1, 0) is None
    book.end_unsent(third, "no reply sent")
    book.give_back(third)
    assert book.take(PLAIN, 0.1).call_id == "1"


def test_log_lines_are_read_by_call_and_what_others_caused_is_kept_apart():
    book = CallBook(2)
    call = book.take(PLAIN, 0.1)
    for text in (
            line("calls", "WARNING", "call 1: dropped 4 frame(s) of audio (call_ended)"),
            line("server", "WARNING", "call 1: 120 character(s) of text not spoken (call ended)"),
            line("scheduler", "ERROR", "1: could not speak segment Hello there."),
            line("transports", "ERROR", "call 1 processor (dial-in 127.0.0.1:4000): the processor read nothing for "
                                        "5 s; dropping the link"),
            line("calls", "INFO", "call 1: ended (call 1 processor (dial-in 127.0.0.1:4000) failed); 3 queued "
                                  "segment(s) dropped"),
            line("calls", "INFO", "call 10: ended (processor link closed); 9 queued segment(s) dropped"),
            line("calls", "WARNING", "call stalled-2: dropped 7 frame(s) of audio (overflow)"),
            line("server", "ERROR", "call junk-5: text chunk of 70000 characters refused: 10 characters are already "
                                    "waiting to be spoken (limit 65536)"),
            line("scheduler", "WARNING", "junk-5: segment '...' has nothing speakable; skipped"),
            line("server", "INFO", "BYE for unknown call 123456 ignored")):
        book.feed(text)
    assert call.end_reason == "call 1 processor (dial-in 127.0.0.1:4000) failed" and call.ended_at is not None
    assert call.drops.as_counters() == {
        "kokoro_frames_dropped_total{reason=call_ended}": 4, "kokoro_text_dropped_total{reason=call_ended}": 120,
        "kokoro_segments_cancelled_total": 3, "kokoro_segments_failed_total": 1}
    assert len(call.notes) == 4                                 # its warnings and errors, not the 'ended' line
    assert book.others[STALLED].frames == {"overflow": 7}
    assert book.others[JUNK].as_counters() == {"kokoro_text_dropped_total{reason=queue_full}": 70000,
                                               "kokoro_segments_silent_total": 1}
    assert book.others["other"].as_counters() == {"kokoro_segments_cancelled_total": 9}   # call 10 is not call 1


def check(reply: int, frames: int = 3, logged: int | None = 3, audio_s: float = 3.0, cut: bool = False,
          played_s: float | None = None, text: str = "One.", error: str | None = None, call_seq: int = 1) -> ReplyCheck:
    return ReplyCheck("1", call_seq, reply, text, cut, 0.0, logged, None if logged is None else audio_s, frames,
                      audio_s, audio_s if played_s is None else played_s, 0.0, 0.4, error)


def test_every_reply_is_heard_whole_cut_counted_or_lost_and_they_add_up():
    book = CallBook(3)
    clean, dropped, cut_call = book.take(PLAIN, 0.1), book.take(PLAIN, 0.1), book.take(CUT_PLAN, 0.1)
    clean.checks = [check(1), check(2, audio_s=2.9),
                    check(3, audio_s=2.0),                          # a third short of what this reply has: a piece lost
                    check(4, frames=2),                             # a frame the service logged never arrived
                    check(5, text="Two.", logged=None, frames=0, audio_s=0.0, error="no 'reply 5 done' log line")]
    dropped.checks = [check(1, frames=2, call_seq=2)]
    dropped.drops.frames["overflow"] += 1
    cut_call.checks = [check(1, call_seq=3), check(2, cut=True, played_s=1.1, call_seq=3)]
    result = reconcile(book.records)
    outcomes = {(c.call_seq, c.reply): c.outcome for r in book.records for c in r.checks}
    assert outcomes == {(1, 1): HEARD, (1, 2): HEARD, (1, 3): LOST, (1, 4): LOST, (1, 5): LOST,
                        (2, 1): COUNTED, (3, 1): HEARD, (3, 2): CUT}
    assert (result["replies_sent"], result["heard_whole"], result["cut_by_kill"], result["not_whole_counted"],
            result["lost"]) == (8, 3, 1, 1, 3) and result["balanced"]
    why = {(m["call_seq"], m["reply"]): m["why"] for m in result["not_heard_whole"]}
    assert why[(1, 3)] == "2.00 s of audio, under 85% of the 2.95 s this reply usually has"
    assert why[(1, 4)] == "2 of the 3 frames the service logged reached the processor"
    assert why[(2, 1)] == why[(1, 4)]
    assert result["calls_cut_on_purpose"] == 1 and result["cut_replies_sent"] == 1


def test_a_cut_reply_that_played_to_its_end_counts_as_heard():
    book = CallBook(1)
    call = book.take(CUT_PLAN, 0.1)
    call.checks = [check(1, cut=True)]
    assert reconcile(book.records)["heard_whole"] == 1


def test_growth_compares_the_median_just_after_the_warmup_with_the_median_at_the_end():
    samples = [Sample(t, 100.0 + t / 60, 120.0, 30 + (t >= 120), 40) for t in range(0, 180, 5)]
    rows = per_minute(samples, 3)
    assert [row["minute"] for row in rows] == [0, 1, 2]
    assert rows[1]["rss_mb"] == pytest.approx(100.0 + 87.5 / 60) and rows[2]["threads"] == 31
    grew = growth(samples, 1.0, 3.0)           # a smoke run: one minute against the last
    assert (grew["from_minutes"], grew["to_minutes"]) == ([1.0, 2.0], [2.0, 3.0])
    assert grew["rss_mb"] == pytest.approx(1 / rows[1]["rss_mb"]) and grew["threads"] == pytest.approx(1 / 30)
    assert grew["fds"] == 0 and growth(samples, 3.0, 3.0)["rss_mb"] is None
    assert rss_slope_mb_per_h(samples, 60) == pytest.approx(60.0)
    long = [Sample(t, 500.0, 500.0, 40 + (t >= 1500) * 3, 50) for t in range(0, 1800, 5)]
    grew = growth(long, 5.0, 30.0)             # the full soak: minutes 5-10 against minutes 25-30
    assert (grew["from_minutes"], grew["to_minutes"]) == ([5.0, 10.0], [25.0, 30.0])
    assert grew["threads"] == pytest.approx(3 / 40) and grew["rss_mb"] == 0


def test_each_drop_counter_stands_beside_the_log_lines_that_explain_it():
    callers, stalled = Drops(), Drops()
    callers.frames["call_ended"] = 3
    stalled.frames["call_ended"] = 2
    stalled.segments = 4
    delta = {"kokoro_frames_dropped_total{reason=call_ended}": 9.0, "kokoro_segments_cancelled_total": 4.0,
             "kokoro_frames_dropped_total{reason=overflow}": 0.0, "kokoro_frames_sent_total{destination=dial-in}": 50.0}
    rows = {row["counter"]: row for row in drop_table(delta, {CALLERS: callers, STALLED: stalled})}
    assert set(rows) == {"kokoro_frames_dropped_total{reason=call_ended}", "kokoro_segments_cancelled_total"}
    ended_row = rows["kokoro_frames_dropped_total{reason=call_ended}"]
    assert ended_row["in_log_lines"] == {CALLERS: 3, STALLED: 2} and ended_row["beyond_log_lines"] == 4.0
    assert rows["kokoro_segments_cancelled_total"]["beyond_log_lines"] == 0

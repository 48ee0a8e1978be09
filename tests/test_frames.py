"""The pure frame queue and playout clock: budgets, drops and their accounting, splitting, pacing arithmetic."""
from __future__ import annotations

import numpy as np
from hypothesis import given, strategies as st

from kokoro_daemon.frames import Audio, FrameQueue, PlayoutClock

RATE = 1000


def audio(seconds: float, reply: int = 1, at: float = 0.0, ends_reply: bool = False) -> Audio:
    return Audio(np.zeros(int(seconds * RATE), dtype=np.float32), RATE, reply, at, ends_reply)


def test_over_budget_the_oldest_audio_goes_and_is_counted():
    queue = FrameQueue(max_bytes=3 * RATE * 4)  # three seconds
    for n in range(3):
        assert queue.put(audio(1.0, reply=n)) == []
    assert [piece.reply for piece in queue.put(audio(1.0, reply=3))] == [0]
    assert [queue.take().reply for _ in range(len(queue))] == [1, 2, 3]
    assert queue.dropped == {"overflow": 1}


def test_a_single_piece_over_budget_is_kept_rather_than_losing_everything():
    queue = FrameQueue(max_bytes=100)
    queue.put(audio(1.0))
    assert len(queue) == 1 and not queue.dropped


def test_take_cuts_the_head_and_the_rest_keeps_the_reply_end():
    queue = FrameQueue(max_bytes=1 << 20)
    queue.put(audio(2.5, ends_reply=True))
    first = queue.take(max_samples=RATE)
    assert first.duration_s == 1.0 and not first.ends_reply
    assert queue.queued_s == 1.5
    second, third = queue.take(RATE), queue.take(RATE)
    assert (second.duration_s, third.duration_s, third.ends_reply) == (1.0, 0.5, True)
    assert len(queue) == 0


def test_requeued_audio_goes_first_and_counts_against_the_budget():
    queue = FrameQueue(max_bytes=2 * RATE * 4)
    queue.put(audio(1.0, reply=1))
    taken = queue.take()
    queue.put(audio(1.0, reply=2))
    queue.requeue(taken)
    assert [piece.reply for piece in queue.put(audio(1.0, reply=3))] == [1]  # the requeued piece is the oldest
    assert [queue.take().reply for _ in range(2)] == [2, 3]


def test_age_limit_expires_held_audio():
    queue = FrameQueue(max_bytes=1 << 20, max_age_s=5.0)
    queue.put(audio(1.0, at=0.0))
    queue.put(audio(1.0, at=3.0))
    assert queue.next_expiry() == 5.0
    assert queue.expire(now=4.0) == []
    assert len(queue.expire(now=6.0)) == 1 and queue.next_expiry() == 8.0
    assert queue.dropped == {"expired": 1}
    assert FrameQueue(max_bytes=1).next_expiry() is None


def test_clear_counts_under_the_reason_given():
    queue = FrameQueue(max_bytes=1 << 20)
    queue.put(audio(1.0))
    queue.put(audio(1.0))
    queue.put(audio(0.0, ends_reply=True))
    assert len(queue.clear("call_ended")) == 3 and queue.clear("call_ended") == []
    assert queue.dropped == {"call_ended": 2} and queue.queued_s == 0  # the reply-end marker is no audio


def test_playout_clock_plays_in_real_time_from_each_piece():
    clock = PlayoutClock()
    assert clock.lead_s(now=10.0) == 0
    clock.sent(2.0, now=10.0)
    clock.sent(1.0, now=10.5)          # queued behind the first: ends at 13.0
    assert clock.end == 13.0 and clock.lead_s(now=11.0) == 2.0
    clock.sent(1.0, now=20.0)          # the caller heard silence from 13 to 20
    assert clock.end == 21.0


def test_room_at_keeps_the_lead_within_the_bound():
    clock = PlayoutClock()
    clock.sent(6.0, now=0.0)
    assert clock.room_at(1.0, max_lead_s=6.0) == 1.0     # at t=1 the lead is 5 s: 1 s more fits
    assert clock.room_at(7.0, max_lead_s=6.0) == 6.0     # longer than the bound: once all has played


@given(st.lists(st.tuples(st.floats(0.01, 3.0), st.floats(0.0, 2.0)), min_size=1, max_size=30))
def test_pacing_by_room_at_never_exceeds_the_lead_bound(pieces):
    clock, now, bound = PlayoutClock(), 0.0, 6.0
    for duration, pause in pieces:
        now = max(now + pause, clock.room_at(duration, bound))
        clock.sent(duration, now)
        assert clock.lead_s(now) <= max(bound, duration) + 1e-9


def test_dry_at_is_when_the_consumer_fell_silent_or_will():
    clock = PlayoutClock()
    clock.sent(2.0, now=10.0)
    assert clock.dry_at(now=11.0) == 12.0                 # playing: runs out at 12
    assert clock.dry_at(now=15.0) == 12.0                 # silent since 12, not "now": it waits its turn from then
    assert clock.dry_at(now=15.0, queued_s=1.0) == 16.0   # audio still to be sent plays from now

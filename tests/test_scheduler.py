"""Who speaks next: round-robin and playout-aware order, joining and cutting segments, priorities,
cancellation, and the segment cache.

The order tests use a deterministic stand-in engine whose every call waits for the test's go, so
that which segment went first is decided by the scheduler alone and not by how long the real model
took; the tests at the end use the real model behind a real service.
"""
from __future__ import annotations

import string
import threading
import time

import numpy as np
import pytest

from kokoro_daemon import metrics
from kokoro_daemon import scheduler as scheduler_module
from kokoro_daemon.engines import Engine
from kokoro_daemon.scheduler import SCHEDULES, Scheduler, SynthesisCost, first_clause
from kokoro_daemon.synthesis import AudioCache, Synthesizer
from kokoro_daemon.voices import Voice
from peers import LlamaClient, send_datagram

STUB_VOICE = Voice("stub", np.ones((510, 1, 256), dtype=np.float32), "a")


class RecordingEngine(Engine):
    """Each call waits for a go (``step``), records its text and returns its length in samples."""

    name = "recording"
    sample_rate = 24000

    def __init__(self):
        super().__init__({ch: i for i, ch in enumerate(string.ascii_letters + string.digits + " ,.?", start=1)})
        self.order: list[str] = []
        self.started = threading.Semaphore(0)
        self.go = threading.Semaphore(0)
        self.free_run = threading.Event()

    def _infer(self, phonemes, pack, speed):
        self.started.release()
        if not self.free_run.is_set():
            assert self.go.acquire(timeout=10), "the test never let this segment through"
        self.order.append(phonemes)
        return np.full(len(phonemes) * 2400, 0.5, dtype=np.float32)  # 0.1 s of audio per character

    def wait_started(self) -> None:
        """Until a segment is in the engine (held there until ``release``)."""
        assert self.started.acquire(timeout=10), "no segment reached the engine"

    def release(self) -> None:
        """Let every segment through from now on."""
        self.free_run.set()
        self.go.release(1000)


class LiteralG2P:
    def get(self, lang):
        return lambda text: text


class Listener:
    """A listener whose caller's buffer runs dry at ``dry``; records what it was given."""

    voice = None

    def __init__(self, call_id: str, dry_in: float = 0.0, priority: int = 0):
        self.call_id = call_id
        self.priority = priority
        self.ended = threading.Event()
        self.dry = time.monotonic() + dry_in
        self.received: list[tuple[int, int, bool]] = []   # (samples, reply, ends_reply)

    def dry_at(self) -> float:
        return self.dry

    def deliver(self, audio, sample_rate, reply=0, ends_reply=False):
        self.received.append((audio.size, reply, ends_reply))
        self.dry = max(self.dry, time.monotonic()) + audio.size / sample_rate


BOTH = pytest.mark.parametrize("stub", SCHEDULES, indirect=True)
ROUND_ROBIN = pytest.mark.parametrize("stub", ["round-robin"], indirect=True)


@pytest.fixture
def stub(request):
    """A running scheduler (playout, unless parametrized) in front of the recording engine: (engine, scheduler)."""
    engine = RecordingEngine()
    scheduler = Scheduler(Synthesizer([engine], LiteralG2P(), AudioCache(0)), lambda: (STUB_VOICE, 1.0),
                          schedule=getattr(request, "param", "playout"))
    scheduler.start()
    yield engine, scheduler
    engine.release()
    scheduler.stop()


def drained(scheduler, *listeners) -> None:
    for listener in listeners:
        assert scheduler.wait_drained(listener, 10)


@ROUND_ROBIN
def test_round_robin_by_segment(stub):
    engine, scheduler = stub
    a, b, c = Listener("A"), Listener("B"), Listener("C")
    scheduler.submit(a, ["aOne", "aTwo"])
    engine.wait_started()  # aOne is in the engine
    scheduler.submit(b, ["bOne", "bTwo"])
    scheduler.submit(c, ["cOne"])
    scheduler.submit(c, ["cTwo"])
    engine.release()
    for listener in (a, b, c):
        assert scheduler.wait_drained(listener, 10)
    assert engine.order == ["aOne", "bOne", "cOne", "aTwo", "bTwo", "cTwo"]


@ROUND_ROBIN
def test_round_robin_joins_a_calls_continuations_while_others_wait_never_a_first_segment(stub):
    engine, scheduler = stub
    a, b = Listener("A"), Listener("B")
    scheduler.submit(a, ["aOne", "aTwo", "aThree"])
    scheduler.submit(a, ["aNext", "aLast"])
    engine.wait_started()  # aOne is in the engine
    scheduler.submit(b, ["bOne", "bTwo", "bThree"])
    engine.release()
    assert scheduler.wait_drained(a, 10) and scheduler.wait_drained(b, 10)
    assert engine.order == ["aOne", "bOne", "aTwo aThree", "bTwo bThree", "aNext", "aLast"]


def test_a_new_reply_goes_before_a_call_that_still_has_audio_to_play(stub):
    engine, scheduler = stub
    busy = Listener("busy", dry_in=3.0)
    blocker, fresh = Listener("blocker"), Listener("fresh")
    scheduler.submit(blocker, ["first"])
    engine.wait_started()  # the engine is busy: what follows waits
    scheduler.submit(busy, ["more text for busy"], opens_reply=False)
    scheduler.submit(fresh, ["hello"])
    engine.release()
    drained(scheduler, busy, fresh)
    assert engine.order == ["first", "hello", "more text for busy"]


def test_the_caller_who_runs_dry_first_is_served_first(stub):
    engine, scheduler = stub
    blocker = Listener("blocker")
    soon, later, latest = Listener("soon", 0.5), Listener("later", 2.0), Listener("latest", 4.0)
    scheduler.submit(blocker, ["first"])
    engine.wait_started()
    for listener in (latest, later, soon):
        scheduler.submit(listener, [f"{listener.call_id} text"], opens_reply=False)
    engine.release()
    drained(scheduler, soon, later, latest)
    assert engine.order == ["first", "soon text", "later text", "latest text"]


def test_replies_start_in_arrival_order(stub):
    engine, scheduler = stub
    blocker = Listener("blocker")
    scheduler.submit(blocker, ["first"])
    engine.wait_started()
    listeners = [Listener(f"caller{n}") for n in range(4)]
    for listener in listeners:
        scheduler.submit(listener, [f"{listener.call_id} hello", f"{listener.call_id} more"])
        time.sleep(0.01)
    engine.release()
    drained(scheduler, *listeners)
    assert engine.order[1:5] == [f"caller{n} hello" for n in range(4)]


def test_a_call_holding_max_lead_waits_and_is_served_when_its_lead_drops(stub):
    engine, scheduler = stub
    engine.release()
    ahead = Listener("ahead", dry_in=scheduler.max_lead_s + 0.4)
    scheduler.submit(ahead, ["later words"], opens_reply=False)
    time.sleep(0.2)
    assert engine.order == []  # 6.4 s of audio still to play: nothing to do yet
    assert scheduler.wait_drained(ahead, 5)
    assert engine.order == ["later words"]


def test_lead_to_spare_joins_sentences_and_a_dry_buffer_cuts_to_the_first_clause(stub):
    engine, scheduler = stub
    engine.release()
    scheduler.costs = [SynthesisCost(seconds_per_unit=0.01)]  # 100 characters a second, whatever the machine
    relaxed = Listener("relaxed", dry_in=4.0)
    scheduler.submit(relaxed, ["One sentence here.", "Another one here.", "And a third."], opens_reply=False)
    assert scheduler.wait_drained(relaxed, 5)
    assert engine.order == ["One sentence here. Another one here. And a third."]

    hurried = Listener("hurried", dry_in=0.0)
    long_sentence = ("Your appointment with the dental hygienist, which we moved last week, "
                     "is now on Monday morning at nine.")
    scheduler.submit(hurried, [long_sentence, "Anything else?"], opens_reply=False)
    assert scheduler.wait_drained(hurried, 5)
    assert engine.order[1] == "Your appointment with the dental hygienist,"
    assert " ".join(engine.order[1:]) == long_sentence + " Anything else?"


@BOTH
@pytest.mark.parametrize("waited_s, first", [(0.0, "phone words"), (0.4, "http words")])
def test_phone_calls_come_before_http_requests_unless_one_waited_too_long(stub, monkeypatch, waited_s, first):
    monkeypatch.setattr(scheduler_module, "HTTP_MAX_WAIT_S", 0.3)
    engine, scheduler = stub
    blocker = Listener("blocker")
    scheduler.submit(blocker, ["first"])
    engine.wait_started()
    http = Listener("http", priority=1)
    scheduler.submit(http, ["http words"])
    time.sleep(0.01)
    phone = Listener("phone")
    scheduler.submit(phone, ["phone words"])
    time.sleep(waited_s)  # 0.4: the request has waited longer than HTTP_MAX_WAIT_S
    engine.release()
    drained(scheduler, phone, http)
    assert engine.order[:2] == ["first", first] and sorted(engine.order[1:]) == ["http words", "phone words"]


@BOTH
def test_reply_ends_are_delivered_and_an_unspeakable_segment_is_skipped_and_counted(stub):
    engine, scheduler = stub
    engine.release()
    listener = Listener("L")
    silent = metrics.SEGMENTS_SILENT._value.get()  # noqa: SLF001
    scheduler.submit(listener, ["Hello.", "!!!"], reply=1, ends_reply=True)
    scheduler.submit(listener, [], reply=2, ends_reply=True)  # a reply whose text was all spoken already
    assert scheduler.wait_drained(listener, 5)
    assert metrics.SEGMENTS_SILENT._value.get() - silent == 1  # noqa: SLF001
    assert all(samples > 0 for samples, _, ends in listener.received if not ends)
    assert [(reply, ends) for _, reply, ends in listener.received if ends] == [(1, True), (2, True)]


@BOTH
def test_cancel_drops_queued_segments_at_once(stub):
    engine, scheduler = stub
    a, b = Listener("A"), Listener("B")
    scheduler.submit(a, ["aOne", "aTwo", "aThree", "aFour"])
    engine.wait_started()
    scheduler.submit(b, ["bOne"])
    before = metrics.SEGMENTS_CANCELLED._value.get()  # noqa: SLF001
    a.ended.set()
    assert scheduler.cancel(a) == 3
    engine.release()
    assert scheduler.wait_drained(b, 10) and scheduler.wait_drained(a, 10)
    assert engine.order == ["aOne", "bOne"]
    assert metrics.SEGMENTS_CANCELLED._value.get() - before == 3  # noqa: SLF001


def test_two_workers_speak_two_calls_at_once_and_keep_each_calls_order():
    engines = [RecordingEngine(), RecordingEngine()]
    scheduler = Scheduler(Synthesizer(engines, LiteralG2P(), AudioCache(0)), lambda: (STUB_VOICE, 1.0))
    scheduler.start()
    try:
        a, b = Listener("A"), Listener("B")
        scheduler.submit(a, ["aOne", "aTwo"])
        scheduler.submit(b, ["bOne", "bTwo"])
        for engine in engines:  # both calls' first segments are in the engines at the same time
            assert engine.started.acquire(timeout=10)
        for engine in engines:
            engine.release()
        assert scheduler.wait_drained(a, 10) and scheduler.wait_drained(b, 10)
        spoken = engines[0].order + engines[1].order
        assert sorted(spoken) == ["aOne", "aTwo", "bOne", "bTwo"]
        assert [len(a.received), len(b.received)] == [2, 2]
    finally:
        scheduler.stop()


LONG_REPLY = ("I can certainly help you with rescheduling that appointment today. "
              "First I will need to confirm a few details about your account with you. "
              "Then I will look at the available times for next week and the week after. "
              "After that we can pick the slot that suits your schedule the best. "
              "Finally I will send you a confirmation message with all of the details.")


@pytest.mark.slow
def test_processor_bye_frees_the_engine_for_another_call(service, engine, g2p):
    """After BYE:N the engine stops on N's reply; another call's audio comes before N's rest would have finished."""
    voice, speed = service.voice_setting.get()
    remaining = LONG_REPLY.split(". ")[1:]
    started = time.monotonic()
    for sentence in remaining:
        engine.synthesize(g2p.get("a")(sentence), voice.pack, speed)
    rest_of_reply_s = time.monotonic() - started

    with LlamaClient(service.tcp_address, "bye-a") as a, LlamaClient(service.tcp_address, "bye-b") as b:
        a.text(LONG_REPLY)
        assert a.read_frame().chunk_id == 1
        send_datagram(service.udp_address, "BYE:bye-a")
        cancelled_at = time.monotonic()
        b.text("Hello, second caller.")
        first_b = b.read_frame()
        assert first_b.received_at - cancelled_at < rest_of_reply_s
        a.sock.settimeout(1.0)
        late = []
        try:
            while True:
                late.append(a.read_frame())
        except (TimeoutError, OSError):
            pass
        assert len(late) <= 1  # at most the segment that was already in the engine


@pytest.mark.slow
def test_disconnect_cancels_the_calls_queued_work(service):
    before = metrics.SEGMENTS_CANCELLED._value.get()  # noqa: SLF001
    client = LlamaClient(service.tcp_address, "gone-1")
    client.text(LONG_REPLY)
    client.read_frame()
    client.close()
    deadline = time.monotonic() + 10
    while metrics.SEGMENTS_CANCELLED._value.get() == before and time.monotonic() < deadline:  # noqa: SLF001
        time.sleep(0.02)
    assert metrics.SEGMENTS_CANCELLED._value.get() > before  # noqa: SLF001


@pytest.mark.slow
def test_cache_returns_identical_samples(service):
    text = "Thank you for calling Acme Dental."
    hits = metrics.CACHE_HITS._value.get()  # noqa: SLF001
    replies = []
    for call_id in ("cache-1", "cache-2"):
        with LlamaClient(service.tcp_address, call_id) as client:
            client.text(text)
            client.bye()
            replies.append(client.read_until_bye())
    assert metrics.CACHE_HITS._value.get() - hits >= 1  # noqa: SLF001
    # the first reply came window by window, the cached one whole: the same samples, framed otherwise
    first, second = (b"".join(f.samples.tobytes() for f in frames) for frames in replies)
    assert first == second and first


def test_over_capacity_is_counted_each_time_and_logged_once_a_minute(stub, caplog):
    engine, scheduler = stub
    engine.release()
    underruns = metrics.UNDERRUNS._value.get()  # noqa: SLF001
    for n in range(3):
        late = Listener(f"late-{n}", dry_in=-1.0)  # its caller ran out of audio a second ago, mid-reply
        scheduler.submit(late, ["more words"], opens_reply=False)
        assert scheduler.wait_drained(late, 5)
    assert metrics.UNDERRUNS._value.get() - underruns == 3  # noqa: SLF001
    assert caplog.text.count("over capacity") == 1


def test_a_caller_who_ran_dry_mid_reply_is_not_starved_by_newer_replies(stub):
    engine, scheduler = stub
    blocker = Listener("blocker")
    scheduler.submit(blocker, ["first"])
    engine.wait_started()
    starving = Listener("starving", dry_in=-0.5)  # silent for half a second already, its reply unfinished
    scheduler.submit(starving, ["rest of my reply"], opens_reply=False)
    newer = [Listener(f"new{n}") for n in range(3)]
    for listener in newer:
        scheduler.submit(listener, [f"{listener.call_id} hello"])
    engine.release()
    drained(scheduler, starving, *newer)
    assert engine.order[1] == "rest of my reply"


@pytest.mark.parametrize("text, piece", [
    ("Your appointment with the hygienist, which we moved, is on Monday.", "Your appointment with the hygienist,"),
    ("Hello, this is a test of the Kokoro text to speech service.", None),  # clause too short to stand alone
    ("You will get a text message when it is out for delivery.", None),  # no clause mark: better whole than cut
])
def test_a_sentence_is_cut_only_at_its_first_clause(text, piece):
    cut = first_clause(text)
    assert (cut[0] if cut else None) == piece
    if cut:
        assert f"{cut[0]} {cut[1]}" == text


def test_the_last_free_worker_is_kept_for_a_new_reply_unless_a_caller_needs_it_now():
    engines = [RecordingEngine(), RecordingEngine()]
    started = engines[1].started = engines[0].started  # "a segment reached an engine", whichever
    go = engines[1].go = engines[0].go
    scheduler = Scheduler(Synthesizer(engines, LiteralG2P(), AudioCache(0)), lambda: (STUB_VOICE, 1.0))
    scheduler.start()
    try:
        for waiting, dry_in, taken in (("fresh", None, True), ("relaxed", 3.0, False), ("urgent", 0.2, True)):
            busy = Listener(f"busy-{waiting}")
            scheduler.submit(busy, ["busy words"])
            assert started.acquire(timeout=10)
            listener = Listener(waiting, dry_in=dry_in or 0.0)
            scheduler.submit(listener, [f"{waiting} words"], opens_reply=dry_in is None)
            assert started.acquire(timeout=0.5 if not taken else 10) is taken, waiting
            go.release(2)  # both through
            drained(scheduler, busy, listener)
            while started.acquire(timeout=0):  # a held-back segment's start, counted once it ran
                pass
    finally:
        for engine in engines:
            engine.release()
        scheduler.stop()


def test_a_long_first_sentence_is_spoken_whole(stub):
    engine, scheduler = stub
    engine.release()
    listener = Listener("L")
    scheduler.submit(listener, ["Your balance is due on the first of next month.", "Thank you."])
    drained(scheduler, listener)
    assert engine.order[0] == "Your balance is due on the first of next month."

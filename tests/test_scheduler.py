"""Who speaks next: round-robin order, cancellation, and the segment cache."""
from __future__ import annotations

import socket
import string
import threading
import time

import numpy as np
import pytest

from kokoro_daemon import metrics
from kokoro_daemon.calls import Call, Routing
from kokoro_daemon.engines import Engine
from kokoro_daemon.outputs import ReplyWriter
from kokoro_daemon.scheduler import Scheduler
from kokoro_daemon.synthesis import AudioCache, Synthesizer
from kokoro_daemon.voices import Voice
from peers import LlamaClient, recv_exact, send_datagram

STUB_VOICE = Voice("stub", np.ones((510, 1, 256), dtype=np.float32), "a")


class RecordingEngine(Engine):
    """Deterministic stand-in where only the order of work matters: each call returns its text's length in samples."""

    name = "recording"

    def __init__(self):
        super().__init__({ch: i for i, ch in enumerate(string.ascii_letters + string.digits + " ", start=1)})
        self.order: list[str] = []
        self.release = threading.Event()

    def _infer(self, phonemes, pack, speed):
        self.release.wait(10)
        self.order.append(phonemes)
        return np.full(len(phonemes), 0.5, dtype=np.float32)


class LiteralG2P:
    def get(self, lang):
        return lambda text: text


@pytest.fixture
def stub():
    """A running scheduler in front of the recording engine: (engine, scheduler)."""
    engine = RecordingEngine()
    scheduler = Scheduler(Synthesizer(engine, LiteralG2P(), AudioCache(0)), lambda: (STUB_VOICE, 1.0))
    scheduler.start()
    yield engine, scheduler
    scheduler.stop()


def connected_call(call_id: str) -> tuple[Call, socket.socket]:
    ours, theirs = socket.socketpair()
    call = Call(call_id, Routing())
    call.attach_reply(ReplyWriter(ours, f"reply-{call_id}", 1 << 20))
    theirs.settimeout(10)
    return call, theirs


def read_ids(sock: socket.socket, count: int) -> list[int]:
    ids = []
    for _ in range(count):
        size, _, chunk_id = np.frombuffer(recv_exact(sock, 12), dtype=">u4")
        recv_exact(sock, int(size))
        ids.append(int(chunk_id))
    return ids


def test_round_robin_by_segment(stub):
    engine, scheduler = stub
    (a, a_peer), (b, b_peer), (c, c_peer) = (connected_call(x) for x in "ABC")
    scheduler.submit(a, ["aOne", "aTwo"], opens_reply=True)
    time.sleep(0.1)  # aOne is now in the engine
    scheduler.submit(b, ["bOne", "bTwo"], opens_reply=True)
    scheduler.submit(c, ["cOne"], opens_reply=True)
    scheduler.submit(c, ["cTwo"], opens_reply=True)
    engine.release.set()
    for call in (a, b, c):
        assert scheduler.wait_drained(call, 10)
    assert engine.order == ["aOne", "bOne", "cOne", "aTwo", "bTwo", "cTwo"]
    assert read_ids(a_peer, 2) == [1, 2]
    assert read_ids(b_peer, 2) == [1, 2]
    assert read_ids(c_peer, 2) == [1, 2]


def test_a_busy_engine_joins_a_calls_continuations_but_never_a_replys_first_segment(stub):
    engine, scheduler = stub
    (a, a_peer), (b, b_peer) = connected_call("A"), connected_call("B")
    scheduler.submit(a, ["aOne", "aTwo", "aThree"], opens_reply=True)
    scheduler.submit(a, ["aNext", "aLast"], opens_reply=True)
    time.sleep(0.1)  # aOne is now in the engine
    scheduler.submit(b, ["bOne", "bTwo", "bThree"], opens_reply=True)
    engine.release.set()
    assert scheduler.wait_drained(a, 10) and scheduler.wait_drained(b, 10)
    assert engine.order == ["aOne", "bOne", "aTwo aThree", "bTwo bThree", "aNext", "aLast"]
    assert read_ids(a_peer, 4) == [1, 2, 3, 4]
    assert read_ids(b_peer, 2) == [1, 2]


def test_an_idle_engine_keeps_segments_apart(stub):
    engine, scheduler = stub
    engine.release.set()
    call, peer = connected_call("A")
    scheduler.submit(call, ["aOne", "aTwo", "aThree"], opens_reply=True)
    assert scheduler.wait_drained(call, 10)
    assert engine.order == ["aOne", "aTwo", "aThree"]
    assert read_ids(peer, 3) == [1, 2, 3]


def test_cancel_drops_queued_segments_at_once(stub):
    engine, scheduler = stub
    (a, _), (b, _) = connected_call("A"), connected_call("B")
    scheduler.submit(a, ["aOne", "aTwo", "aThree", "aFour"], opens_reply=True)
    time.sleep(0.1)
    scheduler.submit(b, ["bOne"], opens_reply=True)
    before = metrics.SEGMENTS_CANCELLED._value.get()  # noqa: SLF001
    a.ended.set()
    scheduler.cancel(a)
    engine.release.set()
    assert scheduler.wait_drained(b, 10) and scheduler.wait_drained(a, 10)
    assert engine.order == ["aOne", "bOne"]
    assert metrics.SEGMENTS_CANCELLED._value.get() - before == 3  # noqa: SLF001


LONG_REPLY = ("I can certainly help you with rescheduling that appointment today. "
              "First I will need to confirm a few details about your account with you. "
              "Then I will look at the available times for next week and the week after. "
              "After that we can pick the slot that suits your schedule the best. "
              "Finally I will send you a confirmation message with all of the details.")


def test_processor_bye_frees_the_engine_for_another_call(service, engine, g2p):
    """After BYE:N the engine stops on N's reply; another call's audio comes before N's rest would have finished."""
    voice, speed = service.voice_setting.get()
    remaining = LONG_REPLY.split(". ")[1:]
    started = time.monotonic()
    for sentence in remaining:
        engine.synthesize(g2p.get("a")(sentence), voice.pack, speed)
    rest_of_reply_s = time.monotonic() - started

    with LlamaClient(service.tcp_address, "5301") as a, LlamaClient(service.tcp_address, "5302") as b:
        a.text(LONG_REPLY)
        assert a.read_frame().chunk_id == 1
        send_datagram(service.udp_address, "BYE:5301")
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


def test_disconnect_cancels_the_calls_queued_work(service):
    before = metrics.SEGMENTS_CANCELLED._value.get()  # noqa: SLF001
    client = LlamaClient(service.tcp_address, "5303")
    client.text(LONG_REPLY)
    client.read_frame()
    client.close()
    deadline = time.monotonic() + 10
    while metrics.SEGMENTS_CANCELLED._value.get() == before and time.monotonic() < deadline:  # noqa: SLF001
        time.sleep(0.02)
    assert metrics.SEGMENTS_CANCELLED._value.get() > before  # noqa: SLF001


def test_cache_returns_identical_samples(service):
    text = "Thank you for calling Acme Dental."
    hits = metrics.CACHE_HITS._value.get()  # noqa: SLF001
    replies = []
    for call_id in ("5304", "5305"):
        with LlamaClient(service.tcp_address, call_id) as client:
            client.text(text)
            client.bye()
            replies.append(client.read_until_bye())
    assert metrics.CACHE_HITS._value.get() - hits >= 1  # noqa: SLF001
    first, second = ([f.samples.tobytes() for f in frames] for frames in replies)
    assert first == second and first

#!/usr/bin/env python3
"""Soak benchmark: the service for --minutes under phone conversations and misbehaving peers, nothing lost.

The real service runs as a subprocess, as the phone system runs it (processor link auto, its
default cache). Eight conversations at a time, each a call on a recycled call id with an
emulated dial-in processor playing its audio in real time (tests/peers.py); mixed in,
continuously: random bytes on the LLaMA port, a reader that stalls, processors killed in the
middle of a reply, and bursts of datagrams on the registration port. It records the service's
memory, threads and open files every minute, reconciles every reply the callers were sent
with what their processors heard and what the service counted as dropped, and scans the log
for unhandled exceptions. See bench/README.md.
"""
from __future__ import annotations

import os
import random
import re
import socket
import statistics
import sys
import threading
import time
import traceback
import urllib.request
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from benchmark import (ROOT, SAMPLE_TOLERANCE, BenchmarkError, ServiceProcess, bench_arguments, free_port,
                       log, machine_info, write_results)
from conversation import REPLIES, TALK_S, ReplyLog, Turn, TurnPlan, converse, free_bases, percentile

sys.path.insert(0, str(ROOT / "tests"))
from peers import DialInProcessor, LlamaClient, LlamaDied, LlamaPeer, encode_hello  # noqa: E402

from kokoro_daemon.protocol import parse_datagram  # noqa: E402

CONVERSATIONS = 8
CALL_IDS = 16                   # call ids 1..16 are handed out again and again, as a phone system does
TURNS = (2, 5)                  # replies per call (seeded)
CUT_SHARE = 0.25                # calls whose last reply is cut: the caller hangs up while it is being spoken
CUT_AFTER_S = (0.3, 2.0)        # ... this long after that reply's first audio reached the processor
LONG_REPLIES = tuple(text for text in REPLIES if len(text) >= 150)   # several sentences: audio flows a while
END_TIMEOUT_S = 30.0            # a call's 'ended' line is due this soon after its processor is killed
SAMPLE_S = 5.0                  # resources are read this often; each minute's figure is the median of its samples
WARMUP_MINUTES = 5.0
GROWTH_LIMIT = 0.05             # RSS and threads after the warm-up may grow this much by the end
GROWTH_SPAN_MIN = 5.0           # ... comparing the median of this many minutes after the warm-up with the last's
RESOURCES = ("rss_mb", "threads", "fds")
AUDIO_TOLERANCE_S = 0.002       # received audio vs the service's 'reply done' figure (logged to 1 ms)
WHOLE_SHARE = 1 - SAMPLE_TOLERANCE   # a reply under this share of its usual audio lost a piece

STALL_S = 120.0                 # how long each stalled reader is kept before the next one replaces it
STALL_RCVBUF = 2048
STALL_TEXT = " ".join(REPLIES)  # a long reply: minutes of audio the reader never reads
JUNK_PAUSE_S = (0.5, 2.0)       # between two random-bytes connections
JUNK_MAX_BYTES_LOG2 = 16        # up to 64 KiB of random bytes, sizes log-uniform
JUNK_HELD_S = (5.0, 60.0)       # a connection left open is closed after this long ...
JUNK_MAX_HELD = 4               # ... and no more than this many are held at once
FLOOD_PAUSE_S = (10.0, 30.0)    # between two bursts of datagrams
FLOOD_BURST_S = (2.0, 5.0)
FLOOD_RATE = 300                # datagrams per second within a burst
FLOOD_IDS = (100000, 999999)    # numeric ids no call uses: BYE or REGISTER for a live call is a real command

HEARD, CUT, COUNTED, LOST = "heard whole", "cut by the kill", "not whole, counted", "lost"
CALLERS, CALLERS_CUT, STALLED, JUNK, OTHER = ("callers", "callers cut on purpose", "stalled readers",
                                              "random bytes", "other")
UNHANDLED = ("Traceback", "Exception in thread")

CALL_MENTION = re.compile(r": call (?P<call>[^\s:]+)[: ]")
SEGMENT_LINE = re.compile(r"kokoro_daemon\.scheduler: (?P<call>[^\s:]+): (?P<what>could not speak segment|segment .* "
                          r"has nothing speakable)")
ENDED = re.compile(r": ended \((?P<reason>.*)\)(?:; (?P<segments>\d+) queued segment\(s\) dropped)?$")
FRAMES_DROPPED = re.compile(r": dropped (?P<count>\d+) frame\(s\) of audio \((?P<reason>[^)]+)\)")
TEXT_NOT_SPOKEN = re.compile(r": (?P<chars>\d+) character\(s\) of text not spoken \((?P<reason>[^)]+)\)")
TEXT_REFUSED = re.compile(r": text chunk of (?P<chars>\d+) characters refused")
READY = re.compile(r"registration UDP (?P<host>[\d.]+):(?P<port>\d+)")
DROP_COUNTERS = ("kokoro_frames_dropped_total", "kokoro_text_dropped_total", "kokoro_segments_cancelled_total",
                 "kokoro_segments_failed_total", "kokoro_segments_silent_total")


def counter_key(name: str, labels: dict[str, str]) -> str:
    return name + ("{" + ",".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}" if labels else "")


# -- what the service's log says about each call ------------------------------------------

def mentioned_call(line: str) -> str | None:
    match = CALL_MENTION.search(line) or SEGMENT_LINE.search(line)
    return match["call"] if match else None


@dataclass
class Drops:
    """What the service's log lines say it dropped. A call logs its first drop of each kind only, so
    frame counts here are a floor; queued segments and text come whole in their lines."""
    frames: Counter = field(default_factory=Counter)        # by reason
    segments: int = 0                                       # queued segments dropped when the call ended
    chars: Counter = field(default_factory=Counter)         # text by reason
    failed: int = 0                                         # segments the engine could not speak
    silent: int = 0                                         # segments with nothing speakable

    def feed(self, line: str) -> None:
        if match := FRAMES_DROPPED.search(line):
            self.frames[match["reason"]] += int(match["count"])
        elif (match := ENDED.search(line)) and match["segments"]:
            self.segments += int(match["segments"])
        elif match := TEXT_NOT_SPOKEN.search(line):
            self.chars[match["reason"].replace(" ", "_")] += int(match["chars"])
        elif match := TEXT_REFUSED.search(line):
            self.chars["queue_full"] += int(match["chars"])
        elif match := SEGMENT_LINE.search(line):
            if match["what"].startswith("could not"):
                self.failed += 1
            else:
                self.silent += 1

    def as_counters(self) -> dict[str, int]:
        """The same figures under the names of the service's counters."""
        counters = {counter_key("kokoro_frames_dropped_total", {"reason": r}): n for r, n in self.frames.items()}
        counters.update({counter_key("kokoro_text_dropped_total", {"reason": r}): n for r, n in self.chars.items()})
        counters.update({"kokoro_segments_cancelled_total": self.segments, "kokoro_segments_failed_total": self.failed,
                         "kokoro_segments_silent_total": self.silent})
        return {key: n for key, n in counters.items() if n}

    def __bool__(self) -> bool:
        return bool(self.as_counters())


@dataclass(frozen=True)
class CallPlan:
    turns: list[TurnPlan]
    cut_after_s: float | None = None     # the last reply is cut this long after its first audio arrived


def plan_call(rng: random.Random) -> CallPlan:
    """A call of 2 to 5 replies; one in four ends with the caller hanging up during a long last reply."""
    count = rng.randint(*TURNS)
    cut = rng.random() < CUT_SHARE
    turns = [TurnPlan(rng.uniform(*TALK_S), rng.choice(REPLIES)) for _ in range(count - 1)]
    turns.append(TurnPlan(rng.uniform(*TALK_S), rng.choice(LONG_REPLIES if cut else REPLIES)))
    return CallPlan(turns, rng.uniform(*CUT_AFTER_S) if cut else None)


@dataclass
class ReplyCheck:
    """One reply a caller was sent, and what became of it."""
    call_id: str
    call_seq: int
    reply: int
    text: str
    cut: bool                            # the reply during which its processor was killed on purpose
    sent_at_s: float                     # since the soak began
    logged_frames: int | None            # from the service's 'reply k done' line, if it logged one
    logged_audio_s: float | None
    frames: int                          # what its processor received ...
    audio_s: float
    played_s: float                      # ... played ...
    erased_s: float                      # ... and erased to make room
    first_audio_s: float | None
    error: str | None = None             # what went wrong on the way, if anything
    outcome: str = ""
    why: str = ""


def not_whole(check: ReplyCheck, usual_audio_s: float | None) -> str | None:
    """Why the caller did not hear this reply whole (None: heard whole)."""
    if check.error:
        return check.error
    if check.logged_frames is None:
        return "the service logged no 'reply done' line for it"
    if check.frames != check.logged_frames:
        return f"{check.frames} of the {check.logged_frames} frames the service logged reached the processor"
    if abs(check.audio_s - check.logged_audio_s) > AUDIO_TOLERANCE_S:
        return f"{check.audio_s:.3f} s of audio received, {check.logged_audio_s:.3f} s logged"
    if check.erased_s > 0:
        return f"{check.erased_s:.2f} s of it erased by the processor"
    if check.played_s < check.audio_s - AUDIO_TOLERANCE_S:
        return f"{check.audio_s - check.played_s:.2f} s of it unplayed when its processor was killed"
    if usual_audio_s and check.audio_s < WHOLE_SHARE * usual_audio_s:
        return (f"{check.audio_s:.2f} s of audio, under {WHOLE_SHARE:.0%} of the {usual_audio_s:.2f} s this reply "
                "usually has")
    return None


def usual_audio(checks: list[ReplyCheck]) -> dict[str, float]:
    """Each reply text's median audio over the replies otherwise heard whole: the yardstick for a lost piece."""
    by_text: dict[str, list[float]] = {}
    for check in checks:
        if not_whole(check, None) is None:
            by_text.setdefault(check.text, []).append(check.audio_s)
    return {text: statistics.median(values) for text, values in by_text.items()}


def classify(check: ReplyCheck, usual_audio_s: float | None, call_dropped: bool) -> tuple[str, str]:
    """Heard whole; cut by the deliberate kill; not whole but the service logged a drop for its call; or lost."""
    why = not_whole(check, usual_audio_s)
    if why is None:
        return HEARD, ""
    if check.cut:
        return CUT, why
    return (COUNTED if call_dropped else LOST), why


@dataclass
class CallRecord:
    """One caller's call on one call id: from its first reply to the service's 'ended' line."""
    call_id: str
    seq: int
    plan: CallPlan
    started_at: float
    replies: ReplyLog = field(default_factory=ReplyLog)
    drops: Drops = field(default_factory=Drops)
    notes: list[str] = field(default_factory=list)       # its warning and error lines, and what went wrong here
    checks: list[ReplyCheck] = field(default_factory=list)
    killed_at: float | None = None
    ended_at: float | None = None
    end_reason: str | None = None

    def feed(self, line: str) -> None:
        self.replies.feed(line)
        self.drops.feed(line)
        if match := ENDED.search(line):
            self.ended_at, self.end_reason = time.monotonic(), match["reason"]
        elif (" WARNING " in line or " ERROR " in line) and len(self.notes) < 20:
            self.notes.append(line)

    def summary(self, began: float) -> dict:
        return {"call_id": self.call_id, "seq": self.seq, "cut": self.plan.cut_after_s is not None,
                "started_s": round(self.started_at - began, 3),
                "ended_after_kill_s": (round(self.ended_at - self.killed_at, 3)
                                       if self.ended_at is not None and self.killed_at is not None else None),
                "end_reason": self.end_reason, "drops_logged": self.drops.as_counters(), "notes": self.notes,
                "replies": [asdict(check) for check in self.checks]}


class CallBook:
    """The callers' call ids, handed out as a phone system does, and the service's log lines, by call.

    An id goes back into use (the one free longest first) only once the service has logged its
    last call ended, so that every line about a call id belongs to the latest call on it.
    """

    def __init__(self, ids: int):
        self._cond = threading.Condition()
        self._free = deque(str(n) for n in range(1, ids + 1))
        self._latest: dict[str, CallRecord] = {}
        self.records: list[CallRecord] = []
        self.others: dict[str, Drops] = {source: Drops() for source in (STALLED, JUNK, OTHER)}

    def feed(self, line: str) -> None:
        call_id = mentioned_call(line)
        if call_id is None:
            return
        with self._cond:
            record = self._latest.get(call_id)
            if record is not None:
                record.feed(line)
                self._cond.notify_all()
            else:
                self.others[source_of(call_id)].feed(line)

    def _ready(self) -> str | None:
        return next((call_id for call_id in self._free
                     if (record := self._latest.get(call_id)) is None or record.ended_at is not None), None)

    def take(self, plan: CallPlan, timeout: float) -> CallRecord | None:
        """A new call on the free id whose last call ended longest ago (None if none is ready in ``timeout``)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._ready() is not None, timeout):
                return None
            call_id = self._ready()
            self._free.remove(call_id)
            record = CallRecord(call_id, len(self.records) + 1, plan, time.monotonic())
            self.records.append(record)
            self._latest[call_id] = record
            return record

    def wait_ended(self, record: CallRecord, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: record.ended_at is not None, timeout)

    def end_unsent(self, record: CallRecord, why: str) -> None:
        """No reply was sent, so the service never saw this call: nothing to wait for."""
        with self._cond:
            record.ended_at, record.end_reason = time.monotonic(), f"never started: {why}"
            self._cond.notify_all()

    def give_back(self, record: CallRecord) -> None:
        with self._cond:
            self._free.append(record.call_id)
            self._cond.notify_all()

    def snapshot(self) -> list[CallRecord]:
        with self._cond:
            return list(self.records)


def source_of(call_id: str) -> str:
    if call_id.startswith("stalled-"):
        return STALLED
    if call_id.startswith("junk-"):
        return JUNK
    return OTHER


# -- one caller's call ---------------------------------------------------------------------

def cut_reply(llama: LlamaPeer, processor: DialInProcessor, number: int, step: TurnPlan, cut_after_s: float,
              timeout_s: float) -> Turn:
    """The reply the caller hangs up on: sent, then ``cut_after_s`` after its first audio arrived it is
    time to kill the processor, as the phone system kills it at the end of a call."""
    call_id = str(processor.call_id)
    time.sleep(step.talk_s)
    heard = len(processor.frames)
    turn = Turn(call_id, number, step.text, llama.reply(call_id, step.text))
    if processor.wait_frames(heard + 1, timeout_s):
        time.sleep(cut_after_s)
    else:
        turn.error = f"no audio within {timeout_s:.0f} s"
    return turn


def reply_checks(record: CallRecord, turns: list[Turn], processor: DialInProcessor,
                 began: float) -> tuple[list[ReplyCheck], int]:
    """What the processor received, played and erased of each reply sent, split by the service's frame counts;
    and how many frames it received beyond them."""
    checks, start = [], 0
    played, erased = processor.played, processor.erased
    cut_number = len(record.plan.turns) if record.plan.cut_after_s is not None else None
    for turn in turns:
        done = record.replies.wait(record.call_id, turn.turn, 0)
        stop = start + done.frames if done is not None else len(processor.frames)
        frames = processor.frames[start:stop]
        pieces = [p for p in played if start <= p.frame < stop]
        error = turn.error or ("; ".join(processor.errors) if processor.errors else None)
        checks.append(ReplyCheck(
            record.call_id, record.seq, turn.turn, turn.text, turn.turn == cut_number, round(turn.sent_at - began, 3),
            done.frames if done else None, done.audio_s if done else None, len(frames),
            sum(len(f.samples) / f.rate for f in frames if f.rate > 0), sum(p.end - p.start for p in pieces),
            sum(e.seconds for e in erased if start <= e.frame < stop),
            pieces[0].start - turn.sent_at if pieces else None, error))
        start = stop
    return checks, len(processor.frames) - start


# -- the soak ---------------------------------------------------------------------------------

@dataclass
class Sample:
    t_s: float          # since the soak began
    rss_mb: float
    peak_rss_mb: float
    threads: int
    fds: int


def resources(service: ServiceProcess, began: float) -> Sample:
    """The service's resident memory, threads and open file descriptors, from /proc."""
    memory = service.memory_mb()
    status = Path(f"/proc/{service.proc.pid}/status").read_text()
    threads = int(re.search(r"^Threads:\s+(\d+)", status, re.M)[1])
    fds = len(os.listdir(f"/proc/{service.proc.pid}/fd"))
    return Sample(round(time.monotonic() - began, 2), memory["rss_mb"], memory["peak_rss_mb"], threads, fds)


def scrape(port: int) -> dict[str, float]:
    """The service's kokoro_* counters and gauges (per-call gauges left out)."""
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("kokoro_") and not sample.name.endswith("_created") \
                    and "call_id" not in sample.labels:
                values[counter_key(sample.name, sample.labels)] = sample.value
    return values


def per_minute(samples: list[Sample], minutes: int) -> list[dict]:
    """Each whole minute's median (and largest) RSS, threads and open files."""
    rows = []
    for minute in range(minutes):
        inside = [s for s in samples if minute * 60 <= s.t_s < (minute + 1) * 60]
        if inside:
            rows.append({"minute": minute, **{f"{key}{suffix}": fn([getattr(s, key) for s in inside])
                                              for key in RESOURCES
                                              for suffix, fn in (("", statistics.median), ("_max", max))}})
    return rows


def growth(samples: list[Sample], warmup_min: float, end_min: float) -> dict:
    """The share each figure grew from just after the warm-up to the end: the median of the samples in the
    first minutes after it against the median of the last as many minutes (five, or half of what is left)."""
    span = min(GROWTH_SPAN_MIN, (end_min - warmup_min) / 2)
    first = [s for s in samples if warmup_min * 60 <= s.t_s < (warmup_min + span) * 60]
    last = [s for s in samples if (end_min - span) * 60 <= s.t_s < end_min * 60]
    windows = {"from_minutes": [warmup_min, warmup_min + span], "to_minutes": [end_min - span, end_min]}
    if span <= 0 or not first or not last:
        return {**windows, **{key: None for key in RESOURCES}}
    medians = [{key: statistics.median(getattr(s, key) for s in group) for key in RESOURCES} for group in (first, last)]
    return {**windows, **{f"{key}_from": medians[0][key] for key in RESOURCES},
            **{f"{key}_to": medians[1][key] for key in RESOURCES},
            **{key: (medians[1][key] - medians[0][key]) / medians[0][key] for key in RESOURCES}}


def rss_slope_mb_per_h(samples: list[Sample], from_s: float) -> float | None:
    points = [(s.t_s, s.rss_mb) for s in samples if s.t_s >= from_s]
    if len(points) < 3:
        return None
    t, rss = np.array(points).T
    return float(np.polyfit(t, rss, 1)[0] * 3600)


class Soak:
    """Everything that runs against the service during the soak, and what it saw."""

    def __init__(self, args, service: ServiceProcess, book: CallBook, tts_base: int, announce_base: int,
                 metrics_port: int):
        self.args, self.service, self.book = args, service, book
        self.tts_base, self.announce_base, self.metrics_port = tts_base, announce_base, metrics_port
        self.llama = LlamaPeer(service.address)
        ready = next(READY.search(line) for line in service.lines if READY.search(line))
        self.udp_address = (ready["host"], int(ready["port"]))
        self.stop = threading.Event()
        self.began = time.monotonic()
        self.deadline = self.began + args.minutes * 60
        self.samples: list[Sample] = []
        self.counters: list[dict] = []                  # one scrape a minute
        self.harness_errors: list[str] = []
        self.findings: list[str] = []                   # what the service did that it should not have
        self.junk = Counter()
        self.stalled: list[dict] = []
        self.flood = Counter()
        self.service_died_at_s: float | None = None

    def running(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.deadline and not self.llama.died

    def _guarded(self, name: str, target, *args) -> threading.Thread:
        """A thread whose crash is the benchmark breaking: recorded, and the soak stops."""
        def run():
            try:
                target(*args)
            except Exception:
                self.harness_errors.append(f"{name}: {traceback.format_exc()}")
                self.stop.set()
        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        return thread

    def run(self) -> None:
        sampler = self._guarded("sampler", self._sample)
        peers = [self._guarded("random-bytes", self._random_bytes), self._guarded("stalled-reader", self._stalled),
                 self._guarded("udp-flood", self._udp_flood)]
        callers = [self._guarded(f"caller-{slot}", self._caller, slot) for slot in range(self.args.conversations)]
        for thread in peers + callers:
            thread.join()
        if self.llama.died:
            self.findings.append(f"a write to a LLaMA connection failed ({self.llama.died}): the real LLaMA would "
                                 "have died of SIGPIPE; the soak stopped there")
        log("the soak's time is up and every call has ended; last readings")
        self.stop.set()
        sampler.join()
        self._read()
        self.llama.close()      # LLaMA restarting: the only time its connections close

    # -- the callers ----------------------------------------------------------------------
    def _caller(self, slot: int) -> None:
        rng = random.Random(f"{self.args.seed}/caller/{slot}")
        while self.running():
            plan = plan_call(rng)
            record = self.book.take(plan, END_TIMEOUT_S)
            if record is None:
                self.findings.append(f"caller {slot}: no call id free for {END_TIMEOUT_S:.0f} s: the service has not "
                                     "ended the earlier calls on them")
                continue
            try:
                self._call(record)
            finally:
                self.book.give_back(record)

    def _call(self, record: CallRecord) -> None:
        try:
            processor = DialInProcessor(int(record.call_id), self.tts_base, self.announce_base)
        except OSError as exc:
            self.harness_errors.append(f"call {record.call_id}: its processor cannot bind: {exc}")
            self.book.end_unsent(record, "no processor")
            self.stop.wait(1.0)
            return
        turns, plan = [], record.plan
        try:
            wanted = plan.turns[:-1] if plan.cut_after_s is not None else plan.turns
            conversation = converse(self.llama, processor, record.replies, wanted, self.args.turn_timeout_s)
            turns = conversation.turns
            if conversation.error:
                record.notes.append(conversation.error)
            if plan.cut_after_s is not None and conversation.error is None and all(t.error is None for t in turns):
                turns.append(cut_reply(self.llama, processor, len(plan.turns), plan.turns[-1], plan.cut_after_s,
                                       self.args.turn_timeout_s))
        except LlamaDied as exc:
            record.notes.append(f"LLaMA died: {exc}")
        finally:
            record.killed_at = time.monotonic()
            processor.kill()
        if not turns:
            self.book.end_unsent(record, "no reply sent")
        elif not self.book.wait_ended(record, END_TIMEOUT_S):
            self.findings.append(f"call {record.call_id} (#{record.seq}): no 'ended' line within {END_TIMEOUT_S:.0f} s "
                                 "of its processor's kill; its id is not used again until there is one")
        record.checks, beyond = reply_checks(record, turns, processor, self.began)
        if beyond:
            self.findings.append(f"call {record.call_id} (#{record.seq}): its processor received {beyond} frame(s) "
                                 "beyond the replies the service logged done")

    # -- misbehaving peers -----------------------------------------------------------------------
    def _random_bytes(self) -> None:
        """New connections to the LLaMA port carrying random bytes (half after a HELLO with a junk call id,
        so that the bytes are read as text chunks); each closed at once or left open for a while."""
        rng = random.Random(f"{self.args.seed}/random-bytes")
        held: deque[tuple[float, socket.socket]] = deque()
        number = 0
        while not self.stop.wait(rng.uniform(*JUNK_PAUSE_S)) and self.running():
            number += 1
            payload = rng.randbytes(int(2 ** rng.uniform(0, JUNK_MAX_BYTES_LOG2)))
            if rng.random() < 0.5:
                payload = encode_hello(f"junk-{number}") + payload
                self.junk["after_hello"] += 1
            self.junk["connections"] += 1
            self.junk["bytes"] += len(payload)
            try:
                sock = socket.create_connection(self.service.address, timeout=5.0)
            except OSError:
                self.junk["connect_failed"] += 1
                continue
            try:
                sock.sendall(payload)
            except OSError:
                self.junk["send_failed"] += 1      # the service refused the HELLO and closed: expected
            if rng.random() < 0.5:
                sock.close()
                self.junk["closed_at_once"] += 1
            else:
                held.append((time.monotonic() + rng.uniform(*JUNK_HELD_S), sock))
                self.junk["left_open"] += 1
            while held and (len(held) > JUNK_MAX_HELD or held[0][0] <= time.monotonic()):
                held.popleft()[1].close()
        for _, sock in held:
            sock.close()

    def _stalled(self) -> None:
        """One reader at a time that sends a long reply, never reads, and has a tiny receive buffer."""
        number = 0
        while self.running():
            number += 1
            call_id = f"stalled-{number}"
            opened = time.monotonic()
            try:
                client = LlamaClient(self.service.address, call_id, rcvbuf=STALL_RCVBUF)
                client.text(STALL_TEXT)
            except OSError as exc:
                self.findings.append(f"{call_id}: the service refused it: {exc}")
                self.stop.wait(5.0)
                continue
            self.stop.wait(min(self.args.stall_s, max(0.0, self.deadline - time.monotonic())))
            client.close()
            self.stalled.append({"call_id": call_id, "opened_s": round(opened - self.began, 1),
                                 "kept_s": round(time.monotonic() - opened, 1), "text_chars": len(STALL_TEXT)})

    def _udp_flood(self) -> None:
        """Bursts of REGISTER/BYE for calls that do not exist, malformed commands and random bytes."""
        rng = random.Random(f"{self.args.seed}/udp-flood")
        ours = {str(n) for n in range(1, self.args.call_ids + 1)}
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            while not self.stop.wait(rng.uniform(*FLOOD_PAUSE_S)) and self.running():
                self.flood["bursts"] += 1
                ends = time.monotonic() + rng.uniform(*FLOOD_BURST_S)
                while time.monotonic() < ends and not self.stop.is_set():
                    for _ in range(FLOOD_RATE // 50):
                        kind, payload = flood_datagram(rng)
                        try:
                            command = parse_datagram(payload)
                        except ValueError:
                            command = None
                        if command is not None and command[1] in ours:
                            continue
                        udp.sendto(payload, self.udp_address)
                        self.flood[kind] += 1
                    time.sleep(0.02)

    # -- readings ---------------------------------------------------------------------------------
    def _sample(self) -> None:
        minute = 0
        while True:
            if not self._read():
                return
            if time.monotonic() - self.began >= (minute + 1) * 60 and self.running():
                minute += 1
                self._progress(minute)
            if self.stop.wait(SAMPLE_S):
                return

    def _read(self) -> bool:
        """A resource sample, and a scrape of the counters once a minute has passed; False once the service is gone."""
        if self.service.proc.poll() is not None:
            if self.service_died_at_s is None:
                self.service_died_at_s = round(time.monotonic() - self.began, 1)
                self.findings.append(f"the service exited with {self.service.proc.returncode} at "
                                     f"{self.service_died_at_s / 60:.1f} min")
            self.stop.set()
            return False
        try:
            self.samples.append(resources(self.service, self.began))
        except (FileNotFoundError, ProcessLookupError):
            return True
        elapsed = time.monotonic() - self.began
        if not self.counters or elapsed >= self.counters[-1]["t_s"] + 60 or self.stop.is_set():
            try:
                self.counters.append({"t_s": round(elapsed, 1), "values": scrape(self.metrics_port)})
            except OSError as exc:
                self.findings.append(f"metrics scrape failed at {elapsed / 60:.1f} min: {exc}")
        return True

    def _progress(self, minute: int) -> None:
        sample = self.samples[-1]
        checks = [c for r in self.book.snapshot() for c in r.checks]
        log(f"minute {minute}: RSS {sample.rss_mb:.0f} MB, {sample.threads} threads, {sample.fds} fds; "
            f"{len(self.book.snapshot())} calls, {len(checks)} replies checked, "
            f"{sum(not_whole(c, None) is None for c in checks)} heard whole")


def flood_datagram(rng: random.Random) -> tuple[str, bytes]:
    roll = rng.random()
    if roll < 0.35:
        return "register", f"REGISTER:{rng.randint(*FLOOD_IDS)}".encode()
    if roll < 0.60:
        return "bye", f"BYE:{rng.randint(*FLOOD_IDS)}".encode()
    if roll < 0.85:
        return "random_bytes", rng.randbytes(rng.randint(1, 200))
    return "malformed", rng.choice((f"REGISTER:flood-{rng.randint(0, 9999)}\n", "REGISTER:", "BYE:\x1b[31m1\r\n2",
                                    "HELLO:1", f"REGISTER:{'9' * rng.randint(7, 2000)}")).encode()


# -- report -------------------------------------------------------------------------------------

def reconcile(records: list[CallRecord]) -> dict:
    """Every reply the callers were sent is heard whole, cut by a deliberate kill, not whole but counted
    by the service in a drop line for its call, or lost; the four add up to the replies sent."""
    checks = [check for record in records for check in record.checks]
    usual = usual_audio(checks)
    for record in records:
        for check in record.checks:
            check.outcome, check.why = classify(check, usual.get(check.text), bool(record.drops))
    tally = Counter(check.outcome for check in checks)
    sent = len(checks)
    return {"replies_sent": sent, "heard_whole": tally[HEARD], "cut_by_kill": tally[CUT],
            "not_whole_counted": tally[COUNTED], "lost": tally[LOST],
            "balanced": tally[HEARD] + tally[CUT] + tally[COUNTED] + tally[LOST] == sent,
            "calls": len(records), "calls_cut_on_purpose": sum(r.plan.cut_after_s is not None for r in records),
            "cut_replies_sent": sum(c.cut for c in checks),
            "not_heard_whole": [{"call_id": c.call_id, "call_seq": c.call_seq, "reply": c.reply, "outcome": c.outcome,
                                 "why": c.why} for c in checks if c.outcome in (COUNTED, LOST)]}


def drop_table(delta: dict[str, float], sources: dict[str, Drops]) -> list[dict]:
    """Each drop counter's rise over the soak beside the drops the log lines name, by who caused them."""
    logged = {source: drops.as_counters() for source, drops in sources.items()}
    keys = sorted({key for key in delta if key.split("{")[0] in DROP_COUNTERS and delta[key]}
                  | {key for counters in logged.values() for key in counters})
    rows = []
    for key in keys:
        by_source = {source: counters[key] for source, counters in logged.items() if counters.get(key)}
        counted = delta.get(key, 0.0)
        rows.append({"counter": key, "counted": counted, "in_log_lines": by_source,
                     "beyond_log_lines": counted - sum(by_source.values())})
    return rows


def log_scan(lines: list[str]) -> dict:
    """Unhandled exceptions, with what follows them, and the commonest lines by shape (digits as N)."""
    hits = [n for n, line in enumerate(lines) if any(word in line for word in UNHANDLED)]
    shapes = Counter(re.sub(r"\d+", "N", " ".join(line.split(" ")[2:]))[:140] for line in lines)
    return {"lines": len(lines), "unhandled_exceptions": len(hits),
            "excerpts": ["\n".join(lines[n:n + 15]) for n in hits[:5]],
            "errors": sum(" ERROR " in line for line in lines), "warnings": sum(" WARNING " in line for line in lines),
            "line_shapes": shapes.most_common(30)}


def build_report(args, soak: Soak, startup: dict, machine: dict, exit_code: int | None, began: float) -> dict:
    minutes = max(1, int(args.minutes))
    rows = per_minute(soak.samples, minutes)
    records = soak.book.snapshot()
    for row in rows:
        sent = [c for r in records for c in r.checks if row["minute"] * 60 <= c.sent_at_s < (row["minute"] + 1) * 60]
        row["replies_sent"] = len(sent)
        row["first_audio_p95_s"] = percentile([c.first_audio_s for c in sent if c.first_audio_s is not None], 95)
    warmup = min(args.warmup_minutes, args.minutes / 2)
    grew = growth(soak.samples, warmup, args.minutes)
    callers = reconcile(records)
    first_counters, last_counters = soak.counters[0]["values"], soak.counters[-1]["values"]
    delta = {key: value - first_counters.get(key, 0.0) for key, value in last_counters.items()
             if key.split("{")[0].endswith("_total")}
    gauges = {key: value for key, value in last_counters.items() if key not in delta}
    sources = {CALLERS: Drops(), CALLERS_CUT: Drops(), **soak.book.others}
    for record in records:
        target = sources[CALLERS_CUT if record.plan.cut_after_s is not None else CALLERS]
        target.frames.update(record.drops.frames)
        target.chars.update(record.drops.chars)
        target.segments += record.drops.segments
        target.failed += record.drops.failed
        target.silent += record.drops.silent
    scan = log_scan(soak.service.lines)
    unended = [f"call {r.call_id} (#{r.seq})" for r in records if r.ended_at is None]
    firsts = [c.first_audio_s for r in records for c in r.checks if c.outcome == HEARD and c.first_audio_s is not None]
    verdict = {
        "rss_growth_ok": grew.get("rss_mb") is not None and grew["rss_mb"] <= GROWTH_LIMIT,
        "threads_growth_ok": grew.get("threads") is not None and grew["threads"] <= GROWTH_LIMIT,
        "every_reply_heard_or_cut": callers["balanced"] and callers["lost"] == 0 and callers["not_whole_counted"] == 0,
        "no_unhandled_exceptions": scan["unhandled_exceptions"] == 0,
        "service_up_throughout": soak.service_died_at_s is None,
        "every_call_ended": not unended,
        "no_findings": not soak.findings,
    }
    verdict["pass"] = all(verdict.values())
    return {
        "minutes": args.minutes, "seed": args.seed, "conversations": args.conversations, "call_ids": args.call_ids,
        "cache_mb": args.cache_mb, "machine": machine, "startup": startup, "criteria": {
            "growth_after_warmup": GROWTH_LIMIT, "warmup_minutes": args.warmup_minutes,
            "warmup_minutes_used": warmup, "whole_reply_share_of_usual_audio": WHOLE_SHARE},
        "verdict": verdict,
        "resources": {"per_minute": rows, "growth": grew, "rss_slope_mb_per_h": rss_slope_mb_per_h(
            soak.samples, warmup * 60), "samples": [asdict(s) for s in soak.samples]},
        "callers": {**callers, "first_audio_p50_s": percentile(firsts, 50), "first_audio_p95_s": percentile(firsts, 95),
                    "first_audio_max_s": max(firsts, default=None), "calls_never_ended": unended},
        "drops": drop_table(delta, sources),
        "counters": {"delta": delta, "gauges_at_end": gauges, "per_minute": soak.counters},
        "misbehaving": {"random_bytes": dict(soak.junk), "stalled_readers": soak.stalled,
                        "udp_flood": dict(soak.flood)},
        "log": scan, "findings": soak.findings, "harness_errors": soak.harness_errors,
        "service_exit_code": exit_code,
        "calls": [record.summary(soak.began) for record in records],
        "benchmark_wall_s": time.perf_counter() - began,
    }


def fmt(value, spec: str = ".1%") -> str:
    return "-" if value is None else format(value, spec)


def print_report(report: dict) -> None:
    res = report["resources"]
    print(f"\nKokoro service soak: {report['minutes']:g} min, {report['conversations']} conversations at a time on "
          f"{report['call_ids']} call ids, {report['machine']['cpu_count']} CPUs (1-min load "
          f"{report['machine']['loadavg_at_start'][0]:.1f} at start, "
          f"{report['machine']['loadavg_at_end'][0]:.1f} at end)")
    print(f"\n{'minute':>6} {'RSS MB':>8} {'max':>8} {'threads':>8} {'max':>6} {'fds':>6} {'max':>6} {'replies':>8} "
          f"{'p95 first':>10}")
    for row in res["per_minute"]:
        print(f"{row['minute']:>6} {row['rss_mb']:>8.1f} {row['rss_mb_max']:>8.1f} {row['threads']:>8.0f} "
              f"{row['threads_max']:>6} {row['fds']:>6.0f} {row['fds_max']:>6} {row['replies_sent']:>8} "
              f"{fmt(row['first_audio_p95_s'], '.2f'):>10}")
    grew = res["growth"]
    print(f"\ngrowth, median of minutes {grew['from_minutes'][0]:g}-{grew['from_minutes'][1]:g} to median of minutes "
          f"{grew['to_minutes'][0]:g}-{grew['to_minutes'][1]:g}: RSS {fmt(grew['rss_mb'])}, "
          f"threads {fmt(grew['threads'])}, "
          f"fds {fmt(grew['fds'])} (target <= {GROWTH_LIMIT:.0%}); "
          f"RSS slope {fmt(res['rss_slope_mb_per_h'], '.1f')} MB/h")
    c = report["callers"]
    print(f"\ncallers: {c['calls']} calls ({c['calls_cut_on_purpose']} hung up mid-reply on purpose), "
          f"{c['replies_sent']} replies sent = {c['heard_whole']} heard whole + {c['cut_by_kill']} cut by the kill "
          f"+ {c['not_whole_counted']} not whole, counted + {c['lost']} lost"
          f"{'' if c['balanced'] else '  (DOES NOT ADD UP)'}")
    print(f"first audio heard: p50 {fmt(c['first_audio_p50_s'], '.2f')} s, p95 {fmt(c['first_audio_p95_s'], '.2f')} s, "
          f"max {fmt(c['first_audio_max_s'], '.2f')} s")
    for miss in c["not_heard_whole"][:10]:
        print(f"  call {miss['call_id']} (#{miss['call_seq']}) reply {miss['reply']}: {miss['outcome']}: {miss['why']}")
    peers = report["misbehaving"]
    junk, flood = peers["random_bytes"], peers["udp_flood"]
    print(f"misbehaving peers: {junk.get('connections', 0)} random-bytes connections ({junk.get('after_hello', 0)} "
          f"after a HELLO, {junk.get('left_open', 0)} left open), {len(peers['stalled_readers'])} stalled readers, "
          f"{flood.get('bursts', 0)} UDP bursts of {sum(n for k, n in flood.items() if k != 'bursts')} datagrams")
    print("\ndrops counted by the service over the soak, beside its log lines:")
    for row in report["drops"]:
        named = ", ".join(f"{source} {n:g}" for source, n in row["in_log_lines"].items()) or "none"
        print(f"  {row['counter']:55s} {row['counted']:>8g}   log lines: {named}; "
              f"beyond them {row['beyond_log_lines']:g}")
    scan = report["log"]
    print(f"\nservice log: {scan['lines']} lines, {scan['warnings']} warnings, {scan['errors']} errors, "
          f"{scan['unhandled_exceptions']} unhandled exceptions; exit code {report['service_exit_code']}")
    for excerpt in scan["excerpts"]:
        print("  " + excerpt.replace("\n", "\n  "))
    for finding in report["findings"]:
        print(f"FINDING: {finding}")
    for error in report["harness_errors"]:
        print(f"HARNESS ERROR: {error}")
    print("\n" + "  ".join(f"{name} {'yes' if ok else 'NO'}" for name, ok in report["verdict"].items()))


def plot(report: dict, path: Path) -> None:
    """RSS, threads and open files over the soak, with the two windows growth compares and the 5 % band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    samples, rows = report["resources"]["samples"], report["resources"]["per_minute"]
    grew = report["resources"]["growth"]
    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for ax, key, label in zip(axes, RESOURCES, ("RSS (MB)", "threads", "open fds")):
        ax.plot([s["t_s"] / 60 for s in samples], [s[key] for s in samples], color="0.6", linewidth=0.8,
                label=f"every {SAMPLE_S:g} s")
        ax.plot([row["minute"] + 0.5 for row in rows], [row[key] for row in rows], "o", label="median of the minute")
        for window in ("from_minutes", "to_minutes"):
            ax.axvspan(*grew[window], color="0.85", alpha=0.5)
        if grew[key] is not None:
            base = grew[f"{key}_from"]
            ax.hlines([base, base * (1 + GROWTH_LIMIT)], grew["from_minutes"][0], grew["to_minutes"][1],
                      colors=["green", "red"], linestyles=[":", "--"])
            ax.plot(grew["to_minutes"], [grew[f"{key}_to"]] * 2, color="black", linewidth=2,
                    label=f"growth {grew[key]:+.1%} (limit {GROWTH_LIMIT:.0%}, red)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    axes[-1].set_xlabel("minutes (grey: the windows whose medians growth compares)")
    fig.suptitle(f"Kokoro service soak: {report['conversations']} conversations and misbehaving peers, "
                 f"{report['machine']['cpu_count']} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main ----------------------------------------------------------------------------------------

def run(args) -> int:
    began = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    tts_base = free_bases(socket.SOCK_STREAM, args.call_ids, 1)[0]
    announce_base = free_bases(socket.SOCK_DGRAM, args.call_ids, 1)[0]
    metrics_port = free_port(socket.SOCK_STREAM)
    book = CallBook(args.call_ids)
    log(f"starting the service (processor link auto, cache {'default' if args.cache_mb is None else args.cache_mb})")
    service = ServiceProcess(args.voices_dir, args.out / "soak-service.log", cache_mb=args.cache_mb, on_line=book.feed,
                             extra_args=("--processor-link", "auto", "--processor-base-port", str(tts_base),
                                         "--announce-base-port", str(announce_base),
                                         "--metrics-port", str(metrics_port)))
    try:
        startup = service.wait_ready()
        log(f"ready in {startup['startup_s']:.1f} s; soaking for {args.minutes:g} min")
        soak = Soak(args, service, book, tts_base, announce_base, metrics_port)
        soak.run()
    except BenchmarkError as exc:
        service.stop()
        print(f"\n*** BENCHMARK FAILED ***\n{exc}", file=sys.stderr)
        return 1
    except BaseException:
        service.stop()
        raise
    service.stop()
    machine["loadavg_at_end"] = os.getloadavg()
    if not soak.counters:
        print("\n*** BENCHMARK FAILED ***\nthe service's counters could not be read", file=sys.stderr)
        return 1
    report = build_report(args, soak, startup, machine, service.proc.returncode, began)
    print_report(report)
    write_results(report, args.out / "soak.json", plot, args.out / "soak.png")
    if soak.harness_errors:
        print("\n*** BENCHMARK BROKE: see the harness errors above ***", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = bench_arguments(__doc__.splitlines()[0], "soak.json, soak.png")
    parser.add_argument("--minutes", type=float, default=30.0,
                        help="how long the load runs (default 30; 3 is a smoke run)")
    parser.add_argument("--conversations", type=int, default=CONVERSATIONS,
                        help=f"calls at once (default {CONVERSATIONS})")
    parser.add_argument("--call-ids", type=int, default=CALL_IDS,
                        help=f"call ids 1..N, reused as calls end (default {CALL_IDS})")
    parser.add_argument("--warmup-minutes", type=float, default=WARMUP_MINUTES,
                        help=f"growth is measured from this minute on (default {WARMUP_MINUTES:g}; at most half "
                             "the run)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the calls and the misbehaving peers (default 1)")
    parser.add_argument("--cache-mb", type=float, default=None, help="the service's --cache-mb (default: its own)")
    parser.add_argument("--stall-s", type=float, default=STALL_S,
                        help=f"how long each stalled reader is kept (default {STALL_S:g})")
    parser.add_argument("--turn-timeout-s", type=float, default=120.0,
                        help="how long a reply may take to be logged done, then played (default 120)")
    args = parser.parse_args()
    if args.call_ids < args.conversations:
        parser.error("--call-ids must be at least --conversations")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())

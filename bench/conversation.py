#!/usr/bin/env python3
"""Conversation benchmark: how many phone calls at once the service speaks for, as callers hear it.

N calls at once, each a conversation of several turns on one LLaMA connection (each reply
sent whole, no BYE, as the real LLaMA client does), each call's audio played in real time by
an emulated dial-in processor (tests/peers.py). The service runs twice, with the playout-aware
and the round-robin scheduler, interleaved level by level; the bare engine gives the physical
bound. See bench/README.md.
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
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from benchmark import (ROOT, BareEngine, BenchmarkError, ServiceProcess, bench_arguments, free_port, log,
                       machine_info, mean_of_passes, write_results)
from balancer import Deployment
from engine_layout import layouts, throughput

sys.path.insert(0, str(ROOT / "tests"))
from peers import DialInProcessor, LlamaDied, LlamaPeer  # noqa: E402

from kokoro_daemon.engines.windows import DEFAULT_SYNTHESIS, SYNTHESIS_MODES  # noqa: E402
from kokoro_daemon.segmenter import split_text  # noqa: E402

# Phone-agent replies of 1 to 4 sentences, from the speech judge's phrases and others like them.
REPLIES = (
    "Is there anything else I can help you with?",
    "The doctor will see you in about 15 minutes.",
    "Goodbye, and have a wonderful day.",
    "Thank you for calling. How can I help you today?",
    "I can help you with that. May I have your account number, please?",
    "I'm sorry, I didn't catch that. Could you repeat your last name?",
    "Let me transfer you to our billing department. Please stay on the line.",
    "I have updated your email address. You should receive a confirmation shortly.",
    "Of course. I have moved your appointment to Thursday at 3 PM.",
    "Great, you are all set. Thank you for calling, and goodbye.",
    "Your appointment is booked for Monday, June 9th at 10:15 AM. "
    "Please remember to bring your insurance card and a photo ID.",
    "Your order number is 48213, and it should arrive within 3 to 5 business days. "
    "Please call us back at 555-0142 if anything changes.",
    "We have two openings left this week: Wednesday afternoon or Friday morning. Which one works better for you?",
    "The total comes to $42.50, including tax. We received your payment on November 3rd. Thank you!",
    "Our office is open from 8 AM to 6 PM, Monday through Friday. Dr. Smith's clinic is located at "
    "221 Baker Street, second floor. Parking is free for patients.",
    "Your prescription refill is ready for pickup after 2 PM today. The pharmacy is on the ground floor, "
    "next to the main entrance. Is there anything else I can help you with?",
    "Your balance of $1,250 is due on the 1st of next month. You can pay online, by phone, or at the front desk. "
    "Would you like me to set up a payment plan? It only takes a minute.",
    "I found your booking. It is for two people on Saturday at 7:30 PM. Would you like to change the time? "
    "We also have a table at 8 PM.",
    "Let me check that for you. Your package left our warehouse this morning. It should arrive tomorrow "
    "before noon. You will get a text message when it is out for delivery.",
    "I'm sorry to hear that. I have opened a repair ticket for you. A technician will call you within "
    "24 hours. Your ticket number is 7731.",
)
BARE_TEXTS = REPLIES[1::2]              # the bare engine's workload: every other reply, short to long
SCHEDULES = ("playout", "round-robin")
LEVELS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
TURNS = 4
TALK_S = (2.0, 5.0)                     # the caller talks this long before each reply (seeded)
TURN_TIMEOUT_S = 120.0
FIRST_AUDIO_FACTOR = 2.0                # sustained: p95 first audio <= 2x the single-call figure ...
GAP_SHARE = 0.01                        # ... and silences inside replies <= 1% of the audio
GAP_COUNTED_S = 0.1                     # gaps over this are counted one by one
SILENCE_S = 0.001                       # shorter breaks in playout are rounding, not silence
ENGINE_BUSY_METRIC = "kokoro_engine_busy_seconds"    # a counter, used when the service exports it
REPLY_DONE = re.compile(r"call (?P<call>\S+): reply (?P<reply>\d+) done: (?P<frames>\d+) frames, "
                        r"(?P<audio>[\d.]+) s audio, first audio (?P<first>\S+) s")


# -- knowing when a reply is complete ---------------------------------------------------

@dataclass(frozen=True)
class ReplyDone:
    call_id: str
    reply: int
    frames: int
    audio_s: float
    first_audio_s: float | None     # the service's own figure


class ReplyLog:
    """The service's per-reply 'done' lines, by call, as they come off its stderr."""

    def __init__(self):
        self._done: dict[str, list[ReplyDone]] = {}
        self._changed = threading.Condition()

    def feed(self, line: str) -> None:
        match = REPLY_DONE.search(line)
        if match is None:
            return
        try:
            first = float(match["first"])
        except ValueError:
            first = None
        done = ReplyDone(match["call"], int(match["reply"]), int(match["frames"]), float(match["audio"]), first)
        with self._changed:
            self._done.setdefault(done.call_id, []).append(done)
            self._changed.notify_all()

    def wait(self, call_id: str, count: int, timeout: float) -> ReplyDone | None:
        """The ``count``-th reply of this call to be done, once it is (None after ``timeout``)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._done.get(call_id, ())) >= count, timeout):
                return None
            return self._done[call_id][count - 1]


# -- one conversation -------------------------------------------------------------------

@dataclass(frozen=True)
class TurnPlan:
    talk_s: float       # the caller talks, then the agent's reply is sent
    text: str


def plan_calls(seed: int, calls: int, turns: int) -> list[list[TurnPlan]]:
    """The conversations for ``calls`` calls: the same for every scheduler at that number of calls."""
    rng = random.Random(f"{seed}/{calls}")
    return [[TurnPlan(rng.uniform(*TALK_S), rng.choice(REPLIES)) for _ in range(turns)] for _ in range(calls)]


@dataclass
class Turn:
    call_id: str
    turn: int
    text: str
    sent_at: float
    frames: int = 0
    audio_s: float = 0.0
    first_audio_s: float | None = None            # text sent -> its first audio played at the processor
    service_first_audio_s: float | None = None    # the service's own figure, from its log line
    playout_s: float = 0.0                        # first to last audio of the reply played
    gaps_s: list[float] = field(default_factory=list)    # silences inside the reply's playout
    erased_s: float = 0.0
    error: str | None = None


@dataclass
class Conversation:
    call_id: str
    started_at: float
    ended_at: float = 0.0
    turns: list[Turn] = field(default_factory=list)
    error: str | None = None

    @property
    def agent_audio_s(self) -> float:
        return sum(t.audio_s for t in self.turns)


def measure_turn(turn: Turn, processor: DialInProcessor, first_frame: int) -> None:
    """What the caller heard of the reply whose frames are ``first_frame`` .. + turn.frames."""
    frames = range(first_frame, first_frame + turn.frames)
    pieces = [p for p in processor.played if p.frame in frames]
    turn.audio_s = sum(len(f.samples) / f.rate for f in processor.frames[frames.start:frames.stop] if f.rate > 0)
    turn.erased_s = sum(e.seconds for e in processor.erased if e.frame in frames)
    if not pieces:
        turn.error = "none of its audio was played"
        return
    start, end = pieces[0].start, pieces[-1].end
    turn.first_audio_s = start - turn.sent_at
    turn.playout_s = end - start
    turn.gaps_s = [length for _, length in processor.gaps(start, end, min_s=SILENCE_S)]


def converse(llama: LlamaPeer, processor: DialInProcessor, replies: ReplyLog, plan: list[TurnPlan],
             timeout_s: float = TURN_TIMEOUT_S) -> Conversation:
    """One call: the caller talks, the agent's reply is sent whole and played to its end, turn after turn.

    A reply is complete when the service has logged it done with F frames and the processor
    has played F more frames; a turn that does not get there ends the conversation.
    """
    call_id = str(processor.call_id)
    conversation = Conversation(call_id, time.monotonic())
    heard = 0           # frames of the earlier replies
    for number, step in enumerate(plan, 1):
        time.sleep(step.talk_s)
        if len(processor.frames) != heard:
            conversation.error = (f"{len(processor.frames) - heard} frame(s) beyond the {heard} "
                                  "the service logged for its replies")
            break
        try:
            turn = Turn(call_id, number, step.text, llama.reply(call_id, step.text))
        except LlamaDied as exc:
            conversation.error = f"LLaMA died: {exc}"
            break
        conversation.turns.append(turn)
        done = replies.wait(call_id, number, timeout_s)
        if done is None:
            turn.error = f"no 'reply {number} done' log line within {timeout_s:.0f} s"
            break
        turn.frames, turn.service_first_audio_s = done.frames, done.first_audio_s
        if not processor.wait_played(heard + done.frames, timeout_s + done.audio_s):
            turn.error = f"{len(processor.frames) - heard} of its {done.frames} frames reached the processor"
            break
        measure_turn(turn, processor, heard)
        heard += done.frames
        if turn.error:
            break
    conversation.ended_at = time.monotonic()
    return conversation


# -- a level: N conversations at once ---------------------------------------------------

def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarize(conversations: list[Conversation], processors: list[DialInProcessor], turns_planned: int,
              wall_s: float, cpu_s: float, engine_busy_s: float | None) -> dict:
    """A level's figures: first audio played, silences inside replies, audio, erasures, engine load, errors."""
    turns = [t for c in conversations for t in c.turns]
    measured = [t for t in turns if t.error is None]
    first = [t.first_audio_s for t in measured]
    gaps = [g for t in measured for g in t.gaps_s]
    audio = sum(p.audio_s for p in processors)
    errors = [f"call {c.call_id}: {c.error}" for c in conversations if c.error]
    errors += [f"call {t.call_id} turn {t.turn}: {t.error}" for t in turns if t.error]
    errors += [f"processor {p.call_id}: {e}" for p in processors for e in p.errors]
    missing = len(conversations) * turns_planned - len(measured)
    if missing and not errors:
        errors.append(f"{missing} turn(s) not measured")
    durations = sum(c.ended_at - c.started_at for c in conversations)
    return {
        "calls": len(conversations), "turns": len(measured), "turns_missing": missing,
        "first_audio_p50_s": percentile(first, 50), "first_audio_p95_s": percentile(first, 95),
        "first_audio_max_s": max(first, default=None), "first_audio_all_s": first,
        "gaps_over_100ms": sum(g > GAP_COUNTED_S for g in gaps), "gap_total_s": sum(gaps),
        "gap_longest_s": max(gaps, default=0.0), "gap_share": sum(gaps) / audio if audio else None,
        "audio_s": audio, "erased_s": sum(p.erased_s for p in processors),
        "cut_at_call_end_s": sum(p.cut_s for p in processors),
        "wall_s": wall_s, "audio_per_wall_s": audio / wall_s,
        "engine_busy_cpu": cpu_s / (wall_s * (os.cpu_count() or 1)),
        "engine_busy_metric": engine_busy_s / wall_s if engine_busy_s is not None else None,
        "agent_audio_s": sum(c.agent_audio_s for c in conversations), "conversation_s": durations,
        "errors": errors[:20], "error_count": len(errors),
        "turn_details": [asdict(t) for t in turns],
    }


def shortfalls(level: dict, single_call_s: float) -> list[str]:
    """Why a level is not sustained (nothing: it is)."""
    reasons = []
    if level["error_count"]:
        reasons.append(f"{level['error_count']} error(s)")
    p95 = level["first_audio_p95_s"]
    if p95 is None or p95 > FIRST_AUDIO_FACTOR * single_call_s:
        reasons.append(f"p95 first audio {p95} s > {FIRST_AUDIO_FACTOR} x {single_call_s:.3f} s")
    if level["gap_share"] is None or level["gap_share"] > GAP_SHARE:
        reasons.append(f"silence inside replies {level['gap_total_s']:.2f} s > {GAP_SHARE:.0%} of the audio")
    if level["erased_s"] > 0:
        reasons.append(f"{level['erased_s']:.2f} s of audio erased by the processor")
    return reasons


def calls_sustained(levels: dict[int, dict]) -> int:
    """The largest N below the first level that falls short (0 if one call already does)."""
    sustained = 0
    for calls in sorted(levels):
        if levels[calls]["shortfalls"]:
            break
        sustained = calls
    return sustained


# -- the service under test ---------------------------------------------------------------

def ephemeral_start() -> int:
    """The lowest port the kernel gives outgoing connections (Linux; 32768 where it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_bases(kind: int, count: int, how_many: int) -> list[int]:
    """``how_many`` bases, each with base+1 .. base+count free to bind now, no two ranges overlapping, all
    below the ephemeral range as 9002+N is: an outgoing connection may not take a call's port meanwhile."""
    bases: list[int] = []
    for _ in range(200):
        base = random.randrange(10000, ephemeral_start() - count - 1)
        if any(abs(base - other) <= count for other in bases):
            continue
        try:
            with ExitStack() as held:
                for port in range(base + 1, base + count + 1):
                    held.enter_context(socket.socket(socket.AF_INET, kind)).bind(("0.0.0.0", port))
        except OSError:
            continue
        bases.append(base)
        if len(bases) == how_many:
            return bases
    raise BenchmarkError(f"no {how_many} free ranges of {count} ports")


class ServiceUnderTest:
    """The real service with dial-in processors and one scheduler, its reply log, and one LLaMA client.

    One process on every core (``cpus`` None), or one instance per entry of ``cpus`` (pinned to those
    cores) behind HAProxy as deploy/ lays them out (bench/balancer.py).
    """

    def __init__(self, schedule: str, voices_dir: Path, log_path: Path, tts_base: int, announce_base: int,
                 synthesis: str, cpus: list[set[int] | None] | None = None):
        self.schedule = schedule
        self.tts_base, self.announce_base = tts_base, announce_base
        self.replies = ReplyLog()
        self.next_call_id = 1
        args = ("--processor-link", "dial-in", "--processor-base-port", str(tts_base),
                "--announce-base-port", str(announce_base), "--schedule", schedule, "--synthesis", synthesis)
        self.deployment: Deployment | None = None
        if cpus is None:
            metrics_port = free_port(socket.SOCK_STREAM)
            process = ServiceProcess(voices_dir, log_path, cache_mb=0, on_line=self.replies.feed,
                                     extra_args=(*args, "--metrics-port", str(metrics_port)))
            self.instances, self.address = [process], process.address
            self.metrics_ports = [metrics_port]
        else:
            workdir = log_path.with_suffix("")
            workdir.mkdir(parents=True, exist_ok=True)
            self.deployment = Deployment(voices_dir, workdir, cpus, extra_args=args, cache_mb=0,
                                         on_line=self.replies.feed)
            self.instances, self.address = self.deployment.instances, self.deployment.address
            self.metrics_ports = [http for _, http in self.deployment.ports]   # /metrics is on the HTTP port
        self.llama: LlamaPeer | None = None

    def wait_ready(self) -> dict:
        startup = self.deployment.wait_ready() if self.deployment else self.instances[0].wait_ready()
        self.llama = LlamaPeer(self.address)
        return startup

    def call_ids(self, count: int) -> list[int]:
        """Fresh ids: a LLaMA connection is never let go, so an id is not reused within one run."""
        ids = list(range(self.next_call_id, self.next_call_id + count))
        self.next_call_id += count
        return ids

    def cpu_s(self) -> float:
        return sum(instance.cpu_s() for instance in self.instances)

    def engine_busy_s(self) -> float | None:
        """The instances' own engine-busy counters, summed, if they export them."""
        from prometheus_client.parser import text_string_to_metric_families
        total = 0.0
        for port in self.metrics_ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                    text = response.read().decode()
            except OSError:
                return None
            total += sum(s.value for family in text_string_to_metric_families(text) if family.name == ENGINE_BUSY_METRIC
                         for s in family.samples if s.name == f"{ENGINE_BUSY_METRIC}_total")
        return total

    def stop(self) -> None:
        if self.llama is not None:
            self.llama.close()      # LLaMA restarting: the only time its connections close
        if self.deployment is not None:
            self.deployment.stop()
        else:
            self.instances[0].stop()


@contextmanager
def services_under_test(specs: dict[str, dict], voices_dir: Path, call_ids: int) -> Iterator[dict[str, ServiceUnderTest]]:
    """A ServiceUnderTest for each spec (its keyword arguments), each with port ranges of its own for
    ``call_ids`` calls; all stopped at the end."""
    tts_bases, announce_bases = (free_bases(kind, call_ids, len(specs)) for kind in (socket.SOCK_STREAM,
                                                                                      socket.SOCK_DGRAM))
    services: dict[str, ServiceUnderTest] = {}
    try:
        for (name, spec), tts_base, announce_base in zip(specs.items(), tts_bases, announce_bases):
            log(f"starting {name}")
            services[name] = ServiceUnderTest(voices_dir=voices_dir, tts_base=tts_base, announce_base=announce_base,
                                              **spec)
        yield services
    finally:
        for service in services.values():
            service.stop()


def run_level(service: ServiceUnderTest, plans: list[list[TurnPlan]], timeout_s: float) -> dict:
    """``len(plans)`` conversations at once, each call's processor killed at its end."""
    try:
        processors = [DialInProcessor(n, service.tts_base, service.announce_base)
                      for n in service.call_ids(len(plans))]
    except OSError as exc:
        raise BenchmarkError(f"cannot bind a processor's UDP port: {exc}") from None
    conversations: list[Conversation | None] = [None] * len(plans)

    def call(i: int) -> None:
        try:
            conversations[i] = converse(service.llama, processors[i], service.replies, plans[i], timeout_s)
        finally:
            processors[i].kill()

    cpu, busy, began = service.cpu_s(), service.engine_busy_s(), time.monotonic()
    threads = [threading.Thread(target=call, args=(i,), name=f"call-{i}") for i in range(len(plans))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - began
    busy_after = service.engine_busy_s()
    finished = [c if c is not None else Conversation(str(p.call_id), began, began, error="crashed")
                for c, p in zip(conversations, processors)]
    return summarize(finished, processors, len(plans[0]), wall, service.cpu_s() - cpu,
                     busy_after - busy if busy is not None and busy_after is not None else None)


def run_levels(services: dict[str, ServiceUnderTest], levels: tuple[int, ...], turns: int, seed: int,
               timeout_s: float, every_level: bool = False) -> tuple[dict[str, dict[int, dict]], float]:
    """Each level's conversations on every service in turn, the order alternating level by level so that a
    noisy spell on the machine falls on all; until every service falls short (or every level, if asked).
    Also the single-call p95 first audio over all services: the one reference their levels are held to."""
    results: dict[str, dict[int, dict]] = {name: {} for name in services}
    single_call_s = None
    short: set[str] = set()
    for index, calls in enumerate(levels):
        plans = plan_calls(seed, calls, turns)
        for name in (list(services) if index % 2 == 0 else list(services)[::-1]):
            if name not in short or every_level:
                log(f"{name}: {calls} call(s) x {turns} turns")
                results[name][calls] = run_level(services[name], plans, timeout_s)
        if single_call_s is None:
            firsts = [s for r in results.values() for s in r[1]["first_audio_all_s"]]
            if not firsts:
                raise BenchmarkError("no turn of a single call was heard:\n  "
                                     + "\n  ".join(e for r in results.values() for e in r[1]["errors"]))
            single_call_s = percentile(firsts, 95)
        for name in services:
            if calls in results[name]:
                level = results[name][calls]
                level["shortfalls"] = shortfalls(level, single_call_s)
                if level["shortfalls"]:
                    short.add(name)
        if short == set(services) and not every_level:
            break
    return results, single_call_s


# -- the physical bound ---------------------------------------------------------------------

class BareLayouts:
    """The bare engine in each thread layout of bench/engine_layout.py."""

    def __init__(self, voices_dir: Path):
        self.layouts = {f"{workers} session(s) x {threads} thread(s)": [BareEngine(voices_dir, threads=threads)
                                                                         for _ in range(workers)]
                        for workers, threads in layouts(os.cpu_count() or 1)}
        for engines in self.layouts.values():
            for engine in engines:
                engine.speak(BARE_TEXTS[0])

    def measure(self, texts: tuple[str, ...]) -> dict[str, float]:
        """Audio seconds per wall second of each layout, all its sessions busy on ``texts`` at once."""
        return {name: throughput(engines, texts) for name, engines in self.layouts.items()}

    def first_segment_s(self, replies: set[str]) -> dict[str, float]:
        """Each reply's first segment as the service cuts it, on one session with every core: median of 3."""
        engine = next(iter(self.layouts.values()))[0]
        firsts = {reply: split_text(reply)[0] for reply in replies}
        return {reply: statistics.median(engine.speak(first)["wall_s"] for _ in range(3))
                for reply, first in sorted(firsts.items())}


def issue_figures(playout: dict[int, dict], single_call_s: float, first_segments: dict[str, float],
                  bare_best: float) -> dict:
    """The capacity issue's own checks, on the playout schedule: a lone caller's first audio per turn against
    the bare engine's time for that turn's first segment; 4 calls against 1; throughput at 8 calls."""
    figures: dict = {}
    singles = playout.get(1, {}).get("turn_details", [])
    if singles:
        figures["single_call_first_audio_over_bare_first_segment_max"] = max(
            t["first_audio_s"] / first_segments[t["text"]] for t in singles if t["first_audio_s"] is not None)
    if 4 in playout:
        figures["calls_4_first_audio_p95_over_single_call"] = playout[4]["first_audio_p95_s"] / single_call_s
        figures["calls_4_longest_gap_s"] = playout[4]["gap_longest_s"]
    if 8 in playout:
        figures["calls_8_audio_per_wall_s_over_bare_best"] = playout[8]["audio_per_wall_s"] / bare_best
    return figures


# -- report ----------------------------------------------------------------------------------

def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_report(report: dict) -> None:
    print(f"\nKokoro service conversation benchmark ({report['machine']['cpu_count']} CPUs, "
          f"{report['turns']} turns per call, cache off; 1-min load average "
          f"{report['machine']['loadavg_at_start'][0]:.1f} at start, {report['machine']['loadavg_at_end'][0]:.1f} at end)")
    header = ("calls", "turns", "first p50", "p95", "max", "gaps>0.1", "gap s", "longest", "audio s", "erased",
              "busy", "verdict")
    for schedule in SCHEDULES:
        print(f"\n--schedule {schedule}: calls sustained {report['sustained'][schedule]}")
        print("".join(f"{h:>10s}" for h in header))
        for calls, level in sorted(report["levels"][schedule].items(), key=lambda kv: int(kv[0])):
            verdict = "ok" if not level["shortfalls"] else "SHORT"
            print(f"{calls:>10}{level['turns']:>10}" + "".join(f"{fmt(v):>10s}" for v in (
                level["first_audio_p50_s"], level["first_audio_p95_s"], level["first_audio_max_s"])) +
                f"{level['gaps_over_100ms']:>10}" + "".join(f"{fmt(v):>10s}" for v in (
                    level["gap_total_s"], level["gap_longest_s"], level["audio_s"], level["erased_s"],
                    level["engine_busy_cpu"])) + f"{verdict:>10s}")
            for reason in level["shortfalls"]:
                print(f"{'':10s}  {reason}")
    bound = report["physical_bound"]
    print(f"\nsingle-call p95 first audio (both schedulers): {report['single_call_first_audio_p95_s']:.3f} s")
    print(f"bare engine: {bound['bare_audio_per_wall_s']:.2f} audio s per wall s ({bound['bare_layout']}; "
          + ", ".join(f"{k} {v:.2f}" for k, v in bound["bare_layouts"].items()) + ")")
    print(f"one conversation demands {bound['demand_audio_per_wall_s']:.3f} agent audio s per wall s "
          f"-> physical bound {bound['calls']:.1f} calls")
    for name, value in report["ratios"].items():
        print(f"  {name:42s} {fmt(value)}")
    targets = {"single_call_first_audio_over_bare_first_segment_max": "<= 1.1",
               "calls_4_first_audio_p95_over_single_call": "<= 2.5", "calls_4_longest_gap_s": "<= 0.25",
               "calls_8_audio_per_wall_s_over_bare_best": ">= 1.0"}
    for name, value in report["acceptance"].items():
        print(f"  {name:52s} {fmt(value, '.3f')}  {targets[name]}")


def plot(report: dict, path: Path) -> None:
    """p95 first audio and silence inside replies against calls, both schedulers, with the limits."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (first, gaps) = plt.subplots(1, 2, figsize=(11, 4))
    for schedule, marker in zip(SCHEDULES, ("o-", "s--")):
        levels = sorted(report["levels"][schedule].items(), key=lambda kv: int(kv[0]))
        calls = [int(n) for n, _ in levels]
        nan = float("nan")      # a level where no reply was heard
        first.plot(calls, [lv["first_audio_p95_s"] or nan for _, lv in levels], marker, label=schedule)
        gaps.plot(calls, [100 * lv["gap_share"] if lv["gap_share"] is not None else nan for _, lv in levels],
                  marker, label=schedule)
    first.axhline(FIRST_AUDIO_FACTOR * report["single_call_first_audio_p95_s"], color="gray", linestyle=":",
                  label=f"{FIRST_AUDIO_FACTOR:g} x single call")
    gaps.axhline(100 * GAP_SHARE, color="gray", linestyle=":", label=f"{GAP_SHARE:.0%} of the audio")
    for ax in (first, gaps):
        ax.axvline(report["physical_bound"]["calls"], color="red", linestyle=":", label="physical bound")
        ax.set_xticks(sorted({int(n) for levels in report["levels"].values() for n in levels}))
        ax.set_xlabel("simultaneous calls")
        ax.grid(alpha=0.3)
        ax.legend()
    first.set_ylabel("p95 time to first audio played (s)")
    gaps.set_ylabel("silence inside replies (% of audio)")
    fig.suptitle(f"Kokoro service conversations, onnx on {report['machine']['cpu_count']} CPUs, cache off")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- main ----------------------------------------------------------------------------------

def run(args) -> int:
    levels = (1, 2) if args.quick else tuple(n for n in LEVELS if n <= args.max_calls)
    turns = 2 if args.quick else args.turns
    bare_texts = BARE_TEXTS[:3] if args.quick else BARE_TEXTS
    args.out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    began = time.perf_counter()
    specs = {schedule: {"schedule": schedule, "log_path": args.out / f"conversation-{schedule}.log",
                        "synthesis": args.synthesis} for schedule in SCHEDULES}
    try:
        with services_under_test(specs, args.voices_dir, sum(levels)) as services:
            startup = {s: svc.wait_ready() for s, svc in services.items()}
            log("loading the bare engine here; pass 1")
            bare = BareLayouts(args.voices_dir)
            passes = [bare.measure(bare_texts)]
            results, single_call_s = run_levels(services, levels, turns, args.seed, args.turn_timeout_s,
                                                args.every_level)
            if not args.quick:
                log("bare engine, pass 2")
                passes.append(bare.measure(bare_texts))
        first_segments = bare.first_segment_s({t["text"] for s in SCHEDULES for t in results[s][1]["turn_details"]})
    except BenchmarkError as exc:
        print(f"\n*** BENCHMARK FAILED ***\n{exc}", file=sys.stderr)
        return 1
    machine["loadavg_at_end"] = os.getloadavg()
    bare_layouts = mean_of_passes(passes)
    best = max(bare_layouts, key=bare_layouts.get)
    singles = [results[s][1] for s in SCHEDULES]
    demand = sum(lv["agent_audio_s"] for lv in singles) / sum(lv["conversation_s"] for lv in singles)
    bound = bare_layouts[best] / demand
    sustained = {s: calls_sustained(results[s]) for s in SCHEDULES}
    acceptance = issue_figures(results["playout"], single_call_s, first_segments, bare_layouts[best])
    report = {
        "quick": args.quick, "synthesis": args.synthesis, "turns": turns, "seed": args.seed, "talk_s": TALK_S, "replies": REPLIES,
        "levels_planned": levels, "machine": machine, "startup": startup,
        "criteria": {"first_audio_p95_over_single_call": FIRST_AUDIO_FACTOR, "gap_share": GAP_SHARE,
                     "erased_s": 0.0, "errors": 0},
        "single_call_first_audio_p95_s": single_call_s,
        "physical_bound": {"bare_layouts": bare_layouts, "bare_passes": passes, "bare_layout": best,
                           "bare_audio_per_wall_s": bare_layouts[best], "demand_audio_per_wall_s": demand,
                           "calls": bound},
        "sustained": sustained,
        "ratios": {"sustained_playout_over_round_robin": (sustained["playout"] / sustained["round-robin"]
                                                          if sustained["round-robin"] else None),
                   "sustained_playout_over_physical_bound": sustained["playout"] / bound,
                   "sustained_round_robin_over_physical_bound": sustained["round-robin"] / bound},
        "acceptance": acceptance,
        "bare_first_segment_s": first_segments,
        "levels": results,
        "benchmark_wall_s": time.perf_counter() - began,
    }
    print_report(report)
    write_results(report, args.out / "conversation.json", plot, args.out / "conversation.png")
    return 0


def conversation_arguments(description: str, outputs: str, max_calls: int):
    """The options of the benchmarks that hold conversations (this one, instances.py)."""
    parser = bench_arguments(description, outputs)
    parser.add_argument("--turns", type=int, default=TURNS, help=f"replies per conversation (default {TURNS})")
    parser.add_argument("--max-calls", type=int, default=max_calls,
                        help=f"the most simultaneous calls tried (default {max_calls})")
    parser.add_argument("--seed", type=int, default=1, help="seed of the talk times and replies (default 1)")
    parser.add_argument("--turn-timeout-s", type=float, default=TURN_TIMEOUT_S,
                        help=f"how long a reply may take to be logged done, then played (default {TURN_TIMEOUT_S:.0f})")
    parser.add_argument("--every-level", action="store_true",
                        help="run every level up to --max-calls, even past the first that falls short")
    return parser


def main() -> int:
    parser = conversation_arguments(__doc__.splitlines()[0], "conversation.json, conversation.png", 16)
    parser.add_argument("--quick", action="store_true", help="1 and 2 calls, 2 turns, one bare pass: a smoke check")
    parser.add_argument("--synthesis", choices=SYNTHESIS_MODES, default=DEFAULT_SYNTHESIS,
                        help=f"the services' --synthesis (default {DEFAULT_SYNTHESIS})")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())

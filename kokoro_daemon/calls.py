"""Calls by call_id: where each call's audio goes, and the one writer loop that takes it there.

A call starts with its LLaMA connection's HELLO (or, on a connection whose previous call
ended, with its next text) and ends when its processor link closes, on ``BYE:N``, after a
TCP BYE once its audio is out, or when its LLaMA connection goes while no processor is
linked. Its audio waits in a FrameQueue; one writer thread per call with audio to send
takes it, in order, to the processor link if there is one, else (after ``processor_wait_s``
for a call that could still link) back on the LLaMA connection. Links are paced: a
processor is never sent more than ``max_lead_s`` ahead of real-time playout, since today's
processor erases the oldest audio it holds beyond 12 s.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from . import metrics
from .frames import Audio, FrameQueue, PlayoutClock
from .linking import DialIn, DialOut, Linker
from .protocol import encode_frame, printable
from .throttle import LogThrottle
from .transports import LinkTransport, ReplyTransport, Transport

log = logging.getLogger(__name__)

ROUTING_MODES = ("auto", "reply-only", "processor-only")
LINK_MODES = ("auto", "dial-in", "dial-out")
MAX_LINK_FRAME_S = 1.0
EARLY_REGISTER_S = 5.0
MAX_EARLY_REGISTERS = 256
WARN_INTERVAL_S = 60.0


@dataclass(frozen=True)
class Routing:
    """Where audio goes, how processor links are made, and in what form audio is sent."""
    mode: str = "auto"
    link: str = "auto"
    listen_host: str = "127.0.0.1"
    processor_host: str = "127.0.0.1"
    processor_base_port: int = 9002
    announce_base_port: int = 13000
    processor_wait_s: float = 1.5
    max_lead_s: float = 6.0
    output_rate: int = 24000
    max_queued_bytes: int = 8 * 1024 * 1024
    hold_seconds: float = 30.0


class Resampler:
    """Band-limited resampling (soxr, high quality) of one stream of audio that arrives in pieces.

    The filter runs on across the pieces, so a sentence sent window by window is resampled as if
    whole, with no edge at a seam; ``last`` flushes what the filter holds at the end of a stream.
    """

    def __init__(self, rate_out: int):
        self.rate_out = rate_out
        self._stream = None
        self._rate_in: int | None = None

    def __call__(self, audio: np.ndarray, rate_in: int, last: bool = False) -> np.ndarray:
        if rate_in == self.rate_out:
            return audio
        import soxr
        if self._stream is None or rate_in != self._rate_in:
            self._stream, self._rate_in = soxr.ResampleStream(rate_in, self.rate_out, 1, quality="HQ"), rate_in
        samples = self._stream.resample_chunk(np.asarray(audio, dtype=np.float32), last=last)
        if last:
            self._stream = None
        return samples.astype(np.float32, copy=False)


def processor_number(call_id: str, routing: Routing) -> int | None:
    """N for a call whose processor ports (base+N, announce base+N) exist; None keeps it on the reply path."""
    if not (call_id.isascii() and call_id.isdigit()) or len(call_id) > 6:
        return None
    n = int(call_id)
    return n if max(routing.processor_base_port, routing.announce_base_port) + n <= 65535 else None


@dataclass(frozen=True)
class CallStatus:
    """A call as /health and the operator page show it."""
    call_id: str
    link: str                          # "dial-in" | "dial-out" | "reply" | "waiting"
    state: str                         # "speaking" | "idle" | "linking"
    lead_s: float
    replies: int
    last_first_audio_s: float | None   # text received -> first audio out, last reply


@dataclass
class _Reply:
    started_at: float
    frames: int = 0
    audio_s: float = 0.0
    first_audio_s: float | None = None


class Call:
    """One phone call: its queued audio, its destinations, its chunk-id counter and its replies."""

    priority = 0
    voice = None

    def __init__(self, call_id: str, routing: Routing, env: "CallRegistry", first_chunk_id: int = 1):
        self.call_id = call_id
        self.label = printable(call_id)
        self.routing = routing
        self.env = env
        self.number = processor_number(call_id, routing)
        self.ended = threading.Event()
        self.created_at = time.monotonic()
        self.reply: ReplyTransport | None = None
        self.link: LinkTransport | None = None
        self.next_chunk_id = first_chunk_id
        self._frames = FrameQueue(routing.max_queued_bytes,
                                  routing.hold_seconds if routing.mode == "processor-only" else None)
        self._clock = PlayoutClock()
        self._resample = Resampler(routing.output_rate)   # the scheduler delivers one segment's windows at a time
        self._cond = threading.Condition()
        self._linkers: list[Linker] = []
        self._handing_over = 0  # REGISTERs between cancelling our listener and dialling out
        self._writer: threading.Thread | None = None
        self._replies: dict[int, _Reply] = {}
        self._reply_count = 0
        self._last_first_audio: float | None = None
        self._warned: set[str] = set()
        may_link = self.number is not None and routing.mode != "reply-only"
        self._hold_until = self.created_at + routing.processor_wait_s if may_link else 0.0

    def __repr__(self) -> str:
        return f"Call({self.call_id!r})"

    # -- replies (the connection handler) ----------------------------------------------
    def begin_reply(self) -> int:
        """A new reply's text has arrived: number it, time it, and look for the processor if unlinked."""
        with self._cond:
            self._reply_count += 1
            self._replies[self._reply_count] = _Reply(time.monotonic())
            number = self._reply_count
        self.arm_links()
        return number

    # -- audio in (the scheduler) ---------------------------------------------------------
    def dry_at(self) -> float:
        """When the caller runs out of this call's audio, or since when it has had none (see PlayoutClock.dry_at)."""
        with self._cond:
            return self._clock.dry_at(time.monotonic(), self._frames.queued_s)

    def lead_s(self) -> float:
        return max(0.0, self.dry_at() - time.monotonic())

    def deliver(self, audio: np.ndarray, sample_rate: int, reply: int = 0, ends_reply: bool = False) -> None:
        """Queue a piece of a reply's audio (resampled to the output rate) for the writer."""
        samples = self._resample(audio, sample_rate, last=ends_reply)
        with self._cond:
            if self.ended.is_set():
                if samples.size:
                    self._count_drop("call_ended", 1)
                return
            self._dropped(self._frames.put(Audio(samples, self.routing.output_rate, reply, time.monotonic(),
                                                 ends_reply)), "overflow")
            self._wake_writer()

    # -- destinations -----------------------------------------------------------------------
    def attach_reply(self, transport: ReplyTransport) -> None:
        with self._cond:
            superseded, self.reply = self.reply, transport
            self._cond.notify_all()
        if superseded is not None:
            log.info("call %s: a newer LLaMA connection carries its reply audio now", self.label)

    def detach_reply(self, transport: ReplyTransport) -> bool:
        """Forget ``transport``; False if a newer connection had already superseded it."""
        with self._cond:
            if self.reply is not transport:
                return False
            self.reply = None
            self._cond.notify_all()
            return True

    def arm_links(self) -> None:
        """Listen and announce for today's processor, unless linked, already looking, or not allowed to link."""
        if self.number is None or self.routing.mode == "reply-only" or self.routing.link == "dial-out":
            return
        with self._cond:
            if self.ended.is_set() or self.link is not None or self._linking():
                return
            r = self.routing
            linker = DialIn(self.call_id, r.listen_host, r.processor_base_port + self.number,
                            (r.processor_host, r.announce_base_port + self.number), self.env.announcer,
                            self._linked, self._link_closed, self._linker_gave_up, on_busy=self._listen_port_taken)
            self._add_linker(linker)

    def register(self) -> None:
        """``REGISTER:N`` from a Piper-era processor: it listens on base+N, so stop listening there and dial out."""
        if self.routing.link == "dial-in":
            log.info("call %s: REGISTER ignored: processors dial in (--processor-link dial-in)", self.label)
            return
        with self._cond:
            if self.link is not None or self.ended.is_set():
                return
            listening = [linker for linker in self._linkers if isinstance(linker, DialIn)]
            self._handing_over += 1
        try:
            for linker in listening:
                linker.cancel()
            for linker in listening:
                linker.join(timeout=1.0)  # our listener must be gone before dialling that port
            self._dial_out()
        finally:
            with self._cond:
                self._handing_over -= 1

    def _listen_port_taken(self) -> None:
        if self.routing.link == "auto":
            self._dial_out()

    def _dial_out(self) -> None:
        if self.number is None or self.routing.mode == "reply-only":
            log.warning("call %s registered, but it has no processor port (the call_id is not a number, or a "
                        "base port + call_id is over 65535); its audio stays on the reply path", self.label)
            return
        with self._cond:
            if self.ended.is_set() or self.link is not None or self._linking(DialOut):
                return
            address = (self.routing.processor_host, self.routing.processor_base_port + self.number)
            self._add_linker(DialOut(self.call_id, address, self._linked, self._link_closed, self._linker_gave_up))

    def _add_linker(self, linker: Linker) -> None:
        self._linkers = [other for other in self._linkers if other.is_alive()] + [linker]
        linker.start()

    def _linked(self, link: LinkTransport) -> bool:
        with self._cond:
            if self.ended.is_set() or self.link is not None:
                return False
            self.link = link
            self._clock = PlayoutClock()
            others = [linker for linker in self._linkers if linker is not threading.current_thread()]
            self._cond.notify_all()
            self._wake_writer()
        for linker in others:
            linker.cancel()
        metrics.LINKS.labels(link.kind).inc()
        log.info("%s linked", link.name)
        return True

    def _linker_gave_up(self) -> None:
        """No link came of it: audio held for that processor may now go elsewhere, if anywhere."""
        with self._cond:
            self._cond.notify_all()
            unheard = self.reply is None and self.routing.mode != "processor-only" and not self.ended.is_set()
        if unheard and not self.heard_by_processor():
            self.env.end(self, "no processor linked and no LLaMA connection left")

    def _link_closed(self, link: LinkTransport) -> None:
        with self._cond:
            if self.link is not link:
                return
        log.info("%s closed; the call is over", link.name)
        self.env.end(self, "processor link closed", end_stream=False)

    def _transport(self, now: float) -> Transport | None:
        """Where the next frame goes: the link, else the reply socket once the processor had its chance."""
        if self.link is not None:
            return self.link
        if self.routing.mode == "processor-only" or now < self._hold_until or self._dialling_out():
            return None
        return self.reply if self.reply is not None and not self.reply.broken else None

    def _linking(self, kind: type = Linker) -> bool:
        """A link of ``kind`` is being made: a Piper-era processor registered and is being dialled, or the
        service listens and announces for today's processor. Audio held for a dial-out waits for it."""
        return any(isinstance(linker, kind) and linker.is_alive() and not linker.failed
                   and not linker.cancelled.is_set() for linker in self._linkers)

    def _dialling_out(self) -> bool:
        """A Piper-era processor is being dialled, or soon will be: a REGISTER is taking over from our listener."""
        return self._handing_over > 0 or self._linking(DialOut)

    def heard_by_processor(self) -> bool:
        """Whether a processor carries this call's audio, or soon will: a Piper-era one registered and is being
        dialled, or today's is still within ``processor_wait_s`` of being announced to."""
        with self._cond:
            return self.link is not None or self._dialling_out() or (
                self._linking(DialIn) and time.monotonic() < self._hold_until)

    def _abandon(self, transport: Transport) -> bool:
        """Stop a blocked write: the call ended, or a link or a newer connection took over from ``transport``."""
        return self.ended.is_set() or (transport is not self.link and (self.link is not None or transport is not self.reply))

    # -- the writer loop -------------------------------------------------------------------------
    def _wake_writer(self) -> None:
        """Called with the lock held."""
        self._cond.notify_all()
        if self._writer is None and (len(self._frames) or self.ended.is_set()):
            self._writer = threading.Thread(target=self._write_loop, name=f"writer-{self.label[:20]}", daemon=True)
            self._writer.start()

    def _next_frame(self) -> tuple[Transport, Audio, int] | None:
        """Wait for the next frame that may go now; None when the writer should exit. Lock held."""
        while not self.ended.is_set():
            now = time.monotonic()
            self._dropped(self._frames.expire(now), "expired")
            head = self._frames.peek()
            if head is None:
                return None
            if head.samples.size == 0:
                self._reply_done(self._frames.take())
                continue
            transport = self._transport(now)
            wake_at = [t for t in (self._frames.next_expiry(), self._hold_until if now < self._hold_until else None) if t]
            if transport is not None and transport.paced:
                piece_s = min(head.duration_s, MAX_LINK_FRAME_S)
                room_at = self._clock.room_at(piece_s, self.routing.max_lead_s)
                if room_at <= now:
                    return transport, self._frames.take(int(MAX_LINK_FRAME_S * head.rate)), self._take_chunk_id()
                wake_at.append(room_at)
            elif transport is not None:
                return transport, self._frames.take(), self._take_chunk_id()
            self._cond.wait(max(0.0, min(wake_at) - now) if wake_at else None)
        return None

    def _take_chunk_id(self) -> int:
        chunk_id, self.next_chunk_id = self.next_chunk_id, self.next_chunk_id + 1
        return chunk_id

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                work = self._next_frame()
                if work is None:
                    self._writer = None
                    link = self.link if self.ended.is_set() else None
                    self.link = None if link is not None else self.link
                    self._cond.notify_all()
                    break
            transport, piece, chunk_id = work
            sent = transport.send(encode_frame(piece.samples, piece.rate, chunk_id), lambda: self._abandon(transport))
            with self._cond:
                if sent:
                    self._sent(transport, piece)
                    continue
                self.next_chunk_id = chunk_id  # the frame was not delivered: it goes again, wherever is next
                if self.ended.is_set():
                    self._count_drop("call_ended", 1)
                else:
                    self._frames.requeue(piece)
                failed_link = transport is self.link and not self.ended.is_set()
                if transport is self.reply and transport.broken and not self.ended.is_set():
                    log.warning("call %s: its LLaMA connection stopped taking audio", self.label)
            if failed_link:
                self.env.end(self, f"{transport.name} failed", end_stream=False)
        if link is not None:
            link.end_stream()

    def _sent(self, transport: Transport, piece: Audio) -> None:
        now = time.monotonic()
        self._clock.sent(piece.duration_s, now)
        metrics.FRAMES_SENT.labels(transport.kind).inc()
        reply = self._replies.get(piece.reply)
        if reply is not None:
            if reply.first_audio_s is None:
                reply.first_audio_s = self._last_first_audio = now - reply.started_at
                self.env.telemetry.record_first_audio(self.call_id, reply.first_audio_s)
            reply.frames += 1
            reply.audio_s += piece.duration_s
        if piece.ends_reply:
            self._reply_done(piece)

    def _reply_done(self, piece: Audio) -> None:
        reply = self._replies.pop(piece.reply, None)
        self._cond.notify_all()
        if reply is None:
            return
        log.info("call %s: reply %d done: %d frames, %.3f s audio, first audio %s", self.label, piece.reply,
                 reply.frames, reply.audio_s, "-" if reply.first_audio_s is None else f"{reply.first_audio_s:.3f} s")

    def _dropped(self, pieces: list[Audio], reason: str) -> None:
        """Lock held: count dropped audio; a reply whose end was dropped is over all the same."""
        audible = sum(1 for piece in pieces if piece.samples.size)
        if audible:
            self._count_drop(reason, audible)
        for piece in pieces:
            if piece.ends_reply:
                self._reply_done(piece)

    def _count_drop(self, reason: str, count: int) -> None:
        """Every dropped frame is counted; the first drop of each kind per call is logged."""
        metrics.FRAMES_DROPPED.labels(reason).inc(count)
        if reason not in self._warned:
            self._warned.add(reason)
            log.warning("call %s: dropped %d frame(s) of audio (%s)%s", self.label, count, reason,
                        "; later drops of this kind are only counted" if reason != "call_ended" else "")

    def wait_replies_done(self, count: int, timeout: float | None = None) -> bool:
        """True once ``count`` replies have begun and each has had its last frame sent."""
        with self._cond:
            return self._cond.wait_for(lambda: self._reply_count >= count and all(
                n > count for n in self._replies), timeout)

    def wait_sent(self, timeout: float | None = None) -> bool:
        """True once every frame queued so far has been written (or dropped)."""
        with self._cond:
            return self._cond.wait_for(lambda: not len(self._frames) and self._writer is None, timeout)

    # -- the end ------------------------------------------------------------------------------
    def finish(self, end_stream: bool) -> list[Linker]:
        """Mark the call over and discard its unsent audio; the writer (or this call) closes the link."""
        with self._cond:
            self.ended.set()
            self._dropped(self._frames.clear("call_ended"), "call_ended")
            linkers, self._linkers = self._linkers, []
            link = None
            if self._writer is None:
                link, self.link = self.link, None
            elif not end_stream and self.link is not None:
                self.link.broken = True
            self._cond.notify_all()
        for linker in linkers:
            linker.cancel()
        if link is not None:
            if end_stream:
                link.end_stream()
            else:
                link.close()
        return linkers

    def status(self) -> CallStatus:
        with self._cond:
            now = time.monotonic()
            lead = max(0.0, self._clock.dry_at(now, self._frames.queued_s) - now)
            link = self.link.kind if self.link is not None else ("reply" if self.reply is not None and
                                                                   now >= self._hold_until else "waiting")
            # "linking": held for a processor that has not linked yet; a call on the reply path is not waiting
            state = "speaking" if self._replies or len(self._frames) else (
                "linking" if link == "waiting" and any(linker.is_alive() for linker in self._linkers) else "idle")
            return CallStatus(self.call_id, link, state, round(lead, 3), self._reply_count, self._last_first_audio)


class CallRegistry:
    """call_id -> Call, shared by the TCP handlers, the UDP handler and the scheduler."""

    def __init__(self, routing: Routing, scheduler, telemetry, announcer: socket.socket | None = None):
        self.routing = routing
        self.scheduler = scheduler
        self.telemetry = telemetry
        self.announcer = announcer or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._calls: dict[str, Call] = {}
        self._early: deque[tuple[float, str]] = deque()
        self._lock = threading.Lock()
        self.throttle = LogThrottle(log)

    def get(self, call_id: str) -> Call | None:
        with self._lock:
            return self._calls.get(call_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._calls)

    def open(self, call_id: str, transport: ReplyTransport, previous: Call | None = None) -> Call:
        """The call ``transport``'s text is for: the live one with this id, or a new one continuing its chunk ids."""
        with self._lock:
            call = self._calls.get(call_id)
            created = call is None
            if created:
                first_id = previous.next_chunk_id if previous is not None else 1
                call = self._calls[call_id] = Call(call_id, self.routing, self, first_id)
            registered_early = created and self._take_early(call_id)
        call.attach_reply(transport)
        if registered_early:
            call.register()
        return call

    def _take_early(self, call_id: str) -> bool:
        """Whether a REGISTER for ``call_id`` arrived within EARLY_REGISTER_S before its HELLO. Lock held."""
        cutoff = time.monotonic() - EARLY_REGISTER_S
        while self._early and self._early[0][0] < cutoff:
            self._early.popleft()
        found = any(early_id == call_id for _, early_id in self._early)
        if found:
            self._early = deque(item for item in self._early if item[1] != call_id)
        return found

    def register(self, call_id: str) -> bool:
        """``REGISTER:N`` (UDP 13001): dial out to that call's processor. A REGISTER for no live call is kept
        for EARLY_REGISTER_S (a processor may register just before the HELLO), within a bound; beyond, refused."""
        with self._lock:
            call = self._calls.get(call_id)
            if call is None:
                self._take_early("")  # expire old entries
                if len(self._early) >= MAX_EARLY_REGISTERS:
                    metrics.PROTOCOL_ERRORS.labels("register_refused").inc()
                    self.throttle.log("register-refused", WARN_INTERVAL_S, logging.WARNING,
                                      "REGISTER:%s for no call refused: %d early registrations are already waiting "
                                      "(more are only counted in kokoro_protocol_errors_total"
                                      "{kind=\"register_refused\"})", printable(call_id), MAX_EARLY_REGISTERS)
                    return False
                self._early.append((time.monotonic(), call_id))
        if call is None:
            metrics.EARLY_REGISTERS.inc()
            self.throttle.log("register-early", 1.0, logging.INFO, "REGISTER:%s before its call; kept %.0f s for its "
                              "HELLO (more within a second are only counted)", printable(call_id), EARLY_REGISTER_S)
            return True
        log.info("call %s: processor registered", call.label)
        call.register()
        return True

    def end_by_id(self, call_id: str) -> bool:
        """``BYE:N``: the call is over."""
        call = self.get(call_id)
        if call is None:
            return False
        self.end(call, "BYE from its processor")
        return True

    def end(self, call: Call, reason: str, end_stream: bool = True) -> None:
        """Stop the call's synthesis, drop what is queued, end its processor stream (zero header), forget it."""
        with self._lock:
            if self._calls.get(call.call_id) is call:
                del self._calls[call.call_id]
        if call.ended.is_set():
            return
        cancelled = self.scheduler.cancel(call)
        call.finish(end_stream)
        log.info("call %s: ended (%s)%s", call.label, reason,
                 f"; {cancelled} queued segment(s) dropped" if cancelled else "")

    def disconnect(self, call: Call, transport: ReplyTransport) -> None:
        """A LLaMA connection went away. Its call lives on while a processor link carries it (or, in
        processor-only routing, for ``hold_seconds``); otherwise nobody can hear it any more."""
        if not call.detach_reply(transport):
            return
        if call.heard_by_processor():
            log.info("call %s: LLaMA connection closed; the call goes on with its processor", call.label)
        elif self.routing.mode == "processor-only":
            timer = threading.Timer(self.routing.hold_seconds, self._end_if_unlinked, (call,))
            timer.daemon = True
            timer.start()
        else:
            self.end(call, "LLaMA connection closed")

    def _end_if_unlinked(self, call: Call) -> None:
        if call.link is None and call.reply is None:
            self.end(call, f"no processor linked within {self.routing.hold_seconds:.0f} s of its LLaMA connection "
                           "closing")

    def snapshot(self) -> list[CallStatus]:
        with self._lock:
            calls = list(self._calls.values())
        return [call.status() for call in calls]

    def shutdown(self) -> None:
        with self._lock:
            calls = list(self._calls.values())
        for call in calls:
            self.end(call, "service stopping")

"""Calls by call_id: their queued text, chunk ids and where their audio goes.

A call outlives any one LLaMA connection (the LLaMA client may reconnect, and the
processor may register before or after HELLO) and ends with the processor's ``BYE:N``
or, when no processor was registered, with its LLaMA connection.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np

from . import metrics
from .outputs import BoundedWriter, ProcessorWriter, ReplyWriter
from .protocol import encode_frame
from .telemetry import Telemetry

log = logging.getLogger(__name__)

ROUTING_MODES = ("auto", "reply-only", "processor-only")


@dataclass(frozen=True)
class Routing:
    """Where audio goes and in what form."""
    mode: str = "auto"
    processor_host: str = "127.0.0.1"
    processor_base_port: int = 9002
    output_rate: int = 24000
    max_queued_bytes: int = 8 * 1024 * 1024
    hold_seconds: float = 30.0


@dataclass(frozen=True)
class CallStatus:
    """A call as /health and the operator page show it."""
    call_id: str
    link: str                          # "dial-in" | "dial-out" | "reply" | "waiting"
    state: str                         # "speaking" | "idle" | "linking"
    lead_s: float
    replies: int
    last_first_audio_s: float | None   # text received -> first audio out, last reply


def resample(audio: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling (soxr, high quality) for telephony output rates."""
    if rate_in == rate_out or audio.size == 0:
        return audio
    import soxr
    return soxr.resample(audio, rate_in, rate_out, quality="HQ").astype(np.float32, copy=False)


class Call:
    """One phone call: its queued segments, its chunk-id counter, and its two possible destinations."""

    priority = 0   # phone calls come before HTTP requests
    voice = None   # spoken in the service's current voice

    def __init__(self, call_id: str, routing: Routing, telemetry: Telemetry | None = None):
        self.call_id = call_id
        self.routing = routing
        self.telemetry = telemetry or Telemetry()
        self.replies = 0
        self.last_first_audio_s: float | None = None
        self._reply_text_at: float | None = None
        port = routing.processor_base_port + int(call_id) if call_id.isascii() and call_id.isdigit() else None
        self.processor_port = port if port is not None and port <= 65535 else None
        self.pending: deque = deque()        # Segments, guarded by the scheduler
        self.in_flight = False               # guarded by the scheduler
        self.ended = threading.Event()
        self.reply: ReplyWriter | None = None
        self.processor: ProcessorWriter | None = None
        self._next_chunk_id = 1
        self._lock = threading.Lock()
        self._warned_unroutable = False
        if routing.mode == "processor-only" and self.processor_port is not None:
            self.processor = self._new_processor()

    def __repr__(self) -> str:
        return f"Call({self.call_id!r})"

    def _new_processor(self) -> ProcessorWriter:
        r = self.routing
        return ProcessorWriter(self.call_id, r.processor_host, self.processor_port, r.max_queued_bytes, r.hold_seconds)

    def _destination(self) -> BoundedWriter | None:
        if self.routing.mode == "reply-only":
            return self.reply
        if self.routing.mode == "processor-only":
            return self.processor
        if self.processor is not None and self.processor.registered.is_set():
            return self.processor
        return self.reply

    def deliver(self, audio: np.ndarray, sample_rate: int) -> None:
        """Frame one segment's audio with the call's next chunk_id and queue it for its destination."""
        samples = resample(audio, sample_rate, self.routing.output_rate)
        with self._lock:
            destination = self._destination()
            if destination is None:
                if not self._warned_unroutable:
                    log.warning("call %s: no destination for its audio (mode %s, no %s); dropping",
                                self.call_id, self.routing.mode,
                                "processor" if self.routing.mode == "processor-only" else "LLaMA connection")
                    self._warned_unroutable = True
                metrics.FRAMES_DROPPED.labels("no_destination").inc()
                return
            if self._reply_text_at is not None:
                self.last_first_audio_s = time.monotonic() - self._reply_text_at
                self._reply_text_at = None
                self.replies += 1
                self.telemetry.record_first_audio(self.call_id, self.last_first_audio_s)
            destination.put(encode_frame(samples, self.routing.output_rate, self._next_chunk_id))
            self._next_chunk_id += 1

    def text_arrived(self) -> None:
        """Text came in. Unless a reply already awaits its first audio, it opens one, timed from here to that audio
        (exact for the LLaMA client, which sends each reply as one chunk)."""
        with self._lock:
            if self._reply_text_at is None:
                self._reply_text_at = time.monotonic()

    def lead_s(self) -> float:
        """Seconds of audio sent ahead of playout; this service does not track playout yet."""
        return 0.0

    def status(self) -> CallStatus:
        with self._lock:
            destination = self._destination()
        link = "waiting" if destination is None else "dial-out" if destination is self.processor else "reply"
        if link == "dial-out" and self.processor.sock is None:
            state = "linking"
        else:
            state = "speaking" if self.pending or self.in_flight else "idle"
        return CallStatus(self.call_id, link, state, self.lead_s(), self.replies, self.last_first_audio_s)

    def attach_reply(self, writer: ReplyWriter) -> ReplyWriter | None:
        with self._lock:
            previous, self.reply = self.reply, writer
        if previous is not None:
            for frame in previous.take_pending():
                writer.put(frame)
        return previous

    def detach_reply(self, writer: ReplyWriter) -> bool:
        """Forget ``writer`` if it is still this call's reply path; False if it was superseded."""
        with self._lock:
            if self.reply is not writer:
                return False
            self.reply = None
            return True

    def register_processor(self) -> None:
        if self.processor_port is None:
            log.warning("call %s registered, but it has no processor port (the call_id is not a number, or "
                        "base port + call_id is over 65535); its audio stays on the reply path", self.call_id)
            return
        with self._lock:
            if self.processor is None and self.routing.mode != "reply-only":
                self.processor = self._new_processor()
            processor = self.processor
        if processor is not None:
            processor.activate()

    def end_outputs(self) -> None:
        if self.processor is not None:
            self.processor.end()


class CallRegistry:
    """call_id -> Call, shared by the TCP handlers, the UDP handler and the scheduler."""

    def __init__(self, routing: Routing, scheduler, telemetry: Telemetry | None = None):
        self.routing = routing
        self.scheduler = scheduler
        self.telemetry = telemetry or Telemetry()
        self._calls: dict[str, Call] = {}
        self._lock = threading.Lock()

    def get(self, call_id: str) -> Call | None:
        with self._lock:
            return self._calls.get(call_id)

    def __len__(self) -> int:
        with self._lock:
            return len(self._calls)

    def snapshot(self) -> list[CallStatus]:
        with self._lock:
            calls = list(self._calls.values())
        return [call.status() for call in calls]

    def _get_or_create(self, call_id: str) -> Call:
        with self._lock:
            call = self._calls.get(call_id)
            if call is None:
                call = self._calls[call_id] = Call(call_id, self.routing, self.telemetry)
            return call

    def open(self, call_id: str, writer: ReplyWriter) -> Call:
        """Attach a LLaMA connection to its call; a newer connection for the same call supersedes the older."""
        call = self._get_or_create(call_id)
        previous = call.attach_reply(writer)
        if previous is not None:
            log.info("call %s: a new LLaMA connection supersedes the previous one", call_id)
            previous.close()
            if previous.sock is not None:
                try:
                    previous.sock.shutdown(2)
                except OSError:
                    pass
        return call

    def register(self, call_id: str) -> None:
        call = self._get_or_create(call_id)
        call.register_processor()
        log.info("call %s: processor registered", call_id)

    def end(self, call_id: str) -> bool:
        """The call is over (processor BYE): stop its synthesis, end its processor stream, forget it."""
        with self._lock:
            call = self._calls.pop(call_id, None)
        if call is None:
            return False
        call.ended.set()
        self.scheduler.cancel(call)
        call.end_outputs()
        log.info("call %s: ended", call_id)
        return True

    def disconnect(self, call: Call, writer: ReplyWriter, cancel: bool) -> None:
        """A LLaMA connection is done with its call: after BYE (its audio delivered) or by going away
        (``cancel``: its queued work is dropped). A superseded connection changes nothing; a call with
        a registered processor lives on until the processor's BYE."""
        if not call.detach_reply(writer):
            return
        if cancel:
            self.scheduler.cancel(call)
        with self._lock:
            registered = call.processor is not None and call.processor.registered.is_set()
            if registered or self._calls.get(call.call_id) is not call:
                return
            del self._calls[call.call_id]
        call.ended.set()
        call.end_outputs()

    def shutdown(self) -> None:
        with self._lock:
            calls = list(self._calls.values())
            self._calls.clear()
        for call in calls:
            call.ended.set()
            self.scheduler.cancel(call)
            call.end_outputs()

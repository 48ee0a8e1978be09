"""The daemon: a thread per LLaMA connection on TCP, a registration thread on UDP, shared engines.

Data path: LLaMA socket -> LlamaHandler (exact-length reads, streaming segmenter) ->
CallRegistry -> Scheduler (who speaks next) -> Synthesizer (an engine per worker, each
behind its lock) -> Call.deliver -> FrameQueue -> the call's writer -> processor link or
reply socket.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import resource
import select
import socket
import socketserver
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import metrics
from .calls import Call, CallRegistry, Routing
from .engines import DEFAULT_ONNX_GRAPH, Engine, create_engine, default_workers
from .engines.windows import DEFAULT_SYNTHESIS, window_plan
from .g2p import G2PRegistry
from .http_server import HttpServer
from .protocol import Bye, PeerClosed, ProtocolError, parse_datagram, printable, read_hello, read_message
from .scheduler import Scheduler
from .segmenter import SentenceSegmenter
from .synthesis import AudioCache, Synthesizer
from .telemetry import Telemetry
from .throttle import LogThrottle
from .transports import ReplyTransport
from .voices import Voice, VoiceLibrary

log = logging.getLogger(__name__)

# "Thank you for calling, how can I help you?" in Kokoro phonemes: warms the engine while the
# phonemizer is still loading, and is valid for every voice's language.
WARMUP_PHONEMES = "θˈæŋk ju fɔɹ kˈɔlɪŋ, hˌW kæn ˌI hˈɛlp ju?"
MAX_QUEUED_CHARS = 64 * 1024
ACCEPT_RETRY_S = 0.1
WARN_INTERVAL_S = 10.0
LOOPBACK = ("127.0.0.0/8", "::1/128")


@dataclass
class ServiceConfig:
    voice: str = "af_sky"
    host: str = "127.0.0.1"
    tcp_port: int = 8090
    udp_port: int = 13001
    device: str = "mps"
    engine: str = "auto"
    model: str | None = None
    model_config: str | None = None
    onnx_graph: str = DEFAULT_ONNX_GRAPH
    voices_dir: str | None = None
    strict_voice: bool = False
    speed: float = 1.0
    cache_mb: float = 64.0
    idle_flush_s: float = 0.25
    hello_timeout_s: float = 30.0
    hub_download: bool = False
    schedule: str = "playout"
    synthesis: str = DEFAULT_SYNTHESIS
    engine_workers: int | None = None   # None: engines.default_workers
    engine_threads: int | None = None
    allow_from: tuple[str, ...] = LOOPBACK
    routing: Routing = field(default_factory=Routing)
    http_port: int | None = None   # None: no HTTP API; 0: any free port
    api_key: str | None = None
    db: str | None = None          # the phone system's settings, where the operator page writes voice and speed


class VoiceSetting:
    """The voice and speed new segments are spoken with; swapped atomically at run time."""

    def __init__(self, voice: Voice, speed: float):
        self._value = (voice, speed)
        self._lock = threading.Lock()

    def get(self) -> tuple[Voice, float]:
        with self._lock:
            return self._value

    def set(self, voice: Voice | None = None, speed: float | None = None) -> None:
        with self._lock:
            old_voice, old_speed = self._value
            self._value = (voice or old_voice, old_speed if speed is None else speed)


def check_speed(speed: float) -> float:
    if not 0.5 <= speed <= 2.0:
        raise ValueError(f"speed {speed} is outside 0.5 to 2.0")
    return speed


def raise_open_file_limit() -> int:
    """Raise the soft limit on open files to the hard one: every call ever made keeps a LLaMA connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        log.info("open-file limit raised from %d to %d", soft, hard)
        return hard
    return soft


class ReplyText:
    """A connection's text on its way to the scheduler: split into segments, numbered by reply.

    A reply ends when its text is all segmented (a whole reply sent as one chunk), on BYE,
    or after ``idle_flush_s`` without more text; the next chunk opens a new reply, which
    gets a short first clause of its own and is never joined to earlier text.
    """

    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler
        # a streaming engine's first window costs the same whatever the sentence: no need to cut at a clause
        self.segmenter = SentenceSegmenter(first_clause_min_chars=None if scheduler.synthesizer.streams else 20)
        self.reply: int | None = None
        self._opens = False

    @property
    def pending(self) -> bool:
        return self.segmenter.pending

    def add(self, call: Call, text: str) -> None:
        queued = self.scheduler.pending_chars(call) + self.segmenter.buffered_chars
        if queued + len(text) > MAX_QUEUED_CHARS:
            metrics.TEXT_DROPPED.labels("queue_full").inc(len(text))
            log.error("call %s: text chunk of %d characters refused: %d characters are already waiting to be "
                      "spoken (limit %d)", call.label, len(text), queued, MAX_QUEUED_CHARS)
            return
        if self.reply is None:
            self.reply, self._opens = call.begin_reply(), True
        self._submit(call, self.segmenter.add_chunk(text))
        if not self.segmenter.pending:
            self.flush(call)

    def flush(self, call: Call) -> None:
        """The reply is complete: queue what is buffered and mark its end."""
        segments = self.segmenter.finish()
        if self.reply is not None:
            self.scheduler.submit(call, segments, self.reply, opens_reply=self._opens, ends_reply=True)
        self.reply = None

    def drop(self, call: Call, reason: str) -> None:
        """The call is gone: what is buffered will never be spoken; count and say so."""
        left = " ".join(self.segmenter.finish())
        self.reply = None
        if left:
            metrics.TEXT_DROPPED.labels(reason).inc(len(left))
            log.warning("call %s: %d character(s) of text not spoken (%s)", call.label, len(left), reason.replace("_", " "))

    def _submit(self, call: Call, segments: list[str]) -> None:
        if segments:
            self.scheduler.submit(call, segments, self.reply, opens_reply=self._opens)
            self._opens = False


class LlamaHandler(socketserver.BaseRequestHandler):
    """One LLaMA connection: HELLO, then text chunks, then (perhaps never) BYE.

    The real LLaMA client keeps this connection for ever and dies of SIGPIPE if it is closed
    under it, so the service closes it only after a BYE or a broken HELLO.
    """

    server: "_TCPServer"

    def setup(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        metrics.ACTIVE_CONNECTIONS.inc()

    def finish(self) -> None:
        metrics.ACTIVE_CONNECTIONS.dec()

    def handle(self) -> None:
        service = self.server.service
        sock, peer = self.request, "%s:%s" % self.client_address[:2]
        sock.settimeout(service.config.hello_timeout_s)
        try:
            call_id = read_hello(sock)
        except socket.timeout:
            metrics.PROTOCOL_ERRORS.labels("hello_timeout").inc()
            log.warning("connection from %s closed: no HELLO within %g s", peer, service.config.hello_timeout_s)
            return
        except (PeerClosed, OSError):
            return
        except ProtocolError as exc:
            metrics.PROTOCOL_ERRORS.labels("hello").inc()
            log.error("connection from %s refused: %s", peer, exc)
            return
        sock.settimeout(None)
        transport = ReplyTransport(sock, f"call {printable(call_id)} LLaMA connection {peer}")
        call = service.registry.open(call_id, transport)
        log.info("call %s: LLaMA connected from %s", call.label, peer)
        text = ReplyText(service.scheduler)
        try:
            self._read_replies(sock, call_id, transport, call, text)
        except PeerClosed as exc:
            call = self.call
            if exc.mid_message:
                metrics.PROTOCOL_ERRORS.labels("truncated").inc()
                log.warning("call %s: %s", call.label, exc)
            else:
                log.info("call %s: LLaMA connection closed", call.label)
        except OSError as exc:
            call = self.call
            log.info("call %s: LLaMA connection lost: %s", call.label, exc)
        else:
            self._finish_after_bye(self.call, transport, text)
            return
        if call.ended.is_set():
            text.drop(call, "call_ended")
            return
        text.flush(call)
        service.registry.disconnect(call, transport)

    def _read_replies(self, sock, call_id: str, transport: ReplyTransport, call: Call, text: ReplyText) -> None:
        """Read text until BYE (returns) or the connection ends (raises); ``self.call`` is the current call."""
        service = self.server.service
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        self.call = call
        while True:
            if text.pending and not poller.poll(service.config.idle_flush_s * 1000):
                text.flush(self.call)
                continue
            try:
                message = read_message(sock)
            except ProtocolError as exc:
                metrics.PROTOCOL_ERRORS.labels("text").inc()
                log.error("call %s: %s", self.call.label, exc)
                continue
            if isinstance(message, Bye):
                return
            if self.call.ended.is_set():
                text.drop(self.call, "call_ended")
                self.call = service.registry.open(call_id, transport, previous=self.call)
                log.info("call %s: a new call on the same LLaMA connection", self.call.label)
            text.add(self.call, message.text)

    def _finish_after_bye(self, call: Call, transport: ReplyTransport, text: ReplyText) -> None:
        """Speak everything accepted, end the call, then send BYE back (as the Piper service did).

        The call is let go before BYE goes out, so a client that reconnects with the same call_id
        the moment it reads BYE starts a new call.
        """
        service = self.server.service
        log.info("call %s: BYE; finishing its audio", call.label)
        text.flush(call)
        service.scheduler.wait_drained(call)
        call.wait_sent()
        if call.detach_reply(transport):
            service.registry.end(call, "BYE from LLaMA")
        transport.send_bye()


class RegistrationHandler(socketserver.BaseRequestHandler):
    """``REGISTER:<id>`` and ``BYE:<id>`` from the outbound audio processors, from allowed addresses only."""

    server: "_UDPServer"

    def handle(self) -> None:
        data = self.request[0]
        service = self.server.service
        host = self.client_address[0]
        if not service.allowed(host):
            metrics.PROTOCOL_ERRORS.labels("datagram_refused").inc()
            service.throttle.log("datagram-refused", WARN_INTERVAL_S, logging.WARNING,
                                 "ignored datagram from %s, which --allow-from does not list", host)
            return
        try:
            command, call_id = parse_datagram(data)
        except ValueError as exc:
            metrics.PROTOCOL_ERRORS.labels("datagram").inc()
            service.throttle.log("datagram-bad", 1.0, logging.WARNING, "ignored datagram from %s:%s: %s", host,
                                 self.client_address[1], exc)
            return
        if command == "REGISTER":
            service.registry.register(call_id)
        elif not service.registry.end_by_id(call_id):
            metrics.PROTOCOL_ERRORS.labels("bye_unknown").inc()
            service.throttle.log("bye-unknown", 1.0, logging.INFO, "BYE for unknown call %s ignored (more within a "
                                 "second are only counted)", printable(call_id))


class _TCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 4096

    def __init__(self, address, service: "KokoroService"):
        self.service = service
        super().__init__(address, LlamaHandler)

    def get_request(self):
        """Out of file descriptors: leave the connection waiting in the backlog, say so now and then, retry."""
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                metrics.ACCEPT_ERRORS.labels(errno.errorcode[exc.errno]).inc()
                self.service.throttle.log("accept", WARN_INTERVAL_S, logging.ERROR, "cannot accept LLaMA connections: "
                                          "%s; they wait in the backlog until descriptors free up", exc)
                time.sleep(ACCEPT_RETRY_S)
            raise


class _UDPServer(socketserver.UDPServer):
    allow_reuse_address = False  # a second process must not be able to take REGISTER/BYE away

    def __init__(self, address, service: "KokoroService"):
        self.service = service
        super().__init__(address, RegistrationHandler)


class KokoroService:
    """Wires the parts together; ``start`` returns once the service answers on its ports."""

    def __init__(self, config: ServiceConfig, engine: Engine | None = None, g2p: G2PRegistry | None = None):
        """``engine`` and ``g2p`` may be shared with other instances (tests, benchmarks) to load them once."""
        self.config = config
        self.engine = engine
        self.voices = VoiceLibrary(config.voices_dir, hub_download=config.hub_download)
        self.g2p = g2p or G2PRegistry()
        self.telemetry = Telemetry()
        self.voice_setting: VoiceSetting | None = None
        self.synthesizer: Synthesizer | None = None
        self.scheduler: Scheduler | None = None
        self.registry: CallRegistry | None = None
        self.started_at: float | None = None
        self.http: HttpServer | None = None
        self._allowed = [ipaddress.ip_network(net, strict=False) for net in config.allow_from]
        self._servers: list[socketserver.BaseServer] = []
        self._serving: list[socketserver.BaseServer] = []
        self.throttle = LogThrottle(log)
        self.stopped = threading.Event()

    @property
    def tcp_address(self) -> tuple[str, int]:
        return self._servers[0].server_address[:2]

    @property
    def udp_address(self) -> tuple[str, int]:
        return self._servers[1].server_address[:2]

    def allowed(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in net for net in self._allowed)

    def load_voice(self, spec: str) -> Voice:
        """A voice for run-time use: a missing or malformed one raises VoiceError."""
        return self.voices.load(spec)

    def set_voice(self, spec: str) -> None:
        voice = self.load_voice(spec)
        self.g2p.get(voice.lang)
        self.voice_setting.set(voice=voice)
        log.info("voice is now %s", spec)

    def set_speed(self, speed: float) -> None:
        self.voice_setting.set(speed=check_speed(speed))
        log.info("speed is now %.2f", speed)

    def start(self) -> None:
        try:
            self._start()
        except BaseException:
            self.stop()     # let go of the ports a failed start took
            raise

    def _start(self) -> None:
        started = time.monotonic()
        cfg = self.config
        check_speed(cfg.speed)
        files = raise_open_file_limit()
        # The ports first: a taken one fails the start in a moment, not after the model has loaded. LLaMA
        # connections made meanwhile wait in the listen backlog and are served once the model is ready.
        self._servers = [_TCPServer((cfg.host, cfg.tcp_port), self)]
        try:
            self._servers.append(_UDPServer((cfg.host, cfg.udp_port), self))
        except OSError as exc:
            raise OSError(exc.errno, f"UDP port {cfg.host}:{cfg.udp_port} for REGISTER/BYE is not free ({exc.strerror}); "
                                     "is another service running?") from None
        voice = self.voices.load(cfg.voice) if cfg.strict_voice else self.voices.load_or_fallback(cfg.voice)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-load") as pool:
            engines_ready = pool.submit(self._load_engines, voice)
            phonemizer = self.g2p.get(voice.lang)
            engines = engines_ready.result()
        self.telemetry.workers = len(engines)
        self.voice_setting = VoiceSetting(voice, cfg.speed)
        self.synthesizer = Synthesizer(engines, self.g2p, AudioCache(int(cfg.cache_mb * 1024 * 1024)), self.telemetry,
                                       window_plan(cfg.synthesis))
        self.scheduler = Scheduler(self.synthesizer, self.voice_setting.get, cfg.schedule, cfg.routing.max_lead_s)
        self.registry = CallRegistry(cfg.routing, self.scheduler, self.telemetry)
        if cfg.http_port is not None:
            self.http = HttpServer(self, cfg.host, cfg.http_port, cfg.api_key)
        self.scheduler.start()
        for name, server in zip(("tcp", "udp"), self._servers):
            threading.Thread(target=server.serve_forever, name=f"{name}-listener", daemon=True).start()
            self._serving.append(server)
        self.started_at = time.time()
        metrics.SERVICES.add(self)
        http = ""
        if self.http is not None:
            self.http.start()
            http = "; HTTP %s:%d" % self.http.address
        r = cfg.routing
        log.info("ready in %.1f s: LLaMA TCP %s:%d, registration UDP %s:%d (from %s)%s; engine %s on %s, %d worker(s), "
                 "%s schedule, %s synthesis; voice %s (%s phonemes); audio %d Hz, routing %s, processor link %s (ports %d+N, "
                 "announce %d+N); %d open files allowed", time.monotonic() - started, *self.tcp_address,
                 *self.udp_address, ", ".join(cfg.allow_from), http, self.engine.label, self.engine.device, len(engines),
                 cfg.schedule, "stream" if self.synthesizer.streams else "whole", voice.spec, phonemizer.backend,
                 r.output_rate, r.mode, r.link, r.processor_base_port, r.announce_base_port, files)

    def _load_engines(self, voice: Voice) -> list[Engine]:
        """Load the model(s) and run each one's first (slow) inference, while the phonemizer loads alongside."""
        cfg = self.config
        if self.engine is None:
            self.engine = create_engine(cfg.engine, cfg.device, cfg.model, cfg.model_config, cfg.engine_threads,
                                        cfg.onnx_graph)
        workers = cfg.engine_workers or default_workers(self.engine)
        engines = [self.engine] + [create_engine(self.engine.name, cfg.device, cfg.model, cfg.model_config,
                                                 cfg.engine_threads, cfg.onnx_graph) for _ in range(workers - 1)]
        for engine in engines:
            engine.synthesize(WARMUP_PHONEMES, voice.pack, cfg.speed)
        return engines

    def stop(self) -> None:
        """Stop serving and end every call; safe after a start that failed part-way."""
        if self.stopped.is_set():
            return
        if self.http is not None:
            self.http.stop()
        for server in self._serving:
            server.shutdown()
        for server in self._servers:
            server.server_close()
        metrics.SERVICES.discard(self)
        if self.registry is not None:
            self.registry.shutdown()
        if self.scheduler is not None:
            self.scheduler.stop()
        self.stopped.set()
        log.info("stopped")

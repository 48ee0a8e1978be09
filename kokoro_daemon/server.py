"""The daemon: a thread per LLaMA connection on TCP, a registration thread on UDP, one engine.

Data path: LLaMA socket -> LlamaHandler (exact-length reads, streaming segmenter) ->
CallRegistry -> Scheduler (round-robin, one segment at a time) -> Synthesizer (engine
lock) -> Call.deliver (chunk ids) -> bounded writer -> reply socket or processor link.
"""
from __future__ import annotations

import logging
import select
import socket
import socketserver
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from . import metrics
from .calls import CallRegistry, Routing
from .engines import Engine, create_engine
from .g2p import G2PRegistry
from .http_server import HttpServer
from .outputs import ReplyWriter
from .protocol import BYE_BYTES, Bye, PeerClosed, ProtocolError, parse_datagram, read_hello, read_message
from .scheduler import Scheduler
from .segmenter import SentenceSegmenter
from .synthesis import AudioCache, Synthesizer
from .telemetry import Telemetry
from .voices import Voice, VoiceLibrary

log = logging.getLogger(__name__)

# "Thank you for calling, how can I help you?" in Kokoro phonemes: warms the engine while the
# phonemizer is still loading, and is valid for every voice's language.
WARMUP_PHONEMES = "θˈæŋk ju fɔɹ kˈɔlɪŋ, hˌW kæn ˌI hˈɛlp ju?"


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
    voices_dir: str | None = None
    strict_voice: bool = False
    speed: float = 1.0
    cache_mb: float = 64.0
    idle_flush_s: float = 0.25
    hub_download: bool = False
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


class ReplyText:
    """A connection's text on its way to the scheduler: split into segments, the first of each reply marked."""

    def __init__(self, scheduler: Scheduler):
        self.scheduler = scheduler
        self.segmenter = SentenceSegmenter()
        self.opens_reply = True

    @property
    def pending(self) -> bool:
        return self.segmenter.pending

    def add(self, call, text: str) -> None:
        call.text_arrived()
        self._submit(call, self.segmenter.add_chunk(text))

    def flush(self, call) -> None:
        """The reply is complete (BYE, idle, or the connection ends): queue what is buffered."""
        self._submit(call, self.segmenter.finish())
        self.opens_reply = True

    def _submit(self, call, segments: list[str]) -> None:
        self.scheduler.submit(call, segments, self.opens_reply)
        self.opens_reply = self.opens_reply and not segments


class LlamaHandler(socketserver.BaseRequestHandler):
    """One LLaMA connection: HELLO, then text chunks, then (perhaps never) BYE."""

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
        try:
            call_id = read_hello(sock)
        except (PeerClosed, OSError):
            return
        except ProtocolError as exc:
            metrics.PROTOCOL_ERRORS.labels("hello").inc()
            log.error("connection from %s refused: %s", peer, exc)
            return
        writer = ReplyWriter(sock, f"reply-{call_id}", service.config.routing.max_queued_bytes)
        call = service.registry.open(call_id, writer)
        text = ReplyText(service.scheduler)
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        log.info("call %s: LLaMA connected from %s", call_id, peer)
        cancel, said_bye = True, False
        try:
            while True:
                if text.pending and not poller.poll(service.config.idle_flush_s * 1000):
                    text.flush(call)
                    continue
                try:
                    message = read_message(sock)
                except ProtocolError as exc:
                    if exc.fatal:
                        raise
                    metrics.PROTOCOL_ERRORS.labels("text").inc()
                    log.error("call %s: %s", call_id, exc)
                    continue
                if isinstance(message, Bye):
                    break
                if call.ended.is_set():
                    call = service.registry.open(call_id, writer)
                text.add(call, message.text)
            cancel, said_bye = False, True
            log.info("call %s: BYE; finishing its audio", call_id)
        except PeerClosed as exc:
            if exc.mid_message:
                metrics.PROTOCOL_ERRORS.labels("truncated").inc()
                log.warning("call %s: %s", call_id, exc)
            else:
                log.info("call %s: LLaMA connection closed", call_id)
        except ProtocolError as exc:
            cancel = False
            metrics.PROTOCOL_ERRORS.labels("framing").inc()
            log.error("call %s: closing the connection from %s: %s", call_id, peer, exc)
        except OSError as exc:
            log.info("call %s: LLaMA connection lost: %s", call_id, exc)
        if call.reply is not writer:
            text.flush(call)
            return
        if cancel:
            service.registry.disconnect(call, writer, cancel=True)
            writer.close(discard_pending=True)
        else:
            self._deliver_accepted(call, writer, text, final=BYE_BYTES if said_bye else None)

    def _deliver_accepted(self, call, writer: ReplyWriter, text: ReplyText, final: bytes | None) -> None:
        """Speak everything accepted on this connection, then send ``final`` (BYE back, as the Piper service did).

        The call is let go before ``final`` goes out, so a client that reconnects with the same
        call_id the moment it reads BYE starts a new call.
        """
        service = self.server.service
        text.flush(call)
        service.scheduler.wait_drained(call)
        service.registry.disconnect(call, writer, cancel=False)
        writer.close(final=final)
        writer.wait_closed()


class RegistrationHandler(socketserver.BaseRequestHandler):
    """``REGISTER:<id>`` and ``BYE:<id>`` from the outbound audio processors."""

    server: "_UDPServer"

    def handle(self) -> None:
        data = self.request[0]
        registry = self.server.service.registry
        try:
            command, call_id = parse_datagram(data)
        except ValueError as exc:
            metrics.PROTOCOL_ERRORS.labels("datagram").inc()
            log.warning("ignored datagram from %s:%s: %s", *self.client_address[:2], exc)
            return
        if command == "REGISTER":
            registry.register(call_id)
        elif not registry.end(call_id):
            log.info("BYE for unknown call %s ignored", call_id)


class _TCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, address, service: "KokoroService"):
        self.service = service
        super().__init__(address, LlamaHandler)


class _UDPServer(socketserver.UDPServer):
    allow_reuse_address = True

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
        self.voice_setting: VoiceSetting | None = None
        self.synthesizer: Synthesizer | None = None
        self.scheduler: Scheduler | None = None
        self.registry: CallRegistry | None = None
        self.telemetry = Telemetry()
        self.started_at: float | None = None
        self.http: HttpServer | None = None
        self._tcp: _TCPServer | None = None
        self._udp: _UDPServer | None = None
        self._threads: list[threading.Thread] = []
        self.stopped = threading.Event()

    @property
    def tcp_address(self) -> tuple[str, int]:
        return self._tcp.server_address[:2]

    @property
    def udp_address(self) -> tuple[str, int]:
        return self._udp.server_address[:2]

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
        started = time.monotonic()
        cfg = self.config
        check_speed(cfg.speed)
        voice = self.voices.load(cfg.voice) if cfg.strict_voice else self.voices.load_or_fallback(cfg.voice)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine-load") as pool:
            engine_ready = pool.submit(self._load_engine, voice)
            phonemizer = self.g2p.get(voice.lang)
            engine_ready.result()
        self.voice_setting = VoiceSetting(voice, cfg.speed)
        self.synthesizer = Synthesizer(self.engine, self.g2p, AudioCache(int(cfg.cache_mb * 1024 * 1024)),
                                       self.telemetry)
        self.scheduler = Scheduler(self.synthesizer, self.voice_setting.get)
        self.registry = CallRegistry(cfg.routing, self.scheduler, self.telemetry)
        if cfg.http_port is not None:
            self.http = HttpServer(self, cfg.host, cfg.http_port, cfg.api_key)
        self._tcp = _TCPServer((cfg.host, cfg.tcp_port), self)
        self._udp = _UDPServer((cfg.host, cfg.udp_port), self)
        self.scheduler.start()
        for name, server in (("tcp", self._tcp), ("udp", self._udp)):
            thread = threading.Thread(target=server.serve_forever, name=f"{name}-listener", daemon=True)
            thread.start()
            self._threads.append(thread)
        self.started_at = time.time()
        http = ""
        if self.http is not None:
            self.http.start()
            http = "; HTTP %s:%d" % self.http.address
        log.info("ready in %.1f s: LLaMA TCP %s:%d, registration UDP %s:%d%s; engine %s on %s; voice %s (%s phonemes); "
                 "audio %d Hz, routing %s", time.monotonic() - started, *self.tcp_address, *self.udp_address, http,
                 self.engine.name, self.engine.device, voice.spec, phonemizer.backend,
                 cfg.routing.output_rate, cfg.routing.mode)

    def _load_engine(self, voice: Voice) -> None:
        """Load the model and run its first (slow) inference, while the phonemizer loads alongside."""
        if self.engine is None:
            cfg = self.config
            self.engine = create_engine(cfg.engine, cfg.device, cfg.model, cfg.model_config)
        self.engine.synthesize(WARMUP_PHONEMES, voice.pack, self.config.speed)

    def stop(self) -> None:
        if self.stopped.is_set():
            return
        if self.http is not None:
            self.http.stop()
        for server in (self._tcp, self._udp):
            if server is not None:
                server.shutdown()
                server.server_close()
        if self.registry is not None:
            self.registry.shutdown()
        if self.scheduler is not None:
            self.scheduler.stop()
        self.stopped.set()
        log.info("stopped")

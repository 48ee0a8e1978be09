"""Command line: flags (each with a KOKORO_* environment variable), the run loop, operator commands."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sqlite3
import sys
import threading

from .calls import LINK_MODES, ROUTING_MODES, Routing
from .config_db import ConfigDB, ConfigWatcher, StatusReporter
from .engines import CPU_ONNX_WORKERS, DEFAULT_ONNX_GRAPH, ENGINE_CHOICES, ONNX_GRAPHS
from .engines.windows import DEFAULT_SYNTHESIS, SYNTHESIS_MODES
from .scheduler import SCHEDULES
from .server import LOOPBACK, KokoroService, ServiceConfig, check_speed
from .voices import VoiceError, VoiceLibrary

log = logging.getLogger("kokoro_service")

DEFAULT_VOICE = "af_sky"
EXIT_DISABLED = 3


def _env(name: str, default=None, kind=str):
    value = os.environ.get(name)
    if value in (None, ""):
        return default
    try:
        return kind(value)
    except ValueError:
        raise SystemExit(f"error: environment variable {name}={value!r} is not a valid {kind.__name__}") from None


def _flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kokoro_service.py",
        description="Kokoro-82M text-to-speech daemon for the phone system (drop-in for the Piper service). "
                    "Every option can also be set by the environment variable shown in brackets.",
        epilog="Operator commands: kokoro_service.py db {status,enable,disable,set-voice NAME,set-speed X} --db PATH",
    )
    p.add_argument("-v", "--voice", default=_env("KOKORO_VOICE"),
                   help="voice name, file (.pt/.npy) or blend such as af_sky(2)+af_bella(1); default: the "
                        f"database's kokoro_voice, else {DEFAULT_VOICE} [KOKORO_VOICE]")
    p.add_argument("-t", "--tcp-port", type=int, default=_env("KOKORO_TCP_PORT", 8090, int),
                   help="TCP port for LLaMA connections (default 8090) [KOKORO_TCP_PORT]")
    p.add_argument("-u", "--udp-port", type=int, default=_env("KOKORO_UDP_PORT", 13001, int),
                   help="UDP port for processor REGISTER/BYE (default 13001) [KOKORO_UDP_PORT]")
    p.add_argument("-d", "--device", choices=("mps", "cuda", "cpu"), default=_env("KOKORO_DEVICE", "mps"),
                   help="torch device; falls back mps -> cuda -> cpu when absent (default mps) [KOKORO_DEVICE]")
    p.add_argument("--host", default=_env("KOKORO_HOST", "127.0.0.1"),
                   help="address to listen on (default 127.0.0.1) [KOKORO_HOST]")
    p.add_argument("--engine", choices=ENGINE_CHOICES, default=_env("KOKORO_ENGINE", "auto"),
                   help="kokoro (torch), onnx (onnxruntime) or auto, which never waits on the network "
                        "(default auto) [KOKORO_ENGINE]")
    p.add_argument("--model", default=_env("KOKORO_MODEL"),
                   help="local weights: a .pth for the kokoro engine or an .onnx file; default: the Hugging Face "
                        "cache/download (kokoro) or the embedded int8 model (onnx) [KOKORO_MODEL]")
    p.add_argument("--model-config", default=_env("KOKORO_MODEL_CONFIG"),
                   help="model config.json for local weights (vocabulary and architecture) [KOKORO_MODEL_CONFIG]")
    p.add_argument("--onnx-graph", choices=ONNX_GRAPHS, default=_env("KOKORO_ONNX_GRAPH", DEFAULT_ONNX_GRAPH),
                   help="the embedded model as shipped (int8) or with float 2-D convolutions (fast, built once "
                        f"into the model cache, ~300 MB more memory); ignored with --model (default "
                        f"{DEFAULT_ONNX_GRAPH}) [KOKORO_ONNX_GRAPH]")
    p.add_argument("--voices-dir", default=_env("KOKORO_VOICES_DIR"),
                   help="folder of <voice>.pt / .npy voice packs [KOKORO_VOICES_DIR]")
    p.add_argument("--strict-voice", action="store_true", default=_flag("KOKORO_STRICT_VOICE"),
                   help="fail at start-up when the voice cannot be had, instead of using an embedded one "
                        "[KOKORO_STRICT_VOICE=1]")
    p.add_argument("--hub-download", action="store_true", default=_flag("KOKORO_HUB_DOWNLOAD"),
                   help="allow downloading voices missing locally from the Hugging Face hub [KOKORO_HUB_DOWNLOAD=1]")
    p.add_argument("--speed", type=float, default=_env("KOKORO_SPEED", None, float),
                   help="speaking rate 0.5 to 2.0; default: the database's kokoro_speed, else 1.0 [KOKORO_SPEED]")
    p.add_argument("--output-rate", type=int, choices=(8000, 16000, 24000), default=_env("KOKORO_OUTPUT_RATE", 24000, int),
                   help="sample rate of the frames sent; 8000/16000 resample with soxr (default 24000) "
                        "[KOKORO_OUTPUT_RATE]")
    p.add_argument("--routing", choices=ROUTING_MODES, default=_env("KOKORO_ROUTING", "auto"),
                   help="auto: registered numeric calls to their processor, others back on the LLaMA connection; "
                        "reply-only; processor-only (holds audio until the processor registers) [KOKORO_ROUTING]")
    p.add_argument("--processor-host", default=_env("KOKORO_PROCESSOR_HOST", "127.0.0.1"),
                   help="host of the outbound audio processors (default 127.0.0.1) [KOKORO_PROCESSOR_HOST]")
    p.add_argument("--processor-base-port", type=int, default=_env("KOKORO_PROCESSOR_BASE_PORT", 9002, int),
                   help="call N's processor listens on this + N (default 9002) [KOKORO_PROCESSOR_BASE_PORT]")
    p.add_argument("--processor-link", choices=LINK_MODES, default=_env("KOKORO_PROCESSOR_LINK", "auto"),
                   help="dial-in: listen on base+N and announce REGISTER:N to UDP announce-base+N until the processor "
                        "dials in (today's processor); dial-out: connect to base+N on REGISTER:N (Piper-era); auto: "
                        "both, the first link carries the call (default auto) [KOKORO_PROCESSOR_LINK]")
    p.add_argument("--announce-base-port", type=int, default=_env("KOKORO_ANNOUNCE_BASE_PORT", 13000, int),
                   help="dial-in: REGISTER:N goes to UDP this + N on the processor host (default 13000) "
                        "[KOKORO_ANNOUNCE_BASE_PORT]")
    p.add_argument("--processor-wait-s", type=float, default=_env("KOKORO_PROCESSOR_WAIT_S", 1.5, float),
                   help="how long a new call's audio waits for its processor before going back on the LLaMA "
                        "connection (default 1.5) [KOKORO_PROCESSOR_WAIT_S]")
    p.add_argument("--max-lead-s", type=float, default=_env("KOKORO_MAX_LEAD_S", 6.0, float),
                   help="never send a processor more than this many seconds ahead of real-time playout "
                        "(default 6) [KOKORO_MAX_LEAD_S]")
    p.add_argument("--schedule", choices=SCHEDULES, default=_env("KOKORO_SCHEDULE", "playout"),
                   help="playout: serve the caller whose audio runs out soonest; round-robin: one segment per call "
                        "in turn (default playout) [KOKORO_SCHEDULE]")
    p.add_argument("--synthesis", choices=SYNTHESIS_MODES, default=_env("KOKORO_SYNTHESIS", DEFAULT_SYNTHESIS),
                   help="stream: a reply's first sentence in windows, a small first one, each a unit of engine "
                        "work, so first audio does not grow with the sentence (at some cost in quality, see "
                        f"bench/README.md); whole: each sentence in one engine call (default {DEFAULT_SYNTHESIS}; "
                        "engines that cannot be cut run whole) [KOKORO_SYNTHESIS]")
    p.add_argument("--engine-workers", type=int, default=_env("KOKORO_ENGINE_WORKERS", None, int),
                   help=f"engine copies (each a model behind its own lock) speaking different calls at once; "
                        f"default {CPU_ONNX_WORKERS} for onnx on CPU, else 1 [KOKORO_ENGINE_WORKERS]")
    p.add_argument("--allow-from", default=_env("KOKORO_ALLOW_FROM", ",".join(LOOPBACK)),
                   help="comma-separated addresses or networks whose REGISTER/BYE datagrams are obeyed "
                        "(default loopback) [KOKORO_ALLOW_FROM]")
    p.add_argument("--max-queue-kb", type=int, default=_env("KOKORO_MAX_QUEUE_KB", 8192, int),
                   help="per-destination queue budget; the oldest audio is dropped beyond it (default 8192) "
                        "[KOKORO_MAX_QUEUE_KB]")
    p.add_argument("--hold-seconds", type=float, default=_env("KOKORO_HOLD_SECONDS", 30.0, float),
                   help="processor-only: how long audio waits for its processor to register (default 30) "
                        "[KOKORO_HOLD_SECONDS]")
    p.add_argument("--cache-mb", type=float, default=_env("KOKORO_CACHE_MB", 64.0, float),
                   help="in-memory cache of synthesized segments; 0 disables it (default 64) [KOKORO_CACHE_MB]")
    p.add_argument("--db", default=_env("KOKORO_DB"),
                   help="the phone system's SQLite file (system_config): voice, speed, enabled flag, status "
                        "[KOKORO_DB]")
    p.add_argument("--force", action="store_true", default=_flag("KOKORO_FORCE"),
                   help="start even when the database says the service is disabled [KOKORO_FORCE=1]")
    p.add_argument("--http-port", type=int, default=_env("KOKORO_HTTP_PORT", 8091, int),
                   help="HTTP port, on --host, of the OpenAI-compatible speech API, /health, /metrics and the "
                        "operator page; 0 turns it off (default 8091) [KOKORO_HTTP_PORT]")
    p.add_argument("--api-key", default=_env("KOKORO_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on every HTTP route but /health (and the operator "
                        "page's own files); prefer the variable, which 'ps' does not show [KOKORO_API_KEY]")
    p.add_argument("--metrics-port", type=int, default=_env("KOKORO_METRICS_PORT", None, int),
                   help="serve Prometheus metrics on this port as well as at /metrics on --http-port (default off) "
                        "[KOKORO_METRICS_PORT]")
    p.add_argument("--log-level", default=_env("KOKORO_LOG_LEVEL", "INFO"),
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"), type=str.upper,
                   help="log level (default INFO) [KOKORO_LOG_LEVEL]")
    p.add_argument("--list-voices", action="store_true", help="list the voices available offline and exit")
    return p


def build_db_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kokoro_service.py db", description="Read or change the service's settings "
                                "in the phone system's database.")
    p.add_argument("action", choices=("status", "enable", "disable", "set-voice", "set-speed"))
    p.add_argument("value", nargs="?", help="the voice (set-voice) or speed (set-speed)")
    p.add_argument("--db", default=_env("KOKORO_DB"), required=_env("KOKORO_DB") is None,
                   help="SQLite file [KOKORO_DB]")
    p.add_argument("--voices-dir", default=_env("KOKORO_VOICES_DIR"),
                   help="check set-voice against this folder too [KOKORO_VOICES_DIR]")
    return p


def db_command(argv: list[str]) -> int:
    args = build_db_parser().parse_args(argv)
    db = ConfigDB(args.db)
    try:
        if args.action == "enable":
            db.set_kokoro_enabled(True)
        elif args.action == "disable":
            db.set_kokoro_enabled(False)
        elif args.action == "set-voice":
            if not args.value:
                raise ValueError("set-voice needs a voice name")
            VoiceLibrary(args.voices_dir).load(args.value)
            db.set_kokoro_voice(args.value)
        elif args.action == "set-speed":
            if not args.value:
                raise ValueError("set-speed needs a number")
            db.set_kokoro_speed(check_speed(float(args.value)))
    except (ValueError, VoiceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for key, value in sorted(db.snapshot().items()):
        print(f"{key} = {value}")
    return 0


def list_voices(voices_dir: str | None) -> int:
    available = VoiceLibrary(voices_dir).available()
    for name, source in available.items():
        print(f"{name:16s} {source}")
    if not available:
        print("no voices available offline", file=sys.stderr)
    return 0


def config_from_args(args, db: ConfigDB | None) -> ServiceConfig:
    voice = args.voice or (db.get_kokoro_voice() if db else None) or DEFAULT_VOICE
    speed = args.speed if args.speed is not None else (db.get_kokoro_speed() if db else 1.0)
    routing = Routing(mode=args.routing, link=args.processor_link, listen_host=args.host,
                      processor_host=args.processor_host, processor_base_port=args.processor_base_port,
                      announce_base_port=args.announce_base_port, processor_wait_s=args.processor_wait_s,
                      max_lead_s=args.max_lead_s, output_rate=args.output_rate,
                      max_queued_bytes=args.max_queue_kb * 1024, hold_seconds=args.hold_seconds)
    return ServiceConfig(voice=voice, host=args.host, tcp_port=args.tcp_port, udp_port=args.udp_port,
                         device=args.device, engine=args.engine, model=args.model, model_config=args.model_config,
                         onnx_graph=args.onnx_graph,
                         voices_dir=args.voices_dir, strict_voice=args.strict_voice, speed=speed,
                         cache_mb=args.cache_mb, hub_download=args.hub_download, schedule=args.schedule,
                         synthesis=args.synthesis, engine_workers=args.engine_workers,
                         allow_from=tuple(net.strip() for net in args.allow_from.split(",") if net.strip()),
                         routing=routing, http_port=args.http_port or None, api_key=args.api_key, db=args.db)


def apply_db_changes(service: KokoroService, changes: dict[str, str]) -> None:
    """A voice or speed changed in the database: use it for the next segments, keep the old one if it is bad."""
    if "kokoro_voice" in changes:
        try:
            service.set_voice(changes["kokoro_voice"])
        except (VoiceError, RuntimeError) as exc:
            log.error("database voice %r refused, keeping the current voice: %s", changes["kokoro_voice"], exc)
    if "kokoro_speed" in changes:
        try:
            service.set_speed(float(changes["kokoro_speed"]))
        except ValueError as exc:
            log.error("database speed %r refused, keeping the current speed: %s", changes["kokoro_speed"], exc)


def start_metrics(port: int, host: str) -> None:
    """Serve Prometheus metrics; a port already taken costs the metrics, not the service."""
    from prometheus_client import start_http_server
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        log.error("metrics port %s:%d unavailable (%s); serving without metrics", host, port, exc)
    else:
        log.info("metrics on http://%s:%d/metrics", host, port)


def run(args) -> int:
    try:
        db = ConfigDB(args.db) if args.db else None
        if db is not None and not db.is_kokoro_enabled() and not args.force:
            log.error("the service is disabled in %s (kokoro_service_enabled = false); "
                      "enable it with 'kokoro_service.py db enable --db %s' or start with --force", args.db, args.db)
            return EXIT_DISABLED
    except sqlite3.Error as exc:
        log.error("cannot read the database %s: %s", args.db, exc)
        return 1
    status = StatusReporter(db) if db is not None else None
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("received %s; shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)  # set before start-up, so a stop during it is still clean
    signal.signal(signal.SIGINT, on_signal)
    if status is not None:
        status.report("starting")
    try:
        config = config_from_args(args, db)
        service = KokoroService(config)
        service.start()
    except Exception as exc:
        log.error("failed to start: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
        if status is not None:
            status.report("error")
            status.close()
        return 1
    if args.metrics_port:
        start_metrics(args.metrics_port, args.host)
    watcher = None
    if db is not None:
        status.report("running")
        watcher = ConfigWatcher(db, lambda changes: apply_db_changes(service, changes))
        watcher.start()
    stop.wait()
    if watcher is not None:
        watcher.stop()
    service.stop()
    if status is not None:
        status.report("stopped")
        status.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["db"]:
        return db_command(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.list_voices:
        return list_voices(args.voices_dir)
    return run(args)

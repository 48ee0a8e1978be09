"""Counters for everything the service drops or refuses, so no loss is silent, and gauges of its load.

Served at ``/metrics`` on the HTTP port (and on ``--metrics-port``); tests read them from the default registry.
"""
from weakref import WeakSet

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily

FRAMES_SENT = Counter("kokoro_frames_sent_total", "Audio frames written to a consumer", ["destination"])
FRAMES_DROPPED = Counter("kokoro_frames_dropped_total", "Audio frames dropped before reaching a consumer", ["reason"])
SEGMENTS_SYNTHESIZED = Counter("kokoro_segments_synthesized_total", "Text segments run through the engine")
SEGMENTS_CANCELLED = Counter("kokoro_segments_cancelled_total", "Queued segments dropped because their call ended")
SEGMENTS_FAILED = Counter("kokoro_segments_failed_total", "Segments the engine or phonemizer could not speak")
SEGMENTS_SILENT = Counter("kokoro_segments_silent_total", "Segments skipped because nothing in them is speakable")
TEXT_DROPPED = Counter("kokoro_text_dropped_total", "Characters of accepted or offered text never spoken", ["reason"])
CACHE_HITS = Counter("kokoro_cache_hits_total", "Segments served from the audio cache")
PROTOCOL_ERRORS = Counter("kokoro_protocol_errors_total", "Connections or datagrams refused for bad input", ["kind"])
HTTP_SPEECH = Counter("kokoro_http_speech_total", "Speech requests answered in full over HTTP", ["format"])
HTTP_ERRORS = Counter("kokoro_http_errors_total", "HTTP requests answered with an error", ["status"])
ACTIVE_CONNECTIONS = Gauge("kokoro_llama_connections", "Open LLaMA connections")
EARLY_REGISTERS = Counter("kokoro_early_registers_total", "REGISTER datagrams kept for a call that had not begun")
LINKS = Counter("kokoro_processor_links_total", "Processor links made", ["kind"])
UNDERRUNS = Counter("kokoro_underruns_total", "Times a caller ran out of audio mid-reply while the engine was busy")
ENGINE_BUSY = Counter("kokoro_engine_busy_seconds_total", "Seconds the engine workers spent synthesizing")
ACCEPT_ERRORS = Counter("kokoro_accept_errors_total", "Connections left waiting because accept() failed", ["errno"])


class _ServiceCollector:
    """Gauges read from the running service(s) at scrape time: engine saturation and each call's audio lead."""

    def collect(self):
        services = list(SERVICES)
        saturation = GaugeMetricFamily("kokoro_engine_saturation",
                                       "Fraction of engine worker time spent synthesizing over the last 10 s")
        saturation.add_metric([], max((service.telemetry.saturation() for service in services), default=0.0))
        yield saturation
        lead = GaugeMetricFamily("kokoro_call_lead_seconds", "Audio a call holds ahead of its caller's playout",
                                 labels=["call_id"])
        for service in services:
            for status in service.registry.snapshot():
                lead.add_metric([status.call_id], status.lead_s)
        yield lead


SERVICES: WeakSet = WeakSet()
REGISTRY.register(_ServiceCollector())

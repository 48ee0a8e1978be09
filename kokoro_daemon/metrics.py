"""Counters for everything the service drops or refuses, so no loss is silent.

Served at ``/metrics`` on the HTTP port (and on ``--metrics-port``); tests read them from the default registry.
"""
from prometheus_client import Counter, Gauge

FRAMES_SENT = Counter("kokoro_frames_sent_total", "Audio frames written to a consumer", ["destination"])
FRAMES_DROPPED = Counter("kokoro_frames_dropped_total", "Audio frames dropped before reaching a consumer", ["reason"])
SEGMENTS_SYNTHESIZED = Counter("kokoro_segments_synthesized_total", "Text segments run through the engine")
SEGMENTS_CANCELLED = Counter("kokoro_segments_cancelled_total", "Queued segments dropped because their call ended")
SEGMENTS_FAILED = Counter("kokoro_segments_failed_total", "Segments the engine or phonemizer could not speak")
CACHE_HITS = Counter("kokoro_cache_hits_total", "Segments served from the audio cache")
PROTOCOL_ERRORS = Counter("kokoro_protocol_errors_total", "Connections or datagrams refused for bad input", ["kind"])
HTTP_SPEECH = Counter("kokoro_http_speech_total", "Speech requests answered in full over HTTP", ["format"])
HTTP_ERRORS = Counter("kokoro_http_errors_total", "HTTP requests answered with an error", ["status"])
ACTIVE_CONNECTIONS = Gauge("kokoro_llama_connections", "Open LLaMA connections")

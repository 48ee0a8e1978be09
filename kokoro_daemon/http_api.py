"""HTTP beside the phone protocol: OpenAI's speech endpoint, voices, models, health, metrics and the operator page.

aiohttp serves it on its own thread and event loop. A speech request is a listener of the
scheduler like a phone call, with its own voice and a lower priority, so phone calls come
first; its audio is encoded and written out segment by segment as the scheduler delivers it.
Errors carry OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``.
"""
from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from . import metrics
from .audio_formats import FORMATS, AudioFormat, StreamEncoder
from .frames import PlayoutClock
from .g2p import G2PUnavailable
from .segmenter import split_text
from .voices import LANGUAGE_PREFIXES, Voice, VoiceError, language_of

log = logging.getLogger(__name__)

MAX_INPUT_CHARS = 4096           # as OpenAI's speech endpoint
MODELS = ("kokoro", "tts-1", "tts-1-hd", "gpt-4o-mini-tts")   # names clients send; all are this service's model


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def response(self) -> web.Response:
        metrics.HTTP_ERRORS.labels(str(self.status)).inc()
        return web.json_response({"error": {"message": self.message, "type": self.kind, "param": self.param,
                                            "code": self.code}}, status=self.status)


def is_public(path: str) -> bool:
    """Health, and the operator page's files: they carry no data (the page asks for the key to fetch any)."""
    return path in ("/health", "/") or path.startswith("/static/")


def invalid(param: str | None, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param, code)


async def read_json(request: web.Request):
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise invalid(None, "We could not parse the JSON body of your request.", "invalid_json") from None


@dataclass(frozen=True)
class SpeechRequest:
    text: str
    voice_spec: str
    speed: float
    format: AudioFormat

    @classmethod
    def parse(cls, body) -> "SpeechRequest":
        if not isinstance(body, dict):
            raise invalid(None, "The request body must be a JSON object.", "invalid_type")
        for name in ("model", "input", "voice"):
            if name not in body:
                raise invalid(name, f"Missing required parameter: '{name}'.", "missing_required_parameter")
            if not isinstance(body[name], str):
                raise invalid(name, f"Invalid type for '{name}': expected a string.", "invalid_type")
        if body["model"] not in MODELS:
            raise ApiError(404, f"The model '{body['model']}' does not exist; this service serves "
                                f"{', '.join(MODELS)}.", None, "model_not_found")
        text = body["input"]
        if not text.strip():
            raise invalid("input", "Invalid 'input': there is nothing to speak.", "empty_string")
        if len(text) > MAX_INPUT_CHARS:
            raise invalid("input", f"Invalid 'input': string too long. Expected at most {MAX_INPUT_CHARS} "
                                   f"characters, got {len(text)}.", "string_above_max_length")
        speed = body.get("speed", 1.0)
        if isinstance(speed, bool) or not isinstance(speed, (int, float)):
            raise invalid("speed", "Invalid type for 'speed': expected a number.", "invalid_type")
        if not 0.5 <= speed <= 2.0:
            raise invalid("speed", f"Invalid 'speed': {speed} is outside 0.5 to 2.0.")
        name = body.get("response_format", "mp3")
        if not isinstance(name, str) or name not in FORMATS:
            raise invalid("response_format", f"Invalid 'response_format': {name!r}. Supported values are: "
                                             f"{', '.join(FORMATS)}.")
        if body.get("stream_format", "audio") != "audio":
            raise invalid("stream_format", "Only stream_format 'audio' is supported.")
        return cls(text, body["voice"], float(speed), FORMATS[name])


class SpeechListener:
    """An HTTP request as the scheduler sees it: its own voice, served after phone calls, audio into a queue.

    Its client may play the stream as it comes, so its audio counts as playing in real time
    from the first piece, as a reply socket's does; the scheduler joins its sentences when it
    is ahead. ``None`` in the queue ends the stream.
    """

    priority = 1

    def __init__(self, call_id: str, voice: Voice, speed: float, loop: asyncio.AbstractEventLoop):
        self.call_id = call_id
        self.voice = (voice, speed)
        self.ended = threading.Event()
        self.audio: asyncio.Queue[np.ndarray | None] = asyncio.Queue()
        self._clock = PlayoutClock()
        self._loop = loop

    def dry_at(self) -> float:
        return self._clock.dry_at(time.monotonic())

    def deliver(self, audio: np.ndarray, sample_rate: int, reply: int = 0, ends_reply: bool = False) -> None:
        if audio.size:
            self._clock.sent(audio.size / sample_rate, time.monotonic())
            self._loop.call_soon_threadsafe(self.audio.put_nowait, audio)
        if ends_reply:
            self._loop.call_soon_threadsafe(self.audio.put_nowait, None)


def voice_list(service) -> list[dict]:
    """The voices that can be spoken offline: the pack is here and so is its language's phonemizer."""
    speakable: dict[str, bool] = {}
    voices = []
    for name, source in service.voices.available().items():
        lang = language_of(name)
        if lang not in speakable:
            try:
                service.g2p.get(lang)
                speakable[lang] = True
            except G2PUnavailable:
                speakable[lang] = False
        if speakable[lang]:
            gender = {"f": "female", "m": "male"}.get(name[1:2], "")
            voices.append({"id": name, "name": f"{name} ({LANGUAGE_PREFIXES[lang]}{', ' + gender if gender else ''})",
                           "language": LANGUAGE_PREFIXES[lang], "language_code": lang, "gender": gender,
                           "source": source})
    return voices


class HttpApi:
    """The routes, bound to one service."""

    def __init__(self, service, api_key: str | None):
        self.service = service
        self.api_key = api_key
        self._ids = itertools.count(1)
        self.app = web.Application(middlewares=[self.errors, self.authorize])
        self.app.add_routes([
            web.post("/v1/audio/speech", self.speech),
            web.get("/v1/audio/voices", self.voices),
            web.get("/v1/models", self.models),
            web.get("/health", self.health),
            web.get("/metrics", self.metrics),
        ])

    @web.middleware
    async def errors(self, request: web.Request, handler):
        try:
            return await handler(request)
        except ApiError as exc:
            return exc.response()
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return ApiError(exc.status, f"{exc.reason}: {request.method} {request.path}",
                            code="unknown_url" if exc.status == 404 else None).response()
        except Exception:
            log.exception("HTTP %s %s failed", request.method, request.path)
            return ApiError(500, "The server had an error while processing your request.",
                            kind="server_error").response()

    @web.middleware
    async def authorize(self, request: web.Request, handler):
        if self.api_key and not is_public(request.path):
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                raise ApiError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
                               code="invalid_api_key")
        return await handler(request)

    async def speech(self, request: web.Request) -> web.StreamResponse:
        speech = SpeechRequest.parse(await read_json(request))
        voice = await asyncio.to_thread(self._voice, speech.voice_spec)
        service = self.service
        listener = SpeechListener(f"http-{next(self._ids)}", voice, speech.speed, asyncio.get_running_loop())
        segments = split_text(speech.text)
        log.info("%s: %d characters in %d segment(s), voice %s, speed %.2f, %s", listener.call_id, len(speech.text),
                 len(segments), voice.spec, speech.speed, speech.format.name)
        encoder = StreamEncoder(speech.format, service.engine.sample_rate)
        response = web.StreamResponse(headers={"Content-Type": speech.format.media_type})
        response.enable_chunked_encoding()
        await response.prepare(request)
        started, first_audio, audio_s = time.monotonic(), None, 0.0
        service.scheduler.submit(listener, segments, reply=1, opens_reply=True, ends_reply=True)
        try:
            while (audio := await listener.audio.get()) is not None:
                first_audio = first_audio or time.monotonic() - started
                audio_s += audio.size / service.engine.sample_rate
                await response.write(await asyncio.to_thread(encoder.encode, audio))
            await response.write(await asyncio.to_thread(encoder.finish))
            await response.write_eof()
            metrics.HTTP_SPEECH.labels(speech.format.name).inc()
            log.info("%s: done: %.3f s audio, first audio %.3f s", listener.call_id, audio_s, first_audio or 0.0)
        except ConnectionResetError:
            log.info("%s: the client went away; its queued segments are dropped", listener.call_id)
        finally:
            listener.ended.set()
            service.scheduler.cancel(listener)
        return response

    def _voice(self, spec: str) -> Voice:
        try:
            voice = self.service.load_voice(spec)
            self.service.g2p.get(voice.lang)
        except (VoiceError, G2PUnavailable) as exc:
            raise invalid("voice", str(exc)) from None
        return voice

    async def voices(self, request: web.Request) -> web.Response:
        return web.json_response({"voices": await asyncio.to_thread(voice_list, self.service)})

    async def models(self, request: web.Request) -> web.Response:
        created = int(self.service.started_at)
        return web.json_response({"object": "list", "data": [
            {"id": name, "object": "model", "created": created, "owned_by": "kokoro"} for name in MODELS]})

    async def health(self, request: web.Request) -> web.Response:
        voice, speed = self.service.voice_setting.get()
        engine = self.service.engine
        return web.json_response({"ready": True, "engine": engine.label, "device": engine.device,
                                  "voice": voice.spec, "speed": speed, "calls": len(self.service.registry),
                                  "uptime_s": round(time.time() - self.service.started_at, 1)})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

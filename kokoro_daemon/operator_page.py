"""The operator page (``GET /``) and the two routes it reads and writes.

``/api/status``: the service's state, its live calls, the telemetry history for the chart,
and the counters of drops and errors. ``/api/settings``: the service's voice and speed.
With ``--db`` a change is written to ``system_config``, and the service's database watcher
applies it, as it does any other change there: the phone system's settings stay the truth.
Without a database there is no other truth to keep, so the change applies at once (until
the service restarts). The page's files are in ``web/``, the chart library (uPlot) with them.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path

from aiohttp import web

from . import metrics
from .config_db import ConfigDB
from .g2p import G2PUnavailable
from .http_api import invalid, read_json
from .voices import VoiceError

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent / "web"
COUNTERS = {
    "frames dropped": metrics.FRAMES_DROPPED,
    "segments failed": metrics.SEGMENTS_FAILED,
    "segments cancelled": metrics.SEGMENTS_CANCELLED,
    "protocol errors": metrics.PROTOCOL_ERRORS,
    "HTTP errors": metrics.HTTP_ERRORS,
}


def counters() -> dict[str, dict[str, float]]:
    """{counter: {label value, or "" when unlabelled: count}} from the Prometheus registry."""
    out: dict[str, dict[str, float]] = {}
    for title, counter in COUNTERS.items():
        out[title] = {", ".join(sample.labels.values()): sample.value
                      for metric in counter.collect() for sample in metric.samples if sample.name.endswith("_total")}
    return out


class OperatorPage:
    def __init__(self, service):
        self.service = service

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(WEB_DIR / "index.html")

    async def status(self, request: web.Request) -> web.Response:
        service = self.service
        voice, speed = service.voice_setting.get()
        return web.json_response({
            "engine": service.engine.label, "device": service.engine.device, "voice": voice.spec, "speed": speed,
            "uptime_s": time.time() - service.started_at, "settings_via": self._settings_via(),
            "calls": [dataclasses.asdict(call) for call in service.registry.snapshot()],
            "history": service.telemetry.history(), "counters": counters(),
        })

    def _settings_via(self) -> str:
        return "database" if self.service.config.db else "service"

    async def settings(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        if not isinstance(body, dict) or not ({"voice", "speed"} & body.keys()):
            raise invalid(None, "Send a JSON object with 'voice', 'speed' or both.", "missing_required_parameter")
        spec, speed = body.get("voice"), body.get("speed")
        if spec is not None and not isinstance(spec, str):
            raise invalid("voice", "Invalid type for 'voice': expected a string.", "invalid_type")
        if speed is not None and (isinstance(speed, bool) or not isinstance(speed, (int, float))):
            raise invalid("speed", "Invalid type for 'speed': expected a number.", "invalid_type")
        via = self._settings_via()
        await asyncio.to_thread(self._apply, spec, speed)
        log.info("operator page: voice %s, speed %s %s", spec or "unchanged", speed if speed is not None else "unchanged",
                 "written to the database" if via == "database" else "applied")
        return web.json_response({"applied_via": via, "voice": spec, "speed": speed})

    def _apply(self, spec: str | None, speed: float | None) -> None:
        service = self.service
        try:
            if spec is not None:
                service.g2p.get(service.load_voice(spec).lang)
            if service.config.db:
                db = ConfigDB(service.config.db)
                if speed is not None:
                    db.set_kokoro_speed(speed)
                if spec is not None:
                    db.set_kokoro_voice(spec)
                return
            if speed is not None:
                service.set_speed(speed)
            if spec is not None:
                service.set_voice(spec)
        except (VoiceError, G2PUnavailable) as exc:
            raise invalid("voice", str(exc)) from None
        except ValueError as exc:
            raise invalid("speed", str(exc)) from None


def add_routes(app: web.Application, service) -> None:
    page = OperatorPage(service)
    app.add_routes([web.get("/", page.index), web.get("/api/status", page.status),
                    web.post("/api/settings", page.settings)])
    app.router.add_static("/static/", WEB_DIR)

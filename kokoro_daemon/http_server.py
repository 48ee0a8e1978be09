"""The HTTP API and the operator page, served by aiohttp on a thread and event loop of their own."""
from __future__ import annotations

import asyncio
import socket
import threading

from aiohttp import web

from . import operator_page
from .http_api import HttpApi

SHUTDOWN_GRACE_S = 2.0


class HttpServer:
    """The API on its own thread and event loop; the port is bound in the constructor, so a busy port fails start-up."""

    def __init__(self, service, host: str, port: int, api_key: str | None = None):
        self._sock = socket.create_server((host, port))
        self._loop = asyncio.new_event_loop()
        app = HttpApi(service, api_key).app
        operator_page.add_routes(app, service)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S)
        self._thread = threading.Thread(target=self._loop.run_forever, name="http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self._sock.getsockname()[:2]

    def start(self) -> None:
        self._loop.run_until_complete(self._runner.setup())
        self._loop.run_until_complete(web.SockSite(self._runner, self._sock).start())
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting; requests still streaming get SHUTDOWN_GRACE_S, then are cancelled."""
        if not self._thread.is_alive():     # never started: the service's start failed after binding the port
            self._sock.close()
            self._loop.close()
            return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=SHUTDOWN_GRACE_S + 10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

"""Liveness tied to the broker I/O loop, as a file and as ``/healthz`` (next to ``/metrics``).

Only the I/O loop beats. A worker thread deep in a minute of inference is fine; an I/O loop
that stops turning (a hung socket, a deadlock) is not, and that is what a liveness probe must
catch: heartbeats, acks and shutdown all depend on it.

- File: its modification time is refreshed at most once a second while the loop turns; a
  probe checks its age (``find FILE -mmin -1`` or ``stat -c %Y``). Removed on clean exit.
- HTTP: ``GET /healthz`` is 200 while the last beat is younger than ``timeout_s``, else 503;
  ``GET /metrics`` is the Prometheus exposition of the worker's registry.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from chimp_worker.log import get_logger

log = get_logger(__name__)

FILE_TOUCH_INTERVAL_S = 1.0


class Liveness:
    """Records I/O-loop beats; thread-safe reads (a float assignment is atomic)."""

    def __init__(
        self,
        *,
        timeout_s: float,
        path: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout_s = timeout_s
        self.path = path
        self._clock = clock
        self._last_beat: float | None = None
        self._last_touch = float("-inf")

    def beat(self) -> None:
        now = self._clock()
        self._last_beat = now
        if self.path is not None and now - self._last_touch >= FILE_TOUCH_INTERVAL_S:
            self._last_touch = now
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.touch()
            except OSError as exc:
                log.warning("liveness_file_not_writable", path=str(self.path), error=str(exc))

    def age_s(self) -> float | None:
        """Seconds since the last beat; None before the first."""
        return None if self._last_beat is None else self._clock() - self._last_beat

    def is_alive(self) -> bool:
        age = self.age_s()
        return age is not None and age <= self.timeout_s

    def clear(self) -> None:
        """On clean exit: no file left behind that a probe could mistake for a live worker."""
        self._last_beat = None
        if self.path is not None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("liveness_file_not_removed", path=str(self.path), error=str(exc))


class HealthServer:
    """``/healthz`` and ``/metrics`` on a small threaded HTTP server (port 0: any free port)."""

    def __init__(
        self, liveness: Liveness, registry: CollectorRegistry, *, port: int, host: str = ""
    ) -> None:
        handler = _handler_for(liveness, registry)
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="chimp-health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("health_server_started", port=self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _handler_for(liveness: Liveness, registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                age = liveness.age_s()
                alive = liveness.is_alive()
                shown = "never" if age is None else f"{age:.1f}s ago"
                body = f"{'ok' if alive else 'stalled'}: I/O loop last turned {shown}\n"
                self._reply(200 if alive else 503, body.encode(), "text/plain; charset=utf-8")
            elif path == "/metrics":
                self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            else:
                self._reply(404, b"not found: try /healthz or /metrics\n", "text/plain")

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Probes every few seconds would flood the log; stay quiet."""

    return Handler

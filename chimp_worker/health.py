"""Liveness of the worker -- its broker I/O loop *and* the work in its hands -- as a file, as
``/healthz`` next to ``/metrics``, and (through the daemon) as systemd watchdog pings.

Two things must keep moving:

- the **I/O loop**: heartbeats, acks and shutdown all depend on it. It beats every turn;
  silence for ``timeout_s`` is a hang.
- the **work**: each message being worked on has a ``WorkWatch`` the worker thread beats as
  images finish, and tells how long a bounded step (fetching or analysing a batch, each image
  with its own deadline) may take. A message past that deadline plus ``stall_s`` has stopped
  moving (a hang no deadline covers); the daemon then reports it with ``set_stalled``.

While either is wrong the liveness file is no longer touched, ``/healthz`` answers 503 with the
reason, and the daemon stops pinging the systemd watchdog, so systemd, Kubernetes or Docker
restart the worker (its unacked messages go back to the queue).

- File: its modification time is refreshed at most once a second while healthy; a probe
  checks its age (``deploy/docker/chimp-worker-alive``). Removed on clean exit.
- HTTP: prometheus-client's WSGI exposition for ``/metrics`` (any other path: 404) and
  ``/healthz`` beside it, on a threaded ``wsgiref`` server bound to ``metrics_address``
  (loopback unless asked); GET and HEAD.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from chimp_worker.log import get_logger

log = get_logger(__name__)

FILE_TOUCH_INTERVAL_S = 1.0
StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class WorkWatch:
    """When one message's work is next due to move; beaten by its worker thread, read by the
    I/O thread (plain attribute writes: atomic enough for a deadline)."""

    def __init__(self, stall_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_s = stall_s
        self._clock = clock
        self.doing = "starting"
        self.last_beat = clock()
        self.due = self.last_beat + stall_s

    def beat(self, doing: str) -> None:
        """The work moved; the next move is due within ``stall_s``."""
        now = self._clock()
        self.doing, self.last_beat, self.due = doing, now, now + self.stall_s

    def expect(self, seconds: float, doing: str) -> None:
        """A step that ends within ``seconds`` (its own deadline) begins."""
        now = self._clock()
        self.doing, self.last_beat, self.due = doing, now, now + max(0.0, seconds) + self.stall_s

    def overdue(self) -> bool:
        return self._clock() > self.due

    def silent_s(self) -> float:
        return self._clock() - self.last_beat


class Liveness:
    """I/O-loop beats plus the daemon's verdict on the work; thread-safe reads."""

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
        self._stalled: str | None = None

    def beat(self) -> None:
        """The I/O loop turned; touch the file unless the work has stalled."""
        now = self._clock()
        self._last_beat = now
        if self._stalled is not None:
            return
        if self.path is not None and now - self._last_touch >= FILE_TOUCH_INTERVAL_S:
            self._last_touch = now
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.touch()
            except OSError as exc:
                log.warning("liveness_file_not_writable", path=str(self.path), error=str(exc))

    def set_stalled(self, problem: str | None) -> None:
        """Work that stopped moving (a description), or None when all of it moves."""
        self._stalled = problem

    def age_s(self) -> float | None:
        """Seconds since the I/O loop's last beat; None before the first."""
        return None if self._last_beat is None else self._clock() - self._last_beat

    def is_alive(self) -> bool:
        age = self.age_s()
        return age is not None and age <= self.timeout_s and self._stalled is None

    def report(self) -> tuple[bool, str]:
        """(alive, one line saying why) for ``/healthz``."""
        age = self.age_s()
        shown = "never" if age is None else f"{age:.1f}s ago"
        if age is None or age > self.timeout_s:
            return False, f"stalled: I/O loop last turned {shown}"
        if self._stalled is not None:
            return False, f"stalled: {self._stalled}"
        return True, f"ok: I/O loop last turned {shown}"

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
    """``/metrics`` (prometheus-client's exposition) and ``/healthz`` on ``host:port``.

    Port 0 picks a free port (tests). ``host`` may be an IPv4 or IPv6 address or a name.
    """

    def __init__(
        self,
        liveness: Liveness,
        registry: CollectorRegistry,
        *,
        port: int,
        host: str = "127.0.0.1",
    ) -> None:
        family, address = _address_family(host, port)
        server_class: type[ThreadingWSGIServer] = type(
            "_HealthWSGIServer", (ThreadingWSGIServer,), {"address_family": family}
        )
        self._server = make_server(
            address, port, health_app(liveness, registry), server_class, _QuietHandler
        )
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="chimp-health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("health_server_started", address=self.host, port=self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def health_app(liveness: Liveness, registry: CollectorRegistry) -> WsgiApp:
    """A WSGI app: ``/healthz`` and prometheus-client's ``/metrics``; HEAD answered like GET
    without a body (prometheus-client's own app refuses HEAD with 405)."""
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "") or "/"
        if method not in ("GET", "HEAD"):
            status, headers, body = "405 Method Not Allowed", [("Allow", "GET, HEAD")], b""
        elif path == "/healthz":
            alive, text = liveness.report()
            status = "200 OK" if alive else "503 Service Unavailable"
            headers, body = [("Content-Type", "text/plain; charset=utf-8")], f"{text}\n".encode()
        elif path == "/metrics":
            status, headers, body = _call(metrics_app, {**environ, "REQUEST_METHOD": "GET"})
        else:
            status = "404 Not Found"
            headers = [("Content-Type", "text/plain; charset=utf-8")]
            body = b"not found: try /healthz or /metrics\n"
        headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
        headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [b""] if method == "HEAD" else [body]

    return app


def _call(app: WsgiApp, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], *_: Any) -> None:
        answer.update(status=status, headers=headers)

    body = b"".join(app(environ, start_response))
    return answer["status"], list(answer["headers"]), body


def _address_family(host: str, port: int) -> tuple[socket.AddressFamily, str]:
    """IPv4 or IPv6 by what ``host`` resolves to (the server's default is IPv4 only)."""
    family, _type, _proto, _name, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    return family, str(address[0])


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Probes every few seconds would flood the log; stay quiet."""

"""A small HTTP image server for tests and local trials, with faults on demand.

It serves files by their absolute filesystem path (``GET /data/visit/imaging/1/2/3.jpg`` ->
``/data/visit/imaging/1/2/3.jpg``), the way a facility's image web server mirrors its image
store, and only below one root directory. Faults, per path or for every request:

- ``slow``: wait ``slow_s`` seconds before answering (client timeouts);
- ``404``: answer Not Found although the file exists;
- ``503``: answer Service Unavailable (a transient failure a client should retry);
- ``flaky``: answer 503 to the first ``flaky_failures`` requests for a path, then serve it;
- ``truncated``: serve only the first half of the file, with a matching Content-Length
  (a file the imager did not finish writing);
- ``cut``: announce the full Content-Length, send half, close the connection (a broken transfer);
- ``corrupt``: keep the first 64 bytes, replace the rest with seeded random bytes
  (``faults.corrupt``);
- ``redirect``: answer 302 to the same path on ``redirect_host`` (a client must refuse a host
  other than its configured one).

Loopback only; a threaded stdlib server is plenty for tests and the demo.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

from chimp_worker.mock_imager.faults import corrupt

FAULTS = ("slow", "404", "503", "flaky", "truncated", "cut", "corrupt", "redirect")


@dataclass
class ServerFaults:
    """Which faults to inject: ``by_path`` (absolute file path -> fault) and/or ``everywhere``."""

    by_path: Mapping[str, str] = field(default_factory=dict)
    everywhere: str | None = None
    slow_s: float = 2.0
    flaky_failures: int = 2
    redirect_host: str = "localhost"

    def __post_init__(self) -> None:
        for fault in [*self.by_path.values(), self.everywhere]:
            if fault is not None and fault not in FAULTS:
                raise ValueError(f"unknown HTTP fault {fault!r}; expected one of {FAULTS}")

    def for_path(self, path: str) -> str | None:
        return self.by_path.get(path, self.everywhere)


class ImageServer:
    """Serve ``root`` on 127.0.0.1; use as a context manager or ``start()``/``stop()``."""

    def __init__(self, root: Path, *, port: int = 0, faults: ServerFaults | None = None) -> None:
        self.root = Path(root).resolve()
        self.faults = faults or ServerFaults()
        self.requests: Counter[str] = Counter()  # absolute path -> requests seen
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url_template(self) -> str:
        """The ``image_url_template`` setting that fetches images from this server."""
        return f"{self.base_url}/{{imageFullPath}}"

    def start(self) -> ImageServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # stop() returns within 50 ms
            name="mock-image-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Block serving until interrupted (the ``mock-imager --serve`` command)."""
        try:
            self._server.serve_forever()
        finally:
            self._server.server_close()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> ImageServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def count(self, path: str) -> int:
        with self._lock:
            return self.requests[path]

    def _record(self, path: str) -> int:
        with self._lock:
            self.requests[path] += 1
            return self.requests[path]

    def resolve(self, url_path: str) -> Path | None:
        """The file a URL path names, or None when it is outside the root or not a file."""
        candidate = Path("/" + unquote(urlsplit(url_path).path).lstrip("/")).resolve()
        if not candidate.is_relative_to(self.root) or not candidate.is_file():
            return None
        return candidate


def _handler_for(server: ImageServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            path = "/" + unquote(urlsplit(self.path).path).lstrip("/")
            seen = server._record(path)
            fault = server.faults.for_path(path)
            if fault == "slow":
                time.sleep(server.faults.slow_s)
            if fault == "503" or (fault == "flaky" and seen <= server.faults.flaky_failures):
                self._reply(HTTPStatus.SERVICE_UNAVAILABLE, b"try again later\n")
                return
            if fault == "redirect":
                location = f"http://{server.faults.redirect_host}:{server.port}{self.path}"
                self.send_response(HTTPStatus.FOUND)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            file = server.resolve(self.path)
            if fault == "404" or file is None:
                self._reply(HTTPStatus.NOT_FOUND, b"not found\n")
                return
            body = file.read_bytes()
            if fault == "truncated":
                body = body[: len(body) // 2]
            elif fault == "corrupt":
                body = corrupt(body)
            if fault == "cut":
                self.send_response(HTTPStatus.OK)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            self._reply(HTTPStatus.OK, body, "image/jpeg")

        def _reply(self, status: HTTPStatus, body: bytes, content_type: str = "text/plain") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: tests and the demo read the worker's log, not the server's."""

    return Handler

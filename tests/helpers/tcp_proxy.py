"""A small TCP proxy for fault injection: forward, cut every connection, or blackhole traffic.

toxiproxy and tc netem are not available here, so tests put this between a worker and
RabbitMQ or MariaDB (point the worker's URL at ``proxy.port``) and break the network on cue:

- ``cut()``: reset every open connection at once (as a crashed router or a killed peer does);
  new connections are forwarded as usual, so clients can reconnect straight away.
- ``blackhole()``: stop moving bytes in both directions and stop accepting -- connections stay
  open but go silent, as with a dead link or a frozen server. Nothing is read, so nothing is
  lost: kernel buffers fill and senders stall. Only heartbeats and timeouts can notice.
- ``restore()``: forward again; what was sent during the blackhole is delivered late, unless
  the peer gave up first (its socket is closed, and the proxy closes the other side).
- ``refuse()``: reset every open connection and stop listening, so new connections are
  refused (``ECONNREFUSED``), as when the server is stopped or restarting; ``restore()``
  listens on the same port again.

One selector thread moves all the bytes; mode changes are thread-safe.

    with TcpProxy("127.0.0.1", 3306) as proxy:
        url = f"mysql+mysqldb://root@127.0.0.1:{proxy.port}/db"
        ...
        proxy.blackhole(); time.sleep(30); proxy.restore()
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["forward", "blackhole", "refuse"]

_CHUNK = 64 * 1024
_CONNECT_TIMEOUT_S = 5.0


@dataclass(eq=False)
class _Pair:
    client: socket.socket
    upstream: socket.socket
    pending: dict[socket.socket, bytearray] = field(default_factory=dict)  # to send to the key

    def other(self, sock: socket.socket) -> socket.socket:
        return self.upstream if sock is self.client else self.client


def _reset(sock: socket.socket) -> None:
    """Close with RST rather than FIN: the peer sees 'connection reset', like a real cut."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.close()


def _listen(port: int) -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    listener.setblocking(False)
    return listener


class TcpProxy:
    """Listens on 127.0.0.1 (a free port) and forwards each connection to ``target``."""

    def __init__(self, target_host: str, target_port: int, *, listen_port: int = 0) -> None:
        self.target = (target_host, target_port)
        self._listener: socket.socket | None = _listen(listen_port)
        self.port: int = self._listener.getsockname()[1]
        self._selector = selectors.DefaultSelector()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._lock = threading.Lock()
        self._mode: Mode = "forward"
        self._cut_requested = False
        self._pairs: dict[socket.socket, _Pair] = {}
        self._running = False
        self._thread = threading.Thread(
            target=self._loop, name=f"tcp-proxy-{self.port}", daemon=True
        )
        self.connections_accepted = 0
        self.connections_cut = 0

    # --- control (any thread) ----------------------------------------------------------------

    def start(self) -> TcpProxy:
        self._running = True
        self._thread.start()
        return self

    def stop(self) -> None:
        self._running = False
        self._wake()
        if self._thread.is_alive():
            self._thread.join(5)
        for sock in list(self._pairs):
            _reset(sock)
        self._pairs.clear()
        if self._listener is not None:
            self._listener.close()
        self._wake_read.close()
        self._wake_write.close()
        self._selector.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len({id(pair) for pair in self._pairs.values()})

    def cut(self) -> None:
        """Reset every open connection now; keep forwarding new ones."""
        self._set(None, cut=True)

    def blackhole(self) -> None:
        """Stop moving bytes and stop accepting; connections stay open and go silent."""
        self._set("blackhole")

    def refuse(self) -> None:
        """Reset every open connection and refuse new ones until ``restore``."""
        self._set("refuse", cut=True)
        while self._running:  # return once the port refuses, so the caller's timing is exact
            with self._lock:
                if self._listener is None:
                    return
            time.sleep(0.01)

    def restore(self) -> None:
        """Forward again (bytes held back by a blackhole flow on); listen again after refuse."""
        self._set("forward")
        while self._running:  # return once the port accepts again
            with self._lock:
                if self._listener is not None:
                    return
            time.sleep(0.01)

    def _set(self, mode: Mode | None, *, cut: bool = False) -> None:
        with self._lock:
            if mode is not None:
                self._mode = mode
            self._cut_requested = self._cut_requested or cut
        self._wake()
        if cut:  # return only once the resets are done, so the caller's timing is exact
            while self._running:
                with self._lock:
                    if not self._cut_requested:
                        return
                time.sleep(0.01)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_write.send(b"x")

    # --- the selector thread ------------------------------------------------------------------

    def _loop(self) -> None:
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        registered_mode: Mode | None = None
        while self._running:
            with self._lock:
                mode, cut = self._mode, self._cut_requested
            if cut:
                self._cut_all()
                with self._lock:
                    self._cut_requested = False
            if mode != registered_mode:
                self._register_for(mode)
                registered_mode = mode
            for key, events in self._selector.select(timeout=0.5):
                sock = key.fileobj
                if sock is self._wake_read:
                    with contextlib.suppress(OSError):
                        self._wake_read.recv(4096)
                elif sock is self._listener:
                    self._accept(mode)
                elif isinstance(sock, socket.socket) and sock in self._pairs:
                    self._service(sock, events)

    def _register_for(self, mode: Mode) -> None:
        """Blackhole: listen to nothing but the wake-up socket. Refuse: close the listening
        socket too. Otherwise: everything, listening again on the same port if need be."""
        for key in list(self._selector.get_map().values()):
            if key.fileobj is not self._wake_read:
                self._selector.unregister(key.fileobj)
        if mode == "refuse":
            with self._lock:
                listener, self._listener = self._listener, None
            if listener is not None:
                listener.close()
        elif self._listener is None:
            listener = _listen(self.port)
            with self._lock:
                self._listener = listener
        if mode == "blackhole" or self._listener is None:
            return
        self._selector.register(self._listener, selectors.EVENT_READ)
        for sock in self._pairs:
            self._selector.register(sock, self._events_for(sock))

    def _events_for(self, sock: socket.socket) -> int:
        pair = self._pairs[sock]
        return selectors.EVENT_READ | (selectors.EVENT_WRITE if pair.pending.get(sock) else 0)

    def _accept(self, mode: Mode) -> None:
        if self._listener is None:
            return
        try:
            client, _address = self._listener.accept()
        except (BlockingIOError, OSError):
            return
        self.connections_accepted += 1
        if mode == "refuse":
            _reset(client)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=_CONNECT_TIMEOUT_S)
        except OSError:
            _reset(client)
            return
        for sock in (client, upstream):
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(client, upstream)
        with self._lock:
            self._pairs[client] = pair
            self._pairs[upstream] = pair
        self._selector.register(client, selectors.EVENT_READ)
        self._selector.register(upstream, selectors.EVENT_READ)

    def _service(self, sock: socket.socket, events: int) -> None:
        pair = self._pairs[sock]
        other = pair.other(sock)
        if events & selectors.EVENT_WRITE and not self._flush(pair, sock):
            return
        if events & selectors.EVENT_READ:
            try:
                data = sock.recv(_CHUNK)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:  # one side closed: close the other, as a real peer would see it
                self._close_pair(pair, reset=False)
                return
            pair.pending.setdefault(other, bytearray()).extend(data)
            self._flush(pair, other)

    def _flush(self, pair: _Pair, sock: socket.socket) -> bool:
        """Send what is pending for ``sock``; False when the pair was closed."""
        buffer = pair.pending.get(sock)
        if buffer:
            try:
                sent = sock.send(buffer)
                del buffer[:sent]
            except BlockingIOError:
                pass
            except OSError:
                self._close_pair(pair, reset=True)
                return False
        self._selector.modify(sock, self._events_for(sock))
        return True

    def _close_pair(self, pair: _Pair, *, reset: bool) -> None:
        for sock in (pair.client, pair.upstream):
            with self._lock:
                self._pairs.pop(sock, None)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            if reset:
                _reset(sock)
            else:
                with contextlib.suppress(OSError):
                    sock.close()

    def _cut_all(self) -> None:
        pairs = {id(pair): pair for pair in self._pairs.values()}
        for pair in pairs.values():
            self._close_pair(pair, reset=True)
        self.connections_cut += len(pairs)

"""systemd's notify protocol with a plain datagram socket: READY=1, WATCHDOG=1, STOPPING=1.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC``. Outside systemd both are absent and
every call is a no-op. Pings go out from the broker I/O loop, at half the watchdog interval, so
a hung loop stops them and systemd restarts the worker.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

from chimp_worker.log import get_logger

log = get_logger(__name__)


class SystemdNotifier:
    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if environ is None else environ
        self._clock = clock
        self._address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_interval_s = _watchdog_interval(env)
        self._last_ping = float("-inf")
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self, status: str = "") -> bool:
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    def watchdog(self) -> bool:
        """Ping when half the watchdog interval has passed since the last ping."""
        if self.watchdog_interval_s is None:
            return False
        now = self._clock()
        if now - self._last_ping < self.watchdog_interval_s / 2:
            return False
        self._last_ping = now
        return self.notify("WATCHDOG=1")

    def notify(self, *assignments: str) -> bool:
        """Send one datagram; False (and one warning) when there is no socket or it fails."""
        if self._address is None:
            return False
        message = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self._address)
                sock.sendall(message)
        except OSError as exc:
            if not self._warned:
                log.warning("systemd_notify_failed", error=str(exc))
                self._warned = True
            return False
        return True


def _socket_address(value: str) -> str | None:
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    return value


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """WATCHDOG_USEC in seconds, if it is meant for this process (WATCHDOG_PID, when set)."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1_000_000

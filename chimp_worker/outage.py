"""Is the database there? One answer per worker process, so an outage spends no delivery.

A unit of work whose retries ran out on ``DatabaseUnavailableError`` asks the gate. If a probe
(``SELECT 1`` on a fresh connection) answers, the failure is the unit's own: the message is
requeued and spends a delivery, as a poison message should. If the probe fails, the database
is down: the gate closes, the daemon's I/O thread pauses its consumers (no other message is
taken), and the worker threads *hold* their messages, unacked, waiting for the gate to open
again -- up to ``database_outage_hold_s``, well below RabbitMQ's consumer timeout. One prober
thread per process retries with jittered back-off and opens the gate when the database
answers; the held units are then retried from the start (their writes are idempotent) and
the consumers resume.

Past the bound a held message is requeued (one delivery spent) and waits in its queue, taken
by no worker while their gates are closed, so an outage of any length costs each message at
most one delivery.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from chimp_worker.log import get_logger

log = get_logger(__name__)

Probe = Callable[[], str | None]  # None when the database answers, else what went wrong


class DatabaseGate:
    """Open while the database answers; closed (and probed until it answers) when it does not.

    Thread-safe: worker threads ``check`` and ``wait``, the I/O thread reads ``is_down``.
    """

    def __init__(
        self,
        probe: Probe,
        *,
        delay: Callable[[int], float],
        stopping: threading.Event,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self._delay = delay  # back-off before the n-th probe of an outage
        self._stopping = stopping
        self._clock = clock
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._prober: threading.Thread | None = None
        self.down_since: float | None = None
        self.problem: str | None = None

    @property
    def is_down(self) -> bool:
        return not self._open.is_set()

    def check(self) -> bool:
        """Probe now: True when the database answers; otherwise close the gate and return False."""
        if self.is_down:
            return False
        problem = self._probe()
        if problem is None:
            return True
        self._close(problem)
        return False

    def wait(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the gate to open; True when it is open."""
        return self._open.wait(timeout_s)

    def outage_s(self) -> float:
        since = self.down_since
        return 0.0 if since is None else self._clock() - since

    def _close(self, problem: str) -> None:
        with self._lock:
            self.problem = problem
            if self._open.is_set():
                self._open.clear()
                self.down_since = self._clock()
                log.warning("database_down_holding_messages", detail=problem)
            if self._prober is None or not self._prober.is_alive():
                self._prober = threading.Thread(
                    target=self._probe_until_it_answers, name="chimp-db-probe", daemon=True
                )
                self._prober.start()

    def _probe_until_it_answers(self) -> None:
        attempt = 0
        while not self._stopping.wait(self._delay(attempt)):
            attempt += 1
            problem = self._probe()
            if problem is None:
                with self._lock:
                    log.info("database_back", outage_s=round(self.outage_s(), 1), probes=attempt)
                    self.down_since = None
                    self.problem = None
                    self._open.set()
                return
            self.problem = problem

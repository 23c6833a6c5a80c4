"""Blocking calls with a deadline, on daemon threads that can be abandoned.

Python cannot interrupt a thread blocked in ``open()`` on a hung NFS mount or in a native
call that never returns. What it can do is stop waiting: the call runs on a fresh daemon
thread, the caller waits at most the deadline and moves on (the image is recorded failed);
the thread is *abandoned* -- left to finish or block for ever -- and, being a daemon thread,
can neither keep the process from exiting nor be joined at exit (``concurrent.futures``
threads are, which is how one FIFO once kept a stopped worker alive).

``abandoned_threads()`` counts those still running, for a metric: a number that keeps
growing means a mount or a device that stopped answering.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from typing import TypeVar

T = TypeVar("T")

_abandoned: set[threading.Thread] = set()
_abandoned_lock = threading.Lock()


class DeadlineExceededError(Exception):
    """The call did not return within its deadline; its thread was abandoned."""

    def __init__(self, what: str, deadline_s: float) -> None:
        super().__init__(f"{what}: no result within {deadline_s:g} s")
        self.deadline_s = deadline_s


def in_background(function: Callable[[], T], *, name: str) -> tuple[Future[T], threading.Thread]:
    """Start ``function`` on a new daemon thread (with the caller's logging context)."""
    future: Future[T] = Future()
    context = contextvars.copy_context()

    def run() -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            result = context.run(function)
        except BaseException as exc:  # handed to the waiting caller, raised there
            future.set_exception(exc)
        else:
            future.set_result(result)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return future, thread


def call_with_deadline(function: Callable[[], T], deadline_s: float, *, name: str) -> T:
    """``function()``'s result or exception; ``DeadlineExceededError`` after ``deadline_s``."""
    future, thread = in_background(function, name=name)
    try:
        return future.result(timeout=deadline_s)
    except FutureTimeoutError:
        with _abandoned_lock:
            _abandoned.add(thread)
        raise DeadlineExceededError(name, deadline_s) from None


def abandoned_threads() -> int:
    """Abandoned threads still running (blocked, or finishing late)."""
    with _abandoned_lock:
        for thread in [thread for thread in _abandoned if not thread.is_alive()]:
            _abandoned.discard(thread)
        return len(_abandoned)

"""A one-thread prefetching stage: compute the next items while the caller works on this one.

Decoding and preprocessing (OpenCV, numpy) release the GIL, so on a CPU worker they can run
beside the models' own threads and cost (almost) no wall time. Reusable by anything that
processes a sequence in order: the analyser prepares images ahead of inference with it, and
the pipeline can fetch ahead with it.
"""

from __future__ import annotations

import contextvars
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["prefetched"]

Item = TypeVar("Item")
Result = TypeVar("Result")


def prefetched(
    items: Iterable[Item],
    function: Callable[[Item], Result],
    *,
    ahead: int = 1,
    thread_name: str = "chimp-prefetch",
) -> Iterator[Result]:
    """Yield ``function(item)`` for each item, in order, computing up to ``ahead`` results in
    a background thread while the consumer handles the current one.

    An exception raised by ``function`` is re-raised by the generator at that item's place, so
    the caller sees the earlier results first. The logging context (structlog contextvars) of
    the caller is carried into the thread. Closing the generator early cancels what has not
    started and waits for what has.
    """
    if ahead < 1:
        raise ValueError(f"ahead must be at least 1, got {ahead}")
    iterator = iter(items)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=thread_name)
    pending: deque[Future[Result]] = deque()

    def submit(item: Item) -> None:
        context = contextvars.copy_context()
        pending.append(pool.submit(context.run, function, item))

    try:
        for item in iterator:
            submit(item)
            if len(pending) >= ahead:
                break
        while pending:
            future = pending.popleft()
            for item in iterator:
                submit(item)
                break
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)

"""The bench's peak RSS is the measuring process's own, not its parent's."""

from __future__ import annotations

import multiprocessing
import resource
from concurrent.futures import ProcessPoolExecutor

from chimp_worker.bench.run import peak_rss_bytes

MIB = 2**20


def test_a_spawned_child_does_not_inherit_its_parents_peak() -> None:
    ballast = bytearray(600 * MIB)  # zero-filled by the allocator: touch every page
    for offset in range(0, len(ballast), 4096):
        ballast[offset] = 1
    parent_peak = peak_rss_bytes()
    assert parent_peak >= 600 * MIB
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        child_peak = pool.submit(peak_rss_bytes).result()
        child_maxrss = pool.submit(resource.getrusage, resource.RUSAGE_SELF).result().ru_maxrss
    del ballast
    # ru_maxrss carries the parent's size across exec (why the bench reads VmHWM instead);
    # the child's own high-water mark is a bare interpreter's plus the imports.
    assert child_maxrss * 1024 >= 600 * MIB
    assert child_peak < parent_peak - 400 * MIB

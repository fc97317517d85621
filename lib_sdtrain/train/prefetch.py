"""Batches prepared ahead of the step: reading .npz files or decoding images, caption augmentation, pinning memory.

kohya uses a torch DataLoader with worker processes (max_data_loader_n_workers). SD-Train uses threads instead: it
often runs inside the WebUI, a large multi-threaded process that forking would copy, and what a batch costs here
(numpy's and Pillow's decoding, resizing) runs outside the GIL. Batches come back in order, and each is a pure
function of its index, so results are the same with any number of workers.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")


def worker_count(requested: int) -> int:
    """kohya's rule: at most the CPU count minus one (the training loop has the last one)."""
    return max(0, min(requested, (os.cpu_count() or 1) - 1))


@contextmanager
def prefetched(prepare: Callable[[int], T], indices: Iterable[int], workers: int) -> Iterator[Iterator[T]]:
    """`prepare(i)` for each index, in order, with up to 2 x workers batches prepared ahead by `workers` threads
    (0: each when it is asked for). Leaving the block early (cancel, an error, the last step) drops the rest."""
    if workers == 0:
        yield (prepare(i) for i in indices)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sdtrain-batches")
    try:
        yield _in_order(pool, prepare, iter(indices), ahead=2 * workers)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _in_order(pool: ThreadPoolExecutor, prepare: Callable[[int], T], indices: Iterator[int], ahead: int) -> Iterator[T]:
    pending: deque[Future[T]] = deque()
    for index in indices:
        pending.append(pool.submit(prepare, index))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()

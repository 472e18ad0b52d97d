"""Bounded parallel map: results in input order, at most ``prefetch`` in flight.

Keeps memory flat when streaming millions of files through worker threads.

Example:
    >>> list(bounded_map(lambda x: x * 2, range(5), workers=2, prefetch=2))
    [0, 2, 4, 6, 8]
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

A = TypeVar("A")
B = TypeVar("B")


def bounded_map(fn: Callable[[A], B], items: Iterable[A], *, workers: int = 2, prefetch: int = 8) -> Iterator[B]:
    """Apply ``fn`` in ``workers`` threads, yielding results in order with bounded look-ahead."""
    it = iter(items)
    pending: deque[Future[B]] = deque()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        try:
            for x in it:
                pending.append(pool.submit(fn, x))
                if len(pending) >= max(1, prefetch):
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for f in pending:
                f.cancel()


def batched(items: Iterable[A], size: int) -> Iterator[list[A]]:
    """Group an iterable into lists of ``size`` (the last may be shorter)."""
    batch: list[A] = []
    for x in items:
        batch.append(x)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch

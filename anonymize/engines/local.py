"""The local engine: the stages on this machine, with threads and bounded queues.

    tasks -> Decode (worker threads, at most ``prefetch`` ahead) -> batches of ``batch_size``
          -> Detect -> Protect (this thread, one device) -> Write (worker threads, at most
          ``2 * workers`` waiting) -> Record (this thread, in order)

Memory stays flat whatever the corpus size. The engine owns what only a local
run has: the thread plan (torch/OpenCV threads set for the run and given back),
SIGTERM (like Ctrl-C: stop taking new work, let in-flight writes finish and keep
their records, exit 130) and the stop on a full disk (finished work is kept,
exit 2).

Example:
    >>> import tempfile
    >>> from importlib.resources import files
    >>> from pathlib import Path
    >>> from anonymize.records import RecordWriter, RunSummary
    >>> from anonymize.runtime_threads import plan_threads
    >>> from anonymize.stages import Plan, Record, StageConfig, Stages
    >>> cfg = StageConfig(method="pixelate", region="image")
    >>> out = Path(tempfile.mkdtemp())
    >>> engine = LocalEngine(Stages.build(cfg), plan_threads(threads=1, env={}), batch_size=4)
    >>> rec = Record(RecordWriter(out / "r.jsonl"), RunSummary("protect", "pixelate", {}))
    >>> engine.run(Plan([Path(str(files("anonymize") / "data" / "samples"))], cfg, output=out), rec)
    Outcome(interrupted=False, aborted=None)
    >>> rec.summary.ok, sorted(p.name for p in out.glob("*.jpg"))
    (2, ['astronaut.jpg', 'grace_hopper.jpg'])
"""
from __future__ import annotations

import signal
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import OutputError
from ..runtime_threads import ThreadPlan, using_plan
from ..stages import Decode, Stages, Task


@dataclass
class Outcome:
    """How an engine's run ended: ``interrupted`` (Ctrl-C, SIGTERM) or ``aborted`` (disk full)."""

    interrupted: bool = False
    aborted: OutputError | None = None


class _Terminated(Exception):
    """SIGTERM, raised in the main thread."""


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Make SIGTERM stop the run the way Ctrl-C does (main thread only; restored afterwards)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: object) -> None:
        raise _Terminated()

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _done(task: Task) -> Future[Task]:
    f: Future[Task] = Future()
    f.set_result(task)
    return f


def decoded(tasks: Iterable[Task], decode: Decode, pool: ThreadPoolExecutor, pending: deque[Future[Task]],
            prefetch: int) -> Iterator[Task]:
    """Tasks in order, live ones decoded in ``pool`` with at most ``prefetch`` in flight (kept in ``pending``)."""
    it = iter(tasks)
    exhausted = False
    while True:
        while not exhausted and len(pending) < prefetch:
            try:
                t = next(it)
            except StopIteration:
                exhausted = True
                break
            pending.append(pool.submit(decode.one, t) if t.live else _done(t))
        if not pending:
            return
        yield pending.popleft().result()


class LocalEngine:
    """Runs :class:`~anonymize.stages.Stages` with threads; ``run(tasks, record)`` -> :class:`Outcome`."""

    name = "local"

    def __init__(self, stages: Stages, plan: ThreadPlan, batch_size: int = 8) -> None:
        self.stages, self.plan, self.batch_size = stages, plan, batch_size
        self.workers = plan.workers

    def describe(self) -> dict[str, object]:
        return {"name": self.name}

    def run(self, tasks: Iterable[Task], record: Callable[[Task], None]) -> Outcome:
        outcome = Outcome()
        prefetch = max(self.batch_size * 2, self.workers * 2)
        decoding: deque[Future[Task]] = deque()
        writing: deque[Future[Task]] = deque()
        decode_pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="decode")
        write_pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="write")
        with using_plan(self.plan), sigterm_interrupts():
            try:
                batch: list[Task] = []
                for task in decoded(tasks, self.stages.decode, decode_pool, decoding, prefetch):
                    if not task.live:
                        record(task)
                        continue
                    batch.append(task)
                    if len(batch) >= self.batch_size:
                        self._method(batch, write_pool, writing, record)
                        batch = []
                if batch:
                    self._method(batch, write_pool, writing, record)
                while writing:
                    record(writing.popleft().result())
            except (KeyboardInterrupt, _Terminated):
                outcome.interrupted = True
            except OutputError as exc:  # the disk filled up: stop, keep what is finished
                outcome.aborted = exc
            finally:
                for f in decoding:
                    f.cancel()
                decode_pool.shutdown(wait=True, cancel_futures=True)
                while writing:  # in-flight writes are atomic: finish them and keep their records
                    try:
                        record(writing.popleft().result())
                    except Exception:  # noqa: BLE001, S110 - the run is already stopping; nothing was published
                        pass
                write_pool.shutdown(wait=True, cancel_futures=True)
        return outcome

    def _method(self, batch: list[Task], pool: ThreadPoolExecutor, writing: deque[Future[Task]],
                record: Callable[[Task], None]) -> None:
        """Detect + method on this thread, then hand each output to a writer (at most 2 x workers waiting)."""
        if self.stages.detect is not None:
            self.stages.detect(batch)
        for task in self.stages.protect(batch):
            if not task.live:
                record(task)
                continue
            writing.append(pool.submit(self.stages.write.one, task))
            while len(writing) > self.workers * 2:
                record(writing.popleft().result())

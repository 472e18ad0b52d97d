"""One thread policy for torch and the pipeline's worker threads.

A run has a budget of CPU cores: ``--threads N`` (or ``ANONYMIZE_THREADS``), else
the cores this process may actually use — its CPU affinity, capped by a cgroup
CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``), which is
what a container or ``taskset`` grants, not what ``os.cpu_count()`` reports. The
budget is split between torch's intra-op threads and the decode/encode workers so
that together they do not oversubscribe it:

=======  =============  ==================================
budget   torch threads  workers (decode; as many writers)
=======  =============  ==================================
1        1              1
2        1              2
3        2              2
4        3              2
8        6              2
16       12             4
=======  =============  ==================================

Why so few torch threads: torch's OpenMP threads spin-wait at every parallel
region; when another process takes one of two cores, the spinning thread burns
the time slice its partner needs, and MTCNN ran 23x slower at 2 threads than at
1 (issue 17). Torch gets about three quarters of the budget (one core less on
small machines), and the decode/encode workers, which mostly wait on the GIL-free
codecs, fill the rest; on 2 cores that kept ``protect -m blur`` as fast as the
old default's best case and 5-9x faster than the old default on a shared machine
(``benchmarks/threads.py``).

``OMP_NUM_THREADS`` (when set and neither ``--threads`` nor ``ANONYMIZE_THREADS``
is) fixes the torch threads as usual; ``--workers`` fixes the workers. The plan
(threads, workers, budget and where each came from) is recorded in every run
summary.

Example:
    >>> p = plan_threads(threads=4, env={})
    >>> (p.budget, p.torch_threads, p.workers, p.source)
    (4, 3, 2, '--threads')
    >>> plan_threads(env={"OMP_NUM_THREADS": "2"}, cores=8.0).torch_threads
    2
"""
from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import UsageError

ENV_THREADS = "ANONYMIZE_THREADS"

__all__ = [
    "ENV_THREADS",
    "ThreadPlan",
    "apply_plan",
    "available_cores",
    "cgroup_cpu_limit",
    "plan_threads",
    "split_budget",
    "using_plan",
]


@dataclass(frozen=True)
class ThreadPlan:
    """How many threads a run uses and why.

    ``budget``: cores the run may use; ``torch_threads``: torch intra-op threads;
    ``workers``: decode threads (and as many encode/write threads); ``source``: where
    the budget came from (``--threads``, ``ANONYMIZE_THREADS`` or ``auto``);
    ``torch_source`` / ``workers_source``: ``policy``, ``OMP_NUM_THREADS`` or
    ``--workers``; ``cores``: what was measured (affinity, cgroup quota, cpu_count).
    """

    budget: int
    torch_threads: int
    workers: int
    source: str
    torch_source: str = "policy"
    workers_source: str = "policy"
    cores: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def split_budget(budget: int) -> tuple[int, int]:
    """``(torch_threads, workers)`` for a budget of cores (see the module table).

    Example:
        >>> [split_budget(b) for b in (1, 2, 3, 4, 8, 16)]
        [(1, 1), (1, 2), (2, 2), (3, 2), (6, 2), (12, 4)]
    """
    b = max(1, int(budget))
    if b == 1:
        return 1, 1
    return max(1, b - max(1, b // 4)), min(4, max(2, b // 4))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _mounts(root: Path) -> list[tuple[str, str, str]]:
    """(mount point, fs type, super options) of cgroup mounts, from ``/proc/self/mountinfo``."""
    text = _read(root / "proc/self/mountinfo") or ""
    out = []
    for line in text.splitlines():
        left, _, right = line.partition(" - ")
        parts, rparts = left.split(), right.split()
        if len(parts) >= 5 and len(rparts) >= 1 and rparts[0] in ("cgroup", "cgroup2"):
            out.append((parts[4], rparts[0], rparts[2] if len(rparts) > 2 else ""))
    return out


def _walk_up(mount: Path, rel: str) -> list[Path]:
    """The process's cgroup folder and its parents up to the mount point (the folder may be
    absent inside a container whose cgroup namespace hides the path: then only the root)."""
    rel = rel.strip("/")
    dirs = []
    cur = mount / rel if rel else mount
    while True:
        if cur.is_dir():
            dirs.append(cur)
        if cur == mount or mount not in cur.parents:
            break
        cur = cur.parent
    return dirs or [mount]


def cgroup_cpu_limit(root: Path | str = "/") -> float | None:
    """The CPU quota of this process's cgroup in cores (e.g. 1.5), or None when unlimited.

    Reads cgroup v2 ``cpu.max`` and v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` along
    the process's cgroup path and its parents (the tightest limit wins). ``root``
    lets tests point at a fake ``/proc`` + ``/sys`` tree.

    Example:
        >>> cgroup_cpu_limit("/nonexistent") is None
        True
    """
    root = Path(root)
    lines = (_read(root / "proc/self/cgroup") or "").splitlines()
    v2_rel, v1_rel = None, None
    for line in lines:
        hid, _, rest = line.partition(":")
        ctrls, _, rel = rest.partition(":")
        if hid == "0" and ctrls == "":
            v2_rel = rel
        elif "cpu" in ctrls.split(","):
            v1_rel = rel
    limits: list[float] = []
    for mnt, fstype, opts in _mounts(root):
        mount = root / mnt.lstrip("/")
        if fstype == "cgroup2" and v2_rel is not None:
            for d in _walk_up(mount, v2_rel):
                val = _read(d / "cpu.max")
                if val:
                    quota, _, period = val.partition(" ")
                    if quota != "max":
                        try:
                            limits.append(int(quota) / int(period or "100000"))
                        except (ValueError, ZeroDivisionError):
                            pass
        elif fstype == "cgroup" and v1_rel is not None and "cpu" in opts.split(","):
            for d in _walk_up(mount, v1_rel):
                q, p = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
                try:
                    if q is not None and p is not None and int(q) > 0 and int(p) > 0:
                        limits.append(int(q) / int(p))
                except ValueError:
                    pass
    return min(limits) if limits else None


def available_cores() -> tuple[float, dict[str, Any]]:
    """Cores this process may use: affinity capped by the cgroup quota, and what was read."""
    try:
        affinity: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        affinity = None
    count = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    cores = float(affinity or count)
    if quota is not None:
        cores = min(cores, quota)
    info = {"affinity": affinity, "cgroup_quota": round(quota, 3) if quota is not None else None, "cpu_count": count,
            "available": round(cores, 3)}
    return cores, info


def _positive_int(raw: Any, what: str) -> int:
    try:
        n = int(str(raw).strip())
    except ValueError:
        raise UsageError(f"{what} must be a positive integer, got {raw!r}") from None
    if n < 1:
        raise UsageError(f"{what} must be a positive integer, got {raw!r}")
    return n


def plan_threads(threads: int | None = None, workers: int | None = None, *, env: Mapping[str, str] | None = None,
                 cores: float | None = None) -> ThreadPlan:
    """Decide the run's threads: ``threads`` (``--threads``) > ``ANONYMIZE_THREADS`` > measured cores.

    ``workers`` (``--workers``) and ``OMP_NUM_THREADS`` override their half of the split.
    ``cores`` replaces the measurement (tests).
    """
    env = os.environ if env is None else env
    info: dict[str, Any]
    if cores is None:
        measured, info = available_cores()
    else:
        measured, info = float(cores), {"available": float(cores)}
    if threads is not None:
        budget, source = _positive_int(threads, "--threads"), "--threads"
    elif env.get(ENV_THREADS, "").strip():
        budget, source = _positive_int(env[ENV_THREADS], ENV_THREADS), ENV_THREADS
    else:
        # A quota of 1.5 cores buys one core's worth of steady work plus slack: round down.
        budget, source = max(1, math.floor(measured + 1e-9)), "auto"
    t, w = split_budget(budget)
    t_src = w_src = "policy"
    if source == "auto" and env.get("OMP_NUM_THREADS", "").strip():
        try:
            t, t_src = _positive_int(env["OMP_NUM_THREADS"].split(",")[0], "OMP_NUM_THREADS"), "OMP_NUM_THREADS"
        except UsageError:
            pass  # a malformed OMP_NUM_THREADS is torch's business; keep the policy's number
    if workers is not None:
        w, w_src = _positive_int(workers, "--workers"), "--workers"
    return ThreadPlan(budget=budget, torch_threads=t, workers=w, source=source, torch_source=t_src,
                      workers_source=w_src, cores=info)


def apply_plan(plan: ThreadPlan) -> None:
    """Set torch's intra-op threads (and OpenCV's pool) to the plan's ``torch_threads``.

    torch is only configured when something already imported it: a run whose stages need no
    torch (``blur`` with the default detector, ``--region image``) never pays its import.
    """
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != plan.torch_threads:
        torch.set_num_threads(plan.torch_threads)
    try:
        import cv2

        cv2.setNumThreads(plan.torch_threads)
    except Exception:  # pragma: no cover - OpenCV missing or built without threads
        pass


def _current() -> tuple[int | None, int | None]:
    torch = sys.modules.get("torch")
    t = int(torch.get_num_threads()) if torch is not None else None
    try:
        import cv2

        c: int | None = int(cv2.getNumThreads())
    except Exception:  # pragma: no cover
        c = None
    return t, c


@contextmanager
def using_plan(plan: ThreadPlan) -> Iterator[ThreadPlan]:
    """Apply ``plan`` for the duration of a run, then give the caller its thread counts back.

    Example:
        >>> import torch
        >>> before = torch.get_num_threads()
        >>> with using_plan(plan_threads(threads=1, env={})):
        ...     torch.get_num_threads()
        1
        >>> torch.get_num_threads() == before
        True
    """
    torch_before, cv_before = _current()
    apply_plan(plan)
    try:
        yield plan
    finally:
        try:
            torch = sys.modules.get("torch")
            if torch is not None and torch_before is not None and torch.get_num_threads() != torch_before:
                torch.set_num_threads(torch_before)
            if cv_before is not None:
                import cv2

                cv2.setNumThreads(cv_before)
        except Exception:  # pragma: no cover
            pass

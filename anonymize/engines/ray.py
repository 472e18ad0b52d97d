"""The Ray engine: the same stages as a Ray Data pipeline, on a local Ray or a cluster.

    driver: Plan (discover, resume) -> Dataset of the live tasks
    workers: map_batches(Decode) -> map_batches(Detect, actors) -> map_batches(Protect, actors)
             -> map_batches(Write)
    driver: Record, as results stream back

Decode and Write run as Ray tasks (stateless; they scale with the cluster's
CPUs); Detect and Protect run in actor pools whose workers build the detector
and the method once (``num_gpus`` per actor with ``--device cuda``). Workers
encode each output and stage it in a synced temporary beside its final name
(inputs and outputs must be on storage every node sees at the same path); the
driver's Record stage writes the record and then renames the output into place,
exactly as with the local engine, so records, summary, resume, exit codes and
provenance do not depend on the engine. Methods seed every random choice from
``--seed`` and the file's relative path, so outputs are byte-identical to the
local engine's whatever the batches or workers.

``--ray-address`` (or ``RAY_ADDRESS``) joins a running cluster; otherwise a
small local Ray is started for the run (CPUs: the run's thread budget, 512 MiB
object store, no dashboard) and stopped at its end.

Needs ``pip install "anonymize[ray]"``; without it ``--engine ray`` exits 2.
"""
from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ..errors import AnonymizeError, OutputError, UsageError
from ..io.encode import clean_stale_temporaries
from ..runtime_threads import ThreadPlan, apply_plan, plan_threads
from ..stages import Decode, Detect, Protect, StageConfig, Task, Write
from .local import Outcome, _Terminated, sigterm_interrupts

LOCAL_OBJECT_STORE = 512 * 1024 * 1024
ADDRESS_ENV = "RAY_ADDRESS"
# Resources each stage asks Ray for. The model stages are compute bound (one torch thread each);
# decode/write mostly wait on codecs and the disk. Small fractions let every stage run at once on
# a 2-CPU machine; a cluster runs as many copies as its CPUs (and GPUs) allow.
CPUS = {"decode": 0.25, "detect": 0.5, "protect": 1.0, "write": 0.25}
GPUS = {"detect": 0.25, "protect": 1.0}


def build_stage(name: str, cfg: StageConfig) -> Callable[[list[Task]], list[Task]]:
    """The stage ``name`` of a run, built from its config (in whichever process runs it)."""
    if name == "decode":
        return Decode(cfg.max_pixels, cfg.max_bytes)
    if name == "detect":
        return Detect(cfg.detector, thresh=cfg.detector_thresh, min_face=cfg.min_face, device=cfg.device,
                      boxes_from=cfg.boxes_from)
    if name == "protect":
        return Protect(cfg)
    if name == "write":
        return Write(cfg)
    raise ValueError(f"unknown stage {name!r}")


def _apply(stage: Callable[[list[Task]], list[Task]], batch: dict[str, Any]) -> dict[str, Any]:
    """Run ``stage`` on a Ray batch of pickled tasks. A run-level error (disk full, usage) travels
    back with the tasks instead of failing the Ray task (Ray would retry it), and the driver stops."""
    tasks = [pickle.loads(b) for b in batch["task"]]
    errors = list(batch.get("error", [b""] * len(tasks)))
    try:
        stage(tasks)
    except AnonymizeError as exc:
        for t in tasks:
            t.discard_staged()
        errors = [pickle.dumps(exc)] * len(tasks)
    return {"task": _objects([pickle.dumps(t) for t in tasks]), "error": _objects(errors)}


def _objects(items: list[bytes]) -> np.ndarray:
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr


def run_stage(batch: dict[str, Any], name: str, cfg: StageConfig) -> dict[str, Any]:
    """A stateless stage (decode, write) as a Ray task."""
    return _apply(build_stage(name, cfg), batch)


class StageActor:
    """A model stage (detect, protect) in a Ray actor: built once per worker, one torch thread."""

    def __init__(self, name: str, cfg: StageConfig) -> None:
        self.stage = build_stage(name, cfg)
        apply_plan(plan_threads(threads=1, env={}))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return _apply(self.stage, batch)


class RayEngine:
    """Runs the stages with Ray Data; ``run(tasks, record)`` -> :class:`~anonymize.engines.local.Outcome`."""

    name = "ray"

    def __init__(self, cfg: StageConfig, plan: ThreadPlan, batch_size: int = 8, address: str | None = None) -> None:
        try:
            import ray
            import ray.data  # noqa: F401
        except ImportError:
            raise UsageError('--engine ray needs Ray Data: pip install "anonymize[ray]"') from None
        self.cfg, self.plan, self.batch_size = cfg, plan, batch_size
        self.address = address or os.environ.get(ADDRESS_ENV) or None
        self._started = False
        self.info: dict[str, object] = {"name": self.name, "address": self.address or "local"}

    def describe(self) -> dict[str, object]:
        return dict(self.info)

    def start(self) -> None:
        """Join the cluster, or start a small local Ray for this run."""
        import ray

        if ray.is_initialized():
            return
        quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        if self.address:
            ray.init(address=self.address, **quiet)
        else:
            ray.init(num_cpus=self.plan.budget, object_store_memory=LOCAL_OBJECT_STORE, include_dashboard=False, **quiet)
            self._started = True
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        res = ray.cluster_resources()
        self.info.update(ray_version=ray.__version__, nodes=len(ray.nodes()), cluster_cpus=res.get("CPU"),
                         cluster_gpus=res.get("GPU", 0.0))

    def stop(self) -> None:
        import ray

        if self._started and ray.is_initialized():
            ray.shutdown()
            self._started = False

    def run(self, tasks: Iterable[Task], record: Callable[[Task], None]) -> Outcome:
        outcome = Outcome()
        live: list[Task] = []
        folders = set()
        with sigterm_interrupts():
            try:
                for t in tasks:  # the driver plans everything first: finished tasks are recorded at once
                    if t.live:
                        live.append(t)
                        folders.add(t.job.output.parent)
                    else:
                        record(t)
                if live:
                    self.start()
                    for t in self._stream(live):
                        record(t)
            except (KeyboardInterrupt, _Terminated):
                outcome.interrupted = True
            except OutputError as exc:
                outcome.aborted = exc
            finally:
                self.stop()
                for d in folders:  # temporaries of outputs staged but never recorded (their writers are gone)
                    clean_stale_temporaries(d)
        return outcome

    def _stream(self, live: list[Task]) -> Iterable[Task]:
        import ray.data
        from ray.data import ActorPoolStrategy

        cfg, bs = self.cfg, self.batch_size
        gpu = cfg.device.startswith("cuda")
        ds = ray.data.from_items([{"task": pickle.dumps(t), "error": b""} for t in live])
        ds = ds.map_batches(run_stage, fn_kwargs={"name": "decode", "cfg": cfg}, batch_size=bs, batch_format="numpy",
                            num_cpus=CPUS["decode"])
        for name in (["detect"] if cfg.detects else []) + ["protect"]:
            ds = ds.map_batches(StageActor, fn_constructor_kwargs={"name": name, "cfg": cfg}, batch_size=bs,
                                batch_format="numpy", compute=ActorPoolStrategy(min_size=1, max_size=self._actors(name)),
                                num_cpus=CPUS[name] / (2 if gpu else 1), num_gpus=GPUS[name] if gpu else None)
        ds = ds.map_batches(run_stage, fn_kwargs={"name": "write", "cfg": cfg}, batch_size=bs, batch_format="numpy",
                            num_cpus=CPUS["write"])
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for blob, err in zip(batch["task"], batch["error"]):
                task = pickle.loads(blob)
                if err:
                    task.discard_staged()
                    raise pickle.loads(err)
                yield task

    def _actors(self, name: str) -> int:
        """At most as many actors of a model stage as the cluster has room for."""
        import ray

        res = ray.cluster_resources()
        if self.cfg.device.startswith("cuda"):
            return max(1, int(res.get("GPU", 1) / GPUS[name]))
        return max(1, int(res.get("CPU", 1) / CPUS[name]) // 2)

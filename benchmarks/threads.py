"""Thread policy under contention: `protect -m blur` and MTCNN alone, quiet and next to a busy process.

For each thread configuration, runs (in fresh processes)

* ``protect INPUT -m blur`` (MTCNN detection + blur + decode/encode workers) on N corpus photos, and
* the MTCNN detector alone on the same photos (decoded up front, batches of 8),

once on the machine as it is ("quiet") and once while a competing CPU-burner process
(``while True: pass``) runs, and prints images/s (mean, sd and range over ``--repeats``).

Configurations:

* ``old``: the behaviour before the thread policy: torch's default threads (one per
  core) and 2 decode + 2 write workers;
* ``policy``: the default now (``anonymize.runtime_threads``: no flags, no env);
* ``t2w1`` / ``t1w1`` / ``t1w2``: fixed splits (torch threads, workers) to compare with the
  policy's (on 2 cores the policy is 1 torch thread and 2 workers, i.e. ``t1w2``);
* ``t2passive``: two torch threads whose OpenMP workers sleep instead of spinning while they
  wait (``OMP_WAIT_POLICY=PASSIVE``), the other way to survive a busy neighbour.

Usage (be kind to a shared machine; the burner inherits the niceness, so the competition stays fair):

    nice python benchmarks/threads.py --corpus ../shared/corpus/faces --n 200 --repeats 3

The burner is one process, as in issue 17 ("one unrelated busy process"). Numbers from a
machine shared with other jobs are lower bounds and noisier than on a quiet one.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MTCNN_CHILD = r"""
import json, sys, time
from pathlib import Path
import torch
from anonymize.runtime_threads import apply_plan, plan_threads
from anonymize.faces.detect import get_detector
from anonymize.io.decode import decode_file

paths = sorted(Path(sys.argv[1]).iterdir())
imgs = [decode_file(p, Path(p.name))[0].pixels for p in paths]
plan = plan_threads()
apply_plan(plan)
det = get_detector("mtcnn", device="cpu")
det(imgs[:8])  # warm-up
t0 = time.perf_counter()
faces = 0
for i in range(0, len(imgs), 8):
    faces += sum(len(f) for f in det(imgs[i:i + 8]))
dt = time.perf_counter() - t0
print(json.dumps({"images_per_s": len(imgs) / dt, "faces": faces, "torch_threads": torch.get_num_threads()}))
"""


def default_torch_threads() -> int:
    """torch's own default on this machine (what runs used before the policy)."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], capture_output=True,
                         text=True, env=_env({}), check=True)
    return int(out.stdout.strip())


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ANONYMIZE_THREADS")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def configs(old_threads: int) -> dict[str, tuple[dict[str, str], list[str]]]:
    """name -> (environment, protect flags)."""
    return {
        "old": ({"OMP_NUM_THREADS": str(old_threads)}, ["--workers", "2"]),
        "policy": ({}, []),
        "t2w1": ({"OMP_NUM_THREADS": "2"}, ["--workers", "1"]),
        "t1w1": ({"OMP_NUM_THREADS": "1"}, ["--workers", "1"]),
        "t1w2": ({"OMP_NUM_THREADS": "1"}, ["--workers", "2"]),
        "t2passive": ({"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}, ["--workers", "1"]),
    }


def run_protect(inp: Path, work: Path, env: dict[str, str], flags: list[str]) -> dict[str, float]:
    out = Path(tempfile.mkdtemp(dir=work))
    cmd = [sys.executable, "-m", "anonymize.cli", "protect", str(inp), "-m", "blur", "-o", str(out), "--json", "--quiet", *flags]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(env))
    shutil.rmtree(out, ignore_errors=True)
    if res.returncode != 0:
        raise SystemExit(f"protect failed ({res.returncode}): {res.stderr[-2000:]}")
    s = json.loads(res.stdout)["summary"]
    return {"images_per_s": s["images_per_s"], "torch_threads": s["threads"]["torch_threads"], "workers": s["threads"]["workers"],
            "faces": s["faces"]}


def run_mtcnn(inp: Path, env: dict[str, str]) -> dict[str, float]:
    res = subprocess.run([sys.executable, "-c", MTCNN_CHILD, str(inp)], capture_output=True, text=True, env=_env(env))
    if res.returncode != 0:
        raise SystemExit(f"mtcnn run failed ({res.returncode}): {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


class Burner:
    """One competing busy process for the duration of a measurement."""

    def __init__(self, on: bool) -> None:
        self.on = on
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "Burner":
        if self.on:
            self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.5)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


def stats(xs: list[float]) -> str:
    m = statistics.mean(xs)
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{m:6.2f} ± {sd:4.2f} [{min(xs):.2f}-{max(xs):.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus" / "faces")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--configs", default="old,policy,t1w1,t2passive")
    ap.add_argument("--workloads", default="protect,mtcnn")
    ap.add_argument("--json", type=Path, help="Also write every measurement here.")
    args = ap.parse_args()

    photos = sorted(p for p in args.corpus.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[: args.n]
    if len(photos) < args.n:
        raise SystemExit(f"only {len(photos)} photos under {args.corpus}")
    old_threads = default_torch_threads()
    cfgs = {k: v for k, v in configs(old_threads).items() if k in args.configs.split(",")}
    work = Path(tempfile.mkdtemp(prefix="anonymize-threads-"))
    inp = work / "in"
    inp.mkdir()
    for i, p in enumerate(photos):
        shutil.copyfile(p, inp / f"{i:04d}{p.suffix.lower()}")
    print(f"{len(photos)} photos from {args.corpus}; cores: affinity {len(os.sched_getaffinity(0))}, "
          f"os.cpu_count {os.cpu_count()}; torch default threads {old_threads}; niceness {os.nice(0)}; "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    rows: list[dict[str, object]] = []
    try:
        # Interleave configurations within each repeat so slow drifts of a shared machine hit all alike.
        for rep in range(args.repeats):
            for load in (False, True):
                for workload in args.workloads.split(","):
                    for name, (env, flags) in cfgs.items():
                        if workload == "mtcnn" and name in ("t1w1", "t1w2", "t2w1") and "policy" in cfgs:
                            continue  # workers do not matter to the detector alone; old vs policy covers 2 vs 1 threads
                        with Burner(load):
                            la = os.getloadavg()[0]
                            r = run_protect(inp, work, env, flags) if workload == "protect" else run_mtcnn(inp, env)
                        row = {"repeat": rep, "busy_process": load, "workload": workload, "config": name, "load_avg": la, **r}
                        rows.append(row)
                        print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print()
    print("| workload | config | torch threads | workers | quiet img/s (mean ± sd [min-max]) | with 1 busy process | slowdown |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for workload in args.workloads.split(","):
        for name in cfgs:
            q = [r["images_per_s"] for r in rows if r["workload"] == workload and r["config"] == name and not r["busy_process"]]
            b = [r["images_per_s"] for r in rows if r["workload"] == workload and r["config"] == name and r["busy_process"]]
            if not q:
                continue
            one = next(r for r in rows if r["workload"] == workload and r["config"] == name)
            print(f"| {workload} | {name} | {one['torch_threads']} | {one.get('workers', '-')} | {stats(q)} | {stats(b)} | "
                  f"{statistics.mean(q) / statistics.mean(b):.2f}x |")


if __name__ == "__main__":
    main()

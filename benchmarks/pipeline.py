"""Pipeline throughput and memory: `protect --method blur` over N copies of real photos.

Prints images/s and peak RSS of the `anonymize` process for each N. Peak RSS
must not grow with N (bounded queues). Usage:

    python benchmarks/pipeline.py --sizes 100 2000 --region image

Each run is a separate process (so peak RSS is its own); inputs are JPEG
copies of the two bundled sample photos at their native sizes.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent.parent / "anonymize" / "data" / "samples"


def make_inputs(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    srcs = sorted(SAMPLES.glob("*.jpg"))
    for i in range(n):
        sub = folder / f"d{i // 500:03d}"
        sub.mkdir(exist_ok=True)
        shutil.copyfile(srcs[i % len(srcs)], sub / f"{i:06d}.jpg")


def run_one(n: int, region: str, extra: list[str], workdir: Path) -> dict[str, float]:
    inp = workdir / f"in{n}"
    out = workdir / f"out{n}"
    make_inputs(inp, n)
    cmd = [sys.executable, "-c", "import resource,sys; from anonymize.cli import main; sys.argv=['anonymize']+sys.argv[1:];\ntry:\n main()\nfinally:\n print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)",
           "protect", str(inp), "-m", "blur", "--region", region, "-o", str(out), "--json", *extra]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"run failed ({res.returncode}): {res.stderr[-2000:]}")
    summ = json.loads(res.stdout)["summary"]
    rss_kb = int([l for l in res.stderr.splitlines() if l.startswith("MAXRSS")][-1].split()[1])
    return {"n": n, "ok": summ["ok"], "images_per_s": summ["images_per_s"], "wall_s": wall, "peak_rss_mb": rss_kb / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 2000])
    ap.add_argument("--region", default="image", choices=["image", "faces"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    extra = ["--workers", str(args.workers), "--batch-size", str(args.batch_size)]
    rows = []
    with tempfile.TemporaryDirectory() as td:
        for n in args.sizes:
            rows.append(run_one(n, args.region, extra, Path(td)))
    print(f"protect --method blur --region {args.region} (workers {args.workers}, batch {args.batch_size}), cpu count {os.cpu_count()}")
    print(f"{'N':>6} {'ok':>6} {'images/s':>10} {'wall s':>8} {'peak RSS MB':>12}")
    for r in rows:
        print(f"{r['n']:>6} {r['ok']:>6} {r['images_per_s']:>10.2f} {r['wall_s']:>8.1f} {r['peak_rss_mb']:>12.1f}")


if __name__ == "__main__":
    main()

"""Reference points: `evaluate` on blur and pixelate outputs of N corpus faces.

Picks the first photo of N people who have >= 2 photos in ../shared/corpus/faces,
protects them with each baseline (face regions from the default detector), then
runs `evaluate` with a gallery made of the *other* photos of the same people
(the original photo itself is excluded by hash). Prints SPR, SPR if located,
SDR, SSIM, face SSIM and gallery rank-1 per baseline, plus the same gallery
rank-1 on the unprotected originals (shows the recognizer works).

    python benchmarks/baselines_eval.py --n 200 --methods blur pixelate
"""
from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path

import anonymize
from anonymize.evaluation import EvaluateOptions
from anonymize.evaluation import evaluate as run_evaluate

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"


def pick(n: int, seed: int) -> list[tuple[str, list[Path]]]:
    people = []
    for d in sorted((SHARED / "corpus" / "faces").iterdir()):
        photos = sorted(p for p in d.iterdir() if p.is_file())
        if len(photos) >= 2:
            people.append((d.name, photos))
    random.Random(seed).shuffle(people)
    return people[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--methods", nargs="+", default=["blur", "pixelate"])
    ap.add_argument("--recognizers", default="dlib-resnet")
    ap.add_argument("--detector", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    chosen = pick(args.n, args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as td:
        root = Path(td)
        orig, gal = root / "orig", root / "gallery"
        for person, photos in chosen:
            (orig / person).mkdir(parents=True)
            shutil.copyfile(photos[0], orig / person / photos[0].name)
            (gal / person).mkdir(parents=True)
            for p in photos[1:]:
                shutil.copyfile(p, gal / person / p.name)
        recs = tuple(args.recognizers.split(","))
        for method in ["none", *args.methods]:
            t0 = time.perf_counter()
            if method == "none":
                prot = orig
            else:
                prot = root / f"prot_{method}"
                res = anonymize.protect([orig], method=method, output=prot, detector=args.detector, device="cpu")
                assert res.summary.failed == 0, res.summary
            ev = run_evaluate(orig, prot, EvaluateOptions(recognizers=recs, detector=args.detector, gallery=gal, device="cpu",
                                                          report=root / f"eval_{method}.json"))
            s = ev.summary
            r = s["recognizers"][recs[0]]
            rows.append((method, s["faces"], r["spr"], r["spr_aligned"], s["sdr"], s["ssim_mean"], s["face_ssim_mean"],
                         r["gallery_rank1"], r["gallery_rank1_original"], time.perf_counter() - t0))
    print(f"N = {len(chosen)} people (first photo each; gallery = their other photos), recognizer {recs[0]}, detector {args.detector or 'default'}")
    hdr = ("method", "faces", "SPR", "SPR located", "SDR", "SSIM", "face SSIM", "rank-1 prot", "rank-1 orig", "time s")
    print(" | ".join(hdr))
    f = lambda v: "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))  # noqa: E731
    for row in rows:
        print(" | ".join(f(v) for v in row))


if __name__ == "__main__":
    main()

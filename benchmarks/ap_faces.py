"""Benchmark ``protect --method ap`` (face target) on the identity-labelled corpus.

For N people of ``../shared/corpus/faces`` (each has >= 2 photos) the first photo
with a detected face is protected at every level (every face MTCNN finds in it,
as ``protect`` does); ``anonymize.evaluation.evaluate``
then measures SPR (pair: original vs protected face, with the recognizer's
threshold), gallery re-identification (rank-1 against the other photos of the
same N people; the query photo itself is excluded), SSIM and PSNR -- on the PNG
outputs and after JPEG quality-75 re-encoding. Results under dlib-resnet and
dlib-native are white-box (dlib-native shares the attacked weights); no
non-dlib recognizer is available offline unless facenet weights were fetched
(then add them with --recognizers). Also times seconds per face, batch 1 vs batched.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/ap_faces.py --n 200 --levels low,medium,high --batch 8
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anonymize.methods.ap  # noqa: E402,F401
from anonymize.evaluation import evaluate  # noqa: E402
from anonymize.faces.detect import get_detector  # noqa: E402
from anonymize.methods.ap_face import jpeg_roundtrip  # noqa: E402
from anonymize.methods.base import MethodContext, get_method  # noqa: E402
from anonymize.types import ImageItem  # noqa: E402

CORPUS = Path("/work/shared/corpus/faces")


def pick(n: int) -> list[tuple[str, Path, np.ndarray, list]]:
    from PIL import Image

    det = get_detector("mtcnn")
    out = []
    for person in sorted(p.name for p in CORPUS.iterdir() if p.is_dir()):
        photos = sorted(q for q in (CORPUS / person).iterdir() if q.is_file())
        if len(photos) < 2:
            continue
        px = np.asarray(Image.open(photos[0]).convert("RGB"))
        faces = det([px])[0]
        if not faces:
            continue
        out.append((person, photos[0], px, list(faces)))  # every detected face, as protect does
        if len(out) >= n:
            break
    return out


def write_png(path: Path, px: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(px).save(path)


def n_faces(samples) -> int:
    return sum(len(s[3]) for s in samples)


def protect(samples, level: str, batch: int, extra: dict | None = None):
    _, m = get_method("ap", {"level": level, **(extra or {})})
    outs, t0 = [], time.perf_counter()
    for i in range(0, len(samples), batch):
        items = []
        for person, path, px, faces in samples[i : i + batch]:
            it = ImageItem(path, Path(person) / path.name, px)
            it.faces = faces
            items.append(it)
        outs.extend(m(items, MethodContext(seed=0)))
    return outs, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--levels", default="low,medium,high")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--eot", default="", help="e.g. jpeg or jpeg,resize,jitter (adds a run per level)")
    ap.add_argument("--eot-levels", default="medium")
    ap.add_argument("--recognizers", default="dlib-resnet,dlib-native")
    ap.add_argument("--timing-faces", type=int, default=8)
    ap.add_argument("--work", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work or tempfile.mkdtemp(prefix="ap_bench_"))
    samples = pick(args.n)
    print(f"{n_faces(samples)} faces in {len(samples)} photos of {len(samples)} people; work dir {work}")
    orig = work / "orig"
    gallery = work / "gallery"
    for person, path, _, _ in samples:
        (orig / person).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, orig / person / path.name)
        if not (gallery / person).exists():
            gallery.mkdir(parents=True, exist_ok=True)
            (gallery / person).symlink_to(CORPUS / person)
    recs = tuple(args.recognizers.split(","))
    rows = []
    runs = [(lvl, {}) for lvl in args.levels.split(",")]
    if args.eot:
        runs += [(lvl, {"eot": args.eot, "jpeg_qualities": "75"}) for lvl in args.eot_levels.split(",")]
    for level, extra in runs:
        tag = level + ("+eot" if extra else "")
        outs, secs = protect(samples, level, args.batch, extra)
        for variant in ("png", "jpeg75"):
            d = work / f"{tag}_{variant}"
            for (person, path, px, _), o in zip(samples, outs):
                p = o.pixels if variant == "png" else jpeg_roundtrip(o.pixels, 75)
                write_png(d / person / (path.stem + ".png"), p)
            with open(d / "anonymize-report.jsonl", "w") as fh:  # what protect records: evaluate reads the attacked models
                for (person, path, _, _), o in zip(samples, outs):
                    fh.write(json.dumps({"status": "ok", "method": "ap", "relative_path": f"{person}/{path.stem}.png",
                                         "method_info": {"attacked_models": o.info["attacked_models"]}}) + "\n")
            res = evaluate(orig, d, recognizers=recs, gallery=gallery, device="cpu", report=d / "eval.json")
            s = res.summary
            row = {"run": tag, "variant": variant, "faces": s.get("faces"), "method_protected": float(np.mean([o.protected for o in outs])),
                   "ssim": s.get("ssim_mean"), "face_ssim": s.get("face_ssim_mean"), "psnr": s.get("psnr_mean"), "sdr": s.get("sdr"),
                   "s_per_face": secs / n_faces(samples)}
            for r in recs:
                v = s["recognizers"].get(r, {})
                row[f"spr[{r}]"] = v.get("spr")
                row[f"gal_rank1[{r}]"] = v.get("gallery_rank1")
                row[f"gal_rank1_orig[{r}]"] = v.get("gallery_rank1_original")
                row[f"gal_verif[{r}]"] = v.get("gallery_verification")
                row[f"wb[{r}]"] = v.get("white_box")
            rows.append(row)
            print(json.dumps(row), flush=True)
    # timing: batch 1 vs batched on the same faces (medium)
    tf = samples[: args.timing_faces]
    _, t1 = protect(tf, "medium", 1)
    _, tb = protect(tf, "medium", args.batch)
    nf = n_faces(tf)
    print(f"timing medium on {nf} faces in {len(tf)} photos: batch 1 {t1 / nf:.2f} s/face ({nf / t1:.2f} faces/s); "
          f"batch {args.batch} {tb / nf:.2f} s/face ({nf / tb:.2f} faces/s)")
    keys = list(rows[0])
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v, k in zip(r.values(), keys)) + " |")


if __name__ == "__main__":
    main()

"""Leave-one-out transfer of ``protect --method ap`` (face target) on corpus people.

Protocol (issue 15): the attack pool is ``ap``'s default ensemble (every recognizer available
offline with a non-restrictive licence: dlib-resnet, facenet-casia, facenet-ms1m, lightcnn-v4).
For each held-out choice ``h`` in the pool, ``ap`` attacks the other three; ``--held-out none``
attacks all four (the product default). arcface-mbf (non-commercial weights) is never attacked:
it is always a held-out evaluator, reported in its own column. Each run goes through the real
pipeline (``anonymize.protect``: yunet detection, every face in the photo, the
output written as the pipeline writes it -- here JPEG at the input's quality 90), and
``evaluate``'s own code measures every recognizer on the written files:

- SPR held-out: the share of faces whose distance to the original face is >= the held-out
  recognizer's threshold (a face no longer detected counts as not protected), i.e. black-box;
  ``spr_arcface``: the same for arcface-mbf (held out in every run);
- SPR white-box: the same under the attacked models (min and mean over them);
- ``protected``: the share of faces the method marked protected, and how often that decision
  equals evaluate's (every attacked model protected) -- they should agree exactly;
- gallery rank-1 of the held-out recognizer: each protected face against the other photos of
  the same people (the query photo excluded), and for the unprotected originals;
- SSIM (whole image), face SSIM, PSNR, seconds per face (the method's time in the pipeline,
  batched, divided by the faces), and faces/s;
- everything again after re-encoding the written files as JPEG quality 75 (4:2:0).

People: the corpus people in a seeded shuffle (seed 15): ``--split test`` is the first N
(reported), ``--split dev`` people 200..200+N (used to tune; disjoint from the test people).
The first photo of each is protected (people whose first photo has no face are skipped); the
person's other photos (at most 8) are the gallery.

Rows are appended as JSON lines to ``--out`` and printed as a markdown table at the end.

Examples:
    # the leave-one-out table, every level (hours on 2 shared cores)
    ANONYMIZE_HOME=/work/weights nice python benchmarks/ap_transfer.py --n 200 --levels low,medium,high
    # tuning on dev people: one held-out choice, an option switched off
    ANONYMIZE_HOME=/work/weights nice python benchmarks/ap_transfer.py --split dev --n 30 --levels medium \\
        --held-out lightcnn-v4 --set momentum=0 --tag no-mi
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anonymize.evaluation.blackbox import FaceEvaluator  # noqa: E402
from anonymize.evaluation.quality import image_quality  # noqa: E402
from anonymize.evaluation.whitebox import white_box  # noqa: E402
from anonymize.io.decode import decode_file  # noqa: E402

SHARED = Path(os.environ.get("ANONYMIZE_SHARED", Path(__file__).resolve().parent.parent.parent / "shared"))
from anonymize.methods.ap_face import DEFAULT_ATTACK_MODELS  # noqa: E402

ALWAYS_HELD_OUT = "arcface-mbf"
POOL = (*DEFAULT_ATTACK_MODELS, ALWAYS_HELD_OUT)  # every recognizer evaluate measures here
GALLERY_MAX = 8


def people(split: str, n: int, seed: int = 15) -> list[tuple[str, list[Path]]]:
    root = SHARED / "corpus" / "faces"
    names = sorted(p.name for p in root.iterdir() if p.is_dir())
    random.Random(seed).shuffle(names)
    names = names[:200] if split == "test" else names[200:]
    out = []
    for name in names:
        photos = sorted(q for q in (root / name).iterdir() if q.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if len(photos) >= 2:
            out.append((name, photos))
    return out


def setup(work: Path, split: str, n: int, fe: FaceEvaluator | None) -> tuple[Path, Path, list[str]]:
    """Originals (first photos with a face) and the gallery (other photos) under ``work``."""
    from anonymize.faces.detect import get_detector

    det = get_detector()
    orig, gal = work / "orig", work / "gallery"
    chosen = []
    for name, photos in people(split, n):
        item, _ = decode_file(photos[0], Path(name) / photos[0].name)
        if not det([item.pixels])[0]:
            continue
        (orig / name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photos[0], orig / name / photos[0].name)
        (gal / name).mkdir(parents=True, exist_ok=True)
        for q in photos[1 : 1 + GALLERY_MAX]:
            shutil.copyfile(q, gal / name / q.name)
        chosen.append(name)
        if len(chosen) >= n:
            break
    return orig, gal, chosen


def jpeg75(src: Path, dst: Path, q: int = 75) -> None:
    from PIL import Image

    for p in sorted(src.rglob("*")):
        if p.suffix.lower() not in (".jpg", ".jpeg", ".png") or not p.is_file():
            continue
        rel = p.relative_to(src)
        out = (dst / rel).with_suffix(".jpg")
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(p).convert("RGB").save(out, "JPEG", quality=q, subsampling=2)


def evaluate_dir(fe: FaceEvaluator, orig: Path, prot: Path, attacked: set[str]) -> tuple[dict[str, Any], list[dict]]:
    """evaluate's per-pair code with one evaluator (gallery built once); white-box from ``attacked``."""
    from anonymize.evaluation.pairs import pair_files
    from anonymize.records import sha256_bytes

    images = []
    for o, p, rel in pair_files(orig, prot):
        rec: dict[str, Any] = {"relative_path": str(rel), "status": "ok"}
        if p is None:
            rec["status"] = "failed"
            images.append(rec)
            continue
        a, ab = decode_file(o, rel)
        b, _ = decode_file(p, rel)
        rec.update(image_quality(a.pixels, b.pixels))
        rec.update(fe.evaluate_pair(a, b, sha256_bytes(ab), attacked))
        images.append(rec)
    flags = {n: white_box(n, attacked) for n in fe.names}
    s = fe.summary(images, flags)
    ok = [r for r in images if r["status"] == "ok"]
    s["ssim_mean"] = float(np.mean([r["ssim"] for r in ok]))
    s["psnr_mean"] = float(np.mean([r["psnr"] for r in ok if r.get("psnr") is not None]))
    return s, images


def agreement(records: list[dict], images: list[dict], attacked: set[str]) -> dict[str, Any]:
    """Per face: the method's protected flag vs evaluate's (protected under every attacked model)."""
    by = {r["relative_path"]: r for r in records if r.get("status") == "ok"}
    same = total = meth = ev = 0
    for img in images:
        rec = by.get(img["relative_path"])
        if rec is None or img.get("status") != "ok":
            continue
        mfaces = (rec.get("method_info") or {}).get("faces") or []
        for ef in img.get("faces", []):
            e_ok = all(ef["identity"][m]["protected"] for m in attacked if m in ef["identity"])
            # the method face of this evaluate face: same box (both come from yunet on the original)
            mf = None
            for k, f in enumerate(rec.get("faces") or []):
                if k < len(mfaces) and _iou(f["box"], ef["box"]) >= 0.5:
                    mf = mfaces[k]
            m_ok = bool(mf and mf.get("protected"))
            total += 1
            same += int(m_ok == e_ok)
            meth += int(m_ok)
            ev += int(e_ok)
    return {"faces": total, "agree": same / total if total else None, "method_protected": meth / total if total else None,
            "evaluate_protected_all_attacked": ev / total if total else None}


def _iou(a: list[float], b: list[float]) -> float:
    from anonymize.evaluation.blackbox import iou

    return iou(tuple(a), tuple(b))


def run_config(args: argparse.Namespace, fe: FaceEvaluator, orig: Path, work: Path, level: str, held: str,
               extra: dict[str, str]) -> list[dict[str, Any]]:
    from anonymize.pipeline import protect

    attacked = [m for m in DEFAULT_ATTACK_MODELS if m != held and m in fe.names]
    params = {"level": level, "attack_models": ",".join(attacked), **extra}
    tag = f"{level}-{'all4' if held == 'none' else 'no-' + held}" + (f"-{args.tag}" if args.tag else "")
    out = work / f"out-{hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]}"
    t0, c0 = time.perf_counter(), time.process_time()
    run = protect([orig], method="ap", params=params, output=out, overwrite=True, batch_size=args.batch,
                  threads=args.threads, report=out / "anonymize-report.json", count_first=False)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    records = [json.loads(line) for line in open(run.records_path)]
    ok = [r for r in records if r.get("status") == "ok"]
    faces = sum(len(r.get("faces") or []) for r in ok)
    method_s = sum((r.get("timings") or {}).get("method_s", 0.0) for r in ok)
    rows = []
    variants = [("written", out)]
    if args.jpeg:
        jdir = work / (out.name + "-jpeg75")
        shutil.rmtree(jdir, ignore_errors=True)
        jpeg75(out, jdir)
        variants.append(("jpeg75", jdir))
    for vname, d in variants:
        s, images = evaluate_dir(fe, orig, d, set(attacked))
        recs = s["recognizers"]
        wb = [recs[m]["spr"] for m in attacked if recs.get(m, {}).get("spr") is not None]
        agr = agreement(records, images, set(attacked))
        row = {
            "tag": tag, "level": level, "held_out": held, "variant": vname, "extra": extra,
            "attacked": attacked, "people": len(ok), "faces_eval": s["faces"], "faces_method": faces,
            "spr_held_out": recs[held]["spr"] if held in recs else None,
            "spr_arcface": recs.get(ALWAYS_HELD_OUT, {}).get("spr"),
            "spr_held_out_aligned": recs[held]["spr_aligned"] if held in recs else None,
            "spr_white_min": min(wb) if wb else None, "spr_white_mean": float(np.mean(wb)) if wb else None,
            "spr": {k: v["spr"] for k, v in recs.items()},
            "gallery_rank1_held_out": recs[held]["gallery_rank1"] if held in recs else None,
            "gallery_rank1_held_out_original": recs[held]["gallery_rank1_original"] if held in recs else None,
            "ssim": s["ssim_mean"], "face_ssim": s["face_ssim_mean"], "psnr": s["psnr_mean"], "sdr": s["sdr"],
            "method_protected": agr["method_protected"], "evaluate_protected": agr["evaluate_protected_all_attacked"],
            "agreement": agr["agree"],
            "s_per_face": method_s / faces if faces else None, "faces_per_s": faces / method_s if method_s else None,
            "wall_s": wall, "cpu_s_per_face": cpu / faces if faces else None,
            "torch_threads": torch.get_num_threads(),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a") as fh:
                fh.write(json.dumps(row) + "\n")
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    cols = ["tag", "variant", "faces_eval", "spr_held_out", "spr_arcface", "spr_white_min", "spr_white_mean", "method_protected",
            "agreement", "gallery_rank1_held_out", "ssim", "face_ssim", "psnr", "s_per_face", "cpu_s_per_face"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="people")
    ap.add_argument("--split", choices=("test", "dev"), default="test")
    ap.add_argument("--levels", default="low,medium,high")
    ap.add_argument("--held-out", default=",".join((*DEFAULT_ATTACK_MODELS, "none")),
                    help="comma list of held-out members of the default ensemble; none: attack all of it")
    ap.add_argument("--set", action="append", default=[], help="extra ap parameter KEY=VALUE (repeatable)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="core budget of the pipeline (default: its policy)")
    ap.add_argument("--no-jpeg", dest="jpeg", action="store_false")
    ap.add_argument("--no-gallery", dest="gallery", action="store_false")
    ap.add_argument("--work", default=None)
    ap.add_argument("--keep", action="store_true", help="keep the protected outputs")
    ap.add_argument("--out", default=None, help="append JSON rows here")
    args = ap.parse_args()
    if not (SHARED / "corpus" / "faces").is_dir():
        sys.exit(f"{SHARED}/corpus/faces not found")
    extra = dict(kv.split("=", 1) for kv in args.set)
    work = Path(args.work or tempfile.mkdtemp(prefix="ap_transfer_"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    orig, gal, chosen = (work / "orig", work / "gallery", None) if (work / "orig").is_dir() else (None, None, None)
    if orig is None:
        orig, gal, chosen = setup(work, args.split, args.n, None)
    fe = FaceEvaluator(recognizers=POOL, device="cpu", gallery=gal if args.gallery else None, landmarks=False)
    fe.prepare()
    if fe.unavailable:
        print("unavailable:", fe.unavailable, file=sys.stderr)
    print(f"{len(list(orig.iterdir()))} people in {orig}; evaluator ready in {time.perf_counter() - t0:.0f} s; "
          f"torch threads {torch.get_num_threads()}", flush=True)
    rows = []
    for level in args.levels.split(","):
        for held in args.held_out.split(","):
            rows += run_config(args, fe, orig, work, level, held, extra)
    print()
    print(table(rows))


if __name__ == "__main__":
    main()

"""Fit the orthonormal PCA face basis of the ``dpimage`` ``pca`` backend.

Faces: every photo of /work/shared/corpus/faces (LFW website copies and a few
other public photos; research use) whose person is in the *fit* split
(sha256(name) mod 5 != 0; the rest is held out for benchmarks/dpimage_faces.py).
Each photo: MTCNN (facenet-pytorch) -> best face's 5 landmarks -> 64x64 RGB chip
aligned to ``anonymize.privacy.idpi.CHIP_TEMPLATE5`` -> plus its mirror image.
PCA by SVD of the centred chips; keep k components (orthonormal rows), the mean,
and a per-component clip box C_i = 99th percentile of |coefficient| (the
thesis's "keep > 99% of features" rule). Saved as float16 in
models/pca_faces_64.npz, with provenance in models/pca_faces_64.json.

Run:
    OMP_NUM_THREADS=1 /work/venv/bin/python benchmarks/fit_pca_basis.py [--k 128] [--size 64]
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def split_of(person: str) -> str:
    return "heldout" if hashlib.sha256(person.encode()).digest()[0] % 5 == 0 else "fit"


def aligned_chips(paths: list[Path], size: int, *, log_every: int = 250) -> tuple[np.ndarray, list[str]]:
    """(N, size, size, 3) float32 chips in [0, 1] and their paths, one per photo with a face."""
    import torch
    from PIL import Image

    from anonymize.faces.align import warp_faces
    from anonymize.faces.detect import get_detector
    from anonymize.privacy.idpi import chip_transform

    det = get_detector("mtcnn", thresh=0.95)
    chips, kept = [], []
    t0 = time.time()
    for i, p in enumerate(paths):
        try:
            img = np.array(Image.open(p).convert("RGB"))
        except Exception:
            continue
        faces = det([img])[0]
        if not faces:
            continue
        f = max(faces, key=lambda f: f.width * f.height * f.score)
        M = chip_transform(f.landmarks5, size)
        t = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
        chips.append(warp_faces(t, M[None], size)[0].permute(1, 2, 0).numpy())
        kept.append(str(p))
        if log_every and (i + 1) % log_every == 0:
            print(f"  {i + 1}/{len(paths)} photos, {len(kept)} chips, {time.time() - t0:.0f}s", flush=True)
    return np.stack(chips).astype(np.float32), kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/work/shared/corpus/faces")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--k", type=int, default=128)
    ap.add_argument("--quantile", type=float, default=0.99)
    ap.add_argument("--out", default=str(ROOT / "models" / "pca_faces_64.npz"))
    ap.add_argument("--per-person", type=int, default=2, help="photos per person (0 = all)")
    ap.add_argument("--limit", type=int, default=0, help="use at most this many photos (0 = all)")
    a = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    data = Path(a.data)
    people = sorted(d for d in data.iterdir() if d.is_dir())
    fit_people = [d for d in people if split_of(d.name) == "fit"]
    paths = []
    for d in fit_people:
        mine = sorted(p for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        paths.extend(mine[: a.per_person] if a.per_person else mine)
    if a.limit:
        paths = paths[: a.limit]
    print(f"{len(fit_people)}/{len(people)} people in the fit split, {len(paths)} photos")
    t0 = time.time()
    chips, kept = aligned_chips(paths, a.size)
    t_align = time.time() - t0
    X = np.concatenate([chips, chips[:, :, ::-1]]).reshape(2 * len(chips), -1).astype(np.float64)
    mean = X.mean(0)
    Xc = X - mean
    t1 = time.time()
    _, s, vt = np.linalg.svd(Xc, full_matrices=False)
    comps = vt[: a.k]
    coef = Xc @ comps.T
    clip = np.quantile(np.abs(coef), a.quantile, axis=0)
    var = s**2 / (len(X) - 1)
    evr = var[: a.k] / var.sum()
    q16 = comps.astype(np.float16).astype(np.float64)
    meta = {
        "size": a.size,
        "layout": "HWC RGB float in [0,1], flattened row-major (size*size*3)",
        "k": a.k,
        "alignment": "anonymize.privacy.idpi.chip_transform (ArcFace 112 template zoomed 0.8) from MTCNN landmarks",
        "clip_rule": f"per-component {a.quantile:.2%} quantile of |coefficient| on the fit chips",
        "fraction_inside_clip": float(np.mean(np.abs(coef) <= clip)),
        "explained_variance": float(evr.sum()),
        "n_photos": len(kept),
        "n_chips": int(len(X)),
        "augmentation": "horizontal mirror",
        "n_people": len(fit_people),
        "photos_per_person": a.per_person or "all",
        "split": "fit = people with sha256(name)[0] % 5 != 0",
        "data": str(data),
        "script": "benchmarks/fit_pca_basis.py",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "float16_orthonormality_error": float(np.abs(q16 @ q16.T - np.eye(a.k)).max()),
    }
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        components=comps.astype(np.float16),
        mean=mean.astype(np.float16),
        clip=clip.astype(np.float32),
        singular_values=s[: a.k].astype(np.float32),
        meta=np.array(json.dumps(meta)),
    )
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    prov = dict(meta, file=out.name, sha256=digest, bytes=out.stat().st_size, code_commit=commit,
                licence_note="derived statistics of research-use photos (LFW website copies and public repos); "
                "see shared/corpus/SOURCES.tsv. No photo is stored.")
    out.with_suffix(".json").write_text(json.dumps(prov, indent=2) + "\n")
    print(f"aligned {len(kept)} photos in {t_align:.0f}s, SVD {time.time() - t1:.0f}s")
    print(f"k={a.k} explained variance {evr.sum():.3f}, clip C_i in [{clip.min():.3f}, {clip.max():.3f}], "
          f"Delta = 2||C|| = {2 * np.linalg.norm(clip):.2f}")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, sha256 {digest[:16]}...)")


if __name__ == "__main__":
    main()

"""Fit the 5-point templates of dlib's 150x150 face chip and measure our chips against dlib's.

dlib.get_face_chip(img, shape5, 150, 0.25) fits a similarity from a fixed
template to dlib's 5-point shape. We recover that template from dlib's own
chip geometry on real faces: dlib.extract_image_chip on float images that
hold the x and y pixel coordinates gives, for every chip pixel, the image
point it samples; an affine fit of those gives each chip's exact transform.
The template is then the 10 numbers that make "similarity(template -> shape)"
reproduce all those transforms (nonlinear least squares). The same is done for
MTCNN-order landmarks (MTCNN detections on the same faces).

Then it compares warp_faces() chips with dlib's chips (pixel differences) and
dlib-resnet descriptors of both.

Usage:
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/dlib_chip_template.py [--n 40]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from scipy.optimize import least_squares


def load(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))


def ramp_affine(img_shape: tuple[int, int], details) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Measured chip->image affine (2x3) of a dlib chip_details, from coordinate ramps."""
    import dlib

    h, w = img_shape
    xs = np.tile(np.arange(w, dtype=np.float32), (h, 1))
    ys = np.tile(np.arange(h, dtype=np.float32)[:, None], (1, w))
    cx = np.asarray(dlib.extract_image_chip(xs, details), dtype=np.float64)
    cy = np.asarray(dlib.extract_image_chip(ys, details), dtype=np.float64)
    r, c = np.mgrid[0 : cx.shape[0], 0 : cx.shape[1]]
    # keep chip pixels that sample well inside the image (ramps are exact there)
    ok = (cx > 4) & (cx < w - 5) & (cy > 4) & (cy < h - 5)
    A = np.stack([c[ok], r[ok], np.ones(ok.sum())], 1)
    sol, *_ = np.linalg.lstsq(A, np.stack([cx[ok], cy[ok]], 1), rcond=None)
    return sol.T  # (2, 3) chip -> image


def chip_affine(details) -> np.ndarray:  # type: ignore[no-untyped-def]
    """chip->image affine of a dlib chip_details from its rect and angle: chip pixel c maps to
    rect centre + R(angle) (c - (n-1)/2) * rect_width / (n-1) (checked against ramp_affine)."""
    R = details.rect
    cx, cy = (R.left() + R.right()) / 2.0, (R.top() + R.bottom()) / 2.0
    s = (R.right() - R.left()) / (details.cols - 1)
    co, si = np.cos(details.angle) * s, np.sin(details.angle) * s
    c0, r0 = (details.cols - 1) / 2.0, (details.rows - 1) / 2.0
    return np.array([[co, -si, cx - co * c0 + si * r0], [si, co, cy - si * c0 - co * r0]])


def fit_template(pts: list[np.ndarray], affines: list[np.ndarray], init: np.ndarray, loss: str = "linear") -> np.ndarray:
    from anonymize.faces.align import similarity_transform

    probe = np.array([[0, 0, 1], [149, 0, 1], [0, 149, 1], [149, 149, 1], [74.5, 74.5, 1]], dtype=np.float64)

    def resid(t: np.ndarray) -> np.ndarray:
        T = t.reshape(5, 2)
        out = []
        for p, A in zip(pts, affines):
            S = similarity_transform(T, p)
            scale = np.hypot(*A[:, 0])
            out.append(((probe @ S.T) - (probe @ A.T)).ravel() / scale)
        return np.concatenate(out)

    r0 = np.abs(resid(init)).reshape(len(pts), -1).max(1)
    sol = least_squares(resid, init.ravel(), loss=loss, f_scale=0.02, xtol=1e-12, ftol=1e-12).x
    r1 = np.abs(resid(sol)).reshape(len(pts), -1).max(1)
    print(f"  fit: per-face max error (fraction of chip px per image px) init median {np.median(r0):.4f} max {r0.max():.4f}"
          f" -> fitted median {np.median(r1):.4f} max {r1.max():.4f}")
    return sol.reshape(5, 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default="/work/shared/corpus")
    ap.add_argument("--n", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import dlib
    import face_recognition_models as frm

    from anonymize.faces import align
    from anonymize.faces.detect import dlib_shape5, get_detector

    hog = dlib.get_frontal_face_detector()
    mt = get_detector("mtcnn")
    rec = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    # a deterministic spread of people and sources (LFW 150 px web thumbnails + larger photos)
    people = sorted(Path(args.corpus, "faces").iterdir())
    paths = [sorted(p.iterdir())[0] for p in people[:: max(1, len(people) // args.n)]][: args.n]
    extra = [p for p in sorted(Path(args.corpus, "faces").glob("*/*")) if p.parent.name in
             ("barack_obama", "kit_harington", "rose_leslie", "ben_affleck", "madonna", "elton_john", "mindy_kaling")]
    paths += extra[:12]
    recs = []
    for p in paths:
        img = load(p)
        if min(img.shape[:2]) < 100:
            continue
        up = 1 if max(img.shape[:2]) < 800 else 0
        rects = hog(img, up)
        if not rects:
            continue
        r = max(rects, key=lambda r: r.area())
        box = (r.left(), r.top(), r.right() + 1, r.bottom() + 1)
        s5 = dlib_shape5(img, box)
        shape = dlib.full_object_detection(r, [dlib.point(int(x), int(y)) for x, y in s5])
        det = dlib.get_face_chip_details(shape, 150, 0.25)
        A = chip_affine(det)
        ramp_dev = np.abs(ramp_affine(img.shape[:2], det) - A)[:, :2].max() * 150
        mfaces = mt([img])[0]
        lm5 = None
        for f in mfaces:
            cx, cy = (f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2
            if box[0] < cx < box[2] and box[1] < cy < box[3]:
                lm5 = f.landmarks5
                break
        recs.append(dict(path=p, img=img, s5=s5, shape=shape, A=A, lm5=lm5, scale=np.hypot(*A[:, 0]), ramp=ramp_dev))
    print(f"{len(recs)} faces with a dlib detection; chip scale (image px per chip px) "
          f"{min(r['scale'] for r in recs):.2f}..{max(r['scale'] for r in recs):.2f}")

    print("max deviation (image px over the chip) of rect/angle geometry vs measured ramps, faces without pyramid:",
          f"{max(r['ramp'] for r in recs if r['scale'] <= 2):.4f}")
    init = np.mean([align.apply_affine(align.invert_affine(r["A"]), r["s5"]) for r in recs], 0)
    T = fit_template([r["s5"] for r in recs], [r["A"] for r in recs], init)
    with_m = [r for r in recs if r["lm5"] is not None]
    init_m = np.mean([align.apply_affine(align.invert_affine(r["A"]), r["lm5"]) for r in with_m], 0)
    # MTCNN points scatter ~1.7 chip px (eyes) to ~7 px (nose, mouth) around dlib's geometry, and a
    # free 10-parameter fit drifts to asymmetric templates; the per-landmark median of the MTCNN points
    # mapped into dlib's chips is the robust, symmetric choice.
    Tm = np.median([align.apply_affine(align.invert_affine(r["A"]), r["lm5"]) for r in with_m], 0)
    np.set_printoptions(precision=4, suppress=True)
    print("DLIB_CHIP_TEMPLATE5 =", repr(T))
    print("LANDMARKS5_CHIP_TEMPLATE =", repr(Tm))
    align.DLIB_CHIP_TEMPLATE5[:] = T
    align.LANDMARKS5_CHIP_TEMPLATE[:] = Tm

    print(f"\n{'source':10} {'faces':>5} {'max|d| px':>9} {'mean|d|':>8} {'p99|d|':>7} {'geom err px':>11} {'desc dist mean':>14} {'max':>6}")
    for label, key, fn in (("dlib-exact", "s5", align.dlib_chip_transform_exact),
                           ("dlib-5pt", "s5", align.dlib_chip_transform),
                           ("mtcnn-5", "lm5", align.chip_transform_from_landmarks5)):
        rows = [r for r in recs if r[key] is not None]
        maxd, meand, p99, geo, dd, sc = [], [], [], [], [], []
        for r in rows:
            ref = np.ascontiguousarray(dlib.get_face_chip(r["img"], r["shape"], 150, 0.25))
            M = fn(r[key])
            t = torch.from_numpy(r["img"].copy()).permute(2, 0, 1)[None].float()
            mine = warp_faces_u8(align, t, M)
            d = np.abs(mine.astype(np.int16) - ref.astype(np.int16))
            maxd.append(d.max()), meand.append(d.mean()), p99.append(np.percentile(d, 99))
            Minv = align.invert_affine(M)
            probe = np.array([[0, 0], [149, 0], [0, 149], [149, 149]], dtype=np.float64)
            geo.append(np.abs(align.apply_affine(Minv, probe) - align.apply_affine(r["A"], probe)).max() / r["scale"])
            da = np.asarray(rec.compute_face_descriptor(ref))
            db = np.asarray(rec.compute_face_descriptor(mine))
            dd.append(np.linalg.norm(da - db))
            sc.append(r["scale"])
        print(f"{label:10} {len(rows):>5} {max(maxd):>9} {np.mean(meand):>8.2f} {np.mean(p99):>7.1f} "
              f"{max(geo):>11.3f} {np.mean(dd):>14.4f} {max(dd):>6.4f}")
        sc_, md_, mx_, dd_ = map(np.asarray, (sc, meand, maxd, dd))
        for lo, hi in ((0, 1), (1, 2), (2, 99)):
            k = (sc_ > lo) & (sc_ <= hi)
            if k.any():
                print(f"   image px per chip px in ({lo}, {hi}]: {k.sum():>3} faces, mean|d| {md_[k].mean():.2f}, "
                      f"max|d| {mx_[k].max()}, desc dist mean {dd_[k].mean():.4f} max {dd_[k].max():.4f}")
    print("(geom err = max chip-corner position error in chip pixels; desc dist = L2 between dlib-resnet "
          "descriptors of our chip and dlib's chip; dlib's same-person threshold is 0.6)")


def warp_faces_u8(align, t: torch.Tensor, M: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    crop = align.warp_faces(t, M[None], 150, antialias=True, padding_mode="zeros")[0]
    return np.ascontiguousarray(crop.round().clamp(0, 255).byte().permute(1, 2, 0).numpy())


if __name__ == "__main__":
    main()

"""Transfer matrix: how methods protect against every recognizer, through the library's own APIs.

For the first ``--n`` people of ``corpus/faces`` (sorted by name) with >= 2
photos, the first photo is the image to protect and the person's other photos
form the ``--gallery``. Each run (``METHOD[:KEY=VALUE,...]``, e.g.
``ap:level=medium``) is ``anonymize.protect`` on those photos, then
``anonymize.evaluate`` with the gallery and every recognizer whose weights are
present (or ``--recognizers``). Every number comes from ``evaluate``'s summary:
nothing is re-measured here.

Columns: SPR per recognizer (``*``: white-box, the run attacked that weight
family, read by ``evaluate`` from the protect records), the black-box min and
mean (over the recognizers the run did not attack), SDR (faces still detected),
SSIM and face SSIM; a second table gives SPR if located (undetected faces cut
at the original's place) and a third gallery rank-1 per recognizer (the
protected face identified among the gallery; ``originals``: the unprotected
photo, same gallery).

Outputs (kept for later checks, e.g. benchmarks/facenet_independent_check.py):
``WORK/orig/<person>/<photo>``, ``WORK/gallery/<person>/...``,
``WORK/runs/<label>/`` (protected files + protect report + ``evaluate.json``),
``WORK/transfer_matrix.json`` and ``WORK/transfer_matrix.md``. A run whose
``evaluate.json`` exists is reused unless ``--force``.

Example (the "before" matrix of issue 13; the machine is shared, so nice and one thread):
    ANONYMIZE_HOME=/work/weights OMP_NUM_THREADS=1 nice python benchmarks/transfer_matrix.py \\
        --n 200 --work /tmp/transfer --runs ap:level=low ap:level=medium ap:level=high blur pixelate dpimage
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anonymize  # noqa: E402

SHARED = Path(os.environ.get("ANONYMIZE_SHARED", Path(__file__).resolve().parent.parent.parent / "shared"))
DEFAULT_RUNS = ("ap:level=low", "ap:level=medium", "ap:level=high", "blur", "pixelate", "dpimage")
IMAGE_EXT = (".jpg", ".jpeg", ".png")


def parse_run(spec: str) -> tuple[str, dict[str, str]]:
    """``METHOD[:KEY=VALUE,...]``; a comma-separated piece without ``=`` continues the previous
    value (tuple parameters).

    Example:
        >>> parse_run("ap:level=high,attack_models=dlib-resnet,facenet-casia,epsilon=8")
        ('ap', {'level': 'high', 'attack_models': 'dlib-resnet,facenet-casia', 'epsilon': '8'})
    """
    method, _, rest = spec.partition(":")
    params: dict[str, str] = {}
    last = None
    for kv in filter(None, rest.split(",")):
        k, sep, v = kv.partition("=")
        if sep:
            last = k.strip()
            params[last] = v.strip()
        elif last is not None:
            params[last] += "," + kv.strip()
        else:
            raise SystemExit(f"bad run {spec!r}: parameters are KEY=VALUE separated by commas")
    return method.strip(), params


def label_of(spec: str) -> str:
    return spec.replace(":", "_").replace(",", "_").replace("=", "-").replace("/", "_")


def prepare(n: int, work: Path) -> list[str]:
    """Copy the first photo of the first ``n`` people (>= 2 photos) to WORK/orig and the others to WORK/gallery."""
    root = SHARED / "corpus" / "faces"
    if not root.is_dir():
        raise SystemExit(f"{root} not found (set ANONYMIZE_SHARED)")
    people = []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        photos = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXT)
        if len(photos) >= 2:
            people.append((d.name, photos))
        if len(people) >= n:
            break
    for person, photos in people:
        for dst_root, files in ((work / "orig", photos[:1]), (work / "gallery", photos[1:])):
            (dst_root / person).mkdir(parents=True, exist_ok=True)
            for p in files:
                if not (dst_root / person / p.name).exists():
                    shutil.copyfile(p, dst_root / person / p.name)
    return [p for p, _ in people]


def run_one(spec: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    method, params = parse_run(spec)
    out = work / "runs" / label_of(spec)
    ev_path = out / "evaluate.json"
    timing_path = out / "timing.json"
    if ev_path.is_file() and timing_path.is_file() and not args.force:
        doc = json.loads(ev_path.read_text())
        return {"spec": spec, "summary": doc["summary"], **json.loads(timing_path.read_text()), "reused": True}
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    res = anonymize.protect([work / "orig"], method=method, params=params, output=out, detector=args.protect_detector,
                            format=args.format, device="cpu", threads=args.threads, seed=args.seed)
    protect_s = time.perf_counter() - t0
    s = res.summary
    timing = {"protect_s": protect_s, "protect_ok": s.ok, "protect_failed": s.failed, "protect_protected": s.protected,
              "protect_faces": getattr(s, "faces", None)}
    t0 = time.perf_counter()
    ev = anonymize.evaluate(work / "orig", out, recognizers=args.recognizers, detector=args.detector,
                            gallery=None if args.no_gallery else work / "gallery", device="cpu", threads=args.threads,
                            report=ev_path, html=out / "evaluate.html" if args.html else None)
    timing["evaluate_s"] = time.perf_counter() - t0
    timing_path.write_text(json.dumps(timing, indent=1))
    return {"spec": spec, "summary": ev.summary, **timing, "reused": False}


def fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def tables(rows: list[dict[str, Any]]) -> str:
    """Markdown tables from the evaluate summaries of the runs."""
    recs: list[str] = []
    for r in rows:
        for k in r["summary"].get("recognizers", {}):
            if k not in recs:
                recs.append(k)

    def spr_cell(r: dict[str, Any], k: str, key: str) -> str:
        v = r["summary"]["recognizers"].get(k)
        if v is None:
            return "n/a"
        mark = "*" if v.get("white_box") is True else ("?" if v.get("white_box") == "unknown" else "")
        return fmt(v.get(key)) + mark

    lines = ["### SPR per recognizer (`*` white-box: the run attacked this weight family)", ""]
    head = ["run", "faces", "protect: protected/ok", *recs, "black-box min (which)", "black-box mean", "SDR", "SSIM",
            "face SSIM", "protect s/img"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        s = r["summary"]
        bb = s.get("black_box") or {}
        n_img = max(1, (r.get("protect_ok") or 0) + (r.get("protect_failed") or 0))
        cells = [r["spec"], fmt(s.get("faces")), f"{r.get('protect_protected')}/{r.get('protect_ok')}",
                 *[spr_cell(r, k, "spr") for k in recs],
                 f"{fmt(bb.get('spr_min'))} ({bb.get('spr_min_recognizer') or '-'})", fmt(bb.get("spr_mean")),
                 fmt(s.get("sdr")), fmt(s.get("ssim_mean")), fmt(s.get("face_ssim_mean")), fmt(r["protect_s"] / n_img, 2)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "### SPR if located (undetected faces cut at the original's place)", ""]
    head = ["run", *recs, "black-box min"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        bb = r["summary"].get("black_box") or {}
        lines.append("| " + " | ".join([r["spec"], *[spr_cell(r, k, "spr_aligned") for k in recs],
                                         fmt(bb.get("spr_aligned_min"))]) + " |")
    if any(v.get("gallery_queries") for r in rows for v in r["summary"].get("recognizers", {}).values()):
        lines += ["", "### Gallery rank-1 (protected face identified among the others' photos; lower is better)", ""]
        head = ["run", "queries", *recs, "black-box max"]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        first = rows[0]["summary"]["recognizers"]
        lines.append("| " + " | ".join(["originals (unprotected)", fmt(next(iter(first.values())).get("gallery_queries")),
                                         *[fmt(first.get(k, {}).get("gallery_rank1_original")) for k in recs], "-"]) + " |")
        for r in rows:
            rs = r["summary"]["recognizers"]
            bb = r["summary"].get("black_box") or {}
            lines.append("| " + " | ".join([r["spec"], fmt(next(iter(rs.values())).get("gallery_queries")),
                                             *[spr_cell(r, k, "gallery_rank1") for k in recs],
                                             fmt(bb.get("gallery_rank1_max"))]) + " |")
    unavailable = sorted({k for r in rows for k in r["summary"].get("recognizers_unavailable", {})})
    if unavailable:
        lines += ["", f"Unavailable recognizers (weights absent): {', '.join(unavailable)}."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="people (first photo protected, the others form the gallery)")
    ap.add_argument("--runs", nargs="+", default=list(DEFAULT_RUNS), metavar="METHOD[:K=V,...]",
                    help="protect runs, e.g. ap:level=medium ap:level=high,attack_models=dlib-resnet,facenet-casia blur")
    ap.add_argument("--recognizers", default=None,
                    help="comma-separated; default: evaluate's (every recognizer whose weights are present)")
    ap.add_argument("--detector", default=None, help="evaluate's detector (default: evaluate's default)")
    ap.add_argument("--protect-detector", default=None, help="protect's detector (default: protect's default)")
    ap.add_argument("--format", default=None, help="protect --format (default: same as input, as a user gets)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-gallery", action="store_true", help="skip gallery re-identification (faster)")
    ap.add_argument("--html", action="store_true", help="also write evaluate.html per run")
    ap.add_argument("--work", type=Path, required=True, help="work folder (kept: inputs, outputs, reports)")
    ap.add_argument("--force", action="store_true", help="redo runs whose evaluate.json exists")
    args = ap.parse_args()
    if args.recognizers:
        args.recognizers = tuple(r.strip() for r in args.recognizers.split(",") if r.strip())
    args.work.mkdir(parents=True, exist_ok=True)
    people = prepare(args.n, args.work)
    print(f"{len(people)} people, work folder {args.work}; machine shared: timings are upper bounds", flush=True)
    rows = []
    for spec in args.runs:
        r = run_one(spec, args.work, args)
        s = r["summary"]
        print(f"{spec}: faces {s.get('faces')}, black-box {s.get('black_box', {}).get('spr_min')} / "
              f"{s.get('black_box', {}).get('spr_mean')}, protect {r['protect_s']:.0f} s, "
              f"evaluate {r.get('evaluate_s', 0):.0f} s{' (reused)' if r['reused'] else ''}", flush=True)
        rows.append(r)
        md = tables(rows)
        (args.work / "transfer_matrix.md").write_text(md + "\n")
        keep = ("faces", "sdr", "undetected", "ssim_mean", "face_ssim_mean", "psnr_mean", "black_box", "white_box",
                "attacked_models", "recognizers", "recognizers_unavailable", "detector", "non_commercial")
        (args.work / "transfer_matrix.json").write_text(json.dumps({
            "people": len(people), "corpus": str(SHARED / "corpus" / "faces"), "argv": sys.argv[1:],
            "runs": [{"spec": x["spec"], **{k: x[k] for k in ("protect_s", "protect_ok", "protect_failed",
                                                                 "protect_protected") if k in x},
                      "evaluate_s": x.get("evaluate_s"), "summary": {k: x["summary"].get(k) for k in keep}}
                     for x in rows]}, indent=1, default=str))
    print()
    print(tables(rows))


if __name__ == "__main__":
    main()

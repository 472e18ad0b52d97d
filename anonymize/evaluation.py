"""``anonymize evaluate ORIGINALS PROTECTED``: measure what protection did.

Pairs files by relative path (a protected file may have another extension,
e.g. when ``--format`` changed it), then computes image quality (SSIM, PSNR,
MSE) per pair. Face-level metrics (detection in the protected image,
identity distance per recognizer, protection success) are added by
:mod:`anonymize.faces` evaluators when available. Gates (``--fail-under``)
turn the result into exit code 3 for CI jobs.

Example:
    >>> parse_gates("ssim=0.8,spr=0.9")
    {'ssim': 0.8, 'spr': 0.9}
"""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from . import __version__
from .errors import EXIT_GATE_FAILED, EXIT_OK, EXIT_SOME_FAILED, AnonymizeError, ImageError, UsageError
from .io.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, decode_file
from .io.discover import IMAGE_EXTENSIONS, discover
from .metrics.quality import SSIM_CONFIG, mse, psnr, ssim
from .records import SCHEMA_VERSION, iter_records, now_iso, safe_path, sha256_bytes, write_json_atomic

# Gate name -> (summary key, direction). "min": value must be >= threshold.
GATES: dict[str, tuple[str, str]] = {
    "ssim": ("ssim_mean", "min"),
    "psnr": ("psnr_mean", "min"),
    "face_ssim": ("face_ssim_mean", "min"),
    "spr": ("spr", "min"),
    "sdr_max": ("sdr", "max"),
    "rank1_max": ("gallery_rank1", "max"),
}


def parse_gates(spec: str | None) -> dict[str, float]:
    """Parse ``name=value,...``; raises UsageError for unknown gates or bad numbers."""
    if not spec:
        return {}
    gates: dict[str, float] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise UsageError(f"--fail-under: expected name=value, got {part!r}")
        k, v = (s.strip() for s in part.split("=", 1))
        if k not in GATES:
            raise UsageError(f"--fail-under: unknown gate {k!r}; choose from {', '.join(GATES)}")
        try:
            gates[k] = float(v)
        except ValueError:
            raise UsageError(f"--fail-under: {k} needs a number, got {v!r}") from None
    return gates


@dataclass
class EvaluateOptions:
    """Options of an evaluate run."""

    report: Path | None = None
    html: Path | None = None
    fail_under: dict[str, float] = field(default_factory=dict)
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES
    threads: int | None = None  # core budget (--threads); None: ANONYMIZE_THREADS or the cores available
    faces: bool = True  # face-level metrics (detection, identity, landmarks)
    detector: str | None = None
    recognizers: tuple[str, ...] | None = None  # None: the evaluator's defaults
    gallery: Path | None = None
    device: str = "auto"
    face_evaluator: Any = None  # injected evaluator (tests); built from the options above when None
    size_sweep: tuple[int, ...] | None = None  # OPE (seed 001): SDIM-minimising input size over the originals
    size_sweep_max_images: int = 50
    progress: Callable[[int, int | None, dict[str, Any]], None] | None = None


@dataclass
class EvaluateResult:
    summary: dict[str, Any]
    images: list[dict[str, Any]]
    report_path: Path | None
    exit_code: int


def pair_files(originals: Path, protected: Path) -> Iterator[tuple[Path, Path | None, Path]]:
    """Yield (original, protected or None, relative) pairs."""
    if not originals.exists():
        raise UsageError(f"originals {originals} do not exist")
    if not protected.exists():
        raise UsageError(f"protected {protected} do not exist")
    if originals.is_file():
        if protected.is_file():
            yield originals, protected, Path(originals.name)
            return
        cand = _find(protected, Path(originals.name))
        yield originals, cand, Path(originals.name)
        return
    skip = protected if protected.is_dir() and protected.resolve() != originals.resolve() else None
    for job in discover([originals], output=skip):
        if job.error:
            continue
        yield job.source, _find(protected, job.relative), job.relative


def _find(root: Path, rel: Path) -> Path | None:
    p = root / rel
    if p.is_file():
        return p
    parent = p.parent
    if parent.is_dir():
        for ext in sorted(IMAGE_EXTENSIONS):
            q = parent / (rel.stem + ext)
            if q.is_file():
                return q
    return None


def _resize_to(px: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(px, (shape[1], shape[0]), interpolation=cv2.INTER_AREA if px.shape[0] > shape[0] else cv2.INTER_CUBIC)


def evaluate(originals: str | Path, protected: str | Path, opts: EvaluateOptions | None = None, **kwargs: Any) -> EvaluateResult:
    """Compare originals with their protected versions; write a JSON report.

    Example:
        >>> # res = anonymize.evaluate("photos", "photos_anonymized", fail_under={"ssim": 0.8})
    """
    opts = opts or EvaluateOptions()
    for k, v in kwargs.items():
        if not hasattr(opts, k):
            raise UsageError(f"unknown option {k!r}")
        setattr(opts, k, v)
    orig_root, prot_root = Path(originals), Path(protected)
    if not orig_root.exists():
        raise UsageError(f"originals {orig_root} do not exist")
    if not prot_root.exists():
        raise UsageError(f"protected {prot_root} do not exist")
    report = _preflight_outputs(opts, prot_root)
    from .runtime_threads import plan_threads, using_plan

    plan = plan_threads(opts.threads)
    with using_plan(plan):
        return _evaluate(orig_root, prot_root, opts, report, plan)


def _evaluate(orig_root: Path, prot_root: Path, opts: EvaluateOptions, report: Path, plan: Any) -> EvaluateResult:
    if opts.face_evaluator is None and opts.faces:
        from .device import resolve_device
        from .faces.evaluator import DEFAULT_RECOGNIZERS, FaceEvaluator

        fe = FaceEvaluator(detector=opts.detector, recognizers=tuple(opts.recognizers or DEFAULT_RECOGNIZERS),
                           device=resolve_device(opts.device), gallery=opts.gallery,
                           white_box_models=attacked_models(prot_root))
        fe.prepare()
        opts.face_evaluator = fe
    run_id = uuid.uuid4().hex[:12]
    t0 = time.perf_counter()
    images: list[dict[str, Any]] = []
    method_privacy = method_privacy_metrics(prot_root)
    for o, p, rel in pair_files(orig_root, prot_root):
        rec: dict[str, Any] = {
            "relative_path": safe_path(rel),
            "original": safe_path(o),
            "protected": safe_path(p),
            "status": "ok",
            "error": None,
            "warnings": [],
            "faces": [],
        }
        if p is None:
            rec.update(status="failed", error={"code": "missing-protected", "message": "no protected file with this relative path"})
            images.append(rec)
            continue
        try:
            a, a_bytes = decode_file(o, rel, max_pixels=opts.max_pixels, max_bytes=opts.max_bytes)
            b, _ = decode_file(p, rel, max_pixels=opts.max_pixels, max_bytes=opts.max_bytes)
        except ImageError as exc:
            rec.update(status="failed", error={"code": exc.code, "message": exc.message})
            images.append(rec)
            continue
        pb = b.pixels
        if pb.shape != a.pixels.shape:
            rec["warnings"].append(f"protected size {pb.shape[1]}x{pb.shape[0]} differs from original {a.width}x{a.height}; resized for comparison")
            pb = _resize_to(pb, a.pixels.shape[:2])
            b.pixels = pb
        rec["ssim"] = ssim(a.pixels, pb)
        rec["psnr"] = _finite(psnr(a.pixels, pb))
        rec["mse"] = mse(a.pixels, pb)
        if opts.face_evaluator is not None:
            try:
                rec.update(opts.face_evaluator.evaluate_pair(a, b, sha256_bytes(a_bytes)))
            except AnonymizeError:
                raise
            except Exception as exc:  # one bad pair must not stop the run
                rec.update(status="failed", error={"code": "evaluate-failed", "message": f"{type(exc).__name__}: {exc}"})
        if rec["relative_path"] in method_privacy:
            rec["method_privacy"] = method_privacy[rec["relative_path"]]
        images.append(rec)
        if opts.progress:
            opts.progress(len(images), None, rec)

    summary = _summarise(images)
    if opts.face_evaluator is not None:
        summary.update(opts.face_evaluator.summary(images))
    gate_results = {}
    for name, thr in opts.fail_under.items():
        key, direction = GATES[name]
        val = summary.get(key)
        ok = val is not None and (val >= thr if direction == "min" else val <= thr)
        gate_results[name] = {"metric": key, "value": val, "threshold": thr, "direction": direction, "passed": bool(ok)}
    summary["gates"] = gate_results
    if opts.size_sweep:
        summary["ope_size_sweep"] = _ope_size_sweep(orig_root, opts)
    failed = summary["failed"] > 0
    if any(not g["passed"] for g in gate_results.values()):
        code = EXIT_GATE_FAILED
    else:
        code = EXIT_SOME_FAILED if failed else EXIT_OK
    summary.update(
        exit_code=code,
        elapsed_s=round(time.perf_counter() - t0, 3),
        ssim_config=SSIM_CONFIG,
        originals=safe_path(orig_root),
        protected=safe_path(prot_root),
        run_id=run_id,
        tool_version=__version__,
        finished=now_iso(),
        threads=plan.to_dict(),
        max_bytes=opts.max_bytes,
    )
    doc = {"schema_version": SCHEMA_VERSION, "kind": "anonymize-evaluation", "summary": summary, "images": images}
    write_json_atomic(report, doc)  # a full disk raises OutputError (exit 2) and leaves no partial file
    if opts.html is not None:
        from .report_html import write_html

        write_html(opts.html, doc)
    return EvaluateResult(summary=summary, images=images, report_path=report, exit_code=code)


def _preflight_outputs(opts: EvaluateOptions, prot_root: Path) -> Path:
    """The report path, after checking its folder (and the HTML's) takes a file: exit 2 before any work."""
    from .io.encode import ensure_writable_dir

    report = opts.report
    if report is None:
        report = (prot_root if prot_root.is_dir() else prot_root.parent) / "anonymize-evaluation.json"
    ensure_writable_dir(report.parent, "--report folder" if opts.report else "report folder")
    if opts.html is not None:
        ensure_writable_dir(Path(opts.html).parent, "--html folder")
    return report


def _ope_size_sweep(orig_root: Path, opts: EvaluateOptions) -> dict[str, Any]:
    """Run the seed-001 optimal-size procedure on (up to N of) the user's originals."""
    from .metrics.ope import size_sweep

    imgs = []
    for job in discover([orig_root]):
        if job.error:
            continue
        try:
            item, _ = decode_file(job.source, job.relative, max_pixels=opts.max_pixels, max_bytes=opts.max_bytes)
        except ImageError:
            continue
        imgs.append(item.pixels)
        if len(imgs) >= opts.size_sweep_max_images:
            break
    if not imgs:
        raise UsageError("--size-sweep: no readable original images")
    res = size_sweep(imgs, sizes=tuple(opts.size_sweep))
    return res.to_dict()


def attacked_models(protected_root: Path) -> set[str]:
    """Recognizers a protect run optimised against, read from its report next to the outputs."""
    folder = protected_root if protected_root.is_dir() else protected_root.parent
    models: set[str] = set()
    for rec in iter_records(folder / "anonymize-report.jsonl"):
        info = rec.get("method_info") or {}
        models.update(str(m) for m in info.get("attacked_models", []) or [])
    return models


PRIVACY_FIELDS = ("icp_before", "icp_after", "ice_before", "ice_after", "ice_after_normalised", "p_target",
                  "hide_ratio", "keep_ratio")


def method_privacy_metrics(protected_root: Path) -> dict[str, dict[str, float]]:
    """The method's own privacy metrics (ap: ICP/ICE of 003, hide/keep ratio of thesis ch. 3) per
    relative path, as the protect run recorded them; empty when the report has none."""
    folder = protected_root if protected_root.is_dir() else protected_root.parent
    out: dict[str, dict[str, float]] = {}
    for rec in iter_records(folder / "anonymize-report.jsonl"):
        info = rec.get("method_info") or {}
        vals = {k: float(info[k]) for k in PRIVACY_FIELDS if isinstance(info.get(k), (int, float))}
        if vals and rec.get("relative_path"):
            out[str(rec["relative_path"])] = vals
    return out


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _mean(vals: list[float | None]) -> float | None:
    xs = [v for v in vals if v is not None]
    return float(np.mean(xs)) if xs else None


def _summarise(images: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in images if r["status"] == "ok"]
    return {
        "command": "evaluate",
        "pairs": len(images),
        "ok": len(ok),
        "failed": len(images) - len(ok),
        "ssim_mean": _mean([r.get("ssim") for r in ok]),
        "psnr_mean": _mean([r.get("psnr") for r in ok]),
        "psnr_identical": sum(1 for r in ok if r.get("psnr") is None),
        "mse_mean": _mean([r.get("mse") for r in ok]),
        **{f"{k}_mean": _mean([r["method_privacy"].get(k) for r in ok if "method_privacy" in r])
           for k in PRIVACY_FIELDS if any(k in r.get("method_privacy", {}) for r in ok)},
    }

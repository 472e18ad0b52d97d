"""``anonymize evaluate ORIGINALS PROTECTED``: measure what protection did.

Ties the parts together, each in its own module: :mod:`.pairs` (which files
belong together), :mod:`.quality` (what protection cost), :mod:`.whitebox`
(what the protect run attacked and measured itself), :mod:`.blackbox`
(re-detection, every recognizer, gallery re-identification, the black-box
summary), :mod:`.transforms` (``--transforms``: the face metrics again after each
everyday transform), :mod:`.attack_itn` (``--attack itn``: the inverse-network
attack), :mod:`.gates` (``--fail-under``, exit 3) and :mod:`.report`.

Example:
    >>> EvaluateOptions().recognizers is None  # every eval_default recognizer whose weights are present
    True
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..errors import EXIT_GATE_FAILED, EXIT_OK, EXIT_SOME_FAILED, AnonymizeError, ImageError, UsageError
from ..io.decode import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, decode_file
from ..metrics.quality import SSIM_CONFIG
from ..records import now_iso, safe_path, sha256_bytes
from . import quality, report, whitebox
from .blackbox import FaceEvaluator
from .attack_itn import AttackOptions, run_attack
from .gates import check_gates, gated_transforms
from .pairs import check_roots, pair_files, resize_to
from .sweep import ope_size_sweep
from .transforms import Transform, parse_transform, parse_transforms, summarise_transform, transformed_pair


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
    detector: str | None = None  # None: the default detector
    recognizers: tuple[str, ...] | None = None  # None: every eval_default recognizer (unavailable ones reported)
    gallery: Path | None = None
    device: str = "auto"
    protect_report: Path | None = None  # the protect report (or records/provenance); None: found next to the outputs
    size_sweep: tuple[int, ...] | None = None  # OPE (seed 001): SDIM-minimising input size over the originals
    size_sweep_max_images: int = 50
    transforms: str | tuple[str, ...] | None = None  # "default", "jpeg:75,blur:1" or names; gated ones are added
    attack: str | None = None  # "itn": the ITN-Attack (seed 002) against this method
    attack_options: AttackOptions | None = None  # None: AttackOptions() defaults
    progress: Callable[[int, int | None, dict[str, Any]], None] | None = None


@dataclass
class EvaluateResult:
    summary: dict[str, Any]
    images: list[dict[str, Any]]
    report_path: Path | None
    exit_code: int


def build_face_evaluator(opts: EvaluateOptions) -> FaceEvaluator:
    """The face-level evaluator for these options, models loaded."""
    from ..device import resolve_device

    fe = FaceEvaluator(detector=opts.detector, recognizers=tuple(opts.recognizers or ()),
                       device=resolve_device(opts.device), gallery=opts.gallery)
    fe.prepare()
    return fe


def evaluate(originals: str | Path, protected: str | Path, opts: EvaluateOptions | None = None, **kwargs: Any) -> EvaluateResult:
    """Compare originals with their protected versions; write a JSON report (and HTML).

    Keyword arguments override fields of ``opts``. Run-level problems raise
    :class:`~anonymize.errors.UsageError`; a pair that cannot be evaluated is recorded
    as failed and the run continues.

    Example:
        >>> import anonymize, tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> anonymize.evaluate(d / "missing", d)
        Traceback (most recent call last):
        ...
        anonymize.errors.UsageError: originals ... do not exist
    """
    opts = opts or EvaluateOptions()
    for k, v in kwargs.items():
        if not hasattr(opts, k):
            raise UsageError(f"unknown option {k!r}")
        setattr(opts, k, v)
    orig_root, prot_root = Path(originals), Path(protected)
    check_roots(orig_root, prot_root)
    transforms = _resolve_transforms(opts)
    if opts.attack not in (None, "itn"):
        raise UsageError(f"--attack must be itn, got {opts.attack!r}")
    attack_opts = opts.attack_options or AttackOptions()
    if opts.attack:
        attack_opts.check()
    report_path = _preflight_outputs(opts, prot_root)
    from ..runtime_threads import plan_threads, using_plan

    plan = plan_threads(opts.threads)
    with using_plan(plan):
        return _evaluate(orig_root, prot_root, opts, report_path, plan, transforms, attack_opts)


def _preflight_outputs(opts: EvaluateOptions, prot_root: Path) -> Path:
    """The report path, after checking its folder (and the HTML's) takes a file: exit 2 before any work."""
    from ..io.encode import ensure_writable_dir

    path = opts.report or report.default_report_path(prot_root)
    ensure_writable_dir(path.parent, "--report folder" if opts.report else "report folder")
    if opts.html is not None:
        ensure_writable_dir(Path(opts.html).parent, "--html folder")
    return path


def _evaluate(orig_root: Path, prot_root: Path, opts: EvaluateOptions, report_path: Path, plan: Any,
              transforms: tuple[Transform, ...], attack_opts: AttackOptions) -> EvaluateResult:
    prov = whitebox.Provenance.load(prot_root, opts.protect_report)
    fe = build_face_evaluator(opts) if opts.faces else None
    run_id = uuid.uuid4().hex[:12]
    t0 = time.perf_counter()
    images: list[dict[str, Any]] = []
    pair_list: list[tuple[Path, Path | None, Path]] = []
    per_transform: dict[str, list[dict[str, Any]]] = {t.name: [] for t in transforms}
    for o, p, rel in pair_files(orig_root, prot_root):
        pair_list.append((o, p, rel))
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
            b, b_bytes = decode_file(p, rel, max_pixels=opts.max_pixels, max_bytes=opts.max_bytes)
        except ImageError as exc:
            rec.update(status="failed", error={"code": exc.code, "message": exc.message})
            images.append(rec)
            continue
        if b.pixels.shape != a.pixels.shape:
            rec["warnings"].append(f"protected size {b.width}x{b.height} differs from original {a.width}x{a.height}; resized for comparison")
            b.pixels = resize_to(b.pixels, a.pixels.shape[:2])
        rec.update(quality.image_quality(a.pixels, b.pixels))
        prov_img = whitebox.image_provenance(prov, p, rec["relative_path"] or "", sha256_bytes(b_bytes))
        privacy = prov_img.pop("method_privacy")
        rec["provenance"] = prov_img
        if fe is not None:
            try:
                attacked = prov_img["attacked_models"]
                rec.update(fe.evaluate_pair(a, b, sha256_bytes(a_bytes), None if attacked is None else set(attacked)))
            except AnonymizeError:
                raise
            except Exception as exc:  # one bad pair must not stop the run
                rec.update(status="failed", error={"code": "evaluate-failed", "message": f"{type(exc).__name__}: {exc}"})
        if privacy:
            rec["method_privacy"] = privacy
        if transforms and rec["status"] == "ok":
            rec["transforms"] = _transformed(transforms, a, b, fe, sha256_bytes(a_bytes), prov_img["attacked_models"],
                                             per_transform)
        images.append(rec)
        if opts.progress:
            opts.progress(len(images), None, rec)

    summary = quality.summarise(images)
    ok = [r for r in images if r["status"] == "ok"]
    for k in whitebox.PRIVACY_FIELDS:
        if any(k in r.get("method_privacy", {}) for r in ok):
            summary[f"{k}_mean"] = quality.mean([r["method_privacy"].get(k) for r in ok if "method_privacy" in r])
    wb = whitebox.summarise(prov, images, fe.names if fe is not None else [])
    if fe is not None:
        summary.update(fe.summary(images, wb["flags"]))
        summary["notes"] = wb["notes"] + summary["notes"]
    else:
        summary["notes"] = []
    summary.update(white_box_known=wb["known"], attacked_models=wb["attacked_models"],
                   images_without_provenance=wb["images_without_provenance"], provenance=wb["provenance"])
    if transforms:
        summary["transforms"] = {
            t.name: summarise_transform(t, per_transform[t.name],
                                        fe.summary(per_transform[t.name], wb["flags"]) if fe is not None else None,
                                        sum(1 for r in per_transform[t.name] if r.get("applied")))
            for t in transforms
        }
        summary["transforms_note"] = ("each transform applied once to each protected image (never on top of another); "
                                      "crop gives the original the same geometry so faces pair by position")
    if opts.attack:
        summary["attack_itn"] = run_attack(pair_list, images, fe, prov, wb["flags"], attack_opts, opts.max_pixels)
    summary["gates"] = check_gates(summary, opts.fail_under)
    if opts.size_sweep:
        summary["ope_size_sweep"] = ope_size_sweep(orig_root, tuple(opts.size_sweep), opts.size_sweep_max_images, opts.max_pixels,
                                                   opts.max_bytes)
    if any(not g["passed"] for g in summary["gates"].values()):
        code = EXIT_GATE_FAILED
    else:
        code = EXIT_SOME_FAILED if summary["failed"] > 0 else EXIT_OK
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
    doc = report.document(summary, images)
    report.write(doc, report_path, opts.html)  # a full disk raises OutputError (exit 2), no partial file
    return EvaluateResult(summary=summary, images=images, report_path=report_path, exit_code=code)


def _resolve_transforms(opts: EvaluateOptions) -> tuple[Transform, ...]:
    """The transforms to evaluate: ``opts.transforms`` plus any a ``name@transform`` gate refers to."""
    spec = opts.transforms
    if isinstance(spec, (tuple, list)):
        spec = ",".join(spec)
    trs = list(parse_transforms(spec))
    for name in gated_transforms(opts.fail_under):
        t = parse_transform(name)
        if t not in trs:
            trs.append(t)
    return tuple(trs)


def _transformed(transforms: tuple[Transform, ...], a: Any, b: Any, fe: FaceEvaluator | None, sha: str,
                 attacked: list[str] | None, per_transform: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Each transform once on the protected pixels; the face metrics again; compact per-image results."""
    out: dict[str, Any] = {}
    for t in transforms:
        ref_px, prot_px = transformed_pair(t, a.pixels, b.pixels)
        r: dict[str, Any] = {"status": "ok", "applied": True, **quality.image_quality(ref_px, prot_px)}
        if fe is not None:
            try:
                r.update(fe.evaluate_pair(replace(a, pixels=ref_px), replace(b, pixels=prot_px), sha,
                                          None if attacked is None else set(attacked)))
            except AnonymizeError:
                raise
            except Exception as exc:  # one bad pair must not stop the run
                r.update(status="failed", error={"code": "evaluate-failed", "message": f"{type(exc).__name__}: {exc}"})
        per_transform[t.name].append(r)
        out[t.name] = {
            "ssim": r.get("ssim"), "psnr": r.get("psnr"), "status": r["status"],
            "faces": [{"detected": f.get("detected_in_protected"),
                       "identity": {n: {"distance": round(i["distance"], 5), "protected": i["protected"]}
                                    for n, i in (f.get("identity") or {}).items()}} for f in r.get("faces", [])],
        }
    return out

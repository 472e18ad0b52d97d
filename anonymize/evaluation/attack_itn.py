"""``evaluate --attack itn``: the ITN-Attack (seed 002) against any method.

Whoever can make (plain, protected) pairs -- anyone, since the tool is public --
can train an inverse network r (a U-Net, sigmoid output, MSE loss) that maps a
protected image back towards its original. This module is that attacker:

1. **Pairs** on images disjoint from the evaluated ones. Default: the originals
   are split deterministically into an attacker half and an evaluated half (by
   top-level folder when they are per-person folders, so the attacker never saw
   the evaluated people; else by file), and the attacker trains on the existing
   protected files of its half. With ``data`` (``--attack-data DIR``) the attacker
   protects those other plain images itself, through the library, with the same
   method and settings as the protect run (for ``ope`` the same key: the worst
   case, a key that leaked or a protector the attacker can query).
2. **Samples**: face crops (each face the detector finds in the original, its box
   enlarged by the default mask scale, the same box in the protected image) or
   whole images, resized to ``size`` x ``size``.
3. **Training** with a budget: ``recipe="fast"`` (CPU default: Adam 2e-3, batch 16,
   width 16, 30 epochs) or ``"paper"`` (the follow-up code's: SGD 0.1, momentum
   0.9, wd 5e-4, x0.2 at 30/60/80% of 200 epochs, batch 128, width 64), joint
   horizontal flips, 10% of the pairs held out, the epoch with the lowest
   validation MSE kept.
4. **Report** on the evaluated half: PSNR/SSIM of the reconstructions against
   the originals (quartiles and Fig. 5 whiskers), next to the no-information
   baselines (the attacker's mean training image, and its per-channel mean
   colour) and the protected crops themselves; and, with faces on, every
   recognizer's SPR on the original vs the *reconstructed* image (reconstructed
   crops pasted back), next to the SPR of the protected image and a resolution
   ceiling (the original crop squeezed through ``size`` px and back: what a perfect
   reconstruction at this size would give).

Verdict (our criterion, spec C.4): robust when the median reconstruction PSNR is
within 2 dB of the mean-image baseline.

Example:
    >>> box_stats([1.0, 2.0, 3.0, 4.0, 100.0])["median"]
    3.0
    >>> AttackBudget().resolved()["optimizer"]
    'adam'
"""
from __future__ import annotations

import copy
import hashlib
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError

ROBUST_MARGIN_DB = 2.0
RECIPES: dict[str, dict[str, Any]] = {
    "fast": {"epochs": 30, "width": 16, "batch": 16, "optimizer": "adam", "lr": 2e-3, "momentum": 0.0,
             "weight_decay": 0.0, "milestones": (0.6, 0.85), "gamma": 0.2},
    "paper": {"epochs": 200, "width": 64, "batch": 128, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9,
              "weight_decay": 5e-4, "milestones": (0.3, 0.6, 0.8), "gamma": 0.2},
}
REGIONS = ("auto", "faces", "image")

Log = Callable[[str], None]


@dataclass(frozen=True)
class AttackBudget:
    """How much the attacker spends; ``None`` fields take the recipe's value."""

    recipe: str = "fast"
    epochs: int | None = None
    width: int | None = None
    batch: int | None = None
    lr: float | None = None
    size: int = 64
    val_fraction: float = 0.1
    seed: int = 0

    def check(self) -> None:
        if self.recipe not in RECIPES:
            raise UsageError(f"--attack-recipe must be one of {', '.join(RECIPES)}, got {self.recipe!r}")
        for k in ("epochs", "width", "batch"):
            v = getattr(self, k)
            if v is not None and v < 1:
                raise UsageError(f"--attack-{k} must be >= 1, got {v}")
        if self.lr is not None and not self.lr > 0:
            raise UsageError("attack lr must be > 0")
        if self.size < 16:
            raise UsageError(f"--attack-size must be >= 16 (the U-Net pools four times), got {self.size}")
        if not 0 <= self.val_fraction < 1:
            raise UsageError("attack val_fraction must be in [0, 1)")

    def resolved(self) -> dict[str, Any]:
        """The full recipe with overrides applied (what the report records)."""
        r = dict(RECIPES[self.recipe])
        for k in ("epochs", "width", "batch", "lr"):
            if getattr(self, k) is not None:
                r[k] = getattr(self, k)
        r.update(recipe=self.recipe, size=self.size, val_fraction=self.val_fraction, seed=self.seed,
                 loss="MSE(sigmoid(r(protected)), plain)", augmentation="joint horizontal flip",
                 selection="lowest validation MSE" if self.val_fraction > 0 else "last epoch")
        r["milestones"] = list(r["milestones"])
        return r


# ----------------------------------------------------------------------------- training core


def train_inverse(protected: Any, plain: Any, budget: AttackBudget | None = None, log: Log = lambda s: None) -> tuple[Any, dict[str, Any]]:
    """Train the inverse U-Net on uint8 pairs ``[N, 3, S, S]`` (torch tensors); returns (net, info)."""
    import torch
    import torch.nn.functional as F

    from ..nets.itn import UNet

    budget = budget or AttackBudget()
    budget.check()
    if protected.shape != plain.shape or protected.ndim != 4 or protected.shape[1] != 3:
        raise ValueError(f"pairs must be two uint8 tensors [N, 3, S, S] of one shape, got {tuple(protected.shape)} "
                         f"and {tuple(plain.shape)}")
    if len(plain) < 2:
        raise UsageError(f"the ITN-Attack needs at least 2 training pairs, got {len(plain)}")
    r = budget.resolved()
    gen = torch.Generator().manual_seed(budget.seed)
    with torch.random.fork_rng():
        torch.manual_seed(budget.seed)
        net = UNet(int(r["width"]))
    n = len(plain)
    order = torch.randperm(n, generator=gen)
    n_val = int(round(n * budget.val_fraction)) if budget.val_fraction > 0 else 0
    n_val = min(n_val, n - 1)
    va, tr = order[:n_val], order[n_val:]
    if r["optimizer"] == "sgd":
        opt: Any = torch.optim.SGD(net.parameters(), lr=r["lr"], momentum=r["momentum"], weight_decay=r["weight_decay"])
    else:
        opt = torch.optim.Adam(net.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
    epochs = int(r["epochs"])
    ms = sorted({max(1, int(round(f * epochs))) for f in r["milestones"]})
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=ms, gamma=r["gamma"])
    best, best_state, best_epoch = math.inf, copy.deepcopy(net.state_dict()), 0
    seen, t0 = 0, time.perf_counter()
    batch = int(r["batch"])
    for ep in range(epochs):
        net.train()
        perm = tr[torch.randperm(len(tr), generator=gen)]
        tot, k = 0.0, 0
        for i in range(0, len(perm), batch):
            idx = perm[i : i + batch]
            if len(idx) < 2 and len(perm) > 1:
                continue  # BatchNorm needs two samples
            xp = protected[idx].float() / 255.0
            xo = plain[idx].float() / 255.0
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xp = torch.where(flip[:, None, None, None], xp.flip(-1), xp)
            xo = torch.where(flip[:, None, None, None], xo.flip(-1), xo)
            loss = F.mse_loss(torch.sigmoid(net(xp)), xo)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
            k += len(idx)
        sched.step()
        seen += k
        if n_val:
            val = _mse(net, protected[va], plain[va])
            if val < best:
                best, best_state, best_epoch = val, copy.deepcopy(net.state_dict()), ep + 1
            log(f"attack epoch {ep + 1}/{epochs}: train MSE {tot / max(k, 1):.5f}, validation MSE {val:.5f}")
        else:
            best_epoch = ep + 1
            log(f"attack epoch {ep + 1}/{epochs}: train MSE {tot / max(k, 1):.5f}")
    if n_val:
        net.load_state_dict(best_state)
    net.eval()
    info = {"train_pairs": len(tr), "validation_pairs": int(n_val), "best_epoch": best_epoch,
            "validation_mse": None if not n_val else round(best, 6), "train_s": round(time.perf_counter() - t0, 2),
            "img_s": round(seen / max(time.perf_counter() - t0, 1e-9), 2)}
    return net, info


def _mse(net: Any, protected: Any, plain: Any) -> float:
    import torch

    with torch.no_grad():
        net.eval()
        tot = 0.0
        for i in range(0, len(plain), 64):
            y = torch.sigmoid(net(protected[i : i + 64].float() / 255.0))
            tot += float(((y - plain[i : i + 64].float() / 255.0) ** 2).mean(dim=(1, 2, 3)).sum())
        return tot / max(len(plain), 1)


def invert(net: Any, protected: Any, batch: int = 64) -> Any:
    """The reconstructions (uint8 ``[N, 3, S, S]``) of uint8 protected samples."""
    import torch

    net.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(protected), batch):
            y = torch.sigmoid(net(protected[i : i + batch].float() / 255.0))
            out.append(torch.round(y.clamp(0, 1) * 255.0).to(torch.uint8))
    return torch.cat(out) if out else protected.clone()


# ----------------------------------------------------------------------------- metrics


def box_stats(values: Iterable[float]) -> dict[str, float | int | None]:
    """Mean, median, quartiles and the Fig. 5 whiskers (extreme data within 1.5 IQR of the box)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    if v.size == 0:
        return {"n": 0, "mean": None, "median": None, "q1": None, "q3": None, "whisker_low": None, "whisker_high": None}
    q1, med, q3 = (float(x) for x in np.percentile(v, [25, 50, 75]))
    iqr = q3 - q1
    lo = v[v >= q1 - 1.5 * iqr].min()
    hi = v[v <= q3 + 1.5 * iqr].max()
    return {"n": int(v.size), "mean": float(v.mean()), "median": med, "q1": q1, "q3": q3,
            "whisker_low": float(lo), "whisker_high": float(hi)}


def sample_metrics(reference: np.ndarray, estimate: np.ndarray) -> tuple[list[float], list[float | None]]:
    """Per-sample PSNR (dB; identical samples capped at 100) and SSIM of uint8 ``[N, S, S, 3]`` stacks."""
    from ..metrics.quality import psnr, ssim

    ps, ss = [], []
    for a, b in zip(reference, estimate):
        p = psnr(a, b)
        ps.append(100.0 if not math.isfinite(p) else p)
        ss.append(ssim(a, b))
    return ps, ss


def metric_block(reference: np.ndarray, estimate: np.ndarray) -> dict[str, Any]:
    ps, ss = sample_metrics(reference, estimate)
    return {"psnr": box_stats(ps), "ssim": box_stats([s for s in ss if s is not None])}


def baselines(train_plain: np.ndarray, eval_plain: np.ndarray) -> dict[str, Any]:
    """No-information reconstructions from the attacker's training originals: their mean image
    (per pixel) and their mean colour (per channel), each scored against the evaluated originals."""
    mean_img = np.clip(np.rint(train_plain.astype(np.float64).mean(0)), 0, 255).astype(np.uint8)
    mean_rgb = np.clip(np.rint(train_plain.reshape(-1, 3).astype(np.float64).mean(0)), 0, 255).astype(np.uint8)
    a = np.broadcast_to(mean_img, eval_plain.shape)
    b = np.broadcast_to(mean_rgb, eval_plain.shape)
    return {"mean_image": metric_block(eval_plain, np.ascontiguousarray(a)),
            "channel_mean": metric_block(eval_plain, np.ascontiguousarray(b))}


def verdict(attack_median: float | None, baseline_median: float | None) -> dict[str, Any]:
    if attack_median is None or baseline_median is None:
        return {"robust": None, "gain_db": None, "criterion": _CRITERION}
    gain = attack_median - baseline_median
    return {"robust": bool(gain <= ROBUST_MARGIN_DB), "gain_db": round(gain, 3), "criterion": _CRITERION}


_CRITERION = (f"robust if the median reconstruction PSNR is at most {ROBUST_MARGIN_DB:g} dB above the mean-image "
              "no-information baseline (our criterion; the paper gives no number, spec C.4)")


# ----------------------------------------------------------------------------- samples


def split_attacker(relatives: Sequence[Path]) -> tuple[set[str], str]:
    """Deterministic attacker / evaluated split of relative paths: returns the attacker's set and how.

    Per-person folders (two or more top-level folders) are split by folder, so the
    attacker never trains on an evaluated person; otherwise by file. Groups are
    ordered by the sha256 of their name and alternate, which is stable when files
    are added elsewhere.
    """
    rels = [Path(r).as_posix() for r in relatives]
    tops = {r.split("/", 1)[0] for r in rels if "/" in r}
    by_folder = len(tops) >= 2 and all("/" in r for r in rels)
    key = (lambda r: r.split("/", 1)[0]) if by_folder else (lambda r: r)
    groups = sorted({key(r) for r in rels}, key=lambda g: hashlib.sha256(g.encode("utf-8", "surrogateescape")).hexdigest())
    attacker_groups = set(groups[0::2])
    how = ("split of the originals by top-level folder (person): alternate folders in sha256 order train the attacker, "
           "the others are evaluated" if by_folder else
           "split of the originals by file: alternate files in sha256 order train the attacker, the others are evaluated")
    return {r for r in rels if key(r) in attacker_groups}, how


@dataclass
class Sample:
    """One attack sample: a crop of an original and of its protected image, and where it came from."""

    plain: np.ndarray  # uint8 [S, S, 3]
    protected: np.ndarray
    box: tuple[int, int, int, int]
    relative: str


def crop_boxes(width: int, height: int, faces: Sequence[Any], region: str, scale: float) -> list[tuple[int, int, int, int]]:
    if region == "image":
        return [(0, 0, width, height)]
    boxes = [f.scaled_box(scale, width, height) for f in faces]
    return [b for b in boxes if b[2] - b[0] >= 4 and b[3] - b[1] >= 4]


def cut(px: np.ndarray, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    import cv2

    x0, y0, x1, y1 = box
    c = px[y0:y1, x0:x1]
    interp = cv2.INTER_AREA if c.shape[0] > size or c.shape[1] > size else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(c), (size, size), interpolation=interp)


def paste(px: np.ndarray, crops: Sequence[np.ndarray], boxes: Sequence[tuple[int, int, int, int]]) -> np.ndarray:
    """``px`` with each crop resized back into its box (later boxes win where they overlap)."""
    import cv2

    out = px.copy()
    for c, (x0, y0, x1, y1) in zip(crops, boxes):
        w, h = x1 - x0, y1 - y0
        out[y0:y1, x0:x1] = cv2.resize(c, (w, h), interpolation=cv2.INTER_CUBIC if w > c.shape[1] else cv2.INTER_AREA)
    return out


def stack(samples: Sequence[Sample], which: str) -> Any:
    import torch

    arr = np.stack([getattr(s, which) for s in samples]) if samples else np.zeros((0, 1, 1, 3), np.uint8)
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).contiguous()


def to_hwc(t: Any) -> np.ndarray:
    return t.permute(0, 2, 3, 1).contiguous().numpy()


# ----------------------------------------------------------------------------- the attack in evaluate


@dataclass
class AttackOptions:
    """``evaluate --attack itn`` settings."""

    data: Path | None = None  # other plain images the attacker protects itself; None: split the originals
    method: str | None = None  # None: the protect run's method (provenance)
    params: dict[str, Any] | None = None  # None: the protect run's params (with ``method`` from provenance)
    region: str = "auto"  # crops: faces | image; auto: what the protect run did (faces when unknown)
    mask_scale: float | None = None  # crop box scale; None: the default mask scale
    budget: AttackBudget = field(default_factory=AttackBudget)
    max_pairs: int | None = None  # cap on attacker images (deterministic subset)
    log: Log | None = None

    def check(self) -> None:
        self.budget.check()
        if self.region not in REGIONS:
            raise UsageError(f"--attack-region must be one of {', '.join(REGIONS)}, got {self.region!r}")
        if self.data is not None and not Path(self.data).is_dir():
            raise UsageError(f"--attack-data {self.data} is not a folder of plain images")
        if self.data is None and (self.method is not None or self.params is not None):
            raise UsageError("--attack-method/--attack-param apply with --attack-data (without it the attacker uses "
                             "the protect run's own outputs)")
        if self.max_pairs is not None and self.max_pairs < 2:
            raise UsageError("--attack-max-images must be >= 2")


def _decode_pair(o: Path, p: Path, rel: Path, max_pixels: int) -> tuple[Any, Any]:
    from dataclasses import replace

    from ..io.decode import decode_file
    from .pairs import resize_to

    a, _ = decode_file(o, rel, max_pixels=max_pixels)
    b, _ = decode_file(p, rel, max_pixels=max_pixels)
    if b.pixels.shape != a.pixels.shape:
        b = replace(b, pixels=resize_to(b.pixels, a.pixels.shape[:2]))
    return a, b


def _protect_run_region(prov: Any) -> str | None:
    """The region the protect run used, as its records say (None when they do not)."""
    for rec in list(prov.by_sha.values()) + list(prov.by_path.values()):
        r = (rec.get("method_info") or {}).get("region")
        if r in ("faces", "image"):
            return str(r)
    return None


def _attacker_method(opts: AttackOptions, prov: Any) -> tuple[str, dict[str, Any], str]:
    """Method and params the attacker protects its own images with, and where they came from."""
    runs = [r for r in prov.sources.runs if r.get("method")]
    methods = sorted({str(r["method"]) for r in runs})
    if opts.method:
        if opts.params is not None:
            return opts.method, dict(opts.params), "--attack-method/--attack-param"
        same = [r for r in runs if r["method"] == opts.method]
        return opts.method, dict(same[-1].get("params") or {}) if same else {}, \
            "--attack-method, params of the protect run" if same else "--attack-method, default params"
    if len(methods) != 1:
        why = "no protect run is recorded" if not methods else f"the protect runs used {', '.join(methods)}"
        raise UsageError(f"--attack-data: cannot tell which method to attack ({why}); pass --attack-method NAME "
                         "(and --attack-param KEY=VALUE as in the protect run)")
    run = [r for r in runs if r["method"] == methods[0]][-1]
    params = dict(run.get("params") or {}) if opts.params is None else dict(opts.params)
    return methods[0], params, "the protect run's provenance"


def _make_attacker_pairs(opts: AttackOptions, prov: Any, region: str, tmp: Path, log: Log) -> tuple[list[tuple[Path, Path | None, Path]], dict[str, Any]]:
    from ..pipeline import ProtectOptions
    from ..pipeline import protect as run_protect
    from .pairs import pair_files

    assert opts.data is not None
    data = Path(opts.data)
    method, params, source = _attacker_method(opts, prov)
    log(f"attacker: protecting {data} with --method {method} ({source}), region {region}")
    res = run_protect([data], ProtectOptions(method=method, params=params, output=tmp, region=region,
                                                        workers=1, count_first=False))
    pairs: list[tuple[Path, Path | None, Path]] = [(o, p, r) for o, p, r in pair_files(data, tmp) if p is not None]
    info = {"method": method, "params": {k: v for k, v in params.items()}, "params_source": source,
            "protected_ok": res.summary.ok, "protected_failed": res.summary.failed,
            "protected_not_protected": res.summary.not_protected}
    if method == "ope":
        info["key_note"] = ("the attacker protected its images with the same OPE key as the protect run (same key file "
                            "or default key): the worst case -- a leaked key or a protector the attacker can query")
    return pairs, info


def run_attack(pairs: Sequence[tuple[Path, Path | None, Path]], images: list[dict[str, Any]], fe: Any, prov: Any,
               flags: dict[str, Any], opts: AttackOptions, max_pixels: int) -> dict[str, Any]:
    """The ITN-Attack inside ``evaluate``; returns the report block and marks each image record's role."""
    import torch

    from ..types import DEFAULT_MASK_SCALE

    opts.check()
    log = opts.log or (lambda s: None)
    t0 = time.perf_counter()
    budget = opts.budget
    size = budget.size
    scale = opts.mask_scale or DEFAULT_MASK_SCALE
    run_region = _protect_run_region(prov)
    region = opts.region if opts.region != "auto" else (run_region or "faces")
    notes: list[str] = []
    if opts.region == "auto":
        notes.append(f"crops: {region} ({'as the protect records say' if run_region else 'protect region unknown; faces assumed'})")
    detector = fe._det if fe is not None else None
    if region == "faces" and detector is None:
        from ..device import resolve_device
        from ..faces.detect import get_detector, resolve_detector

        detector = get_detector(resolve_detector(None), device=resolve_device("auto"))
    by_rel = {r["relative_path"]: r for r in images}
    usable: list[tuple[Path, Path | None, Path]] = [(o, p, rel) for o, p, rel in pairs if p is not None and (by_rel.get(Path(rel).as_posix()) or {}).get("status") == "ok"]
    tmp_ctx = tempfile.TemporaryDirectory(prefix="anonymize-itn-attack-")
    try:
        if opts.data is None:
            attacker_rels, how = split_attacker([rel for _, _, rel in usable])
            train_pairs = [t for t in usable if Path(t[2]).as_posix() in attacker_rels]
            eval_pairs = [t for t in usable if Path(t[2]).as_posix() not in attacker_rels]
            source: dict[str, Any] = {"kind": "split", "how": how, "note": "the attacker trains on the existing "
                                      "protected files of its half (pairs made by the same protect run)"}
        else:
            train_pairs, source = _make_attacker_pairs(opts, prov, region, Path(tmp_ctx.name), log)
            source = {"kind": "attack-data", "data": str(opts.data), **source}
            eval_pairs = list(usable)
        if opts.max_pairs is not None and len(train_pairs) > opts.max_pairs:
            keyed = sorted(train_pairs, key=lambda t: hashlib.sha256(Path(t[2]).as_posix().encode("utf-8", "surrogateescape")).hexdigest())
            train_pairs = keyed[: opts.max_pairs]
        for o, p, rel in eval_pairs:
            by_rel.get(Path(rel).as_posix(), {})["attack_role"] = "evaluated"
        if opts.data is None:
            for o, p, rel in train_pairs:
                by_rel.get(Path(rel).as_posix(), {})["attack_role"] = "attacker"

        def samples_of(triples: Sequence[tuple[Path, Path | None, Path]]) -> tuple[list[Sample], list[tuple[Any, Any, list]], int]:
            out, kept, skipped = [], [], 0
            assert region == "image" or detector is not None
            for o, p, rel in triples:
                try:
                    a, b = _decode_pair(o, p, rel, max_pixels)  # type: ignore[arg-type]
                except Exception:
                    skipped += 1
                    continue
                faces = detector([a.pixels])[0] if detector is not None and region == "faces" else []
                boxes = crop_boxes(a.width, a.height, faces, region, scale)
                for bx in boxes:
                    out.append(Sample(cut(a.pixels, bx, size), cut(b.pixels, bx, size), bx, Path(rel).as_posix()))
                kept.append((a, b, boxes))
            return out, kept, skipped

        log(f"attacker: {len(train_pairs)} training images, {len(eval_pairs)} evaluated images ({region} crops at {size} px)")
        train_s, _, train_skipped = samples_of(train_pairs)
        eval_s, eval_items, _ = samples_of(eval_pairs)
    finally:
        tmp_ctx.cleanup()
    if len(train_s) < 2 or not eval_s:
        raise UsageError(f"--attack itn: too few samples ({len(train_s)} attacker {region} crops, {len(eval_s)} evaluated); "
                         "evaluate more images, give --attack-data, or use --attack-region image")
    torch.manual_seed(budget.seed)
    net, train_info = train_inverse(stack(train_s, "protected"), stack(train_s, "plain"), budget, log=log)
    recon = to_hwc(invert(net, stack(eval_s, "protected")))
    plain = np.stack([s.plain for s in eval_s])
    prot = np.stack([s.protected for s in eval_s])
    attack = metric_block(plain, recon)
    base = baselines(np.stack([s.plain for s in train_s]), plain)
    protected_block = metric_block(plain, prot)
    v = verdict(attack["psnr"]["median"], base["mean_image"]["psnr"]["median"])
    pm, bm = protected_block["psnr"]["median"], base["mean_image"]["psnr"]["median"]
    if pm is not None and bm is not None and pm > bm + ROBUST_MARGIN_DB:
        notes.append("the protected crops themselves are closer to the originals than the no-information baseline: this "
                     "method does not hide visual content, so read the re-identification after inversion, not the PSNR")
    # per-sample numbers into the evaluated image records
    ps, ss = sample_metrics(plain, recon)
    per: dict[str, list[tuple[float, float | None]]] = {}
    for s, p_, s_ in zip(eval_s, ps, ss):
        per.setdefault(s.relative, []).append((p_, s_))
    for rel_s, vals in per.items():
        rec = by_rel.get(rel_s)
        if rec is not None:
            rec["attack_itn"] = {"psnr": [round(x, 3) for x, _ in vals], "ssim": [None if y is None else round(y, 5) for _, y in vals]}
    out: dict[str, Any] = {
        "attack": "itn",
        "region": region,
        "crop_scale": scale if region == "faces" else None,
        "attacker_data": source,
        "train_images": len(train_pairs) - train_skipped,
        "train_samples": len(train_s),
        "evaluated_images": len(eval_items),
        "evaluated_samples": len(eval_s),
        "budget": budget.resolved(),
        "training": train_info,
        "reconstruction": attack,
        "baseline": base,
        "protected": protected_block,
        "verdict": v,
    }
    if fe is not None:
        out["identity"] = _identity_after(fe, flags, eval_items, eval_s, recon, size, region, by_rel)
    notes.append(f"budget: {budget.recipe} recipe ({out['budget']['epochs']} epochs, width {out['budget']['width']}, "
                 f"{size} px); a stronger attacker (--attack-recipe paper, more data) may do better: these are lower "
                 "bounds on what inversion recovers")
    out["notes"] = notes
    out["elapsed_s"] = round(time.perf_counter() - t0, 2)
    return out


def _identity_after(fe: Any, flags: dict[str, Any], eval_items: list[tuple[Any, Any, list]], eval_s: list[Sample],
                    recon: np.ndarray, size: int, region: str, by_rel: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Recognizers on the evaluated images: protected (before), reconstructed (after), resolution ceiling."""
    from dataclasses import replace

    k = 0
    after: list[dict[str, Any]] = []
    ceiling: list[dict[str, Any]] = []
    for a, b, boxes in eval_items:
        n = len(boxes)
        crops = [recon[k + i] for i in range(n)]
        round_trip = [cut(a.pixels, bx, size) for bx in boxes]
        k += n
        rec_img = replace(b, pixels=paste(b.pixels, crops, boxes))
        ceil_img = replace(b, pixels=paste(b.pixels, round_trip, boxes))
        for target, img in ((after, rec_img), (ceiling, ceil_img)):
            try:
                target.append({"status": "ok", **fe.evaluate_pair(a, img)})
            except Exception as exc:  # one bad pair must not stop the attack report
                target.append({"status": "failed", "error": {"code": "evaluate-failed", "message": str(exc)}})
    evaluated = {Path(a.relative).as_posix() for a, _, _ in eval_items}
    before = [r for rel, r in by_rel.items() if rel in evaluated]

    def view(recs: list[dict[str, Any]]) -> dict[str, Any]:
        s = fe.summary(recs, flags)
        return {"faces": s["faces"], "sdr": s["sdr"], "undetected": s["undetected"], "spr": s["spr"],
                "spr_recognizer": s["spr_recognizer"],
                "black_box": {k2: s["black_box"].get(k2) for k2 in ("spr_min", "spr_min_recognizer", "spr_mean",
                                                                    "spr_aligned_min")},
                "recognizers": {n: {k2: r.get(k2) for k2 in ("spr", "spr_aligned", "distance_mean", "white_box")}
                                for n, r in s["recognizers"].items()}}

    return {"before": view(before), "after_inversion": view(after), "resolution_ceiling": view(ceiling),
            "note": "SPR of the evaluated images: protected as published (before), with the attack's reconstructions "
                    "pasted back (after_inversion), and with the original crops squeezed through the attack resolution "
                    "(resolution_ceiling: the best a perfect reconstruction at this size could do). Lower SPR after "
                    "inversion = re-identified after inversion. The attacker knows where each face is, so "
                    "spr_aligned (SPR if located) is the re-identification rate that matters; spr also counts "
                    "faces the detector misses as not protected"}

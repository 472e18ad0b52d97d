"""Train seed 002's image transformation network h (``protect --method itn``) on a labelled folder.

Ito, Kinoshita, Kiya, *Image Transformation Network for Privacy-Preserving Deep
Neural Networks and Its Security Evaluation*: a U-Net h turns a plain image x
into x_hat = sigmoid(h(x)) that a service classifier psi still classifies while
its features are pushed away from x's:

    L_trans = CE(psi(norm(x_hat)), y) - alpha * L_feat(x, x_hat)         (Eq. 4)
    L_feat  = mean((phi(x_hat) - phi(x))^2) / E                           (Eq. 6)

Two stages, as in the authors' code (spec C.2.2): psi (ResNet-20) trained on plain
images, then frozen; h trained with L_trans. Both with the paper's recipe scaled to
the epoch budget: SGD (lr 0.1, momentum 0.9, weight decay 5e-4), lr x0.2 at 30%,
60% and 80% of the epochs (60/120/160 of 200), random crop (padding size/8) + flip,
and the epoch with the lowest validation loss kept (for h that is L_trans).

phi, the feature network (the paper: ImageNet VGG16 up to relu2_2, not available
offline), is one of:

- ``stlpips-vgg`` (default): VGG16 up to relu2_2 with the weights of ST-LPIPS's
  shift-tolerant VGG (``fetch-weights stlpips-vgg``, or ``--features-file`` pointing
  at ``vgg_shift_tolerant.pth`` from the ``stlpips-pytorch==0.0.2`` wheel). A fair
  stand-in: the same layers and input normalisation as the paper's phi, with
  weights learned on natural images for perceptual similarity (the purpose of
  Johnson et al.'s loss the paper cites). Differences: a blur before the stride-2
  pooling (anti-aliasing; relu2_2 is 17x17 at 32 px, not 16x16) and a far smaller
  activation scale than ImageNet VGG16.
- ``random-vgg``: the plain VGG16 layout with frozen, seeded random weights (spec
  C.5.1's weak fallback; for tests and when nothing else is available).

``feat_norm="energy"`` (default) divides L_feat by E, the mean squared activation
of phi on the plain training images, so alpha is dimensionless and does not depend
on phi's activation scale; ``"none"`` is Eq. 6 verbatim (E = 1). Either way the
paper's alpha values do not carry over exactly (its E for ImageNet VGG16 is not
known offline); the weights file records E and the choice.

Outputs are quantised to uint8 before psi classifies them and before any metric
(spec C.5.7: clients send image files).

Example:
    >>> ITNTrainConfig(data="cifar").features
    'stlpips-vgg'
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import MethodUnavailable, UsageError, WeightsMissing
from ..nets.itn import ResNet20, UNet, VGGRelu22, imagenet_norm
from .dpimage_xai import augment, load_dataset, load_tagged_weights, save_weights, stratified_split

FORMAT = "anonymize-itn"
FORMAT_VERSION = 1
STLPIPS_VGG_NAME = "stlpips-vgg"
STLPIPS_VGG_SHA256 = "44597da68f49c1837c100ff52299050f274d102eb102e5837178c79be6f0e250"
STLPIPS_VGG_MEMBER = "stlpips_pytorch/weights/vST0.0/vgg_shift_tolerant.pth"
FEATURES = ("stlpips-vgg", "random-vgg")
FEATURE_NOTES = {
    "stlpips-vgg": "VGG16 conv1_1..relu2_2 with ST-LPIPS's shift-tolerant VGG weights (stlpips-pytorch 0.0.2, "
    "BSD-2-Clause): the paper's layer and input normalisation, weights learned on natural images for perceptual "
    "similarity; stands in for ImageNet VGG16 relu2_2, which is not available offline. Anti-aliased pooling "
    "(17x17 map at 32 px) and a much smaller activation scale than ImageNet VGG16",
    "random-vgg": "VGG16 conv1_1..relu2_2 with frozen seeded random weights (spec C.5.1 fallback): weak perceptual "
    "features, not the paper's",
}
GUARANTEE_NOTE = ("h is public and deterministic: anyone can make (plain, protected) pairs and train an inverse "
                  "network (ITN-Attack); measure it with `anonymize evaluate --attack itn`. No formal guarantee")


@dataclass
class ITNTrainConfig:
    """Every setting of a training run (stored in the weights file)."""

    data: str
    size: int = 32
    alpha: float = 0.005
    features: str = "stlpips-vgg"
    features_file: str | None = None
    feat_norm: str = "energy"  # energy | none
    width: int = 16  # U-Net base width; the paper's network is 64
    epochs_service: int = 15
    epochs_itn: int = 10
    batch: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: tuple[float, ...] = (0.3, 0.6, 0.8)  # fractions of the epochs (paper: 60/120/160 of 200)
    gamma: float = 0.2
    val_fraction: float = 0.1  # of the training part: model selection
    test_fraction: float = 0.2  # held out: every reported metric
    limit: int | None = None
    seed: int = 0
    augment: bool = True
    service_from: str | None = None  # reuse psi from an earlier ITN weights file (same data and split)

    def check(self) -> None:
        """Raise UsageError on an impossible setting (before any work starts)."""
        if self.features not in FEATURES:
            raise UsageError(f"--features must be one of {', '.join(FEATURES)}, got {self.features!r}")
        if self.features_file and self.features != "stlpips-vgg":
            raise UsageError("--features-file applies to --features stlpips-vgg only")
        if self.feat_norm not in ("energy", "none"):
            raise UsageError(f"--feat-norm must be energy or none, got {self.feat_norm!r}")
        if self.size < 16:
            raise UsageError("--size must be >= 16 (the U-Net pools four times)")
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise UsageError(f"--alpha must be a finite number >= 0, got {self.alpha}")
        if self.width < 1 or self.batch < 1:
            raise UsageError("--width and --batch must be >= 1")
        if self.epochs_itn < 1 or self.epochs_service < 0:
            raise UsageError("--epochs-itn must be >= 1 and --epochs-service >= 0")
        if self.epochs_service == 0 and not self.service_from:
            raise UsageError("--epochs-service 0 needs --service-from FILE")
        for k in ("val_fraction", "test_fraction"):
            if not 0 < getattr(self, k) < 1:
                raise UsageError(f"--{k.replace('_', '-')} must be in (0, 1)")
        if not self.lr > 0 or not 0 <= self.momentum < 1 or self.weight_decay < 0 or not 0 < self.gamma <= 1:
            raise UsageError("--lr must be > 0, momentum in [0, 1), weight decay >= 0, gamma in (0, 1]")


Log = Callable[[str], None]


# ----------------------------------------------------------------------------- phi


def load_features(name: str, features_file: str | None = None, seed: int = 0) -> tuple[VGGRelu22, dict[str, Any]]:
    """The frozen feature network phi and its record (name, file sha256, verified, what it is)."""
    if name == "random-vgg":
        return VGGRelu22.random(seed), {"name": name, "layer": "relu2_2", "seed": seed, "sha256": None,
                                        "verified": None, "note": FEATURE_NOTES[name]}
    if name != "stlpips-vgg":
        raise UsageError(f"unknown feature network {name!r}; choose from {', '.join(FEATURES)}")
    if features_file:
        path = Path(features_file)
        if not path.is_file():
            raise UsageError(f"--features-file {path} does not exist")
    else:
        from .. import weights as W

        alt = (f"pass --features-file PATH to {Path(STLPIPS_VGG_MEMBER).name} (in the stlpips-pytorch 0.0.2 wheel: "
               f"{STLPIPS_VGG_MEMBER}), or train with --features random-vgg (weak)")
        try:
            path = W.weights_path(STLPIPS_VGG_NAME)
        except W.WeightsCorrupt:
            raise
        except WeightsMissing:
            raise WeightsMissing([STLPIPS_VGG_NAME], f"the ITN feature loss (or {alt})") from None
        except UsageError as exc:  # this manifest has no such entry
            raise MethodUnavailable(f"the ST-LPIPS VGG weights are not available here ({exc}); "
                                    f"run `anonymize fetch-weights {STLPIPS_VGG_NAME}` or {alt}") from None
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        phi = VGGRelu22.from_stlpips(state)
    except (ValueError, RuntimeError, OSError, EOFError) as exc:  # torch.load raises several kinds
        raise UsageError(f"{path} is not an ST-LPIPS VGG weights file ({exc})") from None
    except Exception as exc:  # unpickling errors of a foreign file
        raise UsageError(f"{path} is not an ST-LPIPS VGG weights file ({type(exc).__name__})") from None
    return phi, {"name": name, "layer": "relu2_2", "file": path.name, "sha256": sha,
                 "verified": sha == STLPIPS_VGG_SHA256, "note": FEATURE_NOTES[name]}


@torch.no_grad()
def feature_energy(phi: VGGRelu22, x_uint8: torch.Tensor, batch: int = 256) -> float:
    """Mean squared activation of phi over plain images (the ``energy`` normaliser E)."""
    tot, n = 0.0, 0
    for i in range(0, len(x_uint8), batch):
        f = phi(x_uint8[i : i + batch].float() / 255.0)
        tot += float(f.pow(2).sum())
        n += f.numel()
    return tot / max(n, 1)


# ----------------------------------------------------------------------------- helpers


def to01(x_uint8: torch.Tensor) -> torch.Tensor:
    return x_uint8.float() / 255.0


def quantise(x01: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> uint8 (round half to even, as torch.round)."""
    return torch.round(x01.clamp(0, 1) * 255.0).to(torch.uint8)


def _augment01(x01: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return (augment(x01 * 2.0 - 1.0, gen) + 1.0) / 2.0


def _sgd(params: Any, cfg: ITNTrainConfig, epochs: int) -> tuple[torch.optim.Optimizer, Any]:
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    ms = sorted({max(1, int(round(f * epochs))) for f in cfg.milestones if 0 < f < 1})
    return opt, torch.optim.lr_scheduler.MultiStepLR(opt, milestones=ms, gamma=cfg.gamma)


def _batches(n: int, batch: int, gen: torch.Generator):
    order = torch.randperm(n, generator=gen)
    for i in range(0, n, batch):
        yield order[i : i + batch]


@torch.no_grad()
def transform(unet: UNet, x_uint8: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """h on uint8 images -> uint8 protected images (sigmoid, quantised)."""
    unet.eval()
    out = []
    for i in range(0, len(x_uint8), batch):
        out.append(quantise(torch.sigmoid(unet(to01(x_uint8[i : i + batch])))))
    return torch.cat(out) if out else x_uint8.clone()


@torch.no_grad()
def accuracy(psi: ResNet20, x_uint8: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    psi.eval()
    correct = 0
    for i in range(0, len(x_uint8), batch):
        correct += int((psi(imagenet_norm(to01(x_uint8[i : i + batch]))).argmax(1) == y[i : i + batch]).sum())
    return correct / max(len(x_uint8), 1)


# ----------------------------------------------------------------------------- stages


def train_service(cfg: ITNTrainConfig, classes: int, xtr: torch.Tensor, ytr: torch.Tensor, xva: torch.Tensor,
                  yva: torch.Tensor, gen: torch.Generator, log: Log) -> tuple[ResNet20, dict[str, Any]]:
    """psi on plain images (CE, the SGD recipe), the epoch with the lowest validation CE kept."""
    psi = ResNet20(classes)
    opt, sched = _sgd(psi.parameters(), cfg, cfg.epochs_service)
    best, best_state, best_epoch = math.inf, copy.deepcopy(psi.state_dict()), 0
    seen, t0 = 0, time.perf_counter()
    for ep in range(cfg.epochs_service):
        psi.train()
        tot, n = 0.0, 0
        for idx in _batches(len(xtr), cfg.batch, gen):
            xb = to01(xtr[idx])
            if cfg.augment:
                xb = _augment01(xb, gen)
            loss = F.cross_entropy(psi(imagenet_norm(xb)), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
            n += len(idx)
        sched.step()
        seen += n
        val = _val_ce(psi, xva, yva)
        if val < best:
            best, best_state, best_epoch = val, copy.deepcopy(psi.state_dict()), ep + 1
        log(f"service epoch {ep + 1}/{cfg.epochs_service}: loss {tot / max(n, 1):.4f}, val CE {val:.4f}, "
            f"val acc {accuracy(psi, xva, yva):.3f}")
    psi.load_state_dict(best_state)
    psi.eval()
    return psi, {"best_epoch": best_epoch, "val_ce": round(best, 5),
                 "img_s": round(seen / max(time.perf_counter() - t0, 1e-9), 2)}


@torch.no_grad()
def _val_ce(psi: ResNet20, x: torch.Tensor, y: torch.Tensor) -> float:
    psi.eval()
    tot = 0.0
    for i in range(0, len(x), 256):
        tot += float(F.cross_entropy(psi(imagenet_norm(to01(x[i : i + 256]))), y[i : i + 256], reduction="sum"))
    return tot / max(len(x), 1)


def itn_loss(unet: UNet, psi: ResNet20, phi: VGGRelu22, x01: torch.Tensor, y: torch.Tensor, alpha: float,
             energy: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L_trans, L_class, L_feat) of one batch; L_feat already divided by ``energy``."""
    x_hat = torch.sigmoid(unet(x01))
    l_class = F.cross_entropy(psi(imagenet_norm(x_hat)), y)
    with torch.no_grad():
        f_plain = phi(x01)
    l_feat = (phi(x_hat) - f_plain).pow(2).mean() / energy
    return l_class - alpha * l_feat, l_class, l_feat


@torch.no_grad()
def _val_itn(unet: UNet, psi: ResNet20, phi: VGGRelu22, x: torch.Tensor, y: torch.Tensor, alpha: float,
             energy: float) -> tuple[float, float, float]:
    unet.eval()
    t = c = f = 0.0
    for i in range(0, len(x), 256):
        lt, lc, lf = itn_loss(unet, psi, phi, to01(x[i : i + 256]), y[i : i + 256], alpha, energy)
        k = len(x[i : i + 256])
        t, c, f = t + float(lt) * k, c + float(lc) * k, f + float(lf) * k
    n = max(len(x), 1)
    return t / n, c / n, f / n


def train_transform(cfg: ITNTrainConfig, psi: ResNet20, phi: VGGRelu22, energy: float, xtr: torch.Tensor,
                    ytr: torch.Tensor, xva: torch.Tensor, yva: torch.Tensor, gen: torch.Generator,
                    log: Log) -> tuple[UNet, dict[str, Any]]:
    """h with L_trans (psi and phi frozen), the epoch with the lowest validation L_trans kept."""
    psi.eval()
    psi.requires_grad_(False)
    unet = UNet(cfg.width)
    opt, sched = _sgd(unet.parameters(), cfg, cfg.epochs_itn)
    best, best_state, best_epoch = math.inf, copy.deepcopy(unet.state_dict()), 0
    seen, t0 = 0, time.perf_counter()
    history = []
    for ep in range(cfg.epochs_itn):
        unet.train()
        sums = [0.0, 0.0, 0.0]
        n = 0
        for idx in _batches(len(xtr), cfg.batch, gen):
            xb = to01(xtr[idx])
            if cfg.augment:
                xb = _augment01(xb, gen)
            lt, lc, lf = itn_loss(unet, psi, phi, xb, ytr[idx], cfg.alpha, energy)
            opt.zero_grad(set_to_none=True)
            lt.backward()
            opt.step()
            for j, v in enumerate((lt, lc, lf)):
                sums[j] += float(v.detach()) * len(idx)
            n += len(idx)
        sched.step()
        seen += n
        vt, vc, vf = _val_itn(unet, psi, phi, xva, yva, cfg.alpha, energy)
        vacc = accuracy(psi, transform(unet, xva), yva)
        history.append({"epoch": ep + 1, "val_l_trans": round(vt, 5), "val_l_class": round(vc, 5),
                        "val_l_feat": round(vf, 5), "val_accuracy": round(vacc, 4)})
        if vt < best:
            best, best_state, best_epoch = vt, copy.deepcopy(unet.state_dict()), ep + 1
        log(f"itn epoch {ep + 1}/{cfg.epochs_itn}: L_trans {sums[0] / n:.4f} (CE {sums[1] / n:.4f}, "
            f"L_feat {sums[2] / n:.4f}); val L_trans {vt:.4f}, val acc on h(x) {vacc:.3f}")
    unet.load_state_dict(best_state)
    unet.eval()
    return unet, {"best_epoch": best_epoch, "val_l_trans": round(best, 5), "history": history,
                  "img_s": round(seen / max(time.perf_counter() - t0, 1e-9), 2)}


# ----------------------------------------------------------------------------- weights file


def load_weights(path: str | Path) -> dict[str, Any]:
    """Read and check a weights file written by :func:`train` (tensors and JSON text only)."""
    return load_tagged_weights(path, FORMAT, FORMAT_VERSION, "itn", "train itn",
                               {k: "{}" for k in ("config", "metrics", "classes", "features", "data")})


def build_unet(meta: dict[str, Any]) -> UNet:
    u = UNet(int(meta["config"]["width"]))
    u.load_state_dict(meta["unet"], strict=True)
    return u.eval()


def build_service(meta: dict[str, Any]) -> ResNet20:
    m = ResNet20(len(meta["classes"]))
    m.load_state_dict(meta["service"], strict=True)
    return m.eval()


# ----------------------------------------------------------------------------- driver


def split(y: torch.Tensor, cfg: ITNTrainConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified train / validation (model selection) / test (reporting) indices."""
    rest, test = stratified_split(y, cfg.test_fraction, cfg.seed)
    tr_i, va_i = stratified_split(y[rest], cfg.val_fraction, cfg.seed + 100)
    return rest[tr_i], rest[va_i], test


def train(cfg: ITNTrainConfig, out: str | Path, *, log: Log = lambda s: None) -> dict[str, Any]:
    """Train psi (or reuse it) and h, measure on the test split, write the weights file atomically."""
    from ..metrics.quality import psnr, ssim

    cfg.check()
    phi, feat_rec = load_features(cfg.features, cfg.features_file, cfg.seed)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x, y, classes = load_dataset(cfg.data, cfg.size, limit=cfg.limit, seed=cfg.seed)
    tr, va, te = split(y, cfg)
    if len(va) == 0 or len(te) == 0:
        raise UsageError("too few images for validation and test splits; add images or raise the fractions")
    xtr, ytr, xva, yva, xte, yte = x[tr], y[tr], x[va], y[va], x[te], y[te]
    log(f"data: {len(x)} images, {len(classes)} classes: {len(tr)} train / {len(va)} validation / {len(te)} test, "
        f"{cfg.size}px; phi = {cfg.features}")
    times: dict[str, float] = {}

    t0 = time.perf_counter()
    if cfg.service_from:
        prev = load_weights(cfg.service_from)
        keys = ("data", "size", "seed", "limit", "val_fraction", "test_fraction")
        if prev["classes"] != classes or any(prev["config"].get(k) != getattr(cfg, k) for k in keys):
            raise UsageError("--service-from was trained on other data or another split; it cannot be reused here")
        psi = build_service(prev)
        service_info = dict(prev["metrics"].get("service", {}), reused_from=Path(cfg.service_from).name)
        log(f"service model: reused from {cfg.service_from}")
    else:
        psi, service_info = train_service(cfg, len(classes), xtr, ytr, xva, yva, gen, log)
    times["service_s"] = round(time.perf_counter() - t0, 2)

    energy = feature_energy(phi, xtr) if cfg.feat_norm == "energy" else 1.0
    t0 = time.perf_counter()
    unet, itn_info = train_transform(cfg, psi, phi, energy, xtr, ytr, xva, yva, gen, log)
    times["itn_s"] = round(time.perf_counter() - t0, 2)

    hte = transform(unet, xte)
    acc_plain = accuracy(psi, xte, yte)
    acc_itn = accuracy(psi, hte, yte)
    a = xte.permute(0, 2, 3, 1).numpy()
    b = hte.permute(0, 2, 3, 1).numpy()
    ssims = [ssim(a[i], b[i]) for i in range(len(a))]
    psnrs = [psnr(a[i], b[i]) for i in range(len(a))]
    with torch.no_grad():
        lfeat = float((phi(to01(hte)) - phi(to01(xte))).pow(2).mean()) / energy
    metrics = {
        "train_images": len(tr),
        "validation_images": len(va),
        "test_images": len(te),
        "service_accuracy_plain": round(acc_plain, 4),
        "service_accuracy_itn": round(acc_itn, 4),
        "accuracy_ratio": round(acc_itn / acc_plain, 4) if acc_plain > 0 else None,
        "ssim_x_hx": round(float(np.mean([s for s in ssims if s is not None])), 5) if any(s is not None for s in ssims) else None,
        "psnr_x_hx": round(float(np.mean([p for p in psnrs if math.isfinite(p)])), 3) if any(math.isfinite(p) for p in psnrs) else None,
        "l_feat_test": round(lfeat, 5),
        "feature_energy": energy,
        "service": service_info,
        "itn": itn_info,
        "metric_note": "test split, outputs quantised to uint8; SSIM/PSNR with anonymize.metrics.quality (luma SSIM)",
        "guarantee": "none",
        "guarantee_note": GUARANTEE_NOTE,
        **times,
    }
    log(f"test: service accuracy plain {acc_plain:.4f}, on h(x) {acc_itn:.4f}; SSIM(x,h(x)) {metrics['ssim_x_hx']}, "
        f"PSNR {metrics['psnr_x_hx']} dB")
    data_rec = {"path": str(cfg.data), "name": Path(cfg.data).name, "images": len(x), "classes": len(classes),
                "size": cfg.size}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(asdict(cfg)),
        "metrics": json.dumps(metrics),
        "classes": json.dumps(classes),
        "features": json.dumps(feat_rec),
        "data": json.dumps(data_rec),
        "unet": unet.state_dict(),
        "service": psi.state_dict(),
    }
    save_weights(Path(out), payload)
    return {"weights": str(out), "config": asdict(cfg), "classes": classes, "features": feat_rec, "data": data_rec,
            "metrics": metrics}

"""Train seed 000's conversion network g (``dpimage --variant xai``) on a labelled image folder.

Three stages, as in the paper (A.2.8 of the spec), all on the training split:

1. explainer f' (Table 2 VGG) on clean images, cross-entropy;
2. generator g against a PatchGAN discriminator D whose "real" samples are
   Gaussian-noised images n(x) = clip(x + sigma*Z, -1, 1), plus an explanation loss
   with DP noise on f''s softmax scores (``exp_loss``):
   ``code`` (default; the reference code): L1(g(x), sg[h(N(f'(x)))]);
   ``paper`` (Eq. 1): L1(h(f'(x)), h(N(f'(g(x))))) with gradients through f';
   ``none``: the paper's ablation (GAN loss only);
3. service model f (same VGG, fresh) on g(x) of augmented training images.

Then, on the held-out split: accuracy of f' on x, of f on g(x), and SSIM(x, g(x))
next to SSIM(x, n(x)) at the same sigma (uint8, :func:`anonymize.metrics.quality.ssim`).

The DP noise is a *training setting* of the explanation loss. The released image
g(x) is deterministic and carries no image-level DP guarantee; the weights file
and every report say so.

Data: a folder with one sub-folder per class (any image format), or a CIFAR-10/100
python pickle folder (``data_batch_*``/``test_batch`` or ``train``/``test``).

Example:
    >>> from anonymize.training.dpimage_xai import XAITrainConfig
    >>> XAITrainConfig(data="photos", sigma=3.0).exp_loss
    'code'
"""
from __future__ import annotations

import json
import math
import os
import pickle
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError
from ..nets.dpxai import ExplainerVGG, Generator, PatchDiscriminator, dp_noise_std, gaussian_noised, guided_backprop

FORMAT = "anonymize-dpimage-xai"
FORMAT_VERSION = 1
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"}
GUARANTEE_NOTE = (
    "epsilon/delta are training settings of the Gaussian noise on the explainer's scores (seed 000); "
    "g(x) is deterministic and is NOT an (epsilon, delta)-DP release"
)


@dataclass
class XAITrainConfig:
    """Every setting of a training run (stored in the weights file)."""

    data: str
    size: int = 32
    sigma: float = 3.0
    epsilon: float = 0.9
    delta: float = 1e-5
    sensitivity: float = 1.0
    dp_calibration: str = "code"  # code | textbook
    exp_loss: str = "code"  # code | paper | none
    gan_loss: str = "lsgan"  # lsgan | bce
    alpha: float = 1.0
    beta: float = 1.0
    generator: str = "paper"  # paper | code
    g_channels: int = 32
    d_channels: int = 64
    width: float = 1.0
    hidden: int = 4096
    epochs_explainer: int = 10
    epochs_g: int = 3
    epochs_f: int = 10
    batch_explainer: int = 96
    batch_g: int = 24
    batch_f: int = 116
    lr_explainer: float = 1e-4
    lr_g: float = 2e-4
    lr_f: float = 1e-4
    val_fraction: float = 0.2
    limit: int | None = None
    seed: int = 0
    explainer_from: str | None = None  # reuse f' from an earlier weights file (skips stage 1)
    augment: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Raise UsageError on an impossible setting (before any work starts)."""
        choices = {
            "dp_calibration": ("code", "textbook"),
            "exp_loss": ("code", "paper", "none"),
            "gan_loss": ("lsgan", "bce"),
            "generator": ("paper", "code"),
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise UsageError(f"--{key.replace('_', '-')} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        if self.size < 24:
            raise UsageError("--size must be >= 24 (the PatchGAN discriminator needs a 3x3 map after 8x downsampling)")
        if self.generator == "code" and self.size % 4:
            raise UsageError("--generator code needs --size divisible by 4")
        if not (self.sigma > 0 and math.isfinite(self.sigma)):
            raise UsageError("--sigma must be > 0")
        if not self.epsilon > 0:
            raise UsageError("--epsilon must be > 0")
        if not 0 < self.delta < 1:
            raise UsageError("--delta must be in (0, 1)")
        if not 0 < self.val_fraction < 1:
            raise UsageError("--val-fraction must be in (0, 1)")
        for key in ("epochs_explainer", "epochs_g", "epochs_f"):
            if getattr(self, key) < 0:
                raise UsageError(f"--{key.replace('_', '-')} must be >= 0")
        for key in ("batch_explainer", "batch_g", "batch_f", "g_channels", "d_channels", "hidden"):
            if getattr(self, key) < 1:
                raise UsageError(f"--{key.replace('_', '-')} must be >= 1")
        if self.epochs_explainer == 0 and not self.explainer_from:
            raise UsageError("--epochs-explainer 0 needs --explainer-from FILE")

    @property
    def noise_std(self) -> float:
        return dp_noise_std(self.epsilon, self.delta, sensitivity=self.sensitivity, calibration=self.dp_calibration)


# ----------------------------------------------------------------------------- data


def _load_pickle_split(folder: Path) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """CIFAR python pickles (torchvision layout); None when ``folder`` is not one."""
    for files, label_key, meta_name, names_key in (
        (["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"], b"labels", "batches.meta", b"label_names"),
        (["train", "test"], b"fine_labels", "meta", b"fine_label_names"),
    ):
        present = [folder / f for f in files if (folder / f).is_file()]
        if not present:
            continue
        xs, ys = [], []
        for p in present:
            with open(p, "rb") as fh:
                d = pickle.load(fh, encoding="bytes")  # local files the user pointed at (CIFAR format)
            xs.append(np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            ys.append(np.asarray(d[label_key], np.int64))
        names: list[str]
        meta = folder / meta_name
        if meta.is_file():
            with open(meta, "rb") as fh:
                names = [n.decode() for n in pickle.load(fh, encoding="bytes")[names_key]]
        else:
            names = [str(i) for i in range(int(max(int(y.max()) for y in ys)) + 1)]
        return np.concatenate(xs), np.concatenate(ys), names
    return None


def load_dataset(path: str | Path, size: int, *, limit: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Images as uint8 [N, 3, size, size] (bicubic resize), labels [N], class names.

    ``limit`` keeps a class-balanced random subset of that many images.
    """
    from PIL import Image

    folder = Path(path)
    if not folder.is_dir():
        raise UsageError(f"--data {folder} is not a folder (expected one sub-folder per class, or CIFAR pickles)")
    loaded = _load_pickle_split(folder)
    if loaded is not None:
        arr, labels, classes = loaded
        files: list[tuple[Any, int]] = [(a, int(y)) for a, y in zip(arr, labels)]
    else:
        classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
        files = []
        for ci, c in enumerate(classes):
            for f in sorted((folder / c).rglob("*")):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    files.append((f, ci))
        if len(classes) < 2:
            raise UsageError(f"--data {folder} needs at least two class sub-folders with images")
    if not files:
        raise UsageError(f"--data {folder} holds no images")
    rng = np.random.default_rng(seed)
    if limit is not None and limit < len(files):
        order = rng.permutation(len(files))
        per = {c: 0 for c in range(len(classes))}
        cap = math.ceil(limit / len(classes))
        keep = []
        for i in order:
            y = files[i][1]
            if per[y] < cap:
                per[y] += 1
                keep.append(i)
        files = [files[i] for i in sorted(keep)[:limit]]
    xs = np.empty((len(files), size, size, 3), np.uint8)
    ys = np.empty(len(files), np.int64)
    bad = 0
    for i, (src, y) in enumerate(files):
        try:
            img = Image.fromarray(src) if isinstance(src, np.ndarray) else Image.open(src)
            img = img.convert("RGB")
        except Exception:  # a broken file is skipped and counted, not fatal
            bad += 1
            xs[i] = 0
            ys[i] = -1
            continue
        if img.size != (size, size):
            img = img.resize((size, size), Image.BICUBIC)
        xs[i] = np.asarray(img)
        ys[i] = y
    ok = ys >= 0
    if bad and not ok.any():
        raise UsageError(f"--data {folder}: no readable images")
    x = torch.from_numpy(xs[ok]).permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(ys[ok]), classes


def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train/held-out indices with the same class proportions (every class keeps >= 1 training image)."""
    rng = np.random.default_rng(seed + 1)
    tr, va = [], []
    y = labels.numpy()
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = int(round(len(idx) * val_fraction))
        n_val = min(n_val, len(idx) - 1)
        va.extend(idx[:n_val])
        tr.extend(idx[n_val:])
    return np.sort(np.asarray(tr, np.int64)), np.sort(np.asarray(va, np.int64))


def to_unit(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [B,3,H,W] -> float in [-1, 1] (ToTensor + Normalize(0.5, 0.5))."""
    return x_uint8.float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> uint8 with round(255 * (x + 1) / 2) (A.2.9)."""
    return torch.round((x.clamp(-1, 1) + 1.0) * 127.5).to(torch.uint8)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """RandomCrop(size, padding=size/8, zero fill) + RandomHorizontalFlip on a [-1, 1] batch."""
    b, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad), value=-1.0)  # zero-valued pixels before Normalize
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    flip = torch.rand(b, generator=gen) < 0.5
    out = torch.empty_like(x)
    for i in range(b):
        crop = padded[i, :, int(oy[i]) : int(oy[i]) + h, int(ox[i]) : int(ox[i]) + w]
        out[i] = crop.flip(-1) if bool(flip[i]) else crop
    return out


def _batches(n: int, batch: int, gen: torch.Generator, shuffle: bool = True):
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    for i in range(0, n, batch):
        yield order[i : i + batch]


# ----------------------------------------------------------------------------- stages

Log = Callable[[str], None]


def _classifier(cfg: XAITrainConfig, classes: int) -> ExplainerVGG:
    return ExplainerVGG(classes, width=cfg.width, hidden=cfg.hidden)


def train_classifier(
    model: ExplainerVGG, x: torch.Tensor, y: torch.Tensor, *, epochs: int, batch: int, lr: float,
    gen: torch.Generator, augment_data: bool, transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    log: Log = lambda s: None, tag: str = "f",
) -> float:
    """Cross-entropy, Adam(lr, betas (0.5, 0.999)), cosine annealing over ``epochs``; returns img/s."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.999))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    seen, t0 = 0, time.perf_counter()
    for ep in range(epochs):
        model.train()
        tot, correct, n = 0.0, 0, 0
        for idx in _batches(len(x), batch, gen):
            xb = to_unit(x[idx])
            if augment_data:
                xb = augment(xb, gen)
            if transform is not None:
                with torch.no_grad():
                    xb = transform(xb)
            logits = model(xb)
            loss = F.cross_entropy(logits, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y[idx]).sum())
            n += len(idx)
        sched.step()
        seen += n
        log(f"{tag} epoch {ep + 1}/{epochs}: loss {tot / max(n, 1):.4f}, train acc {correct / max(n, 1):.3f}")
    model.eval()
    return seen / max(time.perf_counter() - t0, 1e-9)


@torch.no_grad()
def accuracy(model: ExplainerVGG, x: torch.Tensor, y: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor] | None = None, batch: int = 256) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        xb = to_unit(x[i : i + batch])
        if transform is not None:
            xb = transform(xb)
        correct += int((model(xb).argmax(1) == y[i : i + batch]).sum())
    return correct / max(len(x), 1)


def _gan_g(d_fake: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "lsgan":
        return ((d_fake - 1.0) ** 2).mean()
    return -F.softplus(d_fake).mean()  # log(1 - sigmoid(l)) = -softplus(l): Eq. (2) as printed


def _gan_d(d_real: torch.Tensor, d_fake: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "lsgan":
        return ((d_real - 1.0) ** 2).mean() + (d_fake**2).mean()
    return F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real)) + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))


def train_generator(
    cfg: XAITrainConfig, g: Generator, disc: PatchDiscriminator, explainer: ExplainerVGG, x: torch.Tensor,
    gen: torch.Generator, log: Log = lambda s: None,
) -> float:
    """Stage 2: g and D, f' frozen; returns img/s."""
    explainer.eval()
    for p in explainer.parameters():
        p.requires_grad_(False)
    opt_g = torch.optim.Adam(g.parameters(), lr=cfg.lr_g, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(disc.parameters(), lr=cfg.lr_g, betas=(0.5, 0.999))
    std = cfg.noise_std
    seen, t0 = 0, time.perf_counter()
    for ep in range(cfg.epochs_g):
        g.train()
        disc.train()
        sums = {"gan": 0.0, "exp": 0.0, "d": 0.0}
        steps = 0
        for idx in _batches(len(x), cfg.batch_g, gen):
            xb = to_unit(x[idx])
            if cfg.augment:
                xb = augment(xb, gen)
            fake = g(xb)
            l_gan = _gan_g(disc(fake), cfg.gan_loss)
            if cfg.exp_loss == "code":
                with torch.no_grad():
                    target = guided_backprop(explainer, xb, noise_std=std, generator=gen)
                l_exp = (fake - target).abs().mean()
            elif cfg.exp_loss == "paper":
                with torch.no_grad():
                    target = guided_backprop(explainer, xb)
                l_exp = (target - guided_backprop(explainer, fake, noise_std=std, generator=gen)).abs().mean()
            else:
                l_exp = torch.zeros(())
            loss_g = cfg.alpha * l_gan + cfg.beta * l_exp
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            real = gaussian_noised(xb, cfg.sigma, gen)
            loss_d = _gan_d(disc(real), disc(fake.detach()), cfg.gan_loss)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            sums["gan"] += float(l_gan.detach())
            sums["exp"] += float(l_exp.detach())
            sums["d"] += float(loss_d.detach())
            steps += 1
            seen += len(idx)
        log(f"g epoch {ep + 1}/{cfg.epochs_g}: gan {sums['gan'] / max(steps, 1):.4f}, "
            f"exp {sums['exp'] / max(steps, 1):.4f}, d {sums['d'] / max(steps, 1):.4f}")
    g.eval()
    return seen / max(time.perf_counter() - t0, 1e-9)


@torch.no_grad()
def ssim_pair(x: torch.Tensor, cfg: XAITrainConfig, g: Generator, gen: torch.Generator) -> tuple[float, float]:
    """Mean SSIM(x, g(x)) and SSIM(x, n(x)) over ``x`` (uint8), on uint8 RGB (luma SSIM)."""
    from ..metrics.quality import ssim

    sg, sn = [], []
    for i in range(0, len(x), 256):
        xb = to_unit(x[i : i + 256])
        a = x[i : i + 256].permute(0, 2, 3, 1).numpy()
        gb = to_uint8(g(xb)).permute(0, 2, 3, 1).numpy()
        nb = to_uint8(gaussian_noised(xb, cfg.sigma, gen)).permute(0, 2, 3, 1).numpy()
        for k in range(len(a)):
            sg.append(ssim(a[k], gb[k]))
            sn.append(ssim(a[k], nb[k]))
    return float(np.mean(sg)), float(np.mean(sn))


# ----------------------------------------------------------------------------- weights file


def save_weights(path: Path, payload: dict[str, Any]) -> None:
    """Atomic write (temp file + fsync + rename) of a torch weights file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_tagged_weights(path: str | Path, fmt: str, version: int, kind: str, command: str,
                        json_fields: Mapping[str, str]) -> dict[str, Any]:
    """Read and check a weights file written by an ``anonymize train`` command (tensors and JSON text only).

    ``json_fields`` maps each JSON text field to its default when absent. A missing file raises
    :class:`MethodUnavailable` naming ``command``; a foreign or newer file raises :class:`UsageError`.
    """
    from ..errors import MethodUnavailable

    p = Path(path)
    if not p.is_file():
        raise MethodUnavailable(f"{kind} weights {p} not found; train them with `anonymize {command} --data DIR --out {p}`")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UsageError(f"{p} is not a readable {kind} weights file ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict) or obj.get("format") != fmt:
        raise UsageError(f"{p} is not a {kind} weights file (written by `anonymize {command}`)")
    if int(obj.get("format_version", 0)) > version:
        raise UsageError(f"{p} was written by a newer anonymize (format {obj.get('format_version')}); upgrade anonymize")
    for key, default in json_fields.items():
        obj[key] = json.loads(obj.get(key, default))
    return obj


def load_weights(path: str | Path) -> dict[str, Any]:
    """Read and check a weights file written by :func:`train` (tensors only, no pickled code)."""
    return load_tagged_weights(path, FORMAT, FORMAT_VERSION, "dpimage-xai", "train dpimage-xai",
                               {"config": "{}", "metrics": "{}", "classes": "[]"})


def build_generator(meta: dict[str, Any]) -> Generator:
    cfg = meta["config"]
    g = Generator(channels=int(cfg["g_channels"]), arch=str(cfg["generator"]))
    g.load_state_dict(meta["generator"], strict=True)
    return g.eval()


def build_classifier(meta: dict[str, Any], key: str) -> ExplainerVGG:
    cfg = meta["config"]
    m = ExplainerVGG(len(meta["classes"]), width=float(cfg["width"]), hidden=int(cfg["hidden"]))
    m.load_state_dict(meta[key], strict=True)
    return m.eval()


# ----------------------------------------------------------------------------- driver


def train(cfg: XAITrainConfig, out: str | Path, *, log: Log = lambda s: None) -> dict[str, Any]:
    """Run the three stages, write the weights file atomically, return the metrics.

    A run takes minutes to hours on a CPU; ``tests/test_dpimage_xai.py`` trains a tiny one.
    """
    cfg.check()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    x, y, classes = load_dataset(cfg.data, cfg.size, limit=cfg.limit, seed=cfg.seed)
    tr, va = stratified_split(y, cfg.val_fraction, cfg.seed)
    if len(va) == 0:
        raise UsageError("too few images for a held-out split; add images or raise --val-fraction")
    xtr, ytr, xva, yva = x[tr], y[tr], x[va], y[va]
    log(f"data: {len(x)} images, {len(classes)} classes, {len(tr)} train / {len(va)} held out, {cfg.size}px")
    times: dict[str, float] = {}
    rates: dict[str, float] = {}

    # 1. explainer f'
    t0 = time.perf_counter()
    if cfg.explainer_from:
        prev = load_weights(cfg.explainer_from)
        pc = prev["config"]
        if (prev["classes"], pc["size"], pc["width"], pc["hidden"], pc["seed"], pc["val_fraction"], pc["limit"], pc["data"]) != (
            classes, cfg.size, cfg.width, cfg.hidden, cfg.seed, cfg.val_fraction, cfg.limit, cfg.data
        ):
            raise UsageError("--explainer-from was trained on other data, split or architecture; it cannot be reused here")
        explainer = build_classifier(prev, "explainer")
        log(f"explainer: reused from {cfg.explainer_from}")
    else:
        explainer = _classifier(cfg, len(classes))
        rates["explainer_train_img_s"] = train_classifier(
            explainer, xtr, ytr, epochs=cfg.epochs_explainer, batch=cfg.batch_explainer, lr=cfg.lr_explainer,
            gen=gen, augment_data=cfg.augment, log=log, tag="explainer",
        )
    times["explainer_s"] = time.perf_counter() - t0
    acc_explainer = accuracy(explainer, xva, yva)
    log(f"explainer held-out accuracy {acc_explainer:.4f}")

    # 2. generator g and discriminator D
    t0 = time.perf_counter()
    g = Generator(channels=cfg.g_channels, arch=cfg.generator)
    disc = PatchDiscriminator(cfg.d_channels)
    rates["g_train_img_s"] = train_generator(cfg, g, disc, explainer, xtr, gen, log)
    times["generator_s"] = time.perf_counter() - t0

    # 3. service model f on g(x)
    t0 = time.perf_counter()
    service = _classifier(cfg, len(classes))
    rates["f_train_img_s"] = train_classifier(
        service, xtr, ytr, epochs=cfg.epochs_f, batch=cfg.batch_f, lr=cfg.lr_f, gen=gen, augment_data=cfg.augment,
        transform=g, log=log, tag="service",
    )
    times["service_s"] = time.perf_counter() - t0

    acc_service = accuracy(service, xva, yva, transform=g)
    ssim_g, ssim_n = ssim_pair(xva, cfg, g, torch.Generator().manual_seed(cfg.seed + 7))
    metrics = {
        "held_out_images": int(len(va)),
        "train_images": int(len(tr)),
        "explainer_accuracy": round(acc_explainer, 4),
        "service_accuracy_on_g": round(acc_service, 4),
        "accuracy_ratio": round(acc_service / acc_explainer, 4) if acc_explainer > 0 else None,
        "ssim_x_gx": round(ssim_g, 5),
        "ssim_x_noise": round(ssim_n, 5),
        "ssim_note": "mean luma SSIM on uint8 at the training size (anonymize.metrics.quality.SSIM_CONFIG); "
        "x_noise = clip(x + sigma*Z, -1, 1) at the same sigma",
        "noise_std": cfg.noise_std,
        "guarantee": "none",
        "guarantee_note": GUARANTEE_NOTE,
        **{k: round(v, 2) for k, v in times.items()},
        **{k: round(v, 2) for k, v in rates.items()},
    }
    log(f"service accuracy on g(x) {acc_service:.4f} (ratio {metrics['accuracy_ratio']}); "
        f"SSIM(x,g(x)) {ssim_g:.4f} vs SSIM(x,n(x)) {ssim_n:.4f}")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(asdict(cfg)),
        "metrics": json.dumps(metrics),
        "classes": json.dumps(classes),
        "generator": g.state_dict(),
        "service": service.state_dict(),
        "explainer": explainer.state_dict(),
    }
    save_weights(Path(out), payload)
    return {"weights": str(out), "config": asdict(cfg), "classes": classes, "metrics": metrics}

"""Adversarial perturbation of faces against face recognizers (``protect --method ap``).

Per image, one L-infinity bounded perturbation ``delta`` (gray levels) lives in
the original image's pixels, inside a soft elliptical mask over the faces.
Each face is cut out with the recognizer's own alignment from the shared
table (:mod:`anonymize.faces.alignments`: for dlib, ``dlib.get_face_chip``'s
geometry and sampling reproduced in torch), so gradients flow from the
embedding back to the source pixels and ``evaluate`` sees the same chips. Signed-gradient (PGD) steps push every face's
descriptor away from its original (untargeted) or toward a chosen other
identity while away from the original (targeted, Fawkes-style), against one
recognizer or an ensemble. Faces of all images in a call share one
recognizer batch.

The iterate is always the *uint8* image: the perturbation is rounded to whole
gray levels in the forward pass (straight-through gradient), so the
distances seen during optimisation are those of the file that is written,
and ``|out - in| <= floor(epsilon)`` holds exactly. Optional expectation
over transformations (EOT): real JPEG re-encoding (identity gradient),
small down/up resizes and alignment jitter. A face counts as protected only
after a final check on the written uint8 image with landmarks re-detected
on it (as an attacker would), and after JPEG re-encoding at every
``jpeg_qualities`` when EOT includes JPEG.

Example:
    >>> cfg = FaceAttackConfig.from_params({"level": "low"})
    >>> (cfg.epsilon, cfg.steps, cfg.attack_models)
    (3.0, 40, ('dlib-resnet',))
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UsageError
from ..types import DEFAULT_MASK_SCALE, Face, ImageItem
from .ap_classifier import clip_pass

LEVELS: dict[str, dict[str, Any]] = {
    # epsilon and step_size in gray levels; margin: required distance = threshold * (1 + margin)
    "low": {"epsilon": 3.0, "steps": 40, "step_size": 0.75, "margin": 0.05, "ssim_floor": 0.97},
    "medium": {"epsilon": 6.0, "steps": 100, "step_size": 1.0, "margin": 0.15, "ssim_floor": 0.93},
    "high": {"epsilon": 10.0, "steps": 200, "step_size": 1.5, "margin": 0.3, "ssim_floor": 0.85},
}
EOT_KINDS = ("jpeg", "resize", "jitter")

# The optimised window covers every face's chip footprint and mask box plus WINDOW_CONTEXT pixels on
# each side (the warp's bilinear samples at a footprint's edge read the pixel beyond it; the rest is
# slack); its end gets one more pixel because slice ends are exclusive. Its origin is snapped down to
# a multiple of JPEG_GRID, the 16 px MCU of 4:2:0 JPEG, so a JPEG round trip of the window (EOT)
# quantises the same blocks as a JPEG of the whole image.
WINDOW_CONTEXT = 4
JPEG_GRID = 16
# When the check of the written image fails for a face, its required distance is multiplied by
# NEED_GROWTH and the optimisation goes on (overshooting a little beats oscillating at the threshold).
NEED_GROWTH = 1.08
# Perturbation scales tried, largest first, when the face-region SSIM is below ssim_floor.
SHRINK_LADDER = (0.9, 0.8, 0.7, 0.6, 0.5)
# Checks with jittered face boxes (box_jitter) must clear threshold * (1 + margin / this): a re-detected
# box is never the original one, so these checks are noisier and get a third of the margin.
JITTER_MARGIN_DIVISOR = 3.0
WHITE_BOX_NOTE = (
    "white-box: the perturbation was optimised against {models}; distances under these models (and "
    "every recognizer sharing their weights: {family}) overstate protection against other recognizers. "
    "Judge transfer with `anonymize evaluate` on models not attacked."
)


@dataclass
class FaceAttackConfig:
    """Settings of the face-identity attack (see :data:`LEVELS` for the presets)."""

    level: str = "medium"
    epsilon: float = 6.0
    steps: int = 100
    step_size: float = 1.0
    margin: float = 0.15
    attack_models: tuple[str, ...] = ("dlib-resnet",)
    target_identity: str | None = None
    eot: tuple[str, ...] = ()
    jpeg_qualities: tuple[int, ...] = (75, 85, 95)
    ssim_floor: float | None = 0.93
    random_start: bool = True
    mask_scale: float | None = None  # None: the run's --mask-scale
    mask_feather: float = 0.15
    max_faces_per_batch: int = 16
    check_every: int = 5  # clean re-checks when EOT makes the step's forward pass noisy
    # verify also with shifted/scaled face boxes (a re-detection in the protected image never
    # returns the original box; evaluate and any attacker re-detect), 0 disables
    box_jitter: float = 0.07

    @classmethod
    def from_params(cls, params: Any) -> "FaceAttackConfig":
        """The level's preset, then every field of ``params`` (an :class:`~anonymize.methods.ap.APParams`,
        or a mapping parsed into one) that is set and shares a name with this config."""
        from .ap import APParams
        from .params import as_params

        p = as_params(APParams, params, method="ap")
        cfg = cls(level=p.level, **LEVELS[p.level])
        for f in fields(cls):
            v = getattr(p, f.name, None)
            if v is not None and f.name != "level":
                setattr(cfg, f.name, v)
        if cfg.ssim_floor == 0:  # ssim_floor=none/off/0: no quality floor
            cfg.ssim_floor = None
        return cfg

    @property
    def budget(self) -> int:
        """The integer L-infinity bound in gray levels actually enforced on the uint8 output."""
        return int(math.floor(self.epsilon + 1e-9))


# ----------------------------------------------------------------------------- geometry


def chip_matrix(alignment: str, image: np.ndarray, face: Face) -> np.ndarray:
    """Image -> chip matrix of ``face`` for a recognizer's alignment (the shared table)."""
    from ..faces.alignments import matrices

    return matrices(alignment, image, [face])[0]


def _shift(M: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """The same chip transform for a window whose origin is image pixel (x0, y0)."""
    out = M.copy()
    out[:, 2] = out[:, 2] + out[:, 0] * x0 + out[:, 1] * y0
    return out


# ----------------------------------------------------------------------------- EOT pieces


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """Real JPEG encode + decode (OpenCV, 4:2:0) of a uint8 RGB array."""
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()


def _jpeg_bpda(x: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG in the forward pass, identity in the backward pass (BPDA)."""
    arr = x.detach()[0].clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    y = torch.from_numpy(jpeg_roundtrip(arr, quality)).permute(2, 0, 1)[None].to(x)
    return x + (y - x).detach()


def _resize_roundtrip(x: torch.Tensor, scale: float) -> torch.Tensor:
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(8, round(h * scale)), max(8, round(w * scale))), mode="bilinear",
                          align_corners=False, antialias=True)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def _jitter(M: torch.Tensor, gen: torch.Generator, size: int = 150, px: float = 1.5, scale: float = 0.03,
            angle: float = 0.03) -> torch.Tensor:
    """Compose (K, 2, 3) chip transforms with a random small similarity about the chip centre
    (the alignment noise of landmarks re-fitted on the protected image)."""
    k = M.shape[0]
    r = torch.rand(k, 4, generator=gen, dtype=torch.float64).to(M.dtype) * 2 - 1
    s, a = 1 + scale * r[:, 0], angle * r[:, 1]
    A = torch.stack([torch.stack([s * torch.cos(a), -s * torch.sin(a)], -1),
                     torch.stack([s * torch.sin(a), s * torch.cos(a)], -1)], -2)
    c = torch.full((k, 2, 1), (size - 1) / 2.0, dtype=M.dtype)
    t = c - A @ c + px * r[:, 2:].unsqueeze(-1)
    return torch.cat([A @ M[:, :, :2], A @ M[:, :, 2:] + t], -1)


# ----------------------------------------------------------------------------- attack


@dataclass
class _FaceJob:
    item_index: int
    face_index: int
    face: Face
    M: dict[str, np.ndarray] = field(default_factory=dict)  # per model, window coordinates
    d0: dict[str, torch.Tensor] = field(default_factory=dict)
    need: float = 1.0  # extra factor on threshold*(1+margin), raised when a final check fails
    done: bool = False
    steps: int = 0
    error: str | None = None


@dataclass
class _ImageJob:
    index: int
    item: ImageItem
    window: tuple[int, int, int, int] = (0, 0, 0, 0)
    x0: torch.Tensor | None = None  # (1, 3, h, w) float gray levels, window of the original
    mask: torch.Tensor | None = None  # (1, 1, h, w)
    delta: torch.Tensor | None = None
    faces: list[_FaceJob] = field(default_factory=list)
    verified: bool = False
    report: dict[str, Any] | None = None
    gen: torch.Generator | None = None


class FaceAttack:
    """Runs the face-identity attack on a batch of images (see the module docstring)."""

    def __init__(self, cfg: FaceAttackConfig, device: str = "cpu") -> None:
        from ..faces.recognize import get_recognizer

        self.cfg = cfg
        self.device = torch.device(device)
        self.models = {name: get_recognizer(name, device) for name in cfg.attack_models}
        for name, rec in self.models.items():
            if not getattr(rec, "differentiable", False):
                raise UsageError(f"ap: recognizer {name!r} is not differentiable and cannot be attacked; "
                                 "use dlib-resnet (its torch port) instead")
        self.target: dict[str, torch.Tensor] | None = None
        if cfg.target_identity:
            self.target = self._target_descriptors(cfg.target_identity)

    # ------------------------------------------------------------------ helpers
    def _target_descriptors(self, path: str) -> dict[str, torch.Tensor]:
        from PIL import Image

        from ..faces.detect import get_detector

        try:
            img = np.asarray(Image.open(path).convert("RGB"))
        except Exception as exc:
            raise UsageError(f"--param target_identity: cannot read image {path!r}: {exc}") from None
        faces = get_detector("mtcnn", device=str(self.device))([img])[0]
        if not faces:
            raise UsageError(f"--param target_identity: no face found in {path!r}")
        face = max(faces, key=lambda f: f.width * f.height)
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float().to(self.device) / 255.0
        out = {}
        for name, rec in self.models.items():
            M = torch.from_numpy(chip_matrix(rec.alignment, img, face)[None])
            with torch.no_grad():
                out[name] = rec.descriptor(self._warp(x, M, rec.alignment))[0]
        return out

    def _warp(self, x01: torch.Tensor, M: torch.Tensor, alignment: str) -> torch.Tensor:
        """Chips as the recognizer's reference extractor cuts them (dlib: pyramid, bilinear,
        truncation to uint8), differentiable in the image (straight-through rounding)."""
        from ..faces.alignments import warp

        return warp(alignment, x01, M.to(self.device))

    def _prepare(self, idx: int, item: ImageItem, gen: torch.Generator) -> _ImageJob:
        from ..faces.align import soft_face_mask
        from ..faces.alignments import support

        job = _ImageJob(index=idx, item=item, gen=gen)
        img = item.pixels
        H, W = img.shape[:2]
        boxes = []
        for fi, face in enumerate(item.faces):
            fj = _FaceJob(idx, fi, face)
            try:
                for name, rec in self.models.items():
                    fj.M[name] = chip_matrix(rec.alignment, img, face)
                    boxes.append(support(rec.alignment, fj.M[name], H, W))  # all pixels the chip reads
            except Exception as exc:  # landmark fitting failed
                fj.error = f"could not align the face for {name}: {exc}"
            job.faces.append(fj)
        scale = self.cfg.mask_scale
        for f in item.faces:
            bw, bh = f.width * (scale or DEFAULT_MASK_SCALE), f.height * (scale or DEFAULT_MASK_SCALE)
            cx, cy = (f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2
            boxes.append((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2))
        if not boxes:
            return job
        x0 = max(0, int(math.floor(min(b[0] for b in boxes))) - WINDOW_CONTEXT)
        y0 = max(0, int(math.floor(min(b[1] for b in boxes))) - WINDOW_CONTEXT)
        x0, y0 = x0 - x0 % JPEG_GRID, y0 - y0 % JPEG_GRID  # keep the JPEG block grid of the full image
        x1 = min(W, int(math.ceil(max(b[2] for b in boxes))) + WINDOW_CONTEXT + 1)
        y1 = min(H, int(math.ceil(max(b[3] for b in boxes))) + WINDOW_CONTEXT + 1)
        job.window = (x0, y0, x1, y1)
        win = img[y0:y1, x0:x1]
        job.x0 = torch.from_numpy(np.array(win, dtype=np.float32)).permute(2, 0, 1)[None].to(self.device)
        shifted = [Face((f.box[0] - x0, f.box[1] - y0, f.box[2] - x0, f.box[3] - y0), f.score, f.detector) for f in item.faces]
        job.mask = soft_face_mask(y1 - y0, x1 - x0, shifted, kind="ellipse", scale=scale or DEFAULT_MASK_SCALE,
                                  feather=self.cfg.mask_feather, device=self.device)[None]
        eps = float(self.cfg.budget)
        if self.cfg.random_start:
            job.delta = (torch.rand(job.x0.shape, generator=gen, dtype=torch.float32) * 2 - 1).mul(eps / 2).to(self.device)
        else:
            job.delta = torch.zeros_like(job.x0)
        for fj in job.faces:
            if fj.error:
                continue
            fj.M = {k: _shift(v, x0, y0) for k, v in fj.M.items()}
        x01 = job.x0 / 255.0
        for fj in job.faces:
            if fj.error:
                continue
            for name, rec in self.models.items():
                with torch.no_grad():
                    fj.d0[name] = rec.descriptor(self._warp(x01, torch.from_numpy(fj.M[name][None]), rec.alignment))[0]
        return job

    def _image(self, job: _ImageJob) -> torch.Tensor:
        """The current quantised window (1, 3, h, w) in gray levels, straight-through in delta."""
        assert job.x0 is not None and job.mask is not None and job.delta is not None
        e = float(self.cfg.budget)
        pert = job.mask * job.delta
        q = pert + (pert.round().clamp(-e, e) - pert).detach()
        return clip_pass(job.x0 + q, 0.0, 255.0)  # gradient passes at 0 and 255

    def _final_pixels(self, job: _ImageJob, shrink: float = 1.0) -> np.ndarray:
        out = job.item.pixels.copy()
        if job.x0 is None:
            return out
        e = float(self.cfg.budget)
        with torch.no_grad():
            pert = (job.mask * job.delta * shrink).round().clamp(-e, e)
            win = (job.x0 + pert).clamp(0, 255).round().to(torch.uint8)[0].permute(1, 2, 0).cpu().numpy()
        x0, y0, x1, y1 = job.window
        out[y0:y1, x0:x1] = win
        return out

    def _required(self, name: str, fj: _FaceJob) -> float:
        return self.models[name].threshold * (1.0 + self.cfg.margin) * fj.need

    def _face_ok(self, name: str, dist: float, fj: _FaceJob) -> bool:
        return dist >= self._required(name, fj)

    # ------------------------------------------------------------------ verification
    @staticmethod
    def _jittered_faces(face: Face, frac: float) -> list[Face]:
        """The face with its box shifted by +-frac of its size in x and y, and scaled by 1 +- frac."""
        if frac <= 0:
            return []
        x0, y0, x1, y1 = (float(v) for v in face.box)
        w, h = x1 - x0, y1 - y0
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        boxes = [(x0 + dx * w, y0 + dy * h, x1 + dx * w, y1 + dy * h)
                 for dx, dy in ((frac, 0), (-frac, 0), (0, frac), (0, -frac))]
        for k in (1 + frac, 1 - frac):
            boxes.append((cx - k * w / 2, cy - k * h / 2, cx + k * w / 2, cy + k * h / 2))
        return [Face(box=b, score=face.score, detector=face.detector) for b in boxes]

    def verify(self, job: _ImageJob, pixels: np.ndarray) -> dict[str, Any]:
        """Distances on the written uint8 image (landmarks re-fitted on it), and after JPEG when EOT has it.

        The uint8 image is also checked with jittered face boxes (``box_jitter``), because whoever
        looks at the output re-detects the face and never gets the original box back; those
        must clear the threshold by a third of the margin.
        """
        variants = {"uint8": pixels}
        if "jpeg" in self.cfg.eot:
            for q in self.cfg.jpeg_qualities:
                variants[f"jpeg{q}"] = jpeg_roundtrip(pixels, q)
        per_face: list[dict[str, Any]] = []
        for fj in job.faces:
            res: dict[str, Any] = {}
            if fj.error:
                per_face.append({"ok": False})
                continue
            ok = True
            checks = [(vname, img, fj.face, 1.0 + self.cfg.margin) for vname, img in variants.items()]
            checks += [("uint8_box_jitter", pixels, f, 1.0 + self.cfg.margin / JITTER_MARGIN_DIVISOR)
                       for f in self._jittered_faces(fj.face, self.cfg.box_jitter)]
            for vname, img, face, need in checks:
                x01 = torch.from_numpy(img).permute(2, 0, 1)[None].float().to(self.device) / 255.0
                res.setdefault(vname, {})
                for name, rec in self.models.items():
                    try:
                        M = chip_matrix(rec.alignment, img, face)
                    except Exception:
                        M = _shift(fj.M[name], -job.window[0], -job.window[1])
                    with torch.no_grad():
                        d = rec.descriptor(self._warp(x01, torch.from_numpy(M[None]), rec.alignment))[0]
                        dist = float(rec.distance(d[None], fj.d0[name][None])[0])
                    res[vname][name] = round(min(dist, res[vname].get(name, dist)), 4)  # worst case over boxes
                    ok = ok and dist >= rec.threshold * need
            res["ok"] = ok
            per_face.append(res)
        return {"faces": per_face, "ok": all(r["ok"] for r in per_face) and bool(per_face)}

    # ------------------------------------------------------------------ main loop
    def run(self, items: Sequence[ImageItem], gens: Sequence[torch.Generator]) -> list[tuple[np.ndarray, bool, dict[str, Any]]]:
        t_start = time.perf_counter()
        jobs = [self._prepare(i, it, g) for i, (it, g) in enumerate(zip(items, gens))]
        active_jobs = [j for j in jobs if j.faces and j.x0 is not None and any(not f.error for f in j.faces)]
        # chunk so that at most max_faces_per_batch faces share one recognizer batch
        chunks: list[list[_ImageJob]] = []
        cur: list[_ImageJob] = []
        n = 0
        for j in active_jobs:
            k = sum(1 for f in j.faces if not f.error)
            if cur and n + k > self.cfg.max_faces_per_batch:
                chunks.append(cur)
                cur, n = [], 0
            cur.append(j)
            n += k
        if cur:
            chunks.append(cur)
        for chunk in chunks:
            self._optimise(chunk)
        elapsed = time.perf_counter() - t_start
        n_faces = sum(len(j.faces) for j in jobs)
        return [self._result(j, elapsed / max(n_faces, 1)) for j in jobs]

    def _optimise(self, jobs: list[_ImageJob]) -> None:
        cfg = self.cfg
        eot = cfg.eot
        eps = float(cfg.budget)
        for step in range(1, cfg.steps + 1):
            live = [j for j in jobs if not j.verified]
            if not live:
                return
            for j in live:
                j.delta.requires_grad_(True)
            images = {j.index: self._image(j) for j in live}
            noisy = {}
            for j in live:
                x = images[j.index]
                if eot:
                    kind = eot[int(torch.randint(len(eot), (1,), generator=j.gen))]
                    if kind == "jpeg":
                        q = cfg.jpeg_qualities[int(torch.randint(len(cfg.jpeg_qualities), (1,), generator=j.gen))]
                        x = _jpeg_bpda(x, q)
                    elif kind == "resize":
                        x = _resize_roundtrip(x, float(0.7 + 0.25 * torch.rand(1, generator=j.gen)))
                    noisy[j.index] = kind
                images[j.index] = x / 255.0
            faces = [(j, f) for j in live for f in j.faces if not f.error and not f.done]
            loss = torch.zeros((), device=self.device)
            dists: dict[str, torch.Tensor] = {}
            for name, rec in self.models.items():
                chips = []
                for j, f in faces:
                    M = torch.from_numpy(f.M[name][None])
                    if noisy.get(j.index) == "jitter" and rec.alignment == "dlib150":
                        M = _jitter(M, j.gen, rec.input_size)
                    chips.append(self._warp(images[j.index], M, rec.alignment))
                if not chips:
                    continue
                desc = rec.descriptor(torch.cat(chips))
                d0 = torch.stack([f.d0[name] for _, f in faces])
                dist = rec.distance(desc, d0)
                dists[name] = dist.detach()
                if self.target is not None:
                    dt = rec.distance(desc, self.target[name][None].expand_as(desc))
                    loss = loss + (dt - dist).div(rec.threshold).sum()
                else:
                    loss = loss - dist.div(rec.threshold).sum()
            if not faces:
                continue
            grads = torch.autograd.grad(loss, [j.delta for j in live], allow_unused=True)
            with torch.no_grad():
                for j, g in zip(live, grads):
                    if g is not None:
                        j.delta -= cfg.step_size * g.sign()
                        j.delta.clamp_(-eps, eps)
                    j.delta.requires_grad_(False)
            for f_idx, (j, f) in enumerate(faces):
                f.steps = step
            # success check: the step's own forward when it was clean, else a clean re-check now and then
            if not eot:
                for f_idx, (j, f) in enumerate(faces):
                    if all(self._face_ok(n, float(dists[n][f_idx]), f) for n in dists):
                        f.done = True
            elif step % cfg.check_every == 0 or step == cfg.steps:
                self._clean_check(live)
            for j in live:
                if all(f.done or f.error for f in j.faces):
                    rep = self.verify(j, self._final_pixels(j))
                    if rep["ok"]:
                        j.verified = True
                        j.report = rep
                    else:  # the re-aligned / re-encoded check failed: ask for more and continue
                        for f, r in zip(j.faces, rep["faces"]):
                            if not r["ok"] and not f.error:
                                f.done = False
                                f.need *= NEED_GROWTH

    def _clean_check(self, jobs: list[_ImageJob]) -> None:
        with torch.no_grad():
            for j in jobs:
                x = self._image(j) / 255.0
                for f in j.faces:
                    if f.error or f.done:
                        continue
                    ok = True
                    for name, rec in self.models.items():
                        d = rec.descriptor(self._warp(x, torch.from_numpy(f.M[name][None]), rec.alignment))
                        ok = ok and self._face_ok(name, float(rec.distance(d, f.d0[name][None])[0]), f)
                    f.done = ok

    # ------------------------------------------------------------------ results
    def _result(self, job: _ImageJob, sec_per_face: float) -> tuple[np.ndarray, bool, dict[str, Any]]:
        from ..faces.recognize import same_family
        from ..metrics.quality import ssim

        item = job.item
        cfg = self.cfg
        info: dict[str, Any] = {
            "target": "face",
            "level": cfg.level,
            "epsilon": cfg.epsilon,
            "linf_budget": cfg.budget,
            "step_size": cfg.step_size,
            "max_steps": cfg.steps,
            "margin": cfg.margin,
            "eot": list(cfg.eot),
            "jpeg_qualities": list(cfg.jpeg_qualities) if "jpeg" in cfg.eot else [],
            "attacked_models": list(cfg.attack_models),
            "thresholds": {n: r.threshold for n, r in self.models.items()},
            "mode": "targeted" if self.target is not None else "untargeted",
            "white_box_note": WHITE_BOX_NOTE.format(models=", ".join(cfg.attack_models),
                                                    family=", ".join(same_family(cfg.attack_models))),
            "seconds_per_face": round(sec_per_face, 3),
        }
        if not item.faces:
            info["reason"] = "no faces to protect"
            return item.pixels.copy(), False, info
        pixels = self._final_pixels(job)
        rep = job.report or self.verify(job, pixels)
        x0, y0, x1, y1 = job.window
        region_ssim = ssim(item.pixels[y0:y1, x0:x1], pixels[y0:y1, x0:x1]) if x1 > x0 else None
        shrink = 1.0
        if cfg.ssim_floor is not None and region_ssim is not None and region_ssim < cfg.ssim_floor:
            # quality floor: shrink the perturbation until the face region meets it, then re-check
            for s in SHRINK_LADDER:
                cand = self._final_pixels(job, s)
                cs = ssim(item.pixels[y0:y1, x0:x1], cand[y0:y1, x0:x1])
                if cs is not None and cs >= cfg.ssim_floor:
                    pixels, region_ssim, shrink = cand, cs, s
                    rep = self.verify(job, pixels)
                    break
            else:
                info["quality_floor_violated"] = True
        info["shrink"] = shrink
        faces_info = []
        for fj, r in zip(job.faces, rep["faces"]):
            d: dict[str, Any] = {"face": fj.face_index, "steps": fj.steps, "protected": bool(r.get("ok"))}
            if fj.error:
                d["reason"] = fj.error
            else:
                d["distance_after"] = {k: v for k, v in r.items() if k != "ok"}
            if self.target is not None and not fj.error:
                d["target_distance"] = self._target_distance(pixels, fj)
            faces_info.append(d)
        info["faces"] = faces_info
        info["steps_used"] = max((f.steps for f in job.faces), default=0)
        info["ssim_region"] = None if region_ssim is None else round(float(region_ssim), 5)
        info["ssim"] = ssim(item.pixels, pixels)
        info["linf"] = int(np.abs(pixels.astype(np.int16) - item.pixels.astype(np.int16)).max())
        protected = bool(rep["ok"]) and not info.get("quality_floor_violated", False)
        if not protected:
            reasons = [f"face {d['face']}: " + d.get("reason", "did not clear threshold*(1+margin) within the budget")
                       for d in faces_info if not d["protected"]]
            if info.get("quality_floor_violated"):
                reasons.append(f"face-region SSIM below the floor {cfg.ssim_floor}")
            info["reason"] = "; ".join(reasons)
        return pixels, protected, info

    def _target_distance(self, pixels: np.ndarray, fj: _FaceJob) -> dict[str, float]:
        assert self.target is not None
        x01 = torch.from_numpy(pixels).permute(2, 0, 1)[None].float().to(self.device) / 255.0
        out = {}
        for name, rec in self.models.items():
            M = chip_matrix(rec.alignment, pixels, fj.face)
            with torch.no_grad():
                d = rec.descriptor(self._warp(x01, torch.from_numpy(M[None]), rec.alignment))
            out[name] = round(float(rec.distance(d, self.target[name][None])[0]), 4)
        return out


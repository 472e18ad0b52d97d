"""Cost of FSAP per face at 256 output: one Algorithm-7 iteration measured, the defaults projected.

Run:  OMP_NUM_THREADS=1 PYTHONPATH=. /work/venv/bin/python benchmarks/fsap_cost.py [--threads 1] [--gpu-tflops 20]

Full-size networks with random weights (cost does not depend on the values):
pSp GradualStyleEncoder (IR-SE50 FPN), StyleGAN2 FFHQ-1024 decoder + face_pool to
256, ArcFace IR-SE50 on pSp's ID crop, LPIPS-Alex, MSE and 1-SSIM. Measured once each,
exactly as :func:`anonymize.methods.fsap_core.run_fsap` does them:

* encoder: once per face;
* ID step: decode W+ -> ArcFace -> cosine loss, backward to W+ (this forward is also
  the previous iteration's stop test, so the fixed stop test costs nothing extra);
* attribute sub-step: one decode, then three separate backward passes to W+
  (MSE, LPIPS, 1-SSIM each get their own sign), k of them per iteration.

One iteration = ID step + k x attribute sub-step. Worst case per face = encoder +
N iterations (+1 final decode). FLOPs come from torch.utils.flop_counter
(convolutions/matmuls only); the GPU projection divides them by an assumed
*effective* throughput (``--gpu-tflops``, default 20 TFLOP/s, e.g. an A100 in
TF32 at ~15% utilisation or an RTX 3090/4090 in FP32 at ~50-25%).
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from anonymize.methods.fsap import attribute_losses, build_lpips
from anonymize.methods.fsap_core import FSAPConfig
from anonymize.nets.irse import IRSEBackbone, psp_id_crop
from anonymize.nets.psp import PSP


def measure(fn: Callable[[], object]) -> tuple[float, float]:
    """(seconds, GFLOP) of one call."""
    fc = FlopCounterMode(display=False)
    with fc:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
    return dt, fc.get_total_flops() / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gpu-tflops", type=float, default=20.0, help="assumed effective GPU throughput")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    psp = PSP().eval().requires_grad_(False)
    arc = IRSEBackbone().eval().requires_grad_(False)
    lp = build_lpips(None, None)
    build_s = time.perf_counter() - t0
    cfg = FSAPConfig()
    x = torch.rand(1, 3, 256, 256) * 2 - 1

    def decode(w: torch.Tensor) -> torch.Tensor:
        return psp.decode(w, resize=True, randomize_noise=False)

    with torch.no_grad():
        t_enc, f_enc = measure(lambda: psp.encode(x))
        w0 = psp.encode(x)
        target = arc(psp_id_crop(x))
    attrs = attribute_losses(x, lambda a, b: lp(a, b, normalize=False).mean())

    def id_step() -> None:
        w = w0.clone().requires_grad_(True)
        li = 1 - F.cosine_similarity(arc(psp_id_crop(decode(w))), target).mean()
        li.backward()  # same work as autograd.grad (FlopCounterMode does not support .grad)

    def attr_step() -> None:
        w = w0.clone().requires_grad_(True)
        xi = decode(w)
        names = list(attrs)
        for j, n in enumerate(names):
            attrs[n](xi).backward(retain_graph=j < len(names) - 1)

    def decode_only() -> None:
        with torch.no_grad():
            decode(w0)

    t_id, f_id = measure(id_step)
    t_attr, f_attr = measure(attr_step)
    t_dec, f_dec = measure(decode_only)
    it_s = t_id + cfg.k * t_attr
    it_f = f_id + cfg.k * f_attr
    worst_s = t_enc + cfg.n_iter * it_s + t_dec
    worst_f = f_enc + cfg.n_iter * it_f + f_dec
    gpu = args.gpu_tflops * 1e3  # GFLOP/s
    rows = [
        ("pSp encoder (once per face)", t_enc, f_enc),
        ("ID step: G1024 fwd+bwd, pool, ArcFace fwd+bwd", t_id, f_id),
        ("attribute sub-step: G fwd + 3 bwd (MSE, LPIPS, 1-SSIM)", t_attr, f_attr),
        ("decode only (final image)", t_dec, f_dec),
        (f"ONE ITERATION (ID + k={cfg.k} attribute sub-steps)", it_s, it_f),
        (f"defaults worst case: enc + N={cfg.n_iter} iterations + decode", worst_s, worst_f),
    ]
    print(f"threads={args.threads}  build {build_s:.1f}s  (random weights, batch 1, 256 output from 1024 synthesis)")
    print(f"{'part':62s} {'CPU s':>10s} {'GFLOP':>10s} {'GPU s @' + str(args.gpu_tflops) + 'TF':>14s}")
    for name, s, f in rows:
        print(f"{name:62s} {s:10.1f} {f:10.0f} {f / gpu:14.3f}")
    print(f"worst case per face at the defaults: CPU {worst_s / 3600:.1f} h, GPU ~{worst_f / gpu:.0f} s "
          f"(early stop at tau shortens both in proportion to the iterations used)")


if __name__ == "__main__":
    main()

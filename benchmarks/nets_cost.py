"""CPU cost of the FSAP networks: forward+backward time, parameters and FLOPs.

Run:  OMP_NUM_THREADS=2 PYTHONPATH=. python benchmarks/nets_cost.py [--threads 1 2] [--reps 1]

Weights are random (cost does not depend on values). Backward is taken with
respect to the input (W+ for the generator), as FSAP does; parameters are
frozen. FLOPs come from torch.utils.flop_counter.FlopCounterMode (convolutions
and matmuls only; elementwise ops are not counted).
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from anonymize.nets.irse import IRSEBackbone, psp_id_crop
from anonymize.nets.psp import GradualStyleEncoder
from anonymize.nets.stylegan2 import Generator


def frozen(m: torch.nn.Module) -> torch.nn.Module:
    for p in m.parameters():
        p.requires_grad_(False)
    return m.eval()


def cases() -> dict[str, tuple[torch.nn.Module | list[torch.nn.Module], Callable[[], torch.Tensor], Callable]]:
    torch.manual_seed(0)
    g = frozen(Generator(1024, 512, 8))
    arc = frozen(IRSEBackbone())
    enc = frozen(GradualStyleEncoder())
    pool = torch.nn.AdaptiveAvgPool2d(256)

    def g_fwd(w: torch.Tensor) -> torch.Tensor:
        return g([w], input_is_latent=True, randomize_noise=False)[0]

    def fsap_step(w: torch.Tensor) -> torch.Tensor:  # decode -> face_pool -> ID crop -> ArcFace
        return arc(psp_id_crop(pool(g_fwd(w))))

    return {
        "stylegan2_1024 (W+ [1,18,512])": (g, lambda: torch.randn(1, 18, 512), g_fwd),
        "ir_se50 (x [1,3,112,112])": (arc, lambda: torch.randn(1, 3, 112, 112), arc),
        "psp_encoder (x [1,3,256,256])": (enc, lambda: torch.randn(1, 3, 256, 256), enc),
        "fsap_id_step G1024+pool+crop+IRSE50": ([g, arc], lambda: torch.randn(1, 18, 512), fsap_step),
    }


def fwd_bwd(fn: Callable, make: Callable[[], torch.Tensor]) -> None:
    x = make().requires_grad_(True)
    fn(x).square().sum().backward()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--reps", type=int, default=1)
    args = ap.parse_args()
    rows = []
    for name, (mods, make, fn) in cases().items():
        mods = mods if isinstance(mods, list) else [mods]
        params = sum(p.numel() for m in mods for p in m.parameters())
        with FlopCounterMode(display=False) as fc:
            with torch.no_grad():
                fn(make())
        fwd_flops = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            fwd_bwd(fn, make)
        fb_flops = fc.get_total_flops()
        times = {}
        for t in args.threads:
            torch.set_num_threads(t)
            best_w = best_c = float("inf")
            for _ in range(args.reps):
                c0, w0 = time.process_time(), time.perf_counter()
                fwd_bwd(fn, make)
                best_w = min(best_w, time.perf_counter() - w0)
                best_c = min(best_c, time.process_time() - c0)
            times[t] = (best_w, best_c)
        rows.append((name, params, fwd_flops, fb_flops, times))
        print(f"{name}: done", flush=True)
    print()
    hdr = "| network | params | fwd GFLOP | fwd+bwd GFLOP | " + " | ".join(
        f"{t} thr wall s (CPU s)" for t in args.threads) + " |"
    print(hdr)
    print("|" + "---|" * (4 + len(args.threads)))
    for name, params, ff, fb, times in rows:
        cells = " | ".join(f"{times[t][0]:.1f} ({times[t][1]:.1f})" for t in args.threads)
        print(f"| {name} | {params / 1e6:.2f} M | {ff / 1e9:.1f} | {fb / 1e9:.1f} | {cells} |")


if __name__ == "__main__":
    main()

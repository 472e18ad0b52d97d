"""Cost of the DiffAE UNet on CPU: seconds per forward and forward+backward, FLOPs, parameters.

Run:  PYTHONPATH=. python benchmarks/diffae_cost.py [--configs reduced32,ffhq256] [--threads 1,2] [--reps 2]

Backward = gradients w.r.t. the semantic code and x_t with frozen weights (the Diffusion De-ID
use case). FLOPs come from torch.utils.flop_counter.FlopCounterMode (matmul/conv only).
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from anonymize.nets.diffae import BeatGANsAutoencModel, DiffAEConfig


def _flops(net: BeatGANsAutoencModel, cfg: DiffAEConfig, backward: bool) -> int:
    x, t, z = _inputs(cfg, backward)
    with FlopCounterMode(display=False) as fc:
        out = net(x, t, z)
        if backward:
            out.square().mean().backward()
    return fc.get_total_flops()


def _inputs(cfg: DiffAEConfig, grad: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, cfg.image_size, cfg.image_size, generator=g).requires_grad_(grad)
    z = torch.randn(1, cfg.enc_out_channels, generator=g).requires_grad_(grad)
    return x, torch.tensor([500]), z


def _time(net: BeatGANsAutoencModel, cfg: DiffAEConfig, backward: bool, reps: int) -> tuple[float, float]:
    x, t, z = _inputs(cfg, backward)
    walls, cpus = [], []
    for i in range(reps + 1):
        w0, c0 = time.perf_counter(), time.process_time()
        with torch.set_grad_enabled(backward):
            out = net(x, t, z)
            if backward:
                out.square().mean().backward()
        if i:  # first run is warm-up
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
    return min(walls), min(cpus)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="reduced32,ffhq256")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    print("| config | params UNet | params encoder | GFLOP fwd | GFLOP fwd+bwd | threads | fwd wall s | fwd CPU s | fwd+bwd wall s | fwd+bwd CPU s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in a.configs.split(","):
        cfg = getattr(DiffAEConfig, name)()
        torch.manual_seed(0)
        net = BeatGANsAutoencModel(cfg).eval().requires_grad_(False)
        n_enc = sum(p.numel() for p in net.encoder.parameters())
        n_unet = sum(p.numel() for p in net.parameters()) - n_enc - (
            sum(p.numel() for p in net.latent_net.parameters()) if net.latent_net is not None else 0)
        f_fwd = _flops(net, cfg, False) / 1e9
        f_bwd = _flops(net, cfg, True) / 1e9
        for th in (int(s) for s in a.threads.split(",")):
            torch.set_num_threads(th)
            fw, fc = _time(net, cfg, False, a.reps)
            bw, bc = _time(net, cfg, True, a.reps)
            print(f"| {name} | {n_unet:,} | {n_enc:,} | {f_fwd:.1f} | {f_bwd:.1f} | {th} | {fw:.2f} | {fc:.2f} | {bw:.2f} | {bc:.2f} |", flush=True)


if __name__ == "__main__":
    main()

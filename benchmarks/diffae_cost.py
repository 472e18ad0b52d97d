"""Cost of the DiffAE UNet on CPU: seconds per forward and forward+backward, FLOPs, parameters.

Run:  PYTHONPATH=. python benchmarks/diffae_cost.py [--configs reduced32,ffhq256] [--threads 1,2] [--reps 2]
      PYTHONPATH=. python benchmarks/diffae_cost.py --project   (FLOPs only, meta device, seconds)

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


def _meta_flops(fn) -> float:  # type: ignore[no-untyped-def]
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops() / 1e9


def project(t_enc: int, t_render: int, steps: int, gflops_per_s: float) -> None:
    """FLOPs of the FFHQ-256 parts (meta device, nothing computed) and a per-face projection."""
    from anonymize.nets.farl import FaRLVisual

    with torch.device("meta"):
        net = BeatGANsAutoencModel(DiffAEConfig.ffhq256(with_latent=True)).requires_grad_(False)
        farl = FaRLVisual().requires_grad_(False)
        x = torch.randn(1, 3, 256, 256, requires_grad=True)
        z = torch.randn(1, 512, requires_grad=True)
        img = torch.randn(1, 3, 224, 224, requires_grad=True)
        unet_f = _meta_flops(lambda: net(x.detach(), torch.tensor([500]), z.detach()))
        unet_fb = _meta_flops(lambda: net(x, torch.tensor([500]), z).sum().backward())
        enc_f = _meta_flops(lambda: net.encoder(x.detach()))
        lat_f = _meta_flops(lambda: net.latent_net(z.detach(), torch.tensor([5])))
        farl_f = _meta_flops(lambda: farl(img.detach()))
        farl_fb = _meta_flops(lambda: farl(img).tokens.sum().backward())
    print("| part | GFLOP |\n|---|---|")
    for k, v in [("UNet fwd", unet_f), ("UNet fwd+bwd (input grads)", unet_fb), ("semantic encoder fwd", enc_f),
                 ("latent MLP fwd", lat_f), ("FaRL fwd", farl_f), ("FaRL fwd+bwd", farl_fb)]:
        print(f"| {k} | {v:.1f} |")
    encode = enc_f + t_enc * unet_f
    per_iter = t_render * (unet_f + unet_fb) + farl_fb  # per-step checkpointing recomputes the forward
    optimise = steps * per_iter
    final = t_render * unet_f
    total = encode + optimise + final
    print(f"\nper face (T_enc={t_enc}, T_render={t_render}, S={steps}, checkpointed steps; ArcFace and fake pool excluded):")
    for k, v in [("DDIM inversion", encode), ("optimisation", optimise), ("final render", final), ("total", total)]:
        print(f"  {k:15s} {v:12,.0f} GFLOP  ~ {v / gflops_per_s / 3600:6.2f} core-hours at {gflops_per_s:.0f} GFLOP/s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="reduced32,ffhq256")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--project", action="store_true", help="only FLOPs and the per-face projection")
    ap.add_argument("--t-enc", type=int, default=250)
    ap.add_argument("--t-render", type=int, default=20)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--gflops-per-s", type=float, default=60.0, help="measured single-core rate for the projection")
    a = ap.parse_args()
    if a.project:
        project(a.t_enc, a.t_render, a.steps, a.gflops_per_s)
        return
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

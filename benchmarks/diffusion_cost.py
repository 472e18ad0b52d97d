"""Diffusion De-ID cost: seconds per face per optimisation step (CPU, measured at a reduced
config) and the full-config cost projected by FLOP count (torch.utils.flop_counter).

Run:  OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/diffusion_cost.py [--reps 3] [--batch 1] [--gpu-tflops 8]

One optimisation step = render x_A = Dec(z_A, x_T) through ``t_eval`` DDIM steps (per-step
checkpointing, as the method runs) + ArcFace IR-SE50 on the ID crop + FaRL ViT-B/16 tokens
+ backward to z_A + Adam. Reduced config: the 32x32 DiffAE of the fixtures (``reduced32``,
t_eval 10) with the full-size FaRL and IR-SE50 (random weights; cost does not depend on
values). Full config: DiffAE FFHQ-256, t_eval 20 (spec defaults); its FLOPs are counted on
the meta device (nothing is allocated). Projections assume the same achieved FLOP/s as the
reduced run (CPU) or the stated effective TFLOP/s (GPU).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from anonymize.methods.diffusion_core import attribute_loss, identity_loss
from anonymize.nets.diffae import DiffAE, DiffAEConfig
from anonymize.nets.farl import FaRLVisual, preprocess
from anonymize.nets.irse import IRSEBackbone, psp_id_crop


def build(cfg: DiffAEConfig, device: str) -> tuple[DiffAE, FaRLVisual, IRSEBackbone]:
    with torch.device(device):
        m = DiffAE(cfg).eval().requires_grad_(False)
        farl = FaRLVisual().eval().requires_grad_(False)
        arc = IRSEBackbone().eval().requires_grad_(False)
    return m, farl, arc


def opt_step(m: DiffAE, farl: FaRLVisual, arc: IRSEBackbone, z: torch.Tensor, x_T: torch.Tensor, t_eval: int,
             e_ref: torch.Tensor, tok_ref: torch.Tensor, opt: torch.optim.Optimizer | None) -> None:
    x = m.render(x_T, z, T=t_eval, checkpoint=True)
    x256 = x if x.shape[-1] == 256 else F.interpolate(x, size=256, mode="bilinear", align_corners=False)
    l_id, _ = identity_loss(arc(psp_id_crop(x256)), e_ref, "iis")
    tok = farl(preprocess((x + 1) / 2, 224)).patch_tokens
    loss = (10 * l_id + 0.1 * attribute_loss(tok, tok_ref)).sum()
    loss.backward()
    if opt is not None:
        opt.step()
        opt.zero_grad(set_to_none=True)


def step_flops(cfg: DiffAEConfig, t_eval: int, batch: int, device: str) -> float:
    m, farl, arc = build(cfg, device)
    s = cfg.image_size
    with torch.device(device):
        z = torch.randn(batch, cfg.enc_out_channels).requires_grad_(True)
        x_T = torch.randn(batch, 3, s, s)
        e_ref, tok_ref = torch.randn(batch, 512), torch.randn(batch, 196, 768)
    with FlopCounterMode(display=False) as fc:
        opt_step(m, farl, arc, z, x_T, t_eval, e_ref, tok_ref, None)
    return float(fc.get_total_flops())


def unet_forward_flops(cfg: DiffAEConfig) -> float:
    with torch.device("meta"):
        m = DiffAE(cfg).eval()
        x, z = torch.randn(1, 3, cfg.image_size, cfg.image_size), torch.randn(1, cfg.enc_out_channels)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        m.eps(x, torch.tensor([500], device="meta"), z)
    return float(fc.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--gpu-tflops", type=float, default=8.0,
                    help="assumed effective GPU fp32 throughput (A100 peak 19.5; ~40%% utilisation)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    red, t_red = DiffAEConfig.reduced32(), 10
    full, t_full = DiffAEConfig.ffhq256(with_latent=True), 20
    torch.manual_seed(0)
    m, farl, arc = build(red, "cpu")
    b = a.batch
    z = torch.randn(b, red.enc_out_channels).requires_grad_(True)
    x_T = torch.randn(b, 3, 32, 32)
    e_ref, tok_ref = F.normalize(torch.randn(b, 512), dim=1), torch.randn(b, 196, 768)
    opt = torch.optim.Adam([z], lr=0.01)
    times = []
    for i in range(a.reps + 1):
        t0 = time.perf_counter()
        opt_step(m, farl, arc, z, x_T, t_red, e_ref, tok_ref, opt)
        if i:  # first call is warm-up
            times.append(time.perf_counter() - t0)
    sec_step = min(times) / b
    f_red = step_flops(red, t_red, 1, "cpu")
    f_full = step_flops(full, t_full, 1, "meta")
    achieved = f_red / sec_step
    u_full = unet_forward_flops(full)
    lat_cfg = full.latent
    # Per face with the spec defaults: inversion (250 UNet forwards), 50 optimisation steps,
    # final render (20 forwards); the pool (64 fakes x 20 forwards, latent MLP negligible) is
    # shared by every face and cached, shown separately.
    enc, final, pool = 250 * u_full, 20 * u_full, 64 * 20 * u_full
    per_face = enc + 50 * f_full + final
    print(f"threads 1, batch {b}, torch {torch.__version__}")
    print(f"{'config':<42}{'GFLOP/step':>12}{'s/face/step':>13}")
    print(f"{'reduced32 DiffAE t_eval=10 + FaRL + IR-SE50':<42}{f_red / 1e9:>12.1f}{sec_step:>13.3f}  (measured; {achieved / 1e9:.1f} GFLOP/s)")
    print(f"{'FFHQ-256 DiffAE t_eval=20 + FaRL + IR-SE50':<42}{f_full / 1e9:>12.1f}{f_full / achieved:>13.1f}  (projected CPU, same GFLOP/s)")
    print(f"{'':<42}{'':>12}{f_full / (a.gpu_tflops * 1e12):>13.3f}  (projected GPU at {a.gpu_tflops} TFLOP/s)")
    print(f"FFHQ-256 UNet forward: {u_full / 1e9:.1f} GFLOP; latent MLP width {lat_cfg.num_hid_channels} (negligible)")
    print(f"per face, spec defaults (T_enc 250 + 50 steps + final 20): {per_face / 1e12:.2f} TFLOP -> "
          f"CPU {per_face / achieved / 3600:.2f} h, GPU {per_face / (a.gpu_tflops * 1e12):.1f} s")
    print(f"pool of 64 fakes (once per settings, cached): {pool / 1e12:.2f} TFLOP -> "
          f"CPU {pool / achieved / 3600:.2f} h, GPU {pool / (a.gpu_tflops * 1e12):.1f} s")


if __name__ == "__main__":
    main()

"""Seed 002 (ITN and ITN-Attack) trend reproduction on the offline CIFAR-10 images.

Data: ../shared/corpus/cifar/cifar10_test_jpg (10 classes x 200 images, 32 px, JPEG
re-encodes of the CIFAR-10 test set), split stratified 72/8/20 (train / validation
for model selection / test for every number; anonymize.training.itn.split).

Per alpha: psi (ResNet-20) is trained once on plain images (first alpha) and reused
(--service-from) so every alpha sees the same psi; h (U-Net) is trained with
L = CE - alpha * L_feat (phi = ST-LPIPS VGG relu2_2 unless --features random-vgg).
Then the ITN-Attack: the attacker applies the public h to the training images
(uint8, as files), trains an inverse U-Net on (h(x), x) and reconstructs the test
images from h(x_test). Printed: psi accuracy on plain test images and on h(x_test),
SSIM/PSNR(x, h(x)), and the attack's median PSNR/SSIM next to the no-information
baseline (the attacker's mean training image). The paper's finding: the attack stays
near the baseline for alpha >= 0.005 and is far above it at alpha = 0.

Usage (the machine is shared: nice, 2 threads):
    nice python benchmarks/itn_cifar.py --phi-file /path/to/vgg_shift_tolerant.pth --alphas 0,0.005,0.1
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anonymize.evaluation.attack_itn import AttackBudget, baselines, invert, metric_block, train_inverse  # noqa: E402
from anonymize.training.dpimage_xai import load_dataset  # noqa: E402
from anonymize.training.itn import ITNTrainConfig, build_unet, load_weights, split, train, transform  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/corpus/cifar/cifar10_test_jpg"))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--alphas", default="0,0.005,0.1")
    ap.add_argument("--features", default="stlpips-vgg")
    ap.add_argument("--phi-file", default=None, help="vgg_shift_tolerant.pth (else fetch-weights stlpips-vgg)")
    ap.add_argument("--feat-norm", default="energy")
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--epochs-service", type=int, default=30)
    ap.add_argument("--epochs-itn", type=int, default=15)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--attack-recipe", default="fast")
    ap.add_argument("--attack-epochs", type=int, default=15)
    ap.add_argument("--attack-width", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="/tmp/itn_cifar_bench")
    ap.add_argument("--service-from", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    alphas = [float(v) for v in a.alphas.split(",") if v.strip()]
    service_from = a.service_from
    rows = []
    for alpha in alphas:
        w = out / f"itn_a{alpha:g}.pt"
        cfg = ITNTrainConfig(data=a.data, limit=a.limit, alpha=alpha, features=a.features, features_file=a.phi_file,
                             feat_norm=a.feat_norm, width=a.width, batch=a.batch, epochs_itn=a.epochs_itn,
                             epochs_service=0 if service_from else a.epochs_service, service_from=service_from)
        t0 = time.perf_counter()
        if not w.is_file():
            train(cfg, w, log=lambda s: print(f"  [{alpha:g}] {s}", flush=True))
        meta = load_weights(w)
        service_from = service_from or str(w)
        m = meta["metrics"]
        # the ITN-Attack: pairs from the public h on the training images, evaluated on the test images
        x, y, _ = load_dataset(a.data, cfg.size, limit=a.limit, seed=cfg.seed)
        tr, va, te = split(y, cfg)
        unet = build_unet(meta)
        xtr = torch.cat([x[tr], x[va]])
        htr, hte = transform(unet, xtr), transform(unet, x[te])
        budget = AttackBudget(recipe=a.attack_recipe, epochs=a.attack_epochs, width=a.attack_width, size=cfg.size)
        net, info = train_inverse(htr, xtr, budget, log=lambda s: print(f"  [{alpha:g}] {s}", flush=True))
        rec = invert(net, hte)
        plain_te = x[te].permute(0, 2, 3, 1).numpy()
        att = metric_block(plain_te, rec.permute(0, 2, 3, 1).numpy())
        base = baselines(xtr.permute(0, 2, 3, 1).numpy(), plain_te)
        row = {
            "alpha": alpha, "acc_plain": m["service_accuracy_plain"], "acc_itn": m["service_accuracy_itn"],
            "ssim_x_hx": m["ssim_x_hx"], "psnr_x_hx": m["psnr_x_hx"], "l_feat": m["l_feat_test"],
            "attack_psnr_median": att["psnr"]["median"], "attack_ssim_median": att["ssim"]["median"],
            "baseline_psnr_median": base["mean_image"]["psnr"]["median"],
            "baseline_ssim_median": base["mean_image"]["ssim"]["median"],
            "channel_mean_psnr_median": base["channel_mean"]["psnr"]["median"],
            "attack_box": att["psnr"], "attack_train": info, "itn_best_epoch": m["itn"]["best_epoch"],
            "service_best_epoch": m["service"].get("best_epoch"), "feature_energy": m["feature_energy"],
            "features": meta["features"], "counts": {k: m[k] for k in ("train_images", "validation_images", "test_images")},
            "elapsed_s": round(time.perf_counter() - t0, 1),
        }
        rows.append(row)
        (out / f"row_a{alpha:g}.json").write_text(json.dumps(row, indent=1))
        print(json.dumps({k: v for k, v in row.items() if not isinstance(v, dict)}), flush=True)
    print()
    print(f"data {a.data}: {rows[0]['counts'] if rows else ''}; psi ResNet-20 {a.epochs_service} epochs, "
          f"h U-Net width {a.width} {a.epochs_itn} epochs (SGD 0.1, batch {a.batch}); attack {a.attack_recipe} "
          f"{a.attack_epochs} epochs width {a.attack_width}; phi {a.features} ({a.feat_norm})")
    print("| alpha | psi acc plain | psi acc on h(x) | SSIM(x,h(x)) | PSNR(x,h(x)) | attack PSNR median | baseline PSNR median "
          "| gain dB | attack SSIM median | baseline SSIM median |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        gain = r["attack_psnr_median"] - r["baseline_psnr_median"]
        print(f"| {r['alpha']:g} | {r['acc_plain']:.4f} | {r['acc_itn']:.4f} | {r['ssim_x_hx']:.4f} | {r['psnr_x_hx']:.2f} "
              f"| {r['attack_psnr_median']:.2f} | {r['baseline_psnr_median']:.2f} | {gain:+.2f} "
              f"| {r['attack_ssim_median']:.4f} | {r['baseline_ssim_median']:.4f} |")


if __name__ == "__main__":
    main()

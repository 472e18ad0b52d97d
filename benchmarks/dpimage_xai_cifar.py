"""Seed 000 (``dpimage --variant xai``) trend reproduction on the offline CIFAR-10 images.

Data: ../shared/corpus/cifar/cifar10_test_jpg (10 classes x 200 images, 32 px),
split 80/20 stratified (anonymize.training.dpimage_xai). The explainer f' is
trained once (first run) and reused by the others (--explainer-from), so every
setting sees the same f'. For each sigma the runs are: the ablation without the
explanation loss, then each (epsilon, delta=1e-5) with the explanation loss
(--exp-loss code by default, the reference code's objective). A very large epsilon
(e.g. 1e6) is the control "explanation loss without DP noise".

Printed per run: f' accuracy on clean held-out images, service accuracy f(g(x)),
their ratio, SSIM(x, g(x)) and SSIM(x, n(x)) at the same sigma, and training
throughput. The paper's trends: with L_exp > without; eps 0.9 >= eps 0.1;
SSIM(x, g(x)) ~ SSIM(x, n(x)).

Usage:
    OMP_NUM_THREADS=1 python benchmarks/dpimage_xai_cifar.py --sigmas 3 --epsilons 0.1,0.9
    OMP_NUM_THREADS=1 python benchmarks/dpimage_xai_cifar.py --no-ablation --explainer-from OUT/s3_none.pt \
        --epsilons 1e6 --exp-loss paper
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anonymize.training.dpimage_xai import XAITrainConfig, train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/corpus/cifar/cifar10_test_jpg"))
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--sigmas", default="3")
    ap.add_argument("--epsilons", default="0.1,0.9")
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--exp-loss", default="code")
    ap.add_argument("--epochs-explainer", type=int, default=15)
    ap.add_argument("--epochs-g", type=int, default=4)
    ap.add_argument("--epochs-f", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3, help="explainer and service lr (paper 1e-4 over 50/100 epochs of 50k images)")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--g-channels", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="/tmp/dpimage_xai_bench")
    ap.add_argument("--explainer-from", default=None, help="reuse this weights file's explainer (e.g. an earlier run's s3_none.pt)")
    ap.add_argument("--no-ablation", action="store_true", help="skip the run without the explanation loss")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    base = dict(data=a.data, limit=a.limit, delta=a.delta, epochs_explainer=a.epochs_explainer, epochs_g=a.epochs_g,
                epochs_f=a.epochs_f, lr_explainer=a.lr, lr_f=a.lr, hidden=a.hidden, g_channels=a.g_channels)
    first: str | None = a.explainer_from
    rows = []
    for sigma in [float(s) for s in a.sigmas.split(",")]:
        runs = ([] if a.no_ablation else [("none", None)]) + [(a.exp_loss, float(e)) for e in a.epsilons.split(",") if e]
        for exp_loss, eps in runs:
            tag = f"s{sigma:g}_{exp_loss}" + (f"_e{eps:g}" if eps else "")
            cfg = XAITrainConfig(**base, sigma=sigma, exp_loss=exp_loss, epsilon=eps or 0.9)
            if first:
                cfg.explainer_from, cfg.epochs_explainer = first, 0
            t0 = time.perf_counter()
            res = train(cfg, out / f"{tag}.pt", log=lambda s, t=tag: print(f"[{t}] {s}", flush=True))
            first = first or str(out / f"{tag}.pt")
            m = res["metrics"]
            row = {"sigma": sigma, "setting": "without L_exp" if exp_loss == "none" else f"{exp_loss}, eps={eps:g}, delta={a.delta:g}",
                   "noise_std": round(m["noise_std"], 3) if exp_loss != "none" else None,
                   "explainer_acc": m["explainer_accuracy"], "service_acc": m["service_accuracy_on_g"], "ratio": m["accuracy_ratio"],
                   "ssim_x_gx": m["ssim_x_gx"], "ssim_x_nx": m["ssim_x_noise"], "g_img_s": m.get("g_train_img_s"),
                   "f_img_s": m.get("f_train_img_s"), "minutes": round((time.perf_counter() - t0) / 60, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    keys = list(rows[0])
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()

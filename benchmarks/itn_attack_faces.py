"""ITN-Attack and everyday transforms on corpus photos, for every offline method at its defaults.

Data: ../shared/corpus/faces/<person>/..., people taken in sha256 order of their
folder name, up to 2 photos each, until --n photos (default 200: 100 people). The
photos are copied to OUT/originals (never into the repository).

For each method: ``anonymize.protect`` at its defaults (``ope`` with one fixed key
file, generated once; ``itn`` with --itn-weights), then ``anonymize.evaluate`` with
the default ``--transforms`` and, for the attacked methods, ``--attack itn`` at the
CPU defaults (fast recipe: Adam, U-Net width 16, 30 epochs, 64 px face crops;
attacker = half of the people, by folder; evaluated = the other half).

Printed: per method the protect time, the ITN-Attack table (reconstruction PSNR/SSIM
median vs the mean-image baseline and the protected crops; SPR if located per
recognizer as published, after inversion, and the resolution ceiling), and the
transform table (SPR if located and SPR per transform, black-box worst).

Usage (shared machine: nice, one thread):
    OMP_NUM_THREADS=1 nice python benchmarks/itn_attack_faces.py --out /tmp/itn_faces \\
        --attack-methods ope,dpimage,ap,blur --transform-methods blur,pixelate,solid,ope,dpimage,ap,itn \\
        --itn-weights /tmp/itn_cifar_bench/itn_a0.005.pt
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anonymize  # noqa: E402
from anonymize.evaluation.attack_itn import AttackBudget, AttackOptions  # noqa: E402


def select(corpus: Path, n: int, per_person: int) -> list[Path]:
    people = sorted((d for d in corpus.iterdir() if d.is_dir()), key=lambda d: hashlib.sha256(d.name.encode()).hexdigest())
    out: list[Path] = []
    for d in people:
        files = sorted(f for f in d.iterdir() if f.is_file())
        if len(files) < 2:
            continue
        out.extend(files[:per_person])
        if len(out) >= n:
            break
    return out[:n] if len(out) >= n else out


def fmt(v: object) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=str(Path(__file__).resolve().parents[2] / "shared/corpus/faces"))
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--per-person", type=int, default=2)
    ap.add_argument("--out", default="/tmp/itn_faces_bench")
    ap.add_argument("--attack-methods", default="ope,dpimage,ap,blur")
    ap.add_argument("--transform-methods", default="blur,pixelate,solid,ope,dpimage,ap,itn")
    ap.add_argument("--itn-weights", default=None, help="weights for itn (e.g. from benchmarks/itn_cifar.py)")
    ap.add_argument("--recognizers", default="dlib-resnet,dlib-native")
    ap.add_argument("--attack-epochs", type=int, default=None)
    ap.add_argument("--attack-recipe", default="fast")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    orig = out / "originals"
    files = select(Path(a.corpus), a.n, a.per_person)
    if not orig.is_dir():
        for f in files:
            dst = orig / f.parent.name / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dst)
    print(f"{len(files)} photos of {len({f.parent.name for f in files})} people in {orig}", flush=True)
    attack = [m for m in a.attack_methods.split(",") if m]
    trans = [m for m in a.transform_methods.split(",") if m]
    methods = list(dict.fromkeys(attack + trans))
    results = {}
    for m in methods:
        if m == "itn" and not a.itn_weights:
            print("itn: skipped (no --itn-weights)")
            continue
        prot = out / m
        params: dict[str, str] = {}
        if m == "ope":
            params["key_file"] = str(out / "ope.key")  # one fixed key for the run (created 0600 when absent)
        if m == "itn":
            params["weights"] = str(a.itn_weights)
        t0 = time.perf_counter()
        if not (prot / "anonymize-report.json").is_file():
            run = anonymize.protect([orig], method=m, params=params, output=prot, workers=1)
            print(f"{m}: protect exit {run.exit_code}, {run.summary.ok} ok, {run.summary.protected} protected, "
                  f"{run.summary.failed} failed, {time.perf_counter() - t0:.0f} s", flush=True)
        protect_s = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        report = out / f"{m}.evaluation.json"
        if not report.is_file():
            ao = None
            if m in attack:
                ao = AttackOptions(budget=AttackBudget(recipe=a.attack_recipe, epochs=a.attack_epochs),
                                   log=lambda s, m=m: print(f"  [{m}] {s}", flush=True))
            res = anonymize.evaluate(orig, prot, report=report, recognizers=tuple(a.recognizers.split(",")),
                                     transforms="default" if m in trans else None, attack="itn" if m in attack else None,
                                     attack_options=ao)
            print(f"{m}: evaluate exit {res.exit_code}, {time.perf_counter() - t0:.0f} s", flush=True)
        s = json.loads(report.read_text())["summary"]
        s["_protect_s"] = protect_s
        results[m] = s

    print("\n## ITN-Attack (fast recipe defaults unless stated; attacker = half of the people)")
    print("| method | attacker samples | evaluated | recon PSNR median | baseline PSNR median | protected PSNR median "
          "| recon SSIM median | baseline SSIM median | verdict | attack s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for m in attack:
        at = results.get(m, {}).get("attack_itn")
        if not at:
            continue
        r, b, p = at["reconstruction"], at["baseline"]["mean_image"], at["protected"]
        print(f"| {m} | {at['train_samples']} | {at['evaluated_samples']} | {fmt(r['psnr']['median'])} | "
              f"{fmt(b['psnr']['median'])} | {fmt(p['psnr']['median'])} | {fmt(r['ssim']['median'])} | "
              f"{fmt(b['ssim']['median'])} | {'robust' if at['verdict']['robust'] else 'NOT robust'} "
              f"({at['verdict']['gain_db']:+.2f} dB) | {at['elapsed_s']:.0f} |")
    print("\n## Re-identification after inversion: SPR if located (SPR) per recognizer")
    print("| method | recognizer | published | after inversion | resolution ceiling |")
    print("|---|---|---|---|---|")
    for m in attack:
        idn = (results.get(m, {}).get("attack_itn") or {}).get("identity")
        if not idn:
            continue
        for name, r in idn["after_inversion"]["recognizers"].items():
            b = idn["before"]["recognizers"].get(name, {})
            c = idn["resolution_ceiling"]["recognizers"].get(name, {})
            print(f"| {m} | {name} | {fmt(b.get('spr_aligned'))} ({fmt(b.get('spr'))}) | {fmt(r.get('spr_aligned'))} "
                  f"({fmt(r.get('spr'))}) | {fmt(c.get('spr_aligned'))} ({fmt(c.get('spr'))}) |")
    print("\n## Everyday transforms: SPR if located / SPR / SDR (dlib-resnet), each transform applied once")
    names = None
    for m in trans:
        trs = results.get(m, {}).get("transforms")
        if not trs:
            continue
        if names is None:
            names = list(trs)
            print("| method | none | " + " | ".join(names) + " |")
            print("|---|---|" + "---|" * len(names))
        base = results[m]
        rec0 = (base.get("recognizers") or {}).get("dlib-resnet", {})
        cells = [f"{fmt(rec0.get('spr_aligned'))} / {fmt(base.get('spr'))} / {fmt(base.get('sdr'))}"]
        for n in names:
            t = trs[n]
            r = (t.get("recognizers") or {}).get("dlib-resnet", {})
            cells.append(f"{fmt(r.get('spr_aligned'))} / {fmt(t.get('spr'))} / {fmt(t.get('sdr'))}")
        print(f"| {m} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

"""``--fail-under``: turn summary numbers into exit code 3 for CI jobs.

A gate is ``name=value``; ``name@TRANSFORM=value`` applies it to the metrics
measured after that everyday transform (``--transforms``; a gated transform is
evaluated even when ``--transforms`` does not list it).

Example:
    >>> parse_gates("ssim=0.8,black_box_spr=0.9")
    {'ssim': 0.8, 'black_box_spr': 0.9}
    >>> check_gates({"black_box": {"spr_min": 0.5}}, {"black_box_spr": 0.9})["black_box_spr"]["passed"]
    False
    >>> parse_gates("spr@JPEG:75.0=0.9")
    {'spr@jpeg:75': 0.9}
    >>> check_gates({"transforms": {"jpeg:75": {"spr": 0.4}}}, {"spr@jpeg:75": 0.9})["spr@jpeg:75"]["value"]
    0.4
"""
from __future__ import annotations

from typing import Any

from ..errors import UsageError

# Gate name -> (summary key, dotted for nested, and direction). "min": value must be >= threshold.
GATES: dict[str, tuple[str, str]] = {
    "ssim": ("ssim_mean", "min"),
    "psnr": ("psnr_mean", "min"),
    "face_ssim": ("face_ssim_mean", "min"),
    "spr": ("spr", "min"),
    "black_box_spr": ("black_box.spr_min", "min"),  # the worst SPR over recognizers not attacked
    "sdr_max": ("sdr", "max"),
    "rank1_max": ("gallery_rank1", "max"),
}
# Gates that also exist per transform (``name@jpeg:75``): the keys of each ``summary.transforms`` block.
TRANSFORM_GATES = ("ssim", "psnr", "face_ssim", "spr", "black_box_spr", "sdr_max")


def split_gate(name: str) -> tuple[str, str | None]:
    """``"spr@jpeg:75"`` -> ``("spr", "jpeg:75")``; ``"spr"`` -> ``("spr", None)``."""
    base, _, tr = name.partition("@")
    return base, (tr or None)


def parse_gates(spec: str | None) -> dict[str, float]:
    """Parse ``name=value,...``; raises UsageError for unknown gates, transforms or bad numbers."""
    from .transforms import parse_transform

    if not spec:
        return {}
    gates: dict[str, float] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise UsageError(f"--fail-under: expected name=value, got {part!r}")
        k, v = (s.strip() for s in part.rsplit("=", 1))
        base, tr = split_gate(k.lower() if "@" in k else k)
        if base not in GATES:
            raise UsageError(f"--fail-under: unknown gate {base!r}; choose from {', '.join(GATES)} "
                             f"(per transform: {', '.join(TRANSFORM_GATES)} as NAME@TRANSFORM, e.g. spr@jpeg:75)")
        if tr is not None:
            if base not in TRANSFORM_GATES:
                raise UsageError(f"--fail-under: {base} has no per-transform value; per transform: {', '.join(TRANSFORM_GATES)}")
            k = f"{base}@{parse_transform(tr).name}"
        try:
            gates[k] = float(v)
        except ValueError:
            raise UsageError(f"--fail-under: {k} needs a number, got {v!r}") from None
    return gates


def gated_transforms(gates: dict[str, float]) -> list[str]:
    """The transforms the gates refer to, in order of first mention."""
    out: list[str] = []
    for name in gates:
        tr = split_gate(name)[1]
        if tr and tr not in out:
            out.append(tr)
    return out


def _lookup(summary: dict[str, Any], key: str) -> Any:
    val: Any = summary
    for part in key.split("."):
        val = val.get(part) if isinstance(val, dict) else None
    return val


def check_gates(summary: dict[str, Any], gates: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Each gate's value, threshold and verdict; a missing value (None) fails its gate."""
    out = {}
    for name, thr in gates.items():
        base, tr = split_gate(name)
        key, direction = GATES[base]
        val = _lookup(summary, key) if tr is None else _lookup((summary.get("transforms") or {}).get(tr) or {}, key)
        ok = val is not None and (val >= thr if direction == "min" else val <= thr)
        metric = key if tr is None else f"transforms.{tr}.{key}"
        out[name] = {"metric": metric, "value": val, "threshold": thr, "direction": direction, "passed": bool(ok)}
    return out

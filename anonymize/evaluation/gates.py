"""``--fail-under``: turn summary numbers into exit code 3 for CI jobs.

Example:
    >>> parse_gates("ssim=0.8,black_box_spr=0.9")
    {'ssim': 0.8, 'black_box_spr': 0.9}
    >>> check_gates({"black_box": {"spr_min": 0.5}}, {"black_box_spr": 0.9})["black_box_spr"]["passed"]
    False
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


def parse_gates(spec: str | None) -> dict[str, float]:
    """Parse ``name=value,...``; raises UsageError for unknown gates or bad numbers."""
    if not spec:
        return {}
    gates: dict[str, float] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise UsageError(f"--fail-under: expected name=value, got {part!r}")
        k, v = (s.strip() for s in part.split("=", 1))
        if k not in GATES:
            raise UsageError(f"--fail-under: unknown gate {k!r}; choose from {', '.join(GATES)}")
        try:
            gates[k] = float(v)
        except ValueError:
            raise UsageError(f"--fail-under: {k} needs a number, got {v!r}") from None
    return gates


def _lookup(summary: dict[str, Any], key: str) -> Any:
    val: Any = summary
    for part in key.split("."):
        val = val.get(part) if isinstance(val, dict) else None
    return val


def check_gates(summary: dict[str, Any], gates: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Each gate's value, threshold and verdict; a missing value (None) fails its gate."""
    out = {}
    for name, thr in gates.items():
        key, direction = GATES[name]
        val = _lookup(summary, key)
        ok = val is not None and (val >= thr if direction == "min" else val <= thr)
        out[name] = {"metric": key, "value": val, "threshold": thr, "direction": direction, "passed": bool(ok)}
    return out

"""Device selection: ``auto`` picks CUDA when present, else CPU.

Example:
    >>> resolve_device("cpu")
    'cpu'
"""
from __future__ import annotations

import os
import sys

from .errors import UsageError

# Device nodes a CUDA (or ROCm) driver creates; without any of them torch.cuda.is_available() is False,
# so ``auto`` can answer "cpu" without importing torch (3 s) for runs that never need it.
_GPU_NODES = ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg")


def resolve_device(spec: str = "auto") -> str:
    """Validate ``auto|cpu|cuda|cuda:N`` and return a concrete torch device string."""
    spec = (spec or "auto").strip().lower()
    if spec == "cpu":
        return "cpu"
    if spec == "auto" and "torch" not in sys.modules and not any(os.path.exists(p) for p in _GPU_NODES):
        return "cpu"
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {spec}: no CUDA device is available on this machine; use --device cpu or auto")
        if ":" in spec:
            try:
                idx = int(spec.split(":", 1)[1])
            except ValueError:
                raise UsageError(f"--device {spec}: expected cuda:N with an integer N") from None
            if not 0 <= idx < torch.cuda.device_count():
                raise UsageError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) present")
        return spec
    raise UsageError(f"--device must be auto, cpu, cuda or cuda:N (got {spec!r})")

"""Deterministic synthetic weights and inputs for the DiffAE / FaRL fixtures.

Implements the integer fill recipe of ``shared/fixtures/README.md`` section 2
with the extra kinds of ``README-diffusion.md`` section 2, so that a schema's
tensor list can be turned into a checkpoint-shaped state dict without any real
weights. Used by tests and benchmarks only; nothing here is needed at run time.

Example:
    >>> u = base_uniform(0, 4)
    >>> [round(float(v), 6) for v in u]
    [0.259428, -0.27464, 0.077501, 0.398474]
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch

_M32 = 0xFFFFFFFF


def base_uniform(index: int, numel: int) -> np.ndarray:
    """Base stream ``u`` in [-0.5, 0.5) (float64) for tensor/seed ``index``.

    The arithmetic is done in int64 torch tensors (every intermediate fits in
    63 bits), which is about twice as fast as numpy uint64 on one core.
    """
    j = torch.arange(numel, dtype=torch.int64)
    h = j.mul_(2654435761).add_((index + 1) * 40503).bitwise_and_(_M32)
    for _ in range(2):
        h = h.bitwise_xor_(h >> 16).mul_(73244475).bitwise_and_(_M32)
    h = h.bitwise_xor_(h >> 16)
    return h.to(torch.float64).div_(2.0**32).sub_(0.5).numpy()


def _affine(u: np.ndarray, a: float, b: float) -> np.ndarray:
    out = u * b
    if a != 0.0:
        out += a
    return out


def kind_values(kind: str, shape: list[int], index: int) -> np.ndarray:
    """Float64 values of one tensor of fill ``kind`` (before rounding)."""
    numel = int(np.prod(shape)) if shape else 1
    if kind == "const_logit_scale":
        return np.full(numel, math.log(1.0 / 0.07), dtype=np.float64)
    if kind == "fixed_kernel":
        k = np.array([1.0, 3.0, 3.0, 1.0])
        return (np.outer(k, k) / 16.0).reshape(-1)
    u = base_uniform(index, numel)
    if kind == "fanin_weight":
        fan_in = int(np.prod(shape[1:]))
        return _affine(u, 0.0, 2.0 * math.sqrt(3.0 / fan_in))
    if kind in ("bias", "norm_bias", "bn_bias", "bn_running_mean", "latent_stat_mean"):
        return _affine(u, 0.0, 0.1)
    if kind in ("norm_weight", "bn_weight"):
        return _affine(u, 1.0, 0.1)
    if kind in ("noise_buffer", "const_input", "equal_weight"):
        return _affine(u, 0.0, 2.0 * math.sqrt(3.0))
    if kind == "embedding":
        return _affine(u, 0.0, 0.06928203230275509)
    if kind in ("latent_stat_std", "bn_running_var"):
        return 1.0 + 0.5 * (u + 0.5)
    raise ValueError(f"unknown fill kind {kind!r}")


def fill_entry(entry: Mapping[str, Any]) -> torch.Tensor:
    """Fill one schema entry (``index``, ``shape``, ``fill``, ``dtype``)."""
    shape = list(entry["shape"])
    vals = kind_values(entry["fill"], shape, int(entry["index"]))
    dtype = {"float32": np.float32, "float64": np.float64, "int64": np.int64}[entry.get("dtype", "float32")]
    return torch.from_numpy(vals.astype(dtype).reshape(shape))


def verify_check(t: torch.Tensor, entry: Mapping[str, Any]) -> None:
    """Raise AssertionError if ``t`` disagrees with the schema's ``check`` record."""
    chk = entry.get("check")
    if not chk:
        return
    flat = t.reshape(-1)
    first = [float(v) for v in flat[: len(chk["first"])]]
    if first != [float(v) for v in chk["first"]] or float(flat[-1]) != float(chk["last"]):
        raise AssertionError(f"fill check failed for {entry['key']}: first/last differ")
    s = float(flat.double().sum())
    tol = 1e-9 * max(1.0, float(flat.double().abs().sum()))
    if abs(s - float(chk["sum"])) > tol:
        raise AssertionError(f"fill check failed for {entry['key']}: sum {s} vs {chk['sum']}")


def load_schema(path: str | Path) -> dict[str, Any]:
    """Read a schema JSON file."""
    return json.loads(Path(path).read_text())


def build_state_dict(
    schema: Mapping[str, Any] | str | Path,
    *,
    keep: Callable[[str], bool] | None = None,
    list_key: str = "state_dict",
    check: bool = True,
) -> "OrderedDict[str, torch.Tensor]":
    """State dict of a schema filled by the recipe (aliases share storage).

    ``keep`` selects keys to materialise (the others are skipped, their indices
    still count because the index is stored in each entry).
    """
    if not isinstance(schema, Mapping):
        schema = load_schema(schema)
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for entry in schema[list_key]:
        key = entry["key"]
        if keep is not None and not keep(key):
            continue
        alias = entry.get("alias_of")
        if alias is not None and alias in out:
            out[key] = out[alias]
            continue
        t = fill_entry(entry)
        if check:
            verify_check(t, entry)
        out[key] = t
    return out


def make_input(seed_index: int, shape: Iterable[int], a: float, b: float) -> torch.Tensor:
    """Fixture input ``a + b*u`` rounded to float32 (README.md section 3)."""
    shape = list(shape)
    u = base_uniform(seed_index, int(np.prod(shape)))
    return torch.from_numpy(_affine(u, a, b).astype(np.float32).reshape(shape))


def compare_to_reference(ref: Mapping[str, np.ndarray], name: str, actual: torch.Tensor | np.ndarray) -> dict[str, float]:
    """Errors of ``actual`` against fixture array ``name`` (``.full`` or ``.sub_idx``/``.sub_val``).

    Returns ``max_abs``, ``max_ratio`` = max|d| / max|ref| and ``rms_ratio`` =
    rms(d) / rms(ref) (rms(ref) from the stored ``.l2`` over the full tensor).
    """
    a = actual.detach().to(torch.float64).cpu().numpy() if isinstance(actual, torch.Tensor) else np.asarray(actual, np.float64)
    shape = tuple(int(s) for s in ref[f"{name}.shape"])
    if a.shape != shape:
        raise AssertionError(f"{name}: shape {a.shape} vs reference {shape}")
    if f"{name}.full" in ref:
        r = np.asarray(ref[f"{name}.full"], np.float64).reshape(-1)
        d = a.reshape(-1) - r
    else:
        idx = np.asarray(ref[f"{name}.sub_idx"])
        d = a.reshape(-1)[idx] - np.asarray(ref[f"{name}.sub_val"], np.float64)
    max_ref = max(abs(float(ref[f"{name}.min"])), abs(float(ref[f"{name}.max"])))
    rms_ref = float(ref[f"{name}.l2"]) / math.sqrt(int(np.prod(shape)))
    max_abs = float(np.abs(d).max())
    rms = float(np.sqrt(np.mean(d * d)))
    return {"max_abs": max_abs, "max_ratio": max_abs / max_ref, "rms_ratio": rms / rms_ref}

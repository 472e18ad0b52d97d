"""Deterministic synthetic weights for the architecture-faithfulness fixtures.

Implements the integer-hash fill recipe of ``shared/fixtures/README.md``
(section 2) and the input recipe (section 3), and builds checkpoints in the
real container layouts from a schema JSON. Used by tests; no RNG involved.

Example:
    >>> [round(float(v), 12) for v in base_u(0, 3)]
    [0.259427790297, -0.274639557116, 0.077500927029]
"""
from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

M32 = np.uint64(0xFFFFFFFF)
SQRT3 = math.sqrt(3.0)
FIXED_KERNEL = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float64) / 16.0


def base_u(index: int, n: int) -> np.ndarray:
    """The base stream ``u_j`` (float64 in [-0.5, 0.5)) for tensor/seed ``index``, j < n."""
    j = np.arange(n, dtype=np.uint64)
    h = (j * np.uint64(2654435761) + np.uint64(((index + 1) * 40503) & 0xFFFFFFFF)) & M32
    c = np.uint64(73244475)
    h = (((h >> np.uint64(16)) ^ h) * c) & M32
    h = (((h >> np.uint64(16)) ^ h) * c) & M32
    h = (h >> np.uint64(16)) ^ h
    return h.astype(np.float64) / 4294967296.0 - 0.5


def fill_values(kind: str, index: int, shape: Sequence[int]) -> np.ndarray:
    """Float64 values of one filled tensor (before rounding to its dtype)."""
    n = int(np.prod(shape)) if len(shape) else 1
    if kind == "bn_num_batches_tracked":
        return np.zeros(shape, dtype=np.float64)
    if kind == "fixed_kernel":
        return FIXED_KERNEL.reshape(shape).copy()
    u = base_u(index, n)
    if kind == "fanin_weight":
        fan_in = int(np.prod(shape[1:]))
        v = (2.0 * math.sqrt(3.0 / fan_in)) * u
    elif kind in ("bias", "bn_bias", "bn_running_mean"):
        v = 0.1 * u
    elif kind == "bn_weight":
        v = 1.0 + 0.1 * u
    elif kind == "bn_running_var":
        v = 1.0 + 0.5 * (u + 0.5)
    elif kind == "prelu_weight":
        v = 0.25 + 0.1 * u
    elif kind in ("equal_weight", "const_input", "noise_buffer"):
        v = (2.0 * SQRT3) * u
    elif kind == "mapping_weight":
        v = (2.0 * SQRT3 / 0.01) * u
    elif kind == "modulation_bias":
        v = 1.0 + 0.1 * u
    elif kind == "noise_strength":
        v = 0.1 + 0.1 * u
    elif kind == "latent_avg":
        v = 2.0 * u
    else:
        raise ValueError(f"unknown fill kind {kind!r}")
    return v.reshape(shape)


def fill_tensor(kind: str, index: int, shape: Sequence[int], dtype: str = "float32") -> torch.Tensor:
    """One filled tensor, rounded to ``dtype`` (``int64`` for num_batches_tracked)."""
    v = fill_values(kind, index, shape)
    if dtype == "int64":
        return torch.from_numpy(v.astype(np.int64)).reshape(tuple(shape))
    return torch.from_numpy(v.astype(np.float32)).reshape(tuple(shape))


def make_input(seed_index: int, shape: Sequence[int], scale: float) -> torch.Tensor:
    """Fixture input: ``scale · u`` rounded to float32 (scale 2 for images, 2√3 for latents)."""
    n = int(np.prod(shape))
    return torch.from_numpy((scale * base_u(seed_index, n)).astype(np.float32).reshape(tuple(shape)))


def load_schema(path: str | Path) -> dict[str, Any]:
    with open(path) as fh:
        return json.load(fh)


def schema_entries(schema: dict[str, Any]) -> list[dict[str, Any]]:
    """The ordered tensor list of a schema (``state_dict`` or ``g_ema``)."""
    for k in ("state_dict", "g_ema"):
        if k in schema:
            return schema[k]
    raise KeyError("schema has neither 'state_dict' nor 'g_ema'")


def filled_state_dict(schema: dict[str, Any], verify: bool = True) -> "OrderedDict[str, torch.Tensor]":
    """Fill every tensor of the schema list; optionally verify each against ``check``."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for e in schema_entries(schema):
        t = fill_tensor(e["fill"], e["index"], e["shape"], e["dtype"])
        if verify:
            verify_check(e, t)
        out[e["key"]] = t
    return out


def verify_check(entry: dict[str, Any], t: torch.Tensor) -> None:
    """Compare a filled tensor with the schema's ``check`` (exact first/last, sum within 1e-9·Σ|v|)."""
    chk = entry.get("check")
    if not chk:
        return
    flat = t.reshape(-1).double()
    first = chk["first"] if isinstance(chk["first"], list) else [chk["first"]]
    got_first = flat[: len(first)].tolist()
    if got_first != [float(x) for x in first] or float(flat[-1]) != float(chk["last"]):
        raise AssertionError(f"fill mismatch for {entry['key']}: first {got_first} vs {first}")
    tol = 1e-9 * float(flat.abs().sum()) + 1e-12
    if abs(float(flat.sum()) - float(chk["sum"])) > tol:
        raise AssertionError(f"fill sum mismatch for {entry['key']}: {float(flat.sum())} vs {chk['sum']}")


def latent_avg_tensor(index: int, shape: Sequence[int]) -> torch.Tensor:
    return fill_tensor("latent_avg", index, shape)


def build_checkpoint(schema: dict[str, Any], verify: bool = True) -> dict[str, Any]:
    """A synthetic checkpoint in the real container layout of the schema's file.

    * StyleGAN2: ``{'g_ema': sd, 'latent_avg': [512]}``
    * pSp: ``{'state_dict': sd, 'opts': {...}, 'latent_avg': [18, 512]}``
    * IR-SE50: the bare state_dict.
    """
    sd = filled_state_dict(schema, verify)
    n = len(sd)
    if "g_ema" in schema:
        la = schema.get("top_level", {}).get("latent_avg", {})
        shape = la.get("shape", [512])
        return {"g_ema": sd, "latent_avg": latent_avg_tensor(n, shape)}
    top = schema.get("top_level", {})
    if "opts" in top:
        fields = top["opts"]["fields_that_matter"]
        opts = {k: v["value"] for k, v in fields.items()}
        return {"state_dict": sd, "opts": opts, "latent_avg": latent_avg_tensor(n, top["latent_avg"]["shape"])}
    return sd


def compare_to_fixture(npz: Any, name: str, actual: torch.Tensor) -> dict[str, float]:
    """Errors of ``actual`` against the float64 fixture array ``name`` of an npz.

    Uses ``<name>.full`` or the ``sub_idx``/``sub_val`` subsample. Returns
    ``max_abs``, ``max_rel`` (max|Δ|/max|ref|), ``rms_rel`` (rms(Δ)/rms(ref)) and
    ``stat_rel`` (largest relative error of mean/std/l2/absmean, full tensor).
    """
    a = actual.detach().to("cpu", torch.float64).numpy()
    shape = tuple(int(s) for s in np.asarray(npz[f"{name}.shape"]).reshape(-1))
    if a.shape != shape:
        raise AssertionError(f"{name}: shape {a.shape} vs fixture {shape}")
    if f"{name}.full" in npz:
        ref = np.asarray(npz[f"{name}.full"], dtype=np.float64).reshape(-1)
        got = a.reshape(-1)
    else:
        idx = np.asarray(npz[f"{name}.sub_idx"])
        ref = np.asarray(npz[f"{name}.sub_val"], dtype=np.float64)
        got = a.reshape(-1)[idx]
    d = got - ref
    max_abs = float(np.abs(d).max())
    ref_max = float(np.abs(ref).max())
    rms_ref = float(np.sqrt(np.mean(ref * ref)))
    stats = {"mean": float(a.mean()), "std": float(a.std()), "absmean": float(np.abs(a).mean())}
    l2_ref = float(npz[f"{name}.l2"])
    scale = l2_ref / math.sqrt(a.size)  # rms of the full reference
    stat_rel = max(abs(v - float(npz[f"{name}.{k}"])) / scale for k, v in stats.items())
    if l2_ref:
        stat_rel = max(stat_rel, abs(float(np.sqrt((a * a).sum())) - l2_ref) / l2_ref)
    return {
        "max_abs": max_abs,
        "max_rel": max_abs / ref_max if ref_max else max_abs,
        "rms_rel": float(np.sqrt(np.mean(d * d))) / rms_ref if rms_ref else 0.0,
        "stat_rel": stat_rel,
    }


def fixture_tolerance(npz: Any, name: str, float64: bool) -> tuple[float, float]:
    """Recommended ``(max_rel, rms_rel)`` bounds of the fixtures README (section 5)."""
    if not float64:
        return 2e-5, 1e-5
    full = f"{name}.full"
    stored32 = full in npz and np.asarray(npz[full]).dtype == np.float32
    return (1e-6, 1e-6) if stored32 else (1e-10, 1e-10)


def assert_matches_fixture(npz: Any, name: str, actual: torch.Tensor) -> dict[str, float]:
    """Raise ``AssertionError`` unless ``actual`` meets the README tolerance; return the errors."""
    err = compare_to_fixture(npz, name, actual)
    max_tol, rms_tol = fixture_tolerance(npz, name, actual.dtype == torch.float64)
    if err["max_rel"] > max_tol or err["rms_rel"] > rms_tol:
        raise AssertionError(f"{name}: max_rel {err['max_rel']:.3g} (tol {max_tol:g}), "
                             f"rms_rel {err['rms_rel']:.3g} (tol {rms_tol:g})")
    return err

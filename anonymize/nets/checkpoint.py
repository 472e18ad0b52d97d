"""Strict checkpoint reading and key/shape checking shared by the networks.

Example:
    >>> import torch
    >>> m = torch.nn.Linear(2, 3)
    >>> load_checked(m, {"weight": torch.zeros(3, 2)}, what="toy")
    Traceback (most recent call last):
    ...
    anonymize.nets.checkpoint.CheckpointMismatch: toy checkpoint does not match the network: missing keys (1): bias
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from anonymize.errors import UsageError, WeightsMissing

StateLike = str | os.PathLike[str] | Mapping[str, Any]


class CheckpointMismatch(UsageError):
    """A checkpoint's tensors do not match the network (names the offending keys)."""

    def __init__(self, what: str, missing: list[str], unexpected: list[str], bad_shape: list[str]) -> None:
        self.missing, self.unexpected, self.bad_shape = missing, unexpected, bad_shape
        parts = []
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", bad_shape)):
            if keys:
                shown = ", ".join(keys[:12]) + (f", ... (+{len(keys) - 12} more)" if len(keys) > 12 else "")
                parts.append(f"{label} ({len(keys)}): {shown}")
        super().__init__(f"{what} checkpoint does not match the network: " + "; ".join(parts))


def is_num_batches_tracked(key: str) -> bool:
    """BatchNorm ``num_batches_tracked`` buffers, absent from files saved by torch < 0.4.1."""
    return key.endswith("num_batches_tracked")


def read_checkpoint(src: StateLike, weights_name: str, purpose: str = "") -> Mapping[str, Any]:
    """Load a checkpoint file on CPU (``weights_only``) or pass a mapping through.

    A missing file raises :class:`WeightsMissing` naming ``weights_name``.
    """
    if isinstance(src, Mapping):
        return src
    path = Path(src)
    if not path.is_file():
        raise WeightsMissing([weights_name], purpose or str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupted or non-tensor pickle
        raise UsageError(f"cannot read checkpoint {path} ({weights_name}): {exc}") from exc
    if not isinstance(obj, Mapping):
        raise UsageError(f"checkpoint {path} ({weights_name}) is not a dict but {type(obj).__name__}")
    return obj


def strip_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Keys that start with ``prefix``, with the prefix removed."""
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def load_checked(
    module: nn.Module,
    state: Mapping[str, Any],
    what: str,
    strict: bool = True,
    optional: Callable[[str], bool] = is_num_batches_tracked,
) -> None:
    """Check every key and shape of ``state`` against ``module`` then load it.

    With ``strict`` any missing (except ``optional`` ones), unexpected or
    mis-shaped key raises :class:`CheckpointMismatch`. Without it, only shape
    mismatches raise and matching keys are loaded.
    """
    expected = module.state_dict()
    missing = [k for k in expected if k not in state and not optional(k)]
    unexpected = [k for k in state if k not in expected]
    bad_shape = [
        f"{k} (file {tuple(getattr(state[k], 'shape', ()))} vs net {tuple(expected[k].shape)})"
        for k in expected
        if k in state and (not isinstance(state[k], Tensor) or tuple(state[k].shape) != tuple(expected[k].shape))
    ]
    if bad_shape or (strict and (missing or unexpected)):
        raise CheckpointMismatch(what, missing, unexpected, bad_shape)
    module.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)

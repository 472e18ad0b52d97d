"""DiffAE (Preechakul et al., CVPR 2022) FFHQ-256 autoencoder and latent DDIM, in pure PyTorch.

A clean-room re-implementation of the released ``BeatGANsAutoencModel`` (conditional
UNet + semantic encoder) and ``MLPSkipNet`` (latent DDIM denoiser) whose module
names match the released Lightning checkpoints ``ffhq256_autoenc/last.ckpt`` and
``ffhq256_autoenc_latent/last.ckpt`` so they load strictly (``ema_model.*`` copy).

Example (tiny random model, no weights):
    >>> import torch
    >>> cfg = DiffAEConfig.tiny()
    >>> m = DiffAE(cfg).eval()
    >>> x = torch.rand(1, 3, cfg.image_size, cfg.image_size) * 2 - 1
    >>> z = m.encode(x)
    >>> tuple(z.shape)
    (1, 32)
    >>> tuple(m.render(m.encode_stochastic(x, z, T=2), z, T=2).shape)
    (1, 3, 16, 16)
"""
from __future__ import annotations

import math
import pickle
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from anonymize.errors import UsageError, WeightsMissing
from anonymize.nets.ddim import DiffusionSchedule, SpacedSchedule, ddim_decode, ddim_encode

__all__ = [
    "LatentNetConfig",
    "DiffAEConfig",
    "timestep_embedding",
    "BeatGANsAutoencModel",
    "BeatGANsEncoderModel",
    "MLPSkipNet",
    "DiffAE",
    "CheckpointError",
    "read_checkpoint",
]


class CheckpointError(UsageError):
    """A checkpoint does not match the expected architecture (keys/shapes)."""


# --------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class LatentNetConfig:
    """MLPSkipNet hyper-parameters (``templates_latent.latent_mlp_2048_norm_10layers``)."""

    num_channels: int = 512
    num_hid_channels: int = 2048
    num_layers: int = 10
    skip_layers: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9)
    num_time_emb_channels: int = 64
    use_norm: bool = True
    condition_bias: float = 1.0
    beta_schedule: str = "const0.008"
    T: int = 1000
    T_eval: int = 20


@dataclass(frozen=True)
class DiffAEConfig:
    """BeatGANsAutoencModel hyper-parameters; defaults are ``ffhq256_autoenc``."""

    image_size: int = 256
    in_channels: int = 3
    model_channels: int = 128
    out_channels: int = 3
    num_res_blocks: int = 2
    embed_channels: int = 512
    attention_resolutions: tuple[int, ...] = (16,)
    channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4)
    dropout: float = 0.1
    num_heads: int = 1
    enc_out_channels: int = 512
    enc_channel_mult: tuple[int, ...] = (1, 1, 2, 2, 4, 4, 4)
    enc_num_res_blocks: int = 2
    enc_attention_resolutions: tuple[int, ...] | None = None
    beta_schedule: str = "linear"
    T: int = 1000
    T_eval: int = 20
    latent: LatentNetConfig | None = None

    @classmethod
    def ffhq256(cls, with_latent: bool = False) -> "DiffAEConfig":
        """The released FFHQ-256 model; ``with_latent`` adds the latent DDIM MLP."""
        return cls(latent=LatentNetConfig() if with_latent else None)

    @classmethod
    def reduced32(cls) -> "DiffAEConfig":
        """The reduced 32x32 configuration of ``diffae_reduced.npz`` (with latent net)."""
        return cls(
            image_size=32, model_channels=64, channel_mult=(1, 2, 2), embed_channels=128,
            enc_out_channels=128, enc_channel_mult=(1, 2, 2, 2), T_eval=10,
            latent=LatentNetConfig(num_channels=128, num_hid_channels=256, T_eval=10),
        )

    @classmethod
    def tiny(cls) -> "DiffAEConfig":
        """A very small 16x16 configuration for unit tests (no checkpoint exists)."""
        return cls(
            image_size=16, model_channels=32, channel_mult=(1, 2), embed_channels=32, enc_out_channels=32,
            enc_channel_mult=(1, 2), attention_resolutions=(8,), num_res_blocks=1, enc_num_res_blocks=1,
            latent=LatentNetConfig(num_channels=32, num_hid_channels=64, num_layers=3, skip_layers=(1, 2)),
        )


# --------------------------------------------------------------------------- building blocks


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Sinusoidal embedding [B, dim]: cos terms first, then sin (DiffAE/guided-diffusion order).

    The arguments ``t * f_k`` are formed in float64 and the result cast to ``dtype``.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float64, device=t.device) / half)
    args = t.to(torch.float64)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb.to(dtype)


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(32, ch), ch, eps=1e-5)


class _Resample(nn.Module):
    """Parameter-free nearest x2 up-sampling or 2x2 average pooling."""

    def __init__(self, up: bool) -> None:
        super().__init__()
        self.up = up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest") if self.up else F.avg_pool2d(x, 2, 2)


class ResBlock(nn.Module):
    """BeatGANs res-block; conditioned (time scale/shift then z_sem scale) or plain (encoder)."""

    def __init__(self, channels: int, out_channels: int, *, emb_channels: int | None = None,
                 cond_channels: int | None = None, dropout: float = 0.0, up: bool = False,
                 down: bool = False, has_lateral: bool = False) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.has_lateral = has_lateral
        self.use_condition = emb_channels is not None
        self.in_layers = nn.Sequential(_norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1))
        self.resample = _Resample(up) if (up or down) else None
        if self.use_condition:
            assert cond_channels is not None
            self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, 2 * out_channels))
            self.cond_emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(cond_channels, out_channels))
            self.out_layers = nn.Sequential(
                _norm(out_channels), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(out_channels, out_channels, 3, padding=1)
            )
        self.skip_connection: nn.Module = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None, cond: torch.Tensor | None = None,
                lateral: torch.Tensor | None = None) -> torch.Tensor:
        if self.has_lateral:
            if lateral is None:
                raise ValueError("this block needs a lateral (skip) input")
            x = torch.cat([x, lateral], dim=1)
        if self.resample is not None:
            h = self.in_layers[1](self.in_layers[0](x))
            h = self.in_layers[2](self.resample(h))
            x = self.resample(x)
        else:
            h = self.in_layers(x)
        if self.use_condition:
            if emb is None or cond is None:
                raise ValueError("conditioned res-block needs both the time embedding and the semantic code")
            scale, shift = self.emb_layers(emb)[:, :, None, None].chunk(2, dim=1)
            c = self.cond_emb_layers(cond)[:, :, None, None]
            norm, act, drop, conv = self.out_layers
            h = norm(h) * (1.0 + scale) + shift
            h = h * (1.0 + c)
            h = conv(drop(act(h)))
        return self.skip_connection(x) + h


class AttentionBlock(nn.Module):
    """Single-head spatial self-attention (legacy QKV order, q and k scaled by C^-1/4)."""

    def __init__(self, channels: int, num_heads: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        flat = x.reshape(b, c, -1)
        qkv = self.qkv(self.norm(flat))
        length = qkv.shape[-1]
        ch = c // self.num_heads
        q, k, v = qkv.reshape(b * self.num_heads, 3 * ch, length).split(ch, dim=1)
        scale = 1.0 / math.sqrt(math.sqrt(ch))
        w = torch.einsum("bct,bcs->bts", q * scale, k * scale).softmax(dim=-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(b, c, length)
        return (flat + self.proj_out(a)).reshape(b, c, *spatial)


class EmbedSequential(nn.Sequential):
    """Sequential that routes time embedding, semantic code and lateral to res-blocks."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None, cond: torch.Tensor | None = None,  # type: ignore[override]
                lateral: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb, cond, lateral)
            else:
                x = layer(x)
        return x


class _TimeEmbed(nn.Module):
    """``TimeStyleSeperateEmbed``: time MLP; the semantic code passes through unchanged."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.time_embed = nn.Sequential(nn.Linear(in_ch, out_ch), nn.SiLU(), nn.Linear(out_ch, out_ch))

    def forward(self, t_emb: torch.Tensor) -> torch.Tensor:
        return self.time_embed(t_emb)


# --------------------------------------------------------------------------- networks


class BeatGANsEncoderModel(nn.Module):
    """Semantic encoder ("half UNet"): image in [-1, 1] -> z_sem [B, enc_out_channels]."""

    def __init__(self, cfg: DiffAEConfig) -> None:
        super().__init__()
        attn = cfg.enc_attention_resolutions or cfg.attention_resolutions
        ch = cfg.model_channels * cfg.enc_channel_mult[0]
        blocks = [EmbedSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))]
        res = cfg.image_size
        for level, mult in enumerate(cfg.enc_channel_mult):
            for _ in range(cfg.enc_num_res_blocks):
                out = mult * cfg.model_channels
                layers: list[nn.Module] = [ResBlock(ch, out, dropout=cfg.dropout)]
                ch = out
                if res in attn:
                    layers.append(AttentionBlock(ch, cfg.num_heads))
                blocks.append(EmbedSequential(*layers))
            if level != len(cfg.enc_channel_mult) - 1:
                blocks.append(EmbedSequential(ResBlock(ch, ch, dropout=cfg.dropout, down=True)))
                res //= 2
        self.input_blocks = nn.ModuleList(blocks)
        self.middle_block = EmbedSequential(
            ResBlock(ch, ch, dropout=cfg.dropout), AttentionBlock(ch, cfg.num_heads), ResBlock(ch, ch, dropout=cfg.dropout)
        )
        self.out = nn.Sequential(
            _norm(ch), nn.SiLU(), nn.AdaptiveAvgPool2d((1, 1)), nn.Conv2d(ch, cfg.enc_out_channels, 1), nn.Flatten()
        )

    def forward(self, x: torch.Tensor, taps: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        h = x
        for k, blk in enumerate(self.input_blocks):
            h = blk(h)
            if taps is not None:
                taps[f"enc.input_blocks.{k}"] = h
        h = self.middle_block(h)
        if taps is not None:
            taps["enc.middle_block"] = h
        return self.out(h)


class MLPSkipNet(nn.Module):
    """Latent DDIM denoiser: eps prediction on the normalised semantic code."""

    def __init__(self, cfg: LatentNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c = cfg.num_channels
        self.time_embed = nn.Sequential(nn.Linear(cfg.num_time_emb_channels, c), nn.SiLU(), nn.Linear(c, c))
        layers = []
        for i in range(cfg.num_layers):
            last = i == cfg.num_layers - 1
            a = c if i == 0 else cfg.num_hid_channels
            b = c if last else cfg.num_hid_channels
            if i in cfg.skip_layers:
                a += c
            layers.append(_MLPLNAct(a, b, cond_channels=c, last=last, use_norm=cfg.use_norm,
                                    condition_bias=cfg.condition_bias))
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor, taps: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        temb = self.time_embed(timestep_embedding(t, self.cfg.num_time_emb_channels, dtype=x.dtype))
        if taps is not None:
            taps["latent.time_embed"] = temb
        h = x
        for i, layer in enumerate(self.layers):
            if i in self.cfg.skip_layers:
                h = torch.cat([h, x], dim=1)
            h = layer(h, temb)
            if taps is not None:
                taps[f"latent.layers.{i}"] = h
        return h


class _MLPLNAct(nn.Module):
    """Linear -> h*(bias + Linear(SiLU(t))) -> LayerNorm -> SiLU; the last layer is Linear only."""

    def __init__(self, a: int, b: int, *, cond_channels: int, last: bool, use_norm: bool, condition_bias: float) -> None:
        super().__init__()
        self.last = last
        self.condition_bias = condition_bias
        self.linear = nn.Linear(a, b)
        if not last:
            self.linear_emb = nn.Linear(cond_channels, b)
            # the release registers the same Linear twice: both keys are in the checkpoint
            self.cond_layers = nn.Sequential(nn.SiLU(), self.linear_emb)
            self.norm: nn.Module = nn.LayerNorm(b) if use_norm else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        if self.last:
            return h
        h = h * (self.condition_bias + self.cond_layers(temb))
        return F.silu(self.norm(h))


class BeatGANsAutoencModel(nn.Module):
    """Conditional UNet eps_theta(x_t, t, z_sem) plus its semantic ``encoder`` (and optional ``latent_net``)."""

    def __init__(self, cfg: DiffAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        mc, emb = cfg.model_channels, cfg.embed_channels
        self.time_embed = _TimeEmbed(mc, emb)

        def res(ch_in: int, ch_out: int, **kw: Any) -> ResBlock:
            return ResBlock(ch_in, ch_out, emb_channels=emb, cond_channels=cfg.enc_out_channels, dropout=cfg.dropout, **kw)

        ch = mc * cfg.channel_mult[0]
        blocks = [EmbedSequential(nn.Conv2d(cfg.in_channels, ch, 3, padding=1))]
        skip_chans: list[list[int]] = [[] for _ in cfg.channel_mult]
        skip_chans[0].append(ch)
        self.input_num_blocks = [0] * len(cfg.channel_mult)
        self.input_num_blocks[0] = 1
        resolution = cfg.image_size
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, mult * mc)]
                ch = mult * mc
                if resolution in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch, cfg.num_heads))
                blocks.append(EmbedSequential(*layers))
                skip_chans[level].append(ch)
                self.input_num_blocks[level] += 1
            if level != len(cfg.channel_mult) - 1:
                resolution //= 2
                blocks.append(EmbedSequential(res(ch, ch, down=True)))
                skip_chans[level + 1].append(ch)
                self.input_num_blocks[level + 1] += 1
        self.input_blocks = nn.ModuleList(blocks)
        self.middle_block = EmbedSequential(res(ch, ch), AttentionBlock(ch, cfg.num_heads), res(ch, ch))
        out_blocks = []
        self.output_num_blocks = [0] * len(cfg.channel_mult)
        for level, mult in list(enumerate(cfg.channel_mult))[::-1]:
            for i in range(cfg.num_res_blocks + 1):
                ich = skip_chans[level].pop() if skip_chans[level] else 0
                layers = [res(ch + ich, mc * mult, has_lateral=ich > 0)]
                ch = mc * mult
                if resolution in cfg.attention_resolutions:
                    layers.append(AttentionBlock(ch, cfg.num_heads))
                if level and i == cfg.num_res_blocks:
                    resolution *= 2
                    layers.append(res(ch, ch, up=True))
                out_blocks.append(EmbedSequential(*layers))
                self.output_num_blocks[level] += 1
        self.output_blocks = nn.ModuleList(out_blocks)
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1))
        self.encoder = BeatGANsEncoderModel(cfg)
        self.latent_net = MLPSkipNet(cfg.latent) if cfg.latent is not None else None

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor,
                taps: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Predicted noise eps [B, C, H, W] for noisy ``x`` at original timesteps ``t`` given z_sem ``cond``."""
        emb = self.time_embed(timestep_embedding(t, self.cfg.model_channels, dtype=x.dtype))
        if taps is not None:
            taps["unet.time_embed"] = emb
        levels = len(self.input_num_blocks)
        hs: list[list[torch.Tensor]] = [[] for _ in range(levels)]
        h = x
        k = 0
        for lvl in range(levels):
            for _ in range(self.input_num_blocks[lvl]):
                h = self.input_blocks[k](h, emb, cond)
                hs[lvl].append(h)
                if taps is not None:
                    taps[f"unet.input_blocks.{k}"] = h
                k += 1
        h = self.middle_block(h, emb, cond)
        if taps is not None:
            taps["unet.middle_block"] = h
        k = 0
        for lvl in range(levels):
            for _ in range(self.output_num_blocks[lvl]):
                stack = hs[-lvl - 1]
                lateral = stack.pop() if stack else None
                h = self.output_blocks[k](h, emb, cond, lateral)
                if taps is not None:
                    taps[f"unet.output_blocks.{k}"] = h
                k += 1
        return self.out(h)


# --------------------------------------------------------------------------- checkpoint IO


class _Placeholder(dict):
    """Stand-in for classes of packages that are not installed (e.g. Lightning's AttributeDict)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()

    def __setstate__(self, state: Any) -> None:  # pragma: no cover - depends on the file
        if isinstance(state, dict):
            self.update(state)


class _TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return _Placeholder


class _TolerantPickle:
    Unpickler = _TolerantUnpickler
    load = staticmethod(pickle.load)


def read_checkpoint(src: str | Path | Mapping[str, Any], weights_name: str | None = None) -> Mapping[str, torch.Tensor]:
    """The tensor dict of a checkpoint path or an already loaded object.

    A missing file raises :class:`~anonymize.errors.WeightsMissing` naming ``weights_name``
    (the ``fetch-weights`` name) when given, else :class:`CheckpointError`.

    Accepts a Lightning checkpoint (``{"state_dict": ...}`` plus other keys, which
    are ignored) or a bare state dict. Loading tries ``weights_only=True`` first and
    falls back to a tolerant unpickler only for objects of missing packages.
    """
    if isinstance(src, (str, Path)):
        path = Path(src)
        if not path.is_file():
            if weights_name:
                raise WeightsMissing([weights_name], purpose=f"{path.name} not found at {path.parent}")
            raise CheckpointError(f"checkpoint file not found: {path}")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_TolerantPickle)  # type: ignore[arg-type]
    else:
        obj = src
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"checkpoint is a {type(obj).__name__}, expected a dict")
    state = obj.get("state_dict", obj)
    if not isinstance(state, Mapping):
        raise CheckpointError("checkpoint 'state_dict' is not a mapping")
    return state


def _alias_pairs(keys: list[str]) -> dict[str, str]:
    """``cond_layers.1.X`` <-> ``linear_emb.X`` aliases of the latent MLP."""
    pairs = {}
    for k in keys:
        if ".cond_layers.1." in k:
            other = k.replace(".cond_layers.1.", ".linear_emb.")
            pairs[k] = other
            pairs[other] = k
    return pairs


def strict_load(module: nn.Module, state: Mapping[str, torch.Tensor], prefix: str, what: str,
                ignore_prefixes: tuple[str, ...] = (), assign: bool = False) -> None:
    """Load ``state[prefix + key]`` into ``module`` requiring exactly its keys and shapes.

    Keys under ``prefix + p`` for ``p`` in ``ignore_prefixes`` belong to other parts and are skipped.
    Raises :class:`CheckpointError` listing missing/unexpected keys and shape mismatches.
    ``assign=True`` adopts the file's tensors (cast to the model dtype), so a module built on
    the ``meta`` device is materialised without a random initialisation.
    """
    expected = module.state_dict()
    sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not sub:
        some = ", ".join(list(state.keys())[:5])
        raise CheckpointError(f"{what}: no tensors with prefix {prefix!r} (first keys: {some}); wrong file?")
    sub = {k: v for k, v in sub.items() if not any(k.startswith(p) for p in ignore_prefixes)}
    aliases = _alias_pairs(list(expected))
    for k, other in aliases.items():
        if k not in sub and other in sub:
            sub[k] = sub[other]
    missing = [k for k in expected if k not in sub]
    unexpected = [k for k in sub if k not in expected]
    bad = [f"{k}: file {tuple(sub[k].shape)} vs model {tuple(v.shape)}"
           for k, v in expected.items() if k in sub and tuple(sub[k].shape) != tuple(v.shape)]
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(prefix + m for m in missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(prefix + u for u in unexpected[:3])})")
        if bad:
            parts.append(f"{len(bad)} shape mismatches (e.g. {'; '.join(bad[:3])})")
        raise CheckpointError(f"{what} does not match the checkpoint: " + "; ".join(parts))
    module.load_state_dict({k: sub[k].to(v.dtype) for k, v in expected.items()}, strict=True, assign=assign)


# --------------------------------------------------------------------------- user-facing wrapper


class DiffAE(nn.Module):
    """DiffAE inference: semantic encode, DDIM encode/decode and latent sampling (the EMA weights).

    ``net`` is the :class:`BeatGANsAutoencModel`; ``conds_mean``/``conds_std`` are the
    latent normalisation statistics (ones/zeros unless loaded from the latent checkpoint).
    Images are in [-1, 1] at ``cfg.image_size``.
    """

    def __init__(self, cfg: DiffAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.net = BeatGANsAutoencModel(cfg)
        zc = cfg.enc_out_channels
        self.register_buffer("conds_mean", torch.zeros(1, zc))
        self.register_buffer("conds_std", torch.ones(1, zc))
        self._img = DiffusionSchedule.from_name(cfg.beta_schedule, cfg.T)
        self._lat = DiffusionSchedule.from_name(cfg.latent.beta_schedule, cfg.latent.T) if cfg.latent else None
        self._cache: dict[tuple[str, int], SpacedSchedule] = {}

    # -- loading
    @classmethod
    def from_checkpoint(cls, src: str | Path | Mapping[str, Any], cfg: DiffAEConfig | None = None, *,
                        latent: str | Path | Mapping[str, Any] | None = None, use_ema: bool = True,
                        weights_name: str | None = None, latent_weights_name: str | None = None) -> "DiffAE":
        """Build from a released Lightning checkpoint (``ffhq256_autoenc`` or ``..._latent``).

        The latent net is loaded when ``src`` contains ``<prefix>latent_net.*`` or when a
        separate ``latent`` checkpoint is given; ``use_ema=False`` reads ``model.*``
        (never what the official inference uses; for diagnostics only). ``weights_name`` /
        ``latent_weights_name`` are the ``fetch-weights`` names reported if a file is missing.
        """
        state = read_checkpoint(src, weights_name)
        prefix = "ema_model." if use_ema else "model."
        lat_state = read_checkpoint(latent, latent_weights_name) if latent is not None else state
        has_latent = any(k.startswith(prefix + "latent_net.") for k in lat_state)
        cfg = cfg or DiffAEConfig.ffhq256()
        if has_latent and cfg.latent is None:
            cfg = replace(cfg, latent=LatentNetConfig(num_channels=cfg.enc_out_channels))
        if not has_latent:
            cfg = replace(cfg, latent=None)
        with torch.device("meta"):  # no random init: every tensor comes from the file
            model = cls(cfg)
        net = model.net
        latent_net = net.latent_net
        net.latent_net = None
        try:
            strict_load(net, state, prefix, "DiffAE autoencoder", ignore_prefixes=("latent_net.",), assign=True)
        finally:
            net.latent_net = latent_net
        zc = cfg.enc_out_channels
        model.conds_mean = torch.zeros(1, zc)
        model.conds_std = torch.ones(1, zc)
        if latent_net is not None:
            model.load_latent(lat_state, use_ema=use_ema, assign=True)
        return model.eval()

    def load_latent(self, src: str | Path | Mapping[str, Any], use_ema: bool = True, assign: bool = False) -> None:
        """Load only the latent DDIM MLP and ``conds_mean``/``conds_std`` (strict)."""
        if self.net.latent_net is None:
            raise CheckpointError("this DiffAE config has no latent net")
        state = read_checkpoint(src)
        prefix = ("ema_model." if use_ema else "model.") + "latent_net."
        strict_load(self.net.latent_net, state, prefix, "DiffAE latent net", assign=assign)
        for name in ("conds_mean", "conds_std"):
            if name not in state:
                raise CheckpointError(f"DiffAE latent checkpoint lacks {name!r}")
            t = state[name]
            if tuple(t.shape) != tuple(getattr(self, name).shape):
                raise CheckpointError(f"{name}: file {tuple(t.shape)} vs model {tuple(getattr(self, name).shape)}")
            setattr(self, name, t.detach().clone().to(torch.float32))

    # -- schedules
    def schedule(self, steps: int, latent: bool = False) -> SpacedSchedule:
        """The "ddimN" schedule of the image (or latent) DDIM."""
        key = ("lat" if latent else "img", steps)
        if key not in self._cache:
            base = self._lat if latent else self._img
            if base is None:
                raise UsageError("this DiffAE has no latent DDIM")
            self._cache[key] = base.spaced(steps)
        return self._cache[key]

    # -- inference API
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Semantic code z_sem [B, 512] of images in [-1, 1]."""
        return self.net.encoder(x)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor, z_sem: torch.Tensor) -> torch.Tensor:
        """One UNet call: predicted noise at original timesteps ``t``."""
        return self.net(x_t, t, z_sem)

    def encode_stochastic(self, x: torch.Tensor, z_sem: torch.Tensor, T: int = 250, checkpoint: bool = False) -> torch.Tensor:
        """Deterministic DDIM inversion x_0 -> x_T with ``T`` steps (clipping on)."""
        return ddim_encode(lambda xt, t: self.net(xt, t, z_sem), x, self.schedule(T), clip=True, checkpoint=checkpoint)

    def render(self, x_T: torch.Tensor, z_sem: torch.Tensor, T: int | None = None, checkpoint: bool = False) -> torch.Tensor:
        """Deterministic DDIM decode x_T -> x_0 in [-1, 1] (DiffAE's ``render`` returns (x+1)/2)."""
        sched = self.schedule(T or self.cfg.T_eval)
        return ddim_decode(lambda xt, t: self.net(xt, t, z_sem), x_T, sched, clip=True, checkpoint=checkpoint)

    def sample_latent(self, noise: torch.Tensor, T: int | None = None, normalized: bool = False) -> torch.Tensor:
        """Latent DDIM sample from ``noise`` [B, 512]; de-normalised unless ``normalized``."""
        lat = self.net.latent_net
        if lat is None or self.cfg.latent is None:
            raise UsageError("this DiffAE has no latent net (load the ffhq256_autoenc_latent checkpoint)")
        z = ddim_decode(lambda zt, t: lat(zt, t), noise, self.schedule(T or self.cfg.latent.T_eval, latent=True), clip=False)
        return z if normalized else z * self.conds_std + self.conds_mean

    def normalize_z(self, z: torch.Tensor) -> torch.Tensor:
        """(z - conds_mean) / conds_std."""
        return (z - self.conds_mean) / self.conds_std

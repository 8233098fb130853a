"""Small building blocks of the DiT, one idea each.

Attribute names follow Tencent's checkpoint keys (``mlp.0``, ``in_layer``, ``linear``...) so a
bare Tencent state dict loads with no renaming. Layers that hold weights come from the
``operations`` namespace the caller passes (see :mod:`hunyuan.ops`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .token_replace import FirstFrameVec, Split, gated_residual_split, modulate_split


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos | sin]`` of (possibly fractional) steps t: [B] -> [B, dim] fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """t: [B] -> [B, hidden] through the sinusoid and a SiLU MLP (keys ``mlp.0``, ``mlp.2``)."""

    def __init__(self, hidden: int, freq_dim: int = 256, *, operations, **kw):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(
            operations.Linear(freq_dim, hidden, **kw), nn.SiLU(), operations.Linear(hidden, hidden, **kw)
        )

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim).to(dtype))


class MLPEmbedder(nn.Module):
    """[B, in] -> [B, hidden]: Linear, SiLU, Linear (keys ``in_layer``, ``out_layer``)."""

    def __init__(self, in_dim: int, hidden: int, *, operations, **kw):
        super().__init__()
        self.in_layer = operations.Linear(in_dim, hidden, **kw)
        self.out_layer = operations.Linear(hidden, hidden, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class TextProjection(nn.Module):
    """The refiner's pooled-text projection (keys ``linear_1``, ``linear_2``)."""

    def __init__(self, in_dim: int, hidden: int, *, operations, **kw):
        super().__init__()
        self.linear_1 = operations.Linear(in_dim, hidden, **kw)
        self.linear_2 = operations.Linear(hidden, hidden, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class PatchEmbed(nn.Module):
    """[B, C, T, H, W] -> [B, T'H'W', hidden] with a strided Conv3d (key ``proj``)."""

    def __init__(self, patch: tuple[int, int, int], in_ch: int, hidden: int, *, operations, **kw):
        super().__init__()
        self.proj = operations.Conv3d(in_ch, hidden, kernel_size=patch, stride=patch, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


def _inference() -> bool:
    return not torch.is_grad_enabled()


def activation_(x: torch.Tensor, kind: str) -> torch.Tensor:
    """``gelu_tanh`` or ``silu`` of a freshly computed x, in place when no autograd graph is recorded."""
    if kind == "gelu_tanh":
        return torch.ops.aten.gelu_(x, approximate="tanh") if _inference() else F.gelu(x, approximate="tanh")
    if kind == "silu":
        return F.silu(x, inplace=_inference())
    raise ValueError(f"activation {kind!r} is unknown; expected 'gelu_tanh' or 'silu'")


def gated_residual_(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``x + y * gate``, accumulated into x when no autograd graph is recorded (saves a big allocation)."""
    if isinstance(gate, Split):
        return gated_residual_split(x, y, gate, _inference())
    return x.addcmul_(y, gate) if _inference() else torch.addcmul(x, y, gate)


class MLP(nn.Module):
    """Two-layer MLP ``fc1 -> act -> fc2`` (keys ``fc1``, ``fc2``); act is ``gelu_tanh`` or ``silu``."""

    def __init__(self, dim: int, hidden: int, act: str, *, operations, **kw):
        super().__init__()
        self.fc1 = operations.Linear(dim, hidden, **kw)
        self.act = act
        self.fc2 = operations.Linear(hidden, dim, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(activation_(self.fc1(x), self.act))


class ModParams(NamedTuple):
    """One adaLN set: ``x + gate * f(x * (1 + scale) + shift)``; each [B, 1, hidden] (or a Split)."""

    shift: torch.Tensor | Split
    scale: torch.Tensor | Split
    gate: torch.Tensor | Split


class Modulation(nn.Module):
    """vec [B, hidden] -> ``factor // 3`` :class:`ModParams` in checkpoint order (key ``linear``)."""

    def __init__(self, hidden: int, factor: int, *, operations, **kw):
        super().__init__()
        self.factor = factor
        self.linear = operations.Linear(hidden, factor * hidden, **kw)

    def forward(self, vec: torch.Tensor | FirstFrameVec) -> list[ModParams]:
        if isinstance(vec, FirstFrameVec):
            return [
                ModParams(*(Split(a, b, vec.n) for a, b in zip(first, rest)))
                for first, rest in zip(self(vec.first), self(vec.vec))
            ]
        chunks = self.linear(F.silu(vec)).unsqueeze(1).chunk(self.factor, dim=-1)
        return [ModParams(*chunks[i : i + 3]) for i in range(0, self.factor, 3)]


def layer_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm without affine parameters over the last dim."""
    return F.layer_norm(x, (x.shape[-1],), eps=eps)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x * (1 + scale) + shift`` with shift/scale [B, 1, D] broadcast over tokens."""
    if isinstance(shift, Split):
        return modulate_split(x, shift, scale)
    return torch.addcmul(shift, x, 1 + scale)

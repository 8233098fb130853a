"""Small building blocks of the DiT, one idea each.

Attribute names follow Tencent's checkpoint keys (``mlp.0``, ``in_layer``, ``linear``...) so a
bare Tencent state dict loads with no renaming.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .token_replace import FirstFrameVec, Split, gated_residual_split, modulate_split


class Linear(nn.Linear):
    """``nn.Linear`` whose weight may be stored in a narrower dtype than the compute dtype.

    With fp8 storage the weight is upcast to the input's dtype for each call (and multiplied by
    ``weight_scale`` when the checkpoint carries a per-tensor scale); the stored copy stays fp8.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("weight_scale", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.weight, self.bias
        if w.dtype != x.dtype or w.device != x.device:
            w = w.to(device=x.device, dtype=x.dtype)
        if self.weight_scale is not None:
            w = w * self.weight_scale.to(device=x.device, dtype=x.dtype)
        if b is not None and (b.dtype != x.dtype or b.device != x.device):
            b = b.to(device=x.device, dtype=x.dtype)
        return F.linear(x, w, b)

    # ComfyUI's ModelPatcher patches a weight through ``convert_<name>``/``set_<name>`` of its layer
    # when the layer has them. With a scale, a patch (a LoRA) must be added to the scaled weight
    # and the sum stored back divided by it; without one there are none (AttributeError, which
    # ``getattr`` reports as absent) and ComfyUI patches the stored weight itself: fp32 maths,
    # then back to the stored dtype (stochastic rounding for fp8).
    @property
    def convert_weight(self):
        if self.weight_scale is None:
            raise AttributeError("convert_weight: no weight_scale")
        return self._scaled_weight

    @property
    def set_weight(self):
        if self.weight_scale is None:
            raise AttributeError("set_weight: no weight_scale")
        return self._store_scaled_weight

    def _scaled_weight(self, weight: torch.Tensor, inplace: bool = False, **_) -> torch.Tensor:
        scale = self.weight_scale.to(device=weight.device, dtype=torch.float32)
        return weight.mul_(scale) if inplace else weight.float() * scale

    def _store_scaled_weight(self, weight: torch.Tensor, inplace_update: bool = False, seed=None,
                             return_weight: bool = False, **_):
        """Round to nearest in the stored dtype (ComfyUI's own scaled-fp8 layers round stochastically)."""
        stored = (weight / self.weight_scale.to(device=weight.device, dtype=weight.dtype)).to(self.weight.dtype)
        if return_weight:
            return stored
        if inplace_update:
            self.weight.data.copy_(stored)
        else:
            self.weight = nn.Parameter(stored, requires_grad=False)
        return None


def timestep_embedding(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[cos | sin]`` of (possibly fractional) steps t: [B] -> [B, dim] fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class TimestepEmbedder(nn.Module):
    """t: [B] -> [B, hidden] through the sinusoid and a SiLU MLP (keys ``mlp.0``, ``mlp.2``)."""

    def __init__(self, hidden: int, freq_dim: int = 256, **kw):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(Linear(freq_dim, hidden, **kw), nn.SiLU(), Linear(hidden, hidden, **kw))

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim).to(dtype))


class MLPEmbedder(nn.Module):
    """[B, in] -> [B, hidden]: Linear, SiLU, Linear (keys ``in_layer``, ``out_layer``)."""

    def __init__(self, in_dim: int, hidden: int, **kw):
        super().__init__()
        self.in_layer = Linear(in_dim, hidden, **kw)
        self.out_layer = Linear(hidden, hidden, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_layer(F.silu(self.in_layer(x)))


class TextProjection(nn.Module):
    """The refiner's pooled-text projection (keys ``linear_1``, ``linear_2``)."""

    def __init__(self, in_dim: int, hidden: int, **kw):
        super().__init__()
        self.linear_1 = Linear(in_dim, hidden, **kw)
        self.linear_2 = Linear(hidden, hidden, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class PatchEmbed(nn.Module):
    """[B, C, T, H, W] -> [B, T'H'W', hidden] with a strided Conv3d (key ``proj``)."""

    def __init__(self, patch: tuple[int, int, int], in_ch: int, hidden: int, **kw):
        super().__init__()
        self.proj = nn.Conv3d(in_ch, hidden, kernel_size=patch, stride=patch, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.proj.weight.to(x), self.proj.bias.to(x)
        return F.conv3d(x, w, b, stride=self.proj.stride).flatten(2).transpose(1, 2)


class RMSNorm(nn.Module):
    """Per-head RMS norm of q or k ([..., head_dim]) (key ``weight``).

    torch's fused rms_norm accumulates in fp32 for bf16/fp16 inputs, so no explicit upcast copy.
    """

    def __init__(self, dim: int, eps: float = 1e-6, **kw):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, **kw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x), self.eps)


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

    def __init__(self, dim: int, hidden: int, act: str, **kw):
        super().__init__()
        self.fc1 = Linear(dim, hidden, **kw)
        self.act = act
        self.fc2 = Linear(hidden, dim, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(activation_(self.fc1(x), self.act))


class Modulation(nn.Module):
    """vec [B, hidden] -> ``factor`` chunks, each [B, 1, hidden] (key ``linear``)."""

    def __init__(self, hidden: int, factor: int, **kw):
        super().__init__()
        self.factor = factor
        self.linear = Linear(hidden, factor * hidden, **kw)

    def forward(self, vec: torch.Tensor | FirstFrameVec) -> list[torch.Tensor] | list[Split]:
        if isinstance(vec, FirstFrameVec):
            return [Split(a, b, vec.n) for a, b in zip(self(vec.first), self(vec.vec))]
        return list(self.linear(F.silu(vec)).unsqueeze(1).chunk(self.factor, dim=-1))


def layer_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """LayerNorm without affine parameters over the last dim."""
    return F.layer_norm(x, (x.shape[-1],), eps=eps)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: ``x * (1 + scale) + shift`` with shift/scale [B, 1, D] broadcast over tokens."""
    if isinstance(shift, Split):
        return modulate_split(x, shift, scale)
    return torch.addcmul(shift, x, 1 + scale)

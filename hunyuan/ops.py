"""The pack's default layer classes ("operations"), and its one fp8 Linear.

The DiT and its token refiner build every layer that holds weights through an ``operations``
namespace (``operations.Linear``, ``.Conv3d``, ``.LayerNorm``, ``.RMSNorm``, with torch's
constructor signatures), as ComfyUI's own models take ``comfy.ops``: the caller chooses. In
ComfyUI the loader node passes ``comfy.ops`` classes, so ComfyUI's cast-on-use (lowvram partial
load), fp8 and on-the-fly weight patches (LoRA on offloaded weights) reach every layer. Without
ComfyUI, :class:`DefaultOps` is used: each layer casts its weights to the input's dtype and device
when they differ, so weights may be stored narrower (fp8) than the activations.

:class:`Linear` is the pack's only fp8-capable Linear (DiT and text encoder): a weight stored in
fp8 is upcast per call and multiplied by ``weight_scale`` (a scalar, or one value per output row)
when the checkpoint carries one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def cast_like(t: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    """``t`` in x's dtype and on x's device (itself when it already is)."""
    if t is None or (t.dtype == x.dtype and t.device == x.device):
        return t
    return t.to(device=x.device, dtype=x.dtype)


class Linear(nn.Linear):
    """``nn.Linear`` whose weight may be stored narrower than the input (fp8), optionally scaled."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("weight_scale", None, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = cast_like(self.weight, x)
        if self.weight_scale is not None:
            w = w * cast_like(self.weight_scale, x)
        return F.linear(x, w, cast_like(self.bias, x))

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


class Conv3d(nn.Conv3d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, cast_like(self.weight, x), cast_like(self.bias, x))


class LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, cast_like(self.weight, x), cast_like(self.bias, x), self.eps)


class RMSNorm(nn.RMSNorm):
    """torch's fused rms_norm accumulates in fp32 for bf16/fp16 inputs, so no explicit upcast copy."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.normalized_shape, cast_like(self.weight, x), self.eps)


Operations = type  # a namespace class: Linear, Conv3d, LayerNorm, RMSNorm (torch's signatures)


class DefaultOps:
    """The operations namespace used when the caller passes none (cast-on-use, fp8-capable)."""

    Linear = Linear
    Conv3d = Conv3d
    LayerNorm = LayerNorm
    RMSNorm = RMSNorm


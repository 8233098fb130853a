"""The DiT's hyper-parameters: one frozen dataclass, a preset for the released model, a tiny one.

:func:`infer_config` reads the numbers back from a state dict in Tencent's bare key layout
(other layouts are mapped to it first, see :mod:`.keymap`), so a file describes itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..checkpoint_io import CheckpointError


@dataclass(frozen=True)
class DiTConfig:
    in_channels: int = 16
    out_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    hidden_size: int = 3072
    num_heads: int = 24
    mlp_ratio: float = 4.0
    depth_double: int = 20
    depth_single: int = 40
    rope_axes: tuple[int, int, int] = (16, 56, 56)
    rope_theta: float = 256.0
    qk_norm_eps: float = 1e-6
    guidance_embed: bool = True
    text_states_dim: int = 4096
    text_states_dim_2: int = 768
    refiner_depth: int = 2

    def __post_init__(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if sum(self.rope_axes) != self.head_dim:
            raise ValueError(f"rope_axes={self.rope_axes} sum to {sum(self.rope_axes)}, expected head_dim={self.head_dim}")
        if any(a % 2 for a in self.rope_axes):
            raise ValueError(f"rope_axes={self.rope_axes} must all be even (RoPE rotates pairs)")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def image_input(self) -> str:
        """How the weights take an input image, from the input channel count (see :data:`IMAGE_INPUTS`)."""
        extra = self.in_channels - self.out_channels
        for name, (channels, _) in IMAGE_INPUTS.items():
            if extra == channels:
                return name
        raise ValueError(
            f"in_channels={self.in_channels} with out_channels={self.out_channels} is no known HunyuanVideo "
            f"variant: expected {self.out_channels}, {2 * self.out_channels} or {2 * self.out_channels + 1}"
        )

    def describe(self) -> str:
        guidance = "with" if self.guidance_embed else "no"
        return f"{self.in_channels} input channels, {guidance} guidance embedding: {IMAGE_INPUTS[self.image_input][1]}"

    @property
    def patch_volume(self) -> int:
        pt, ph, pw = self.patch_size
        return pt * ph * pw


IMAGE_INPUTS = {
    "none": (0, "text-to-video, or HunyuanVideo-I2V token replace (the weights cannot tell: choose the mode)"),
    "concat": (16, "SkyReels-V1 image-to-video (noisy latent + image latent)"),
    "concat_mask": (17, "HunyuanVideo-I2V concat, the v1 weights (noisy latent + image latent + mask)"),
}
"""Extra input channels beyond the latent's -> (how the image enters, what the weights are)."""

REAL = DiTConfig()
"""HunyuanVideo 13B text-to-video (720p), the released weights."""

TINY = DiTConfig(
    hidden_size=64,
    num_heads=4,
    depth_double=2,
    depth_single=2,
    rope_axes=(4, 6, 6),
    text_states_dim=32,
    text_states_dim_2=32,
)
"""A few-MB model with every structural feature of the real one (tests, demos)."""

REQUIRED_KEYS = (
    "img_in.proj.weight",
    "txt_in.input_embedder.weight",
    "txt_in.individual_token_refiner.blocks.0.norm1.weight",
    "time_in.mlp.0.weight",
    "vector_in.in_layer.weight",
    "double_blocks.0.img_attn_qkv.weight",
    "double_blocks.0.img_attn_q_norm.weight",
    "final_layer.linear.weight",
    "final_layer.adaLN_modulation.1.weight",
)


def _count(keys, pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    return max(found) + 1 if found else 0


def _rope_axes_for(head_dim: int) -> tuple[int, int, int]:
    """The released model splits 128 as (16, 56, 56); other widths keep that ratio (t gets 1/8)."""
    if head_dim == 128:
        return (16, 56, 56)
    t = max(2, (head_dim // 8) // 2 * 2)
    hw = (head_dim - t) // 2
    if hw % 2:
        t, hw = t + 2, hw - 1
    return (t, hw, hw)


def infer_config(sd: Mapping[str, torch.Tensor], *, source: str = "state dict") -> DiTConfig:
    """Read a :class:`DiTConfig` from a state dict in Tencent's bare key layout.

    Head width is not stored in the weights: it is 128 for every released checkpoint, so
    ``num_heads = hidden / 128`` unless the q-norm weight says otherwise.
    """
    missing = [k for k in REQUIRED_KEYS if k not in sd]
    if missing:
        raise CheckpointError(
            f"{source} is not a HunyuanVideo DiT: missing {', '.join(missing)} "
            f"(found {len(sd)} tensors, e.g. {', '.join(sorted(sd)[:3]) or 'none'})"
        )
    img_w = sd["img_in.proj.weight"]  # [hidden, in, pt, ph, pw]
    hidden, in_ch = int(img_w.shape[0]), int(img_w.shape[1])
    patch = tuple(int(s) for s in img_w.shape[2:])
    head_dim = int(sd["double_blocks.0.img_attn_q_norm.weight"].shape[0])
    out_ch = int(sd["final_layer.linear.weight"].shape[0]) // (patch[0] * patch[1] * patch[2])
    mlp_hidden = int(sd["double_blocks.0.img_mlp.fc1.weight"].shape[0])
    config = DiTConfig(
        in_channels=in_ch,
        out_channels=out_ch,
        patch_size=patch,
        hidden_size=hidden,
        num_heads=hidden // head_dim,
        mlp_ratio=mlp_hidden / hidden,
        depth_double=_count(sd, r"double_blocks\.(\d+)\."),
        depth_single=_count(sd, r"single_blocks\.(\d+)\."),
        rope_axes=_rope_axes_for(head_dim),
        guidance_embed="guidance_in.mlp.0.weight" in sd,
        text_states_dim=int(sd["txt_in.input_embedder.weight"].shape[1]),
        text_states_dim_2=int(sd["vector_in.in_layer.weight"].shape[1]),
        refiner_depth=_count(sd, r"txt_in\.individual_token_refiner\.blocks\.(\d+)\."),
    )
    try:
        _ = config.image_input
    except ValueError as exc:
        raise CheckpointError(f"{source}: {exc}") from None
    return config

"""The DiT's transformer blocks: double-stream (separate weights for video and text, joint
attention), single-stream (one set of weights over the concatenated sequence), final layer.

Without autograd, blocks update their img/txt/x inputs in place (the model always passes fresh
tensors); with autograd they allocate as usual. Shapes: img [B, Ni, D] video tokens; txt [B, Nt, D] text tokens; vec [B, D] conditioning;
rope: complex rotations [Ni, head_dim // 2] (see :mod:`.rope`); key_mask None or bool [B, Ni + Nt].
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import AttentionFn
from .layers import MLP, Linear, Modulation, RMSNorm, activation_, gated_residual_, layer_norm, modulate
from .rope import apply_rope
from .token_replace import plain

Rope = torch.Tensor


def split_qkv(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, N, 3*H*Dh] -> three [B, N, H, Dh] views."""
    b, n, _ = qkv.shape
    q, k, v = qkv.view(b, n, 3, heads, -1).unbind(2)
    return q, k, v


def to_heads_first(*xs: torch.Tensor) -> list[torch.Tensor]:
    """[B, N, H, Dh] -> [B, H, N, Dh]"""
    return [x.transpose(1, 2) for x in xs]


class DoubleStreamBlock(nn.Module):
    def __init__(self, hidden: int, heads: int, mlp_hidden: int, eps: float = 1e-6, **kw):
        super().__init__()
        self.heads = heads
        head_dim = hidden // heads
        for s in ("img", "txt"):
            setattr(self, f"{s}_mod", Modulation(hidden, 6, **kw))
            setattr(self, f"{s}_attn_qkv", Linear(hidden, 3 * hidden, **kw))
            setattr(self, f"{s}_attn_q_norm", RMSNorm(head_dim, eps, **kw))
            setattr(self, f"{s}_attn_k_norm", RMSNorm(head_dim, eps, **kw))
            setattr(self, f"{s}_attn_proj", Linear(hidden, hidden, **kw))
            setattr(self, f"{s}_mlp", MLP(hidden, mlp_hidden, "gelu_tanh", **kw))

    def _qkv(self, stream: str, x: torch.Tensor, shift, scale):
        qkv = getattr(self, f"{stream}_attn_qkv")(modulate(layer_norm(x), shift, scale))
        q, k, v = split_qkv(qkv, self.heads)
        q = getattr(self, f"{stream}_attn_q_norm")(q).to(v.dtype)
        k = getattr(self, f"{stream}_attn_k_norm")(k).to(v.dtype)
        return q, k, v

    def _finish(self, stream: str, x, attn_out, mods):
        _, _, gate1, shift2, scale2, gate2 = mods
        x = gated_residual_(x, getattr(self, f"{stream}_attn_proj")(attn_out), gate1)
        mlp = getattr(self, f"{stream}_mlp")
        return gated_residual_(x, mlp(modulate(layer_norm(x), shift2, scale2)), gate2)

    def forward(self, img, txt, vec, rope: Rope, key_mask, attn: AttentionFn):
        img_mods, txt_mods = self.img_mod(vec), self.txt_mod(plain(vec))
        iq, ik, iv = self._qkv("img", img, img_mods[0], img_mods[1])
        tq, tk, tv = self._qkv("txt", txt, txt_mods[0], txt_mods[1])
        iq, ik = apply_rope(iq, rope), apply_rope(ik, rope)
        q, k, v = to_heads_first(torch.cat((iq, tq), 1), torch.cat((ik, tk), 1), torch.cat((iv, tv), 1))
        out = attn(q, k, v, key_mask)
        n_img = img.shape[1]
        img = self._finish("img", img, out[:, :n_img], img_mods)
        txt = self._finish("txt", txt, out[:, n_img:], txt_mods)
        return img, txt


class SingleStreamBlock(nn.Module):
    """Attention and MLP in parallel from one fused input projection (``linear1``)."""

    def __init__(self, hidden: int, heads: int, mlp_hidden: int, eps: float = 1e-6, **kw):
        super().__init__()
        self.heads = heads
        self.hidden = hidden
        head_dim = hidden // heads
        self.linear1 = Linear(hidden, 3 * hidden + mlp_hidden, **kw)
        self.linear2 = Linear(hidden + mlp_hidden, hidden, **kw)
        self.q_norm = RMSNorm(head_dim, eps, **kw)
        self.k_norm = RMSNorm(head_dim, eps, **kw)
        self.modulation = Modulation(hidden, 3, **kw)

    def forward(self, x, vec, rope: Rope, n_img: int, key_mask, attn: AttentionFn):
        """x: [B, Ni + Nt, D] video tokens first; RoPE rotates the first ``n_img`` only."""
        shift, scale, gate = self.modulation(vec)
        qkv, mlp = self.linear1(modulate(layer_norm(x), shift, scale)).split(
            [3 * self.hidden, self.linear1.out_features - 3 * self.hidden], dim=-1
        )
        q, k, v = split_qkv(qkv, self.heads)
        q, k = self.q_norm(q).to(v.dtype), self.k_norm(k).to(v.dtype)  # fresh tensors: rotate in place
        q[:, :n_img] = apply_rope(q[:, :n_img], rope)
        k[:, :n_img] = apply_rope(k[:, :n_img], rope)
        out = attn(*to_heads_first(q, k, v), key_mask)
        return gated_residual_(x, self.linear2(torch.cat((out, activation_(mlp, "gelu_tanh")), dim=-1)), gate)


class FinalLayer(nn.Module):
    """[B, Ni, D] -> [B, Ni, patch_volume * out_channels]; adaLN order is [shift; scale]."""

    def __init__(self, hidden: int, out_dim: int, **kw):
        super().__init__()
        self.linear = Linear(hidden, out_dim, **kw)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Linear(hidden, 2 * hidden, **kw))

    def forward(self, x, vec):
        shift, scale = self.adaLN_modulation(plain(vec)).unsqueeze(1).chunk(2, dim=-1)
        return self.linear(modulate(layer_norm(x), shift, scale))

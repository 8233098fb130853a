"""The DiT's transformer blocks: double-stream (separate weights for video and text, joint
attention), single-stream (one set of weights over the concatenated sequence), final layer.

Without autograd, blocks update their img/txt/x inputs in place (the model always passes fresh
tensors); with autograd they allocate as usual. Shapes: img [B, Ni, D] video tokens; txt [B, Nt, D] text tokens; vec [B, D] conditioning;
rope: complex rotations [Ni, head_dim // 2] (see :mod:`.rope`); key_mask None or bool [B, Ni + Nt].
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

from .attention import AttentionFn
from .layers import MLP, ModParams, Modulation, activation_, gated_residual_, layer_norm, modulate
from .rope import apply_rope
from .token_replace import plain

Rope = torch.Tensor


def split_qkv(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, N, 3*H*Dh] -> three [B, N, H, Dh] views."""
    q, k, v = rearrange(qkv, "b n (three h d) -> three b n h d", three=3, h=heads).unbind(0)
    return q, k, v


def to_heads_first(*xs: torch.Tensor) -> list[torch.Tensor]:
    """[B, N, H, Dh] -> [B, H, N, Dh]"""
    return [x.transpose(1, 2) for x in xs]


class DoubleStreamBlock(nn.Module):
    """Separate weights for the video (``img_*``) and text (``txt_*``) streams, one joint attention."""

    def __init__(self, hidden: int, heads: int, mlp_hidden: int, eps: float = 1e-6, *, operations, **kw):
        super().__init__()
        self.heads = heads
        head_dim = hidden // heads
        ops = operations
        self.img_mod = Modulation(hidden, 6, operations=ops, **kw)
        self.img_attn_qkv = ops.Linear(hidden, 3 * hidden, **kw)
        self.img_attn_q_norm = ops.RMSNorm(head_dim, eps=eps, **kw)
        self.img_attn_k_norm = ops.RMSNorm(head_dim, eps=eps, **kw)
        self.img_attn_proj = ops.Linear(hidden, hidden, **kw)
        self.img_mlp = MLP(hidden, mlp_hidden, "gelu_tanh", operations=ops, **kw)
        self.txt_mod = Modulation(hidden, 6, operations=ops, **kw)
        self.txt_attn_qkv = ops.Linear(hidden, 3 * hidden, **kw)
        self.txt_attn_q_norm = ops.RMSNorm(head_dim, eps=eps, **kw)
        self.txt_attn_k_norm = ops.RMSNorm(head_dim, eps=eps, **kw)
        self.txt_attn_proj = ops.Linear(hidden, hidden, **kw)
        self.txt_mlp = MLP(hidden, mlp_hidden, "gelu_tanh", operations=ops, **kw)

    def _qkv(self, x: torch.Tensor, mod: ModParams, qkv: nn.Module, q_norm: nn.Module, k_norm: nn.Module):
        q, k, v = split_qkv(qkv(modulate(layer_norm(x), mod.shift, mod.scale)), self.heads)
        return q_norm(q).to(v.dtype), k_norm(k).to(v.dtype), v

    @staticmethod
    def _finish(x, attn_out, attn_mod: ModParams, mlp_mod: ModParams, proj: nn.Module, mlp: nn.Module):
        x = gated_residual_(x, proj(attn_out), attn_mod.gate)
        return gated_residual_(x, mlp(modulate(layer_norm(x), mlp_mod.shift, mlp_mod.scale)), mlp_mod.gate)

    def forward(self, img, txt, vec, rope: Rope, key_mask, attn: AttentionFn):
        img_attn_mod, img_mlp_mod = self.img_mod(vec)
        txt_attn_mod, txt_mlp_mod = self.txt_mod(plain(vec))
        iq, ik, iv = self._qkv(img, img_attn_mod, self.img_attn_qkv, self.img_attn_q_norm, self.img_attn_k_norm)
        tq, tk, tv = self._qkv(txt, txt_attn_mod, self.txt_attn_qkv, self.txt_attn_q_norm, self.txt_attn_k_norm)
        iq, ik = apply_rope(iq, rope), apply_rope(ik, rope)
        q, k, v = to_heads_first(torch.cat((iq, tq), 1), torch.cat((ik, tk), 1), torch.cat((iv, tv), 1))
        out = attn(q, k, v, key_mask)
        n_img = img.shape[1]
        img = self._finish(img, out[:, :n_img], img_attn_mod, img_mlp_mod, self.img_attn_proj, self.img_mlp)
        txt = self._finish(txt, out[:, n_img:], txt_attn_mod, txt_mlp_mod, self.txt_attn_proj, self.txt_mlp)
        return img, txt


class SingleStreamBlock(nn.Module):
    """Attention and MLP in parallel from one fused input projection (``linear1``)."""

    def __init__(self, hidden: int, heads: int, mlp_hidden: int, eps: float = 1e-6, *, operations, **kw):
        super().__init__()
        self.heads = heads
        self.hidden = hidden
        head_dim = hidden // heads
        self.linear1 = operations.Linear(hidden, 3 * hidden + mlp_hidden, **kw)
        self.linear2 = operations.Linear(hidden + mlp_hidden, hidden, **kw)
        self.q_norm = operations.RMSNorm(head_dim, eps=eps, **kw)
        self.k_norm = operations.RMSNorm(head_dim, eps=eps, **kw)
        self.modulation = Modulation(hidden, 3, operations=operations, **kw)

    def forward(self, x, vec, rope: Rope, n_img: int, key_mask, attn: AttentionFn):
        """x: [B, Ni + Nt, D] video tokens first; RoPE rotates the first ``n_img`` only."""
        (mod,) = self.modulation(vec)
        qkv, mlp = self.linear1(modulate(layer_norm(x), mod.shift, mod.scale)).split(
            [3 * self.hidden, self.linear1.out_features - 3 * self.hidden], dim=-1
        )
        q, k, v = split_qkv(qkv, self.heads)
        q, k = self.q_norm(q).to(v.dtype), self.k_norm(k).to(v.dtype)  # fresh tensors: rotate in place
        q[:, :n_img] = apply_rope(q[:, :n_img], rope)
        k[:, :n_img] = apply_rope(k[:, :n_img], rope)
        out = attn(*to_heads_first(q, k, v), key_mask)
        return gated_residual_(x, self.linear2(torch.cat((out, activation_(mlp, "gelu_tanh")), dim=-1)), mod.gate)


class FinalLayer(nn.Module):
    """[B, Ni, D] -> [B, Ni, patch_volume * out_channels]; adaLN order is [shift; scale]."""

    def __init__(self, hidden: int, out_dim: int, *, operations, **kw):
        super().__init__()
        self.linear = operations.Linear(hidden, out_dim, **kw)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), operations.Linear(hidden, 2 * hidden, **kw))

    def forward(self, x, vec):
        shift, scale = self.adaLN_modulation(plain(vec)).unsqueeze(1).chunk(2, dim=-1)
        return self.linear(modulate(layer_norm(x), shift, scale))

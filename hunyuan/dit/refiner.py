"""The token refiner (``txt_in``): LLM text states -> DiT-width text tokens, conditioned on t.

It is the only part of the DiT that sees the raw LLM states, and its output depends only on
(text, timestep). So for a known sigma schedule it can run once per step *before* sampling
(:func:`precompute_refined_text`), and the DiT then samples from the precomputed tokens without
``txt_in`` on the device (see :meth:`HunyuanVideoDiT.detach_refiner`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..conditioning import RefinedText, TextEmbeds
from .attention import AttentionFn, sdpa_attention
from .blocks import split_qkv, to_heads_first
from .layers import MLP, TextProjection, TimestepEmbedder


class RefinerBlock(nn.Module):
    """Bidirectional self-attention + SiLU MLP over text tokens, gated (not shifted) by c."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float = 4.0, *, operations, **kw):
        super().__init__()
        self.heads = heads
        self.norm1 = operations.LayerNorm(hidden, eps=1e-6, **kw)  # affine, unlike the DiT's norms
        self.self_attn_qkv = operations.Linear(hidden, 3 * hidden, **kw)
        self.self_attn_proj = operations.Linear(hidden, hidden, **kw)
        self.norm2 = operations.LayerNorm(hidden, eps=1e-6, **kw)
        self.mlp = MLP(hidden, int(hidden * mlp_ratio), "silu", operations=operations, **kw)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), operations.Linear(hidden, 2 * hidden, **kw))

    def forward(self, x, c, key_mask, attn: AttentionFn):
        """x: [B, L, D]; c: [B, D]; key_mask: None or bool [B, L]."""
        gate_attn, gate_mlp = self.adaLN_modulation(c).unsqueeze(1).chunk(2, dim=-1)
        q, k, v = to_heads_first(*split_qkv(self.self_attn_qkv(self.norm1(x)), self.heads))
        x = torch.addcmul(x, self.self_attn_proj(attn(q, k, v, key_mask)), gate_attn)
        return torch.addcmul(x, self.mlp(self.norm2(x)), gate_mlp)


class IndividualTokenRefiner(nn.Module):
    def __init__(self, hidden: int, heads: int, depth: int, *, operations, **kw):
        super().__init__()
        self.blocks = nn.ModuleList(RefinerBlock(hidden, heads, operations=operations, **kw) for _ in range(depth))


class SingleTokenRefiner(nn.Module):
    """text [B, L, text_dim], t [B] (0..1000), mask [B, L] -> [B, L, hidden]."""

    def __init__(self, text_dim: int, hidden: int, heads: int, depth: int, *, operations, **kw):
        super().__init__()
        self.input_embedder = operations.Linear(text_dim, hidden, **kw)
        self.t_embedder = TimestepEmbedder(hidden, operations=operations, **kw)
        self.c_embedder = TextProjection(text_dim, hidden, operations=operations, **kw)
        self.individual_token_refiner = IndividualTokenRefiner(hidden, heads, depth, operations=operations, **kw)

    def prepare(self, text: torch.Tensor, mask: torch.Tensor | None):
        """The timestep-independent part: (projected tokens [B, L, D], pooled context [B, D])."""
        if mask is None:
            pooled = text.mean(dim=1)
        else:
            m = mask.to(torch.float32).unsqueeze(-1)
            pooled = ((text.float() * m).sum(dim=1) / m.sum(dim=1)).to(text.dtype)
        return self.input_embedder(text), self.c_embedder(pooled)

    def refine(self, tokens, context, t, mask, attn: AttentionFn = sdpa_attention):
        """The timestep-dependent part, from :meth:`prepare`'s outputs."""
        c = self.t_embedder(t, tokens.dtype) + context
        key_mask = None if mask is None or bool(mask.all()) else mask
        for block in self.individual_token_refiner.blocks:
            tokens = block(tokens, c, key_mask, attn)
        return tokens

    def forward(self, text, t, mask=None, attn: AttentionFn = sdpa_attention):
        tokens, context = self.prepare(text, mask)
        return self.refine(tokens, context, t, mask, attn)


def trim_padding(mask: torch.Tensor) -> torch.Tensor:
    """Indices [L'] of the text positions that are a real token in at least one batch item.

    Columns padded in every item can be dropped: no query attends to them and no output reads them.
    """
    return mask.any(dim=0).nonzero().squeeze(1)


@torch.no_grad()
def precompute_refined_text(
    refiner: SingleTokenRefiner,
    text: TextEmbeds,
    sigmas: torch.Tensor,
    *,
    device: torch.device | str,
    dtype: torch.dtype,
    attn: AttentionFn = sdpa_attention,
) -> RefinedText:
    """Refined text tokens for every step of ``sigmas`` ([S+1], last one is the end point).

    Step i uses timestep ``sigmas[i] * 1000``. Positions padded in every batch item are trimmed,
    so ``tokens`` is [S, B, L', hidden] with ``mask`` [B, L'] (L' <= L), on ``device``. Call it
    once for the positive and once for the negative prompt.
    """
    keep = trim_padding(text.mask)
    states = text.states[:, keep].to(device=device, dtype=dtype)
    mask = text.mask[:, keep].to(device)
    tokens, context = refiner.prepare(states, mask)
    steps = sigmas[:-1].to(device=device, dtype=torch.float32) * 1000.0
    out = torch.empty((len(steps), *tokens.shape), device=device, dtype=dtype)
    for i, t in enumerate(steps):
        out[i] = refiner.refine(tokens, context, t.expand(text.batch), mask, attn)
    return RefinedText(sigmas=sigmas.detach().cpu(), tokens=out, mask=mask, pooled=text.pooled.to(device))

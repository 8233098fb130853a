"""HunyuanVideo's diffusion transformer, with submodules named after Tencent's checkpoint keys."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import nn

from ..ops import DefaultOps
from .attention import resolve_backend
from .blocks import DoubleStreamBlock, FinalLayer, SingleStreamBlock
from .config import DiTConfig
from .layers import MLPEmbedder, PatchEmbed, TimestepEmbedder
from .refiner import SingleTokenRefiner, trim_padding
from .rope import video_rope
from .token_replace import FirstFrameVec

log = logging.getLogger(__name__)


class HunyuanVideoDiT(nn.Module):
    """Flow-matching video DiT: 20 double-stream + 40 single-stream blocks in the released model.

    ``compute_dtype`` (set by the loader) is the dtype activations run in; weights may be stored
    narrower (fp8) and are upcast per layer by the layer classes of ``operations`` (the pack's
    :class:`~hunyuan.ops.DefaultOps`, or ComfyUI's ``comfy.ops``). ``attention_backend`` names a backend of
    :mod:`.attention` and is resolved against the input's device at each call.
    """

    def __init__(self, config: DiTConfig, *, device=None, dtype=None, operations=DefaultOps):
        super().__init__()
        kw = {"device": device, "dtype": dtype, "operations": operations}
        c = config
        self.config = c
        self.compute_dtype: torch.dtype | None = dtype
        self.attention_backend = "sdpa"
        self.img_in = PatchEmbed(c.patch_size, c.in_channels, c.hidden_size, **kw)
        self.txt_in = SingleTokenRefiner(c.text_states_dim, c.hidden_size, c.num_heads, c.refiner_depth, **kw)
        self.time_in = TimestepEmbedder(c.hidden_size, **kw)
        self.vector_in = MLPEmbedder(c.text_states_dim_2, c.hidden_size, **kw)
        self.guidance_in = TimestepEmbedder(c.hidden_size, **kw) if c.guidance_embed else None
        self.double_blocks = nn.ModuleList(
            DoubleStreamBlock(c.hidden_size, c.num_heads, c.mlp_hidden, c.qk_norm_eps, **kw)
            for _ in range(c.depth_double)
        )
        self.single_blocks = nn.ModuleList(
            SingleStreamBlock(c.hidden_size, c.num_heads, c.mlp_hidden, c.qk_norm_eps, **kw)
            for _ in range(c.depth_single)
        )
        self.final_layer = FinalLayer(c.hidden_size, c.patch_volume * c.out_channels, **kw)

    def detach_refiner(self) -> SingleTokenRefiner:
        """Take ``txt_in`` out of the DiT and hand it to the caller, who then owns it.

        Afterwards ``.to()``, ``state_dict()`` and memory accounting of the DiT no longer include
        the refiner (~309M params in the real model): it stays wherever it is (e.g. the offload
        device) and is run separately by :func:`precompute_refined_text`; ``forward`` then needs
        ``refined_text``.
        """
        if self.txt_in is None:
            raise ValueError("the DiT's token refiner (txt_in) was already detached; its owner has it")
        refiner, self.txt_in = self.txt_in, None
        return refiner

    # -- forward ------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> tuple[int, int, int]:
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"latent has shape {tuple(x.shape)}, expected [B, {self.config.in_channels}, T, H, W]"
            )
        grid = []
        for name, size, p in zip("THW", x.shape[2:], self.config.patch_size):
            if size % p:
                raise ValueError(f"latent {name}={size} is not a multiple of the patch size {p}")
            grid.append(size // p)
        return tuple(grid)

    def _conditioning_vector(self, timestep, pooled, guidance, dtype, first_frame_tokens: int = 0):
        """vec [B, D] = time_in(t) + vector_in(CLIP pooled) (+ guidance_in(1000 g)).

        With ``first_frame_tokens`` (token replace) a :class:`FirstFrameVec` whose first-frame
        vector is time_in(0) + vector_in(pooled), without guidance (Tencent's I2V code).
        """
        text = self.vector_in(pooled.to(dtype))
        vec = self.time_in(timestep, dtype) + text
        if self.guidance_in is not None and guidance is not None:
            vec = vec + self.guidance_in(guidance.to(device=vec.device, dtype=torch.float32) * 1000.0, dtype)
        if first_frame_tokens:
            return FirstFrameVec(vec, self.time_in(torch.zeros_like(timestep), dtype) + text, first_frame_tokens)
        return vec

    def _unpatchify(self, out: torch.Tensor, grid) -> torch.Tensor:
        """[B, T'H'W', C*pt*ph*pw] -> [B, C, T'pt, H'ph, W'pw]"""
        (t, h, w), (pt, ph, pw) = grid, self.config.patch_size
        return rearrange(out, "b (t h w) (c pt ph pw) -> b c (t pt) (h ph) (w pw)", t=t, h=h, w=w, pt=pt, ph=ph, pw=pw)

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        text_mask: torch.Tensor,
        text_pooled: torch.Tensor,
        guidance: torch.Tensor | None = None,
        *,
        text_states: torch.Tensor | None = None,
        refined_text: torch.Tensor | None = None,
        step_cache=None,
        sequence_parallel=None,
        token_replace: bool = False,
    ) -> torch.Tensor:
        """Predict the flow velocity.

        x: [B, C, T, H, W] latent (C = 16, or 32/33 with an I2V image concatenated); timestep: [B]
        in 0..1000; text_mask: [B, L] bool; text_pooled: [B, 768]; guidance: [B] embedded guidance
        scale (e.g. 6.0) or None. The text comes as one of: text_states [B, L, 4096] LLM states
        (refined here by ``txt_in``), or refined_text [B, L, hidden], the precomputed ``txt_in``
        output for this timestep; step_cache: a
        :class:`~hunyuan.dit.step_cache.StepCacheState` that may skip part of the block stack;
        sequence_parallel: a :class:`~hunyuan.parallel.sequence.SequenceShard` when this call is one
        rank's share of the forward; token_replace: the first latent frame is a clean image latent
        (HunyuanVideo-I2V v2), its tokens are modulated as at t=0 (see :mod:`.token_replace`).
        Returns [B, 16, T, H, W] in x's dtype.
        """
        grid = self._check_input(x)
        dtype = self.compute_dtype or self.img_in.proj.weight.dtype
        _, attn = resolve_backend(self.attention_backend, x.device)
        text_mask = text_mask.to(device=x.device, dtype=torch.bool)
        keep = trim_padding(text_mask)
        mask = text_mask[:, keep]
        img = self.img_in(x.to(dtype)).contiguous()
        timestep = timestep.to(x.device).float().expand(x.shape[0])
        first = grid[1] * grid[2] if token_replace else 0
        vec = self._conditioning_vector(timestep, text_pooled.to(x.device), guidance, dtype, first)
        if refined_text is not None:
            txt = refined_text.to(device=x.device, dtype=dtype)[:, keep]
        elif text_states is None:
            raise ValueError("the DiT needs the text: pass text_states (LLM states) or refined_text")
        elif self.txt_in is None:
            raise ValueError("the token refiner (txt_in) is detached from this DiT: pass refined_text "
                             "(precompute_refined_text) instead of text_states")
        else:
            txt = self.txt_in(text_states.to(device=x.device, dtype=dtype)[:, keep], timestep, mask, attn)
        return self._run_blocks(img, txt, vec, mask, attn, grid, x, step_cache, sequence_parallel)

    def _run_blocks(self, img, txt, vec, mask, attn, grid, x, step_cache=None, shard=None) -> torch.Tensor:
        rope = video_rope(grid, self.config.rope_axes, self.config.rope_theta, device=x.device)
        key_mask = None
        if shard is not None:
            img, rope, key_mask, attn = shard.split(img, rope, mask, attn)
            vec = shard.local_vec(vec)
        elif not bool(mask.all()):
            key_mask = torch.cat((mask.new_ones(mask.shape[0], img.shape[1]), mask), dim=1)
        blocks = BlockRunner(self, vec, rope, key_mask, attn, img.shape[1], shard)
        img = blocks.rest(0, img, txt) if step_cache is None else step_cache.blocks(self, img, txt, vec, blocks)
        out = self.final_layer(img, vec)
        if shard is not None:
            out = shard.join(out)
        return self._unpatchify(out, grid).to(x.dtype)


@dataclass(frozen=True)
class BlockRunner:
    """The block stack of one forward, in pieces a step cache can run or skip."""

    model: HunyuanVideoDiT
    vec: torch.Tensor
    rope: torch.Tensor
    key_mask: torch.Tensor | None
    attn: object
    n_img: int
    shard: object | None = None  # a SequenceShard when img is one rank's share of the video tokens

    def double(self, i: int, img: torch.Tensor, txt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.double_blocks[i](img, txt, self.vec, self.rope, self.key_mask, self.attn)

    def rest(self, start: int, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """Double blocks ``start``.. and every single block; returns the video tokens."""
        for i in range(start, len(self.model.double_blocks)):
            img, txt = self.double(i, img, txt)
        seq = torch.cat((img, txt), dim=1)
        for block in self.model.single_blocks:
            seq = block(seq, self.vec, self.rope, self.n_img, self.key_mask, self.attn)
        return seq[:, : self.n_img]

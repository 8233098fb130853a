"""diffusers' HunyuanVideo classes built from our configs and weights: the numerical oracles.

One place builds each peer, so every parity test compares against the same construction.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLHunyuanVideo, HunyuanVideoTransformer3DModel

from hunyuan.dit.config import DiTConfig
from hunyuan.dit.keymap import to_diffusers
from hunyuan.vae.config import VAEConfig


def diffusers_dit(cfg: DiTConfig, tencent_sd: dict[str, torch.Tensor], image_condition_type: str | None = None
                  ) -> HunyuanVideoTransformer3DModel:
    """diffusers' transformer with ``cfg``'s hyper-parameters and our Tencent-layout weights.

    image_condition_type: diffusers' name of the I2V mode, ``token_replace`` or ``latent_concat``
    (SkyReels' concat needs none: it is only the input width).
    """
    with torch.device("meta"):
        peer = HunyuanVideoTransformer3DModel(
            in_channels=cfg.in_channels, out_channels=cfg.out_channels, num_attention_heads=cfg.num_heads,
            attention_head_dim=cfg.head_dim, num_layers=cfg.depth_double, num_single_layers=cfg.depth_single,
            num_refiner_layers=cfg.refiner_depth, mlp_ratio=cfg.mlp_ratio, patch_size=cfg.patch_size[1],
            patch_size_t=cfg.patch_size[0], guidance_embeds=cfg.guidance_embed,
            text_embed_dim=cfg.text_states_dim, pooled_projection_dim=cfg.text_states_dim_2,
            rope_theta=cfg.rope_theta, rope_axes_dim=cfg.rope_axes, image_condition_type=image_condition_type,
        )
    peer.load_state_dict(to_diffusers(tencent_sd), strict=True, assign=True)
    return peer.eval()


def diffusers_vae(cfg: VAEConfig, sd: dict[str, torch.Tensor]) -> AutoencoderKLHunyuanVideo:
    """diffusers' VAE with ``cfg``'s widths and the (identical-layout) weights, untiled."""
    peer = AutoencoderKLHunyuanVideo(
        block_out_channels=cfg.block_channels, layers_per_block=cfg.layers_per_block, norm_num_groups=cfg.norm_groups
    )
    peer.load_state_dict(sd, strict=True)
    peer.use_framewise_decoding = peer.use_framewise_encoding = False  # plain, untiled forward
    return peer.eval()

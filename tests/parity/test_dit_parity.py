"""Our DiT against diffusers' HunyuanVideoTransformer3DModel and ComfyUI's own HunyuanVideo.

The same random weights are converted into each peer's layout, loaded into the peer, and loaded
into our model *through our loader from that layout*. fp32 max relative error <= 1e-5.

Text masks, like with like: diffusers reads a mask as a valid-prefix length (the LLM pads on the
right) and excludes padded keys, so it is compared on right-padded batches directly. ComfyUI
pools the refiner context with a plain mean over all tokens and builds a [1, 1, N] attention
mask that cannot hold two different masks, so it is only correct for unpadded text: it is run on
each prompt alone, cropped to its real tokens (which is what ComfyUI feeds it), and compared with
that item of our padded batch.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hunyuan.dit import DiTConfig, HunyuanVideoDiT
from hunyuan.dit.checkpoint import load_dit
from hunyuan.dit.keymap import to_comfy, to_diffusers
from hunyuan.dit.tiny import random_state_dict, tiny_config
from tests.checks import rel_err
from tests.peers import diffusers_dit

TOL = 1e-5


def comfy_model(cfg: DiTConfig, sd):
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.ldm.hunyuan_video.model as hv
    import comfy.ops

    with torch.device("meta"):
        peer = hv.HunyuanVideo(
            in_channels=cfg.in_channels, out_channels=cfg.out_channels, vec_in_dim=cfg.text_states_dim_2,
            context_in_dim=cfg.text_states_dim, hidden_size=cfg.hidden_size, mlp_ratio=cfg.mlp_ratio,
            num_heads=cfg.num_heads, depth=cfg.depth_double, depth_single_blocks=cfg.depth_single,
            axes_dim=list(cfg.rope_axes), theta=int(cfg.rope_theta), patch_size=list(cfg.patch_size),
            qkv_bias=True, guidance_embed=cfg.guidance_embed, byt5=False, meanflow=False,
            use_cond_type_embedding=False, vision_in_dim=None, operations=comfy.ops.disable_weight_init,
        )
    peer.load_state_dict(to_comfy(sd), strict=True, assign=True)
    return peer.eval()


def diffusers_model(cfg: DiTConfig, sd):
    return diffusers_dit(cfg, sd)


def inputs(cfg: DiTConfig, *, batch: int, latent: tuple[int, int, int], text_len: int, lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, *latent, generator=g)
    text = torch.randn(batch, text_len, cfg.text_states_dim, generator=g)
    mask = torch.arange(text_len)[None, :] < torch.tensor(lengths)[:, None]
    pooled = torch.randn(batch, cfg.text_states_dim_2, generator=g)
    t = torch.linspace(900.0, 250.0, batch)
    guidance = torch.full((batch,), 6.0)
    return x, t, text, mask, pooled, guidance


def ours_from(layout_sd) -> HunyuanVideoDiT:
    return load_dit(layout_sd, device="cpu", dtype=torch.float32)


def check_against_diffusers(cfg, sd, args):
    x, t, text, mask, pooled, guidance = args
    peer = diffusers_model(cfg, sd)
    ours = ours_from(to_diffusers(sd))
    with torch.no_grad():
        # diffusers takes the guidance already multiplied by 1000 (its pipeline does that)
        ref = peer(x, t, text, mask.long(), pooled, guidance * 1000.0, return_dict=False)[0]
        out = ours(x, t, mask, pooled, guidance, text_states=text)
    assert out.shape == ref.shape
    assert rel_err(out, ref) <= TOL


def check_against_comfy(cfg, sd, args):
    x, t, text, mask, pooled, guidance = args
    peer = comfy_model(cfg, sd)
    ours = ours_from({"model.model." + k: v for k, v in to_comfy(sd).items()})
    with torch.no_grad():
        out = ours(x, t, mask, pooled, guidance, text_states=text)
        for b in range(x.shape[0]):
            n = int(mask[b].sum())
            ref = peer(x[b : b + 1], t[b : b + 1], text[b : b + 1, :n], y=pooled[b : b + 1],
                       guidance=guidance[b : b + 1], attention_mask=torch.ones(1, n, dtype=torch.long),
                       transformer_options={})
            assert rel_err(out[b : b + 1], ref) <= TOL, f"item {b}"


TINY_CASES = {
    "even": dict(batch=1, latent=(3, 4, 6), text_len=7, lengths=[7]),
    "odd_sizes": dict(batch=1, latent=(5, 6, 10), text_len=5, lengths=[5]),  # T=5, H'=3, W'=5 tokens
    "batch2_uneven": dict(batch=2, latent=(2, 4, 4), text_len=9, lengths=[9, 4]),
}


@pytest.fixture(scope="module")
def tiny():
    cfg = tiny_config(32, 24)
    return cfg, random_state_dict(cfg, seed=3)


@pytest.mark.parametrize("case", TINY_CASES)
def test_tiny_matches_diffusers(tiny, case):
    cfg, sd = tiny
    check_against_diffusers(cfg, sd, inputs(cfg, **TINY_CASES[case]))


@pytest.mark.parametrize("case", TINY_CASES)
def test_tiny_matches_comfy(tiny, case):
    cfg, sd = tiny
    check_against_comfy(cfg, sd, inputs(cfg, **TINY_CASES[case]))


@pytest.fixture(scope="module")
def real_width():
    # Real width and heads, 1 double + 1 single block; ComfyUI hard-codes 2 refiner blocks.
    # A narrower LLM input (256 instead of 4096) keeps it to ~2.5 GB of fp32 weights.
    cfg = dataclasses.replace(DiTConfig(), depth_double=1, depth_single=1, text_states_dim=256)
    return cfg, random_state_dict(cfg, seed=5)


def test_real_width_matches_diffusers_batch2_uneven_odd(real_width):
    cfg, sd = real_width
    check_against_diffusers(cfg, sd, inputs(cfg, batch=2, latent=(3, 2, 6), text_len=6, lengths=[6, 3]))


def test_real_width_matches_comfy_batch2_uneven_odd(real_width):
    cfg, sd = real_width
    check_against_comfy(cfg, sd, inputs(cfg, batch=2, latent=(3, 2, 6), text_len=6, lengths=[6, 3]))

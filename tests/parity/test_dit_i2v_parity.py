"""The image-to-video DiT variants against diffusers' transformer (and ComfyUI's for token replace).

Same random weights in each peer's layout, our model loaded through our loader; fp32 max relative
error <= 1e-5 (two fp32 computations of the same maths, as in test_dit_parity).

- token replace (HunyuanVideo-I2V v2, 16 ch): the first latent frame's tokens are modulated with
  time_in(0) + vector_in(pooled), no guidance (Tencent, diffusers). ComfyUI adds the guidance
  embedding there too and also modulates the final layer per frame: pinned below.
- concat (v1, 33 ch, no guidance embedding) and SkyReels-V1 (32 ch): the DiT is a T2V DiT with a
  wider input; the loader reads the variant from the weights.
"""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from hunyuan.checkpoint_io import CheckpointError
from hunyuan.dit.checkpoint import load_dit
from hunyuan.dit.keymap import to_comfy, to_diffusers
from hunyuan.dit.tiny import random_state_dict, tiny_config
from tests.checks import FP32_RTOL, rel_err
from tests.parity.test_dit_parity import comfy_model, inputs
from tests.peers import diffusers_dit

VARIANTS = {  # name -> (input channels, guidance embedding, diffusers' image_condition_type)
    "token_replace": (16, True, "token_replace"),
    "concat": (33, False, "latent_concat"),
    "skyreels": (32, True, None),
}


def variant(name: str, seed: int = 7):
    channels, guidance, _ = VARIANTS[name]
    cfg = dataclasses.replace(tiny_config(32, 24), in_channels=channels, guidance_embed=guidance)
    return cfg, random_state_dict(cfg, seed=seed)


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("case", [dict(batch=1, latent=(3, 4, 6), text_len=7, lengths=[7]),
                                  dict(batch=2, latent=(2, 4, 4), text_len=9, lengths=[9, 4])])
def test_variant_matches_diffusers(name, case):
    cfg, sd = variant(name)
    x, t, text, mask, pooled, guidance = inputs(cfg, **case)
    peer = diffusers_dit(cfg, sd, VARIANTS[name][2])
    ours = load_dit(to_diffusers(sd), device="cpu", dtype=torch.float32)
    g = guidance if cfg.guidance_embed else None
    with torch.no_grad():
        ref = peer(x, t, text, mask.long(), pooled, None if g is None else g * 1000.0, return_dict=False)[0]
        out = ours(x, t, mask, pooled, g, text_states=text, token_replace=name == "token_replace")
    assert out.shape == ref.shape == (case["batch"], 16, *case["latent"])
    assert rel_err(out, ref) <= FP32_RTOL


def test_token_replace_changes_the_first_frame_modulation():
    """Token replace is a different forward (else the test above could pass with the flag ignored)."""
    cfg, sd = variant("token_replace")
    ours = load_dit(sd, device="cpu", dtype=torch.float32)
    x, t, text, mask, pooled, guidance = inputs(cfg, batch=1, latent=(3, 4, 6), text_len=7, lengths=[7])
    with torch.no_grad():
        plain = ours(x, t, mask, pooled, guidance, text_states=text)
        replaced = ours(x, t, mask, pooled, guidance, text_states=text, token_replace=True)
    assert rel_err(replaced, plain) > 1e-3


def test_token_replace_leaves_guidance_out_of_the_first_frame_unlike_comfy():
    """ComfyUI adds guidance_in(g) to the first frame's modulation; Tencent and we do not.

    With the guidance embedder's weights zeroed (its output is then 0) ComfyUI equals us on the
    frames it denoises (1..; its final layer also modulates frame 0 apart, a velocity that token
    replace discards); with real weights the frames differ. So guidance is the only difference.
    """
    cfg, sd = variant("token_replace")
    x, t, text, mask, pooled, guidance = inputs(cfg, batch=1, latent=(3, 4, 6), text_len=7, lengths=[7])

    def both(weights):
        ours = load_dit({"model.model." + k: v for k, v in to_comfy(weights).items()}, device="cpu",
                        dtype=torch.float32)
        peer = comfy_model(cfg, weights)
        with torch.no_grad():
            out = ours(x, t, mask, pooled, guidance, text_states=text, token_replace=True)
            ref = peer(x, t, text, y=pooled, guidance=guidance, attention_mask=torch.ones(1, 7, dtype=torch.long),
                       guiding_frame_index=torch.zeros(1), transformer_options={})
        return out[:, :, 1:], ref[:, :, 1:]

    def guidance_scaled(factor: float):
        return {k: (v * factor if k.startswith("guidance_in.") else v) for k, v in sd.items()}

    assert rel_err(*both(guidance_scaled(0.0))) <= FP32_RTOL
    # tiny random weights make the guidance term small (~5e-6 rel. as drawn): strengthen it to see it
    assert rel_err(*both(guidance_scaled(30.0))) > 1e-3


@pytest.mark.parametrize("name", VARIANTS)
def test_loader_reads_the_variant_and_says_it(name, caplog):
    cfg, sd = variant(name)
    with caplog.at_level(logging.INFO, logger="hunyuan.dit.checkpoint"):
        model = load_dit(sd, device="cpu", dtype=torch.float32)
    assert model.config.in_channels == cfg.in_channels and model.config.guidance_embed == cfg.guidance_embed
    want = {"token_replace": "none", "concat": "concat_mask", "skyreels": "concat"}[name]
    assert model.config.image_input == want
    assert f"{cfg.in_channels} input channels" in caplog.text
    assert ("no guidance embedding" in caplog.text) == (not cfg.guidance_embed)


def test_unknown_input_width_is_named():
    cfg, sd = variant("concat")
    sd["img_in.proj.weight"] = sd["img_in.proj.weight"][:, :20]
    with pytest.raises(CheckpointError, match="in_channels=20 .*expected 16, 32 or 33"):
        load_dit(sd, device="cpu", dtype=torch.float32)

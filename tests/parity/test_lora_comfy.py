"""The LoRA node against ComfyUI's own path: UNETLoader's loader + LoraLoaderModelOnly's loader
(``comfy_sd.load_diffusion_model_state_dict``, ``comfy_sd.load_lora_for_models``) on the same
weights and the same LoRA, for each layout ComfyUI 0.3.75 maps for HunyuanVideo.

The DiT is small but of a width ComfyUI's model detection accepts (head_dim 128, pooled 768).
The patched weights are compared tensor by tensor (ComfyUI's names mapped back to Tencent's):
the two models compute the same function of their weights (tests/parity/test_dit_parity.py),
so equal weights mean equal outputs; our output with the LoRA is checked against the hand merge
in tests/unit/test_lora.py.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hunyuan.dit import TINY
from hunyuan.dit.checkpoint import load_dit
from hunyuan.dit.keymap import from_comfy
from hunyuan.dit.tiny import random_state_dict
from tests.checks import FP32_RTOL, rel_err
from tests.lora_cases import random_lora
from tests.pack import comfy_module, pack_module

comfy_model_patcher = comfy_module("comfy.model_patcher")
comfy_sd = comfy_module("comfy.sd")
lora_node = pack_module("nodes.lora")

CPU = torch.device("cpu")
NATIVE = dataclasses.replace(TINY, hidden_size=256, num_heads=2, rope_axes=(16, 56, 56), rope_theta=256.0,
                             text_states_dim_2=768, depth_double=1, depth_single=1)
COMFY_LAYOUTS = ["comfy_diffusion_model", "comfy_lora_unet", "diffusion_pipe", "musubi_converted"]


def comfy_maps(layout: str):
    """ComfyUI 0.3.75 maps Tencent names only where its renames reach: not time_in/guidance_in's
    ``mlp.0``/``mlp.2`` (ours do; tests/unit/test_lora.py merges them by hand)."""
    if layout in ("diffusion_pipe", "musubi_converted"):
        return lambda key: not key.startswith(("time_in.", "guidance_in."))
    return lambda key: True


@pytest.fixture(scope="module")
def sd():
    return random_state_dict(NATIVE, seed=4)


def comfy_patched(sd, lora) -> dict[str, torch.Tensor]:
    model = comfy_sd.load_diffusion_model_state_dict({"model.diffusion_model." + k: v for k, v in sd.items()},
                                                     model_options={"dtype": torch.float32})
    patched, _ = comfy_sd.load_lora_for_models(model, None, lora, 0.8, 0)
    assert len(patched.patches) > 0
    patched.patch_model()
    try:
        weights = {k: v.clone() for k, v in patched.model.diffusion_model.state_dict().items()}
    finally:
        patched.unpatch_model()
    return {k: v for k, v in from_comfy(weights).items() if not k.startswith("txt_in.")}, len(patched.patches)


def ours_patched(sd, lora) -> dict[str, torch.Tensor]:
    model = load_dit(sd, dtype=torch.float32)
    model.detach_refiner()
    base = comfy_model_patcher.ModelPatcher(model, load_device=CPU, offload_device=CPU)
    patches, _ = lora_node.lora_patches(base, lora, "native.safetensors")
    clone = base.clone()
    clone.add_patches(patches, 0.8)
    clone.patch_model()
    try:
        return {k: v.clone() for k, v in model.state_dict().items()}, len(clone.patches)
    finally:
        clone.unpatch_model()


@pytest.mark.parametrize("layout", COMFY_LAYOUTS)
def test_same_patched_weights_as_comfyui(sd, layout):
    lora, deltas = random_lora(sd, layout, seed=7, select=comfy_maps(layout))
    theirs, n_theirs = comfy_patched(sd, lora)
    ours, n_ours = ours_patched(sd, lora)
    assert n_theirs == n_ours == len(deltas)
    assert ours.keys() == theirs.keys()
    for key in deltas:
        assert rel_err(ours[key] - sd[key], theirs[key] - sd[key]) <= FP32_RTOL, key
    for key in ours.keys() - deltas.keys():
        assert torch.equal(ours[key], theirs[key]), key

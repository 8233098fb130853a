"""The LoRA node against diffusers: a diffusers/PEFT-layout LoRA loaded by diffusers'
``load_lora_adapter`` on its HunyuanVideoTransformer3DModel (the transformer half of the
pipeline's ``load_lora_weights``) at weight 0.8, and by our node on our DiT; same weights, same
inputs, fp32 max relative error <= 1e-5.

One rank for every layer: a PEFT file carries no alpha, and for layers whose rank differs from
the most common one diffusers then scales by (common rank / rank) while ComfyUI (and so this
pack) scales by 1; neither is written in the file.
"""

from __future__ import annotations

import pytest
import torch

from hunyuan.dit.checkpoint import load_dit
from hunyuan.dit.tiny import random_state_dict, tiny_config
from tests.checks import FP32_RTOL, rel_err
from tests.lora_cases import random_lora
from tests.pack import comfy_module, pack_module
from tests.parity.test_dit_parity import inputs
from tests.peers import diffusers_dit

pytest.importorskip("peft", reason="diffusers loads LoRAs through peft (requirements/dev.txt)")
comfy_model_patcher = comfy_module("comfy.model_patcher")
lora_node = pack_module("nodes.lora")


def test_same_output_as_diffusers_load_lora_adapter():
    cfg = tiny_config()
    sd = random_state_dict(cfg, seed=6)
    lora, _ = random_lora(sd, "diffusers_peft", seed=8, fixed_rank=4)
    x, t, text, mask, pooled, guidance = inputs(cfg, batch=1, latent=(2, 4, 4), text_len=6, lengths=[6])
    peer = diffusers_dit(cfg, sd)
    peer.load_lora_adapter(dict(lora), prefix="transformer", adapter_name="style")
    peer.set_adapters(["style"], weights=[0.8])
    model = load_dit(sd, dtype=torch.float32)
    patcher = comfy_model_patcher.ModelPatcher(model, load_device="cpu", offload_device="cpu")
    patches, found = lora_node.lora_patches(patcher, lora, "style.safetensors")
    assert found.unmatched == [] and found.detected() == "diffusers"
    clone = patcher.clone()
    clone.add_patches(patches, 0.8)
    clone.patch_model()
    try:
        with torch.no_grad():
            ref = peer(x, t, text, mask.long(), pooled, guidance * 1000.0, return_dict=False)[0]
            out = model(x, t, mask, pooled, guidance, text_states=text)
    finally:
        clone.unpatch_model()
    with torch.no_grad():
        base = model(x, t, mask, pooled, guidance, text_states=text)
    assert rel_err(base, ref) > 1e-3  # the LoRA matters
    assert rel_err(out, ref) <= FP32_RTOL

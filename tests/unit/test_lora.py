"""The LoRA node's maths: every layout at strength 0.8 equals the DiT merged by hand.

The hand merge is written here: W[rows] + s * (alpha / rank) * B @ A, where ``rows`` are the
Tencent rows a LoRA layer's output covers (all of them, or the q/k/v/mlp part of a fused weight
for diffusers names, found by pushing row numbers through ``keymap.to_diffusers``). LoRAs are
applied as the node applies them: ComfyUI's ``comfy.lora.load_lora`` on our key map, patches
added to a ModelPatcher and patched in by it.
"""

from __future__ import annotations

import pytest
import torch

from hunyuan.dit import TINY
from hunyuan.dit.checkpoint import load_dit
from hunyuan.dit.lora_keys import parse_blocks
from hunyuan.dit.tiny import random_state_dict
from tests.checks import FP32_RTOL, rel_err
from tests.lora_cases import FORMATS, random_lora
from tests.pack import comfy_module, pack_module

comfy_model_patcher = comfy_module("comfy.model_patcher")
lora_node = pack_module("nodes.lora")

CPU = torch.device("cpu")
STRENGTH = 0.8

@pytest.fixture(scope="module")
def sd():
    return random_state_dict(TINY, seed=3)


def make_patcher(sd):
    model = load_dit(sd, dtype=torch.float32)
    model.detach_refiner()
    return comfy_model_patcher.ModelPatcher(model, load_device=CPU, offload_device=CPU)


def run(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 2, 4, 4, generator=g)
    text = torch.randn(1, 5, TINY.hidden_size, generator=g)  # refined tokens: the refiner is detached
    pooled = torch.randn(1, TINY.text_states_dim_2, generator=g)
    with torch.inference_mode():
        return model(x, torch.tensor([600.0]), torch.ones(1, 5, dtype=torch.bool), pooled,
                     torch.tensor([6.0]), refined_text=text)


def hand_merged(sd, *loras):
    merged = dict(sd)
    for deltas, strength in loras:
        for key, delta in deltas.items():
            merged[key] = merged[key] + strength * delta
    return make_patcher(merged).model


def apply(patcher, lora, strength=STRENGTH, name="test.safetensors", blocks=None):
    patches, found = lora_node.lora_patches(patcher, lora, name, blocks)
    clone = patcher.clone()
    clone.add_patches(patches, strength)
    return clone, found


@pytest.mark.parametrize("layout", FORMATS)
def test_each_layout_equals_the_hand_merge(sd, layout):
    lora, deltas = random_lora(sd, layout)
    base = make_patcher(sd)
    clone, found = apply(base, lora)
    assert found.unmatched == [] and found.matched_tensors == len(lora)
    assert found.detected() == FORMATS[layout][4]
    clone.patch_model()
    try:
        got = run(clone.model)
    finally:
        clone.unpatch_model()
    want = run(hand_merged(sd, (deltas, STRENGTH)))
    assert rel_err(got, want) <= FP32_RTOL
    assert rel_err(got, run(base.model)) > 1e-3  # the LoRA changed the output


def test_unpatch_gives_back_the_base_output_bit_for_bit(sd):
    base = make_patcher(sd)
    before = run(base.model)
    clone, _ = apply(base, random_lora(sd, "musubi")[0])
    clone.patch_model()
    assert not torch.equal(run(clone.model), before)
    clone.unpatch_model()
    assert torch.equal(run(base.model), before)


def test_two_chained_loras_equal_their_hand_merged_sum(sd):
    first, d1 = random_lora(sd, "comfy_lora_unet", seed=1)
    second, d2 = random_lora(sd, "diffusers_peft", seed=2)
    base = make_patcher(sd)
    one, _ = apply(base, first, 0.8)
    two, _ = apply(one, second, -0.5)
    two.patch_model()
    try:
        got = run(two.model)
    finally:
        two.unpatch_model()
    assert rel_err(got, run(hand_merged(sd, (d1, 0.8), (d2, -0.5)))) <= FP32_RTOL


def test_partial_lora_and_block_selection(sd):
    in_block_1 = lambda key: key.startswith("double_blocks.1.")  # noqa: E731
    lora, deltas = random_lora(sd, "musubi", select=in_block_1)
    base = make_patcher(sd)
    chosen = {"double_blocks": frozenset({1}), "single_blocks": frozenset()}
    clone, found = apply(base, lora, blocks=chosen)
    assert found.unmatched == []
    clone.patch_model()
    try:
        assert rel_err(run(clone.model), run(hand_merged(sd, (deltas, STRENGTH)))) <= FP32_RTOL
    finally:
        clone.unpatch_model()
    others = {"double_blocks": frozenset({0}), "single_blocks": frozenset({0, 1})}
    with pytest.raises(ValueError, match="matches no layer of the HunyuanVideo DiT in the selected blocks"):
        apply(base, lora, blocks=others)


def test_block_selection_keeps_only_the_chosen_blocks(sd):
    lora, _ = random_lora(sd, "comfy_diffusion_model")
    chosen = {"double_blocks": frozenset({0}), "single_blocks": frozenset({1})}
    _, found = apply(make_patcher(sd), lora, blocks=chosen)
    blocks = {name.split(".")[1] + "." + name.split(".")[2] for name in found.layers if "_blocks." in name}
    assert blocks == {"double_blocks.0", "single_blocks.1"}
    assert any("double_blocks.1." in k for k in found.unmatched)


def test_lycoris_loha_and_lokr_through_comfy_adapters(sd):
    g = torch.Generator().manual_seed(5)
    key, rank = "double_blocks.0.img_attn_proj.weight", 4
    out_f, in_f = sd[key].shape
    w1a, w1b, w2a, w2b = (torch.randn(s, generator=g) * 0.3 for s in ((out_f, rank), (rank, in_f)) * 2)
    loha = {"lora_unet_double_blocks_0_img_attn_proj." + k: v for k, v in
            {"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b, "alpha": torch.tensor(2.0)}.items()}
    key2 = "single_blocks.1.linear2.weight"
    k1, k2 = torch.randn(4, 8, generator=g) * 0.3, torch.randn(sd[key2].shape[0] // 4, sd[key2].shape[1] // 8, generator=g)
    lokr = {"diffusion_model.single_blocks.1.linear2.lokr_w1": k1, "diffusion_model.single_blocks.1.linear2.lokr_w2": k2}
    base = make_patcher(sd)
    clone, _ = apply(base, loha)
    clone, _ = apply(clone, lokr, 0.5)
    want = hand_merged(sd, ({key: (2.0 / rank) * (w1a @ w1b) * (w2a @ w2b)}, STRENGTH), ({key2: torch.kron(k1, k2)}, 0.5))
    clone.patch_model()
    try:
        assert rel_err(run(clone.model), run(want)) <= FP32_RTOL
    finally:
        clone.unpatch_model()


@pytest.mark.parametrize("kind", ["sd15", "flux_shapes"])
def test_a_lora_for_another_model_is_refused_with_the_file_name(sd, kind):
    if kind == "sd15":
        lora = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4)}
        message = r"'other.safetensors' matches no layer .* Layouts tried: ComfyUI .* kohya"
    else:  # Flux's layer names are HunyuanVideo's; its shapes are not the tiny DiT's
        lora = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(4, 3072),
                "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(9216, 4)}
        message = r"'other.safetensors' does not fit this HunyuanVideo DiT .*double_blocks.0.img_attn_qkv.weight"
    with pytest.raises(ValueError, match=message):
        lora_node.lora_patches(make_patcher(sd), lora, "other.safetensors")


def _patched_weight(patcher, lora, key, strength):
    clone, _ = apply(patcher, lora, strength)
    clone.patch_model()
    try:
        layer = clone.model.get_submodule(key[: -len(".weight")])
        scale = layer.weight_scale if layer.weight_scale is not None else 1.0
        return layer.weight.dtype, layer.weight.float() * scale
    finally:
        clone.unpatch_model()


def test_fp8_with_scales_gets_the_lora_on_the_real_weight_and_bf16_stays_bf16(sd):
    lora, deltas = random_lora(sd, "musubi", select=lambda k: k.startswith("double_blocks.0."))
    key, strength = "double_blocks.0.img_attn_proj.weight", 0.5
    want = sd[key] + strength * deltas[key]
    stored = {}
    for k, v in sd.items():  # Tencent-style scaled fp8 in ComfyUI's key names for the scale
        if k.startswith(("double_blocks.", "single_blocks.")) and v.ndim == 2:
            scale = 4 * v.abs().max() / 448.0  # headroom: a weight plus a LoRA may outgrow the original range
            stored[k], stored[k[: -len(".weight")] + ".scale_weight"] = (v / scale).to(torch.float8_e4m3fn), scale
        else:
            stored[k] = v
    fp8 = load_dit({**stored, "scaled_fp8": torch.zeros(0)}, dtype=torch.float32)
    fp8.detach_refiner()
    patcher = comfy_model_patcher.ModelPatcher(fp8, load_device=CPU, offload_device=CPU)
    dtype, got = _patched_weight(patcher, lora, key, strength)
    # e4m3 keeps 3 mantissa bits: each element within 1/16 of itself, so of the largest one (the LoRA
    # added to the stored, unscaled weight would be off by ~1/3: its change shrunk by the scale)
    assert dtype == torch.float8_e4m3fn and rel_err(got, want) <= 1 / 16
    assert fp8.get_submodule(key[:-7]).weight.dtype == torch.float8_e4m3fn  # unpatched: fp8 again
    bf16 = load_dit(sd, dtype=torch.bfloat16)
    bf16.detach_refiner()
    bf16 = comfy_model_patcher.ModelPatcher(bf16, load_device=CPU, offload_device=CPU)
    dtype, got = _patched_weight(bf16, lora, key, strength)
    assert dtype == torch.bfloat16 and rel_err(got, want) <= 2**-8


def test_a_block_list_with_a_huge_number_names_the_input():
    """Python refuses int() of over 4300 digits with its own message; the input is named instead."""
    with pytest.raises(ValueError, match=r"double_blocks=.*is not a block number or range; expected 'all', 'none'"):
        parse_blocks("9" * 5000, 20, "double_blocks")

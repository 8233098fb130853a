"""The DiT on ComfyUI's operations: the layer classes come from the caller, as ComfyUI's models take them.

Built with ``comfy.ops`` (the classes the DiT loader node passes) the DiT equals the one built with
the pack's default classes; ComfyUI's lowvram partial load then leaves layers on the offload device
with a LoRA applied on the fly (ComfyUI's ``LowVramPatch``), and the result equals the fully loaded,
patched model. fp8 storage runs through the pack's single fp8 Linear (DiT and text encoder alike),
or through ComfyUI's fp8 / scaled fp8 Linear when the node picks those.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hunyuan import ops
from hunyuan.dit import TINY
from hunyuan.dit.checkpoint import StoredWeights, load_dit
from hunyuan.dit.tiny import random_state_dict
from tests.checks import FP32_RTOL, rel_err
from tests.lora_cases import random_lora
from tests.pack import comfy_module, pack_module

comfy_ops = comfy_module("comfy.ops")
comfy_model_patcher = comfy_module("comfy.model_patcher")
lora_node = pack_module("nodes.lora")
dit_node = pack_module("nodes.dit")

CPU = torch.device("cpu")
FP8 = torch.float8_e4m3fn


@pytest.fixture(scope="module")
def sd():
    return random_state_dict(TINY, seed=11)


def run(model, seed=0):
    """A forward through every layer kind: the token refiner (LayerNorm), q/k RMSNorm, Conv3d, Linear."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 2, 4, 4, generator=g)
    states = torch.randn(1, 5, TINY.text_states_dim, generator=g)
    mask = torch.tensor([[True, True, True, True, False]])
    pooled = torch.randn(1, TINY.text_states_dim_2, generator=g)
    with torch.inference_mode():
        return model(x, torch.tensor([600.0]), mask, pooled, torch.tensor([6.0]), text_states=states)


def weight_holders(model):
    return [(n, m) for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]


@pytest.mark.parametrize("choice", ["disable_weight_init", "manual_cast"])
def test_comfy_operations_equal_the_default_ones(sd, choice):
    operations = getattr(comfy_ops, choice)
    model = load_dit(sd, dtype=torch.float32, operations=operations)
    holders = weight_holders(model)
    # every layer that holds a weight is ComfyUI's (none built with the pack's class by mistake)
    strays = [n for n, m in holders if not isinstance(m, comfy_ops.CastWeightBiasOp)]
    assert holders and strays == []
    assert type(model.double_blocks[0].img_attn_qkv) is operations.Linear
    assert type(model.txt_in.individual_token_refiner.blocks[0].norm1) is operations.LayerNorm
    assert type(model.single_blocks[0].q_norm) is operations.RMSNorm
    assert type(model.img_in.proj) is operations.Conv3d
    default = load_dit(sd, dtype=torch.float32)
    assert all(type(m).__module__ == "hunyuan.ops" for _, m in weight_holders(default))
    assert model.state_dict().keys() == default.state_dict().keys()
    assert rel_err(run(model), run(default)) <= FP32_RTOL


def _partially_loaded(sd, lora, budget):
    model = load_dit(sd, dtype=torch.float32, operations=comfy_ops.disable_weight_init)
    patcher = comfy_model_patcher.ModelPatcher(model, load_device=CPU, offload_device=CPU)
    patches, _ = lora_node.lora_patches(patcher, lora, "test.safetensors")
    clone = patcher.clone()
    clone.add_patches(patches, 0.8)
    clone.load(CPU, lowvram_model_memory=budget or 0, full_load=budget is None)
    return clone


def test_lowvram_partial_load_applies_the_lora_on_the_fly(sd):
    lora, _ = random_lora(sd, "musubi")
    full = _partially_loaded(sd, lora, budget=None)  # everything loaded and patched
    try:
        want = run(full.model)
        assert not full.model.model_lowvram
    finally:
        full.unpatch_model()
    size = sum(t.numel() * t.element_size() for t in sd.values())
    partial = _partially_loaded(sd, lora, budget=size // 3)
    try:
        model = partial.model
        on_the_fly = [n for n, m in weight_holders(model) if m.weight_function]
        loaded = [n for n, m in weight_holders(model) if getattr(m, "comfy_patched_weights", False)]
        assert model.model_lowvram and model.lowvram_patch_counter == len(on_the_fly) > 0
        assert loaded  # some layers were loaded (and patched) regularly, the rest are cast on use
        assert all(model.get_submodule(n).comfy_cast_weights for n in on_the_fly)
        layer = model.get_submodule(on_the_fly[0])
        assert torch.equal(layer.weight, sd[on_the_fly[0] + ".weight"])  # stored weight left unpatched
        got = run(model)
    finally:
        partial.unpatch_model()
    assert rel_err(got, want) <= FP32_RTOL
    assert rel_err(got, run(load_dit(sd, dtype=torch.float32))) > 1e-3  # the LoRA is in it


def _fp8_file(sd, per_row=False):
    """Block Linear weights in fp8 with a scale each (one value, or one per output row)."""
    q, scales = {}, {}
    for k, v in sd.items():
        if k.startswith(("double_blocks.", "single_blocks.")) and k.endswith(".weight") and v.ndim == 2:
            scale = (v.abs().amax(dim=1, keepdim=True) if per_row else v.abs().max()) / 448.0
            q[k] = (v / scale).to(FP8)
            scales[k[: -len(".weight")]] = scale.reshape(-1)
        else:
            q[k] = v
    return q, scales


def test_the_one_fp8_linear_is_shared_and_computes_the_scaled_product():
    assert not hasattr(pack_module("hunyuan.text.dtypes"), "Fp8Linear")
    layer = ops.Linear(8, 6)
    g = torch.Generator().manual_seed(1)
    w, b, x = torch.randn(6, 8, generator=g), torch.randn(6, generator=g), torch.randn(3, 8, generator=g)
    scale = w.abs().amax(dim=1, keepdim=True) / 448.0
    layer.weight, layer.bias = torch.nn.Parameter((w / scale).to(FP8)), torch.nn.Parameter(b)
    layer.weight_scale = scale
    want = F.linear(x, layer.weight.float() * scale, b)
    assert rel_err(layer(x), want) <= FP32_RTOL
    linear = torch.nn.Linear(8, 6)
    from hunyuan.text.dtypes import make_fp8_linears

    holder = torch.nn.Module()
    holder.layers = torch.nn.ModuleList([linear])
    assert make_fp8_linears(holder) == {"layers.0.weight"} and type(linear) is ops.Linear


def test_fp8_storage_through_comfy_ops_equals_the_default_ops(sd):
    default = load_dit(sd, dtype=torch.float32, weight_dtype=FP8)
    assert type(default.double_blocks[0].img_attn_qkv) is ops.Linear
    comfy = load_dit(sd, dtype=torch.float32, weight_dtype=FP8, operations=comfy_ops.manual_cast)
    assert comfy.double_blocks[0].img_attn_qkv.weight.dtype == FP8
    assert rel_err(run(comfy), run(default)) <= FP32_RTOL
    assert rel_err(run(default), run(load_dit(sd, dtype=torch.float32))) > 1e-4  # fp8 is really used


def test_the_node_picks_comfy_scaled_fp8_for_one_scale_per_layer(sd):
    q, scales = _fp8_file(sd)
    pick = dit_node.comfy_operations(CPU)
    seen = []

    def recording(stored):
        seen.append(stored)
        return pick(stored)

    comfy = load_dit(q, dtype=torch.float32, scale_map=scales, operations=recording)
    assert seen == [StoredWeights(FP8, torch.float32, "per_layer")]
    layer = comfy.double_blocks[1].txt_attn_qkv
    assert isinstance(layer, comfy_ops.manual_cast.Linear) and layer.scale_weight.shape == ()
    assert torch.equal(layer.scale_weight, scales["double_blocks.1.txt_attn_qkv"].reshape(()))
    assert torch.equal(comfy.time_in.mlp[0].scale_weight, torch.ones(()))  # not in the map: scale 1
    default = load_dit(q, dtype=torch.float32, scale_map=scales)
    assert rel_err(run(comfy), run(default)) <= FP32_RTOL
    with pytest.raises(Exception, match="takes none"):  # scales but no scaled Linear: refused, not ignored
        load_dit(q, dtype=torch.float32, scale_map=scales, operations=comfy_ops.manual_cast)


def test_per_row_scales_keep_the_pack_fp8_linear(sd):
    q, scales = _fp8_file(sd, per_row=True)
    model = load_dit(q, dtype=torch.float32, scale_map=scales, operations=dit_node.comfy_operations(CPU))
    assert type(model.single_blocks[0].linear1) is ops.Linear
    default = load_dit(q, dtype=torch.float32, scale_map=scales)
    assert rel_err(run(model), run(default)) <= FP32_RTOL
    with pytest.raises(Exception, match="one value per layer"):
        load_dit(q, dtype=torch.float32, scale_map=scales, operations=comfy_ops.scaled_fp8_ops())


def test_the_refiner_patcher_rides_in_an_attachment_every_clone_shares(sd):
    model = load_dit(sd, dtype=torch.float32)
    refiner = model.txt_in
    dit = pack_module("nodes.blockswap").BlockSwapPatcher(model, load_device=CPU, offload_device=CPU)
    patcher = dit_node.refiner_patcher(dit)
    assert patcher.model is refiner and model.txt_in is None
    assert dit_node.refiner_patcher(dit.clone()) is patcher and dit_node.refiner_patcher(dit) is patcher
    assert not any(isinstance(v, comfy_model_patcher.ModelPatcher) for v in vars(model).values())

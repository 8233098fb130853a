"""A random rank-32 LoRA at the real 13B DiT's shapes (20 + 40 blocks, width 3072), in every
layout, on the meta device: every one of its tensors matches a DiT weight, fits its shape, and
becomes a ModelPatcher patch."""


import pytest
import torch

from hunyuan.dit import REAL, HunyuanVideoDiT
from tests.lora_cases import FORMATS, random_lora
from tests.pack import comfy_module, pack_module

comfy_model_patcher = comfy_module("comfy.model_patcher")
lora_node = pack_module("nodes.lora")


@pytest.fixture(scope="module")
def patcher():
    with torch.device("meta"):
        model = HunyuanVideoDiT(REAL)
    model.detach_refiner()
    return comfy_model_patcher.ModelPatcher(model, load_device="cpu", offload_device="cpu")


@pytest.mark.parametrize("layout", FORMATS)
def test_every_tensor_of_a_real_shape_lora_matches(patcher, layout):
    lora, _ = random_lora(patcher.model.state_dict(), layout, fixed_rank=32)
    patches, found = lora_node.lora_patches(patcher, lora, "real.safetensors")
    assert found.unmatched == [] and found.matched_tensors == len(lora)
    assert found.detected() == FORMATS[layout][4]
    applied = patcher.clone().add_patches(patches, 1.0)
    blocks = {k.split(".")[0] + "." + k.split(".")[1] for k in applied if "_blocks." in k}
    assert len(blocks) == REAL.depth_double + REAL.depth_single
    assert len(applied) == len(patches)  # every patch (a q/k/v part counts once) lands on a weight

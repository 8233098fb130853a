"""Weight patches (a LoRA) on the block-swap path, and the contract with ComfyUI's ModelPatcher.load.

As in test_blockswap_patcher.py, the patcher is made to believe it has a separate device and the
engine copies CPU -> CPU, so the placement path a GPU takes runs for real. The contract test runs
upstream's ``ModelPatcher.load`` on one copy of the tiny DiT and ours (swap engine active) on
another, with the same LoRA, and compares every bookkeeping attribute upstream sets: a ComfyUI
upgrade that adds or changes one fails here.
"""


import torch

from tests.lora_cases import random_lora
from tests.pack import comfy_module, pack_module

comfy_model_patcher = comfy_module("comfy.model_patcher")
blockswap = pack_module("nodes.blockswap")
lora_node = pack_module("nodes.lora")
dit = pack_module("hunyuan.dit")
offload = pack_module("hunyuan.offload")

CPU = torch.device("cpu")
SETTINGS = offload.SwapSettings(double_blocks=2, single_blocks=1, prefetch=1)
BY_DESIGN = {"model_loaded_weight_memory"}  # ours: the resident bytes (swapped blocks stay on the host)


def tiny_patcher(cls=blockswap.BlockSwapPatcher):
    torch.manual_seed(0)
    model = dit.HunyuanVideoDiT(dit.TINY).eval()
    model.detach_refiner()
    return cls(model, load_device=CPU, offload_device=CPU)


def with_lora(patcher, layout="musubi", seed=0, strength=0.8):
    lora, _ = random_lora(patcher.model.state_dict(), layout, seed=seed)
    patches, _ = lora_node.lora_patches(patcher, lora, "test.safetensors")
    clone = patcher.clone()
    clone.add_patches(patches, strength)
    return clone


def run(patcher):
    g = torch.Generator().manual_seed(1)
    args = (torch.randn(1, 16, 2, 4, 4, generator=g), torch.tensor([500.0]), torch.ones(1, 3, dtype=torch.bool),
            torch.randn(1, dit.TINY.text_states_dim_2, generator=g), torch.tensor([6.0]))
    tokens = torch.randn(1, 3, dit.TINY.hidden_size, generator=g)
    engine = blockswap.active_engine(patcher)
    with torch.inference_mode():
        if engine is None:
            return patcher.model(*args, refined_text=tokens)
        with engine.running(on_block=lambda: None):
            out = patcher.model(*args, refined_text=tokens)
        assert engine.stats["fetches"] >= 3  # the swapped blocks really streamed
        return out


def test_lora_with_block_swap_equals_lora_without_bit_for_bit(pretend_device):
    base = tiny_patcher()
    before = run(base)
    plain = with_lora(base)
    plain.patch_model(CPU)
    want = run(plain)
    plain.unpatch_model(CPU)
    swapped = blockswap.with_swap(plain, SETTINGS)
    swapped.patch_model(CPU)
    assert blockswap.active_engine(swapped) is not None
    got = run(swapped)
    swapped.unpatch_model(CPU)
    assert not torch.equal(want, before)  # the LoRA is applied
    assert torch.equal(got, want)  # ... to swapped and resident blocks alike
    assert torch.equal(run(base), before)  # and removed from both


def bookkeeping(patcher) -> tuple[dict, list, dict]:
    model = patcher.model
    attrs = {k: v for k, v in vars(model).items()
             if not k.startswith("_") and not isinstance(v, (torch.nn.Module, torch.Tensor, dit.DiTConfig))}
    attrs["current_weight_patches_uuid"] = attrs.get("current_weight_patches_uuid") == patcher.patches_uuid
    flags = {n: (getattr(m, "comfy_patched_weights", None), getattr(m, "comfy_cast_weights", None))
             for n, m in model.named_modules()}
    return attrs, sorted(patcher.backup), flags


def test_load_sets_what_upstream_load_sets(pretend_device):
    upstream = with_lora(tiny_patcher(comfy_model_patcher.ModelPatcher))
    upstream.patch_model(CPU)  # what ComfyUI calls: load(..., full_load=True)
    ours = blockswap.with_swap(with_lora(tiny_patcher()), SETTINGS)
    ours.patch_model(CPU)
    want, got = bookkeeping(upstream), bookkeeping(ours)
    assert blockswap.active_engine(ours) is not None
    assert set(got[0]) == set(want[0])  # the engine is in a patcher attachment, not on the model
    for key in set(want[0]) - BY_DESIGN:
        assert got[0][key] == want[0][key], key
    assert got[0]["model_loaded_weight_memory"] == ours.model_size() < want[0]["model_loaded_weight_memory"]
    assert got[1] == want[1] and len(got[1]) > 0  # the same weights patched, originals kept for unpatch
    assert got[2] == want[2]
    upstream.unpatch_model(CPU)
    ours.unpatch_model(CPU)
    assert bookkeeping(ours)[0] == {**bookkeeping(upstream)[0]}

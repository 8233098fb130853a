"""The Block Swap node's ModelPatcher: real resident size, placement on load, clean unpatch.

ComfyUI on this machine runs on the CPU, where swapping is a no-op; here the patcher is made to
believe it has a separate device and the engine copies CPU -> CPU, so the placement path that a
GPU takes runs for real."""


import logging

import pytest
import torch

from tests.pack import pack_module

blockswap = pack_module("nodes.blockswap")
dit = pack_module("hunyuan.dit")
offload = pack_module("hunyuan.offload")
memory = pack_module("hunyuan.memory")

CPU = torch.device("cpu")
SETTINGS = offload.SwapSettings(double_blocks=2, single_blocks=1, prefetch=1)


@pytest.fixture
def patchers():
    torch.manual_seed(0)
    model = dit.HunyuanVideoDiT(dit.TINY).eval()
    model.detach_refiner()
    base = blockswap.BlockSwapPatcher(model, load_device=CPU, offload_device=CPU)  # as the DiT loader makes it
    return model, base, blockswap.with_swap(base, SETTINGS)


def test_clone_keeps_settings_and_gets_its_own_placement_id(patchers):
    model, base, swap = patchers
    assert type(swap) is blockswap.BlockSwapPatcher and swap.swap_settings == SETTINGS
    assert swap.patches_uuid != base.patches_uuid and swap.model is base.model
    again = swap.clone()  # ComfyUI's own clone: the class and the settings (model options) carry over
    assert type(again) is blockswap.BlockSwapPatcher and again.swap_settings == SETTINGS
    assert again.patches_uuid == swap.patches_uuid  # same placement: no reload between them
    assert base.swap_settings is None  # the input patcher is untouched


def test_model_size_is_the_real_resident_size(patchers, pretend_device):
    model, base, swap = patchers
    full = offload.module_bytes(model)
    assert base.model_size() == full
    assert swap.model_size() == offload.resident_bytes(model, SETTINGS) < full


def test_cpu_only_swap_reports_the_full_size(patchers):
    model, _, swap = patchers
    assert swap.model_size() == offload.module_bytes(model)


def test_load_places_blocks_and_unpatch_cleans_up(patchers, pretend_device):
    model, base, swap = patchers
    x = torch.randn(1, 16, 2, 4, 4)
    args = (x, torch.tensor([500.0]), torch.ones(1, 3, dtype=torch.bool), torch.randn(1, dit.TINY.text_states_dim_2),
            torch.tensor([6.0]))
    tokens = torch.randn(1, 3, dit.TINY.hidden_size)
    with torch.no_grad():
        ref = model(*args, refined_text=tokens)
    swap.load(CPU)
    engine = blockswap.active_engine(swap)
    assert engine is not None and model.model_loaded_weight_memory == swap.model_size()
    assert blockswap.active_engine(base) is None  # another placement id: not the plain patcher's
    with torch.no_grad(), engine.running(on_block=lambda: None):
        out = model(*args, refined_text=tokens)
        assert engine.stats["fetches"] >= 3
    assert torch.equal(out, ref) and engine.live_copies() == 0
    swap.unpatch_model(CPU)
    assert swap.placement.engine is None and blockswap.active_engine(swap) is None
    assert model.model_loaded_weight_memory == 0


def test_every_patcher_of_the_dit_shares_the_placement_and_none_is_on_the_model(patchers, pretend_device):
    model, base, swap = patchers
    assert swap.placement is base.placement and swap.clone().placement is base.placement
    other = blockswap.BlockSwapPatcher(model, load_device=CPU, offload_device=CPU)
    assert other.placement is not base.placement  # made anew, not cloned: its own
    swap.load(CPU)
    engine = blockswap.active_engine(swap)
    assert engine is not None and swap.clone().placement.engine is engine
    assert not any(isinstance(v, offload.BlockSwapEngine) for v in vars(model).values())
    engine.activate()  # hooks installed, as during a run
    base.unpatch_model(CPU)  # ComfyUI unpatches through whichever patcher loads the model next
    assert not engine.attached and engine.live_copies() == 0 and base.placement.engine is None
    assert blockswap.active_engine(swap) is None and model.model_loaded_weight_memory == 0


def test_block_swap_node_clamps_and_validates(patchers):
    _, base, _ = patchers
    out = blockswap.HunyuanVideoBlockSwap.execute(base, 99, 99, 2, False, True, "manual").result[0]
    assert out.swap_settings == offload.SwapSettings(2, 2, 2, False, True, "manual")  # the tiny model has 2+2
    with pytest.raises(ValueError, match="mode='fast'"):
        blockswap.HunyuanVideoBlockSwap.execute(base, 1, 1, 1, False, False, "fast")


def test_auto_plans_with_the_runs_steps(patchers, pretend_device, monkeypatch, caplog):
    """The sampler's auto mode plans for the run's own steps (the refined text is kept for every
    step), as the multi-device workers do, not the planner's default of 50: memory that fits a
    4-step run with 2 double + 1 single blocks swapped gets those counts, though a 50-step plan of
    the same video would not fit them. The log line gives the counts and what they were planned with."""
    model, base, _ = patchers
    auto = blockswap.with_swap(base, offload.SwapSettings(mode="auto"))
    sizes = memory.sampling_sizes((1, 16, 3, 6, 10), text_tokens=256, steps=4, cfg=True)
    planned = blockswap.run_sizes(model, sizes)
    want = auto.swap_settings.with_counts(2, 1)
    budget = memory.estimate_sampling_memory(model.config, swap=want, **planned).peak_bytes
    assert memory.estimate_sampling_memory(model.config, swap=want, **{**planned, "steps": 50}).peak_bytes > budget
    monkeypatch.setattr(blockswap, "plan_bytes", lambda dit: budget)
    with caplog.at_level(logging.INFO, logger=blockswap.log.name):
        patcher = blockswap.swap_for_run(auto, sizes)
    assert patcher.swap_settings == want and patcher is not auto
    assert blockswap.swap_for_run(auto, sizes) is patcher  # the clone for these counts is kept
    assert (f"block swap auto: 2 double + 1 single blocks; predicted peak {budget / 2**30:.3f} GiB for 80x48x9, "
            f"{budget / 2**30:.3f} GiB to plan with") in caplog.text


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_auto_leaves_a_dit_without_a_separate_device_alone(patchers, monkeypatch, device):
    """On the CPU (no device apart from host memory), or where the offload device is the load
    device itself (ComfyUI's --gpu-only; "meta" stands in for that GPU), auto has nothing to plan:
    the DiT as it is, without asking anyone for free memory."""
    _, base, _ = patchers
    auto = blockswap.with_swap(base, offload.SwapSettings(mode="auto"))
    auto.load_device = auto.offload_device = torch.device(device)
    monkeypatch.setattr(blockswap, "plan_bytes", lambda dit: pytest.fail("planned for a DiT with nowhere to swap"))
    sizes = memory.sampling_sizes((1, 16, 3, 6, 10), text_tokens=256, steps=4, cfg=True)
    assert blockswap.swap_for_run(auto, sizes) is auto

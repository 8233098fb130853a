"""Regional torch.compile (hunyuan/dit/compile.py) on the CPU with inductor, at the tiny size.

The first compile of each block kind takes ~30 s on a 2-core CPU; later tests reuse it (same code
objects, same guards), so the module compiles twice in all. The LoRA test drives ComfyUI's
ModelPatcher as the LoRA node does, with block swap's engine (``pretend_device``: CPU -> CPU copies).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from hunyuan.conditioning import RefinedConditioning, TextEmbeds
from hunyuan.dit import TINY, precompute_refined_text
from hunyuan.dit.checkpoint import load_dit
from hunyuan.dit.compile import CompileSettings, check_can_compile, compiled_blocks, usable
from hunyuan.dit.tiny import random_state_dict
from hunyuan.offload import BlockSwapEngine, CopyTransport, SwapSettings
from hunyuan.sampling import flow_sigmas, seeded_noise
from hunyuan.sampling.pipeline import sample_video
from tests.checks import FP32_RTOL, rel_err
from tests.lora_cases import random_lora
from tests.pack import pack_module

pytestmark = pytest.mark.slow
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def model():
    return load_dit(random_state_dict(TINY, seed=2), dtype=torch.float32)


@pytest.fixture(scope="module")
def run(model):
    g = torch.Generator().manual_seed(6)
    text = TextEmbeds(torch.randn(1, 6, TINY.text_states_dim, generator=g), torch.ones(1, 6, dtype=torch.bool),
                      torch.randn(1, TINY.text_states_dim_2, generator=g))
    sigmas = flow_sigmas(4, 7.0)
    with torch.inference_mode():
        tokens = precompute_refined_text(model.txt_in, text, sigmas, device="cpu", dtype=torch.float32)

    def sample():
        with torch.inference_mode():
            return sample_video(model, RefinedConditioning(tokens), sigmas, seeded_noise(1, (1, 16, 2, 4, 4)))

    return sample


def graphs() -> int:
    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def test_compiled_blocks_equal_eager_and_compile_once_per_block_kind(model, run):
    eager = run()
    before = graphs()
    with compiled_blocks(model, CompileSettings()):
        compiled = run()  # 4 steps x (2 double + 2 single blocks)
    assert graphs() - before == 2  # one graph per block kind, none between steps or blocks
    assert rel_err(compiled, eager) <= FP32_RTOL
    assert "forward" not in model.double_blocks[0].__dict__  # eager again after the run
    with compiled_blocks(model, CompileSettings()):
        again = run()
    assert graphs() - before == 2 and torch.equal(again, compiled)  # the next run reuses the compile


def test_compiled_blocks_under_block_swap(model, run):
    eager = run()
    with compiled_blocks(model, CompileSettings()):
        run()  # compiled without swap (or reused from the test above)
    settings = SwapSettings(double_blocks=2, single_blocks=1, prefetch=1)
    before = graphs()
    with compiled_blocks(model, CompileSettings()), BlockSwapEngine(model, settings, CPU, transport=CopyTransport(CPU)):
        swapped = run()  # parameters re-pointed at fresh copies every block, some blocks resident
    assert graphs() == before  # no recompile: swapped and resident parameters look alike to the guards
    assert rel_err(swapped, eager) <= FP32_RTOL


def test_compiled_blocks_with_a_lora_under_block_swap(model, run, pretend_device):
    """The LoRA node's path (ComfyUI's ModelPatcher weight patches) with block swap's engine streaming
    the patched blocks: compiled equals eager with the same LoRA, and neither the patches nor a new
    strength (other weight values in the same tensors) recompile anything."""
    blockswap, lora_node = pack_module("nodes.blockswap"), pack_module("nodes.lora")
    base = blockswap.BlockSwapPatcher(model, load_device=CPU, offload_device=CPU)
    lora, _ = random_lora(model.state_dict(), "musubi", seed=3, select=lambda key: not key.startswith("txt_in."))
    patches, _ = lora_node.lora_patches(base, lora, "test.safetensors")

    def sample(strength: float, swap: bool, compiled: bool):
        patcher = base.clone()
        patcher.add_patches(patches, strength)
        if swap:
            patcher = blockswap.with_swap(patcher, SwapSettings(double_blocks=2, single_blocks=1, prefetch=1))
        patcher.patch_model(CPU)
        try:
            engine = blockswap.active_engine(patcher)
            assert (engine is not None) == swap
            with contextlib.ExitStack() as stack:
                if compiled:
                    stack.enter_context(compiled_blocks(model, CompileSettings()))
                if engine is not None:
                    stack.enter_context(engine.running(on_block=lambda: None))
                out = run()
            assert engine is None or engine.stats["fetches"] > 0  # the swapped blocks really streamed
            return out
        finally:
            patcher.unpatch_model(CPU)

    plain = run()
    eager = sample(0.8, swap=False, compiled=False)
    assert rel_err(eager, plain) > 1e-3  # the LoRA changes the video
    before = graphs()
    compiled = sample(0.8, swap=True, compiled=True)  # 4 steps x 4 blocks, patched and streamed
    assert graphs() - before <= 2  # at most the first compile of each block kind: none between steps
    assert rel_err(compiled, eager) <= FP32_RTOL
    settled = graphs()
    weaker = sample(0.3, swap=True, compiled=True)
    assert graphs() == settled  # new patch values in the same tensors: no recompile
    assert rel_err(weaker, sample(0.3, swap=False, compiled=False)) <= FP32_RTOL
    assert torch.equal(run(), plain)  # the patches are gone again


def test_past_the_recompile_limit_torch_warns_and_the_block_runs_eagerly(model):
    """recompile_limit=1: a second video size would compile each block kind again; instead torch
    logs a warning naming the limit and runs the block eagerly, with the eager result."""
    import logging

    class Records(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    g = torch.Generator().manual_seed(6)
    text = TextEmbeds(torch.randn(1, 6, TINY.text_states_dim, generator=g), torch.ones(1, 6, dtype=torch.bool),
                      torch.randn(1, TINY.text_states_dim_2, generator=g))
    sigmas = flow_sigmas(2, 7.0)
    with torch.inference_mode():
        cond = RefinedConditioning(precompute_refined_text(model.txt_in, text, sigmas, device="cpu", dtype=torch.float32))

    def sample(shape):
        with torch.inference_mode():
            return sample_video(model, cond, sigmas, seeded_noise(1, shape))

    records, dynamo = Records(), logging.getLogger("torch._dynamo")
    dynamo.addHandler(records)
    try:
        with compiled_blocks(model, CompileSettings(recompile_limit=1)):
            sample((1, 16, 2, 4, 4))
            other = sample((1, 16, 1, 6, 4))  # another size: one compile more than the limit allows
    finally:
        dynamo.removeHandler(records)
    assert any("recompile_limit" in m or "cache_size_limit" in m for m in records.messages), records.messages
    assert rel_err(other, sample((1, 16, 1, 6, 4))) <= FP32_RTOL


def test_compile_refuses_clearly_where_it_cannot_run(monkeypatch):
    with pytest.raises(RuntimeError, match="not supported on device mps"):
        check_can_compile("mps")
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(RuntimeError, match="C/C\\+\\+ compiler"):
        check_can_compile("cpu")
    with pytest.raises(ValueError, match="mode="):
        CompileSettings(mode="reduce-overhead")
    assert usable(CompileSettings(), "cpu") is False  # the default: warn and run eagerly
    with pytest.raises(RuntimeError, match="compiler"):
        usable(CompileSettings(eager_fallback=False), "cpu")

"""The GPU check's real-size stage: the 13B DiT (random weights made on the GPU) under capped
device memory, block swap in ``auto`` mode as the sampler node picks it, one step per case.

Per case: the memory cap (``torch.cuda.set_per_process_memory_fraction``), the swap counts
``hunyuan.memory.auto_swap`` chose for the free memory, the measured peak
(``torch.cuda.max_memory_allocated``) next to the planner's, and seconds per step. In a dry
run the model is the tiny one and the "cap" is just above the planner's all-swapped peak, so
auto mode swaps and the same lines run on the CPU.
"""

from __future__ import annotations

import time

import torch

from hunyuan.dit import REAL, HunyuanVideoDiT
from hunyuan.memory import auto_swap, estimate_sampling_memory
from hunyuan.offload import BlockSwapEngine, SwapSettings
from scripts.gpu_common import GIB, CheckFailed, Ctx, DiTInputs, Skipped, finite, memory_row

TEXT_TOKENS = 256
RESERVE = int(0.6 * GIB)  # kept free like ComfyUI's extra reserve (the sampler subtracts it too)
# (label, cap GiB or None for the whole card, width, height, frames, rough seconds on an H200)
CASES = (
    ("cap 24 GiB, 1280x720x129", 24, 1280, 720, 129, 120),
    ("cap 6 GiB, 512x384x129", 6, 512, 384, 129, 40),
    ("cap 24 GiB, 960x544x81", 24, 960, 544, 81, 40),
    ("no cap, no swap, 960x544x81", None, 960, 544, 81, 30),
)
DRY_SIZE = (64, 48, 9)


def _model(ctx: Ctx):
    """The model on the CPU in bf16, random N(0, 0.02) weights (made on the device: fast)."""
    from hunyuan.dit.tiny import tiny_config

    config = tiny_config() if ctx.dry_run else REAL
    torch.manual_seed(0)
    model = HunyuanVideoDiT(config, device=ctx.device, dtype=torch.bfloat16).eval().requires_grad_(False)
    for p in model.parameters():
        p.normal_(0, 0.02)
    model.detach_refiner().to("cpu")  # not part of sampling: off the device like the loader leaves it
    model.to("cpu")
    if ctx.cuda:
        torch.cuda.empty_cache()
    return model


def _free_bytes(ctx: Ctx, cap_gib, config, size: dict) -> int:
    if ctx.dry_run:
        every = SwapSettings().with_counts(config.depth_double, config.depth_single)
        return int(1.05 * estimate_sampling_memory(config, swap=every, steps=1, **size).peak_bytes)
    total = torch.cuda.get_device_properties(ctx.device).total_memory
    cap = total if cap_gib is None else cap_gib * GIB
    torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), ctx.device)
    return cap - torch.cuda.memory_allocated(ctx.device) - RESERVE


def run_case(ctx: Ctx, model, case) -> dict:
    label, cap, width, height, frames, _ = case
    if ctx.dry_run:
        width, height, frames = DRY_SIZE
    config = model.config
    size = {"width": width, "height": height, "frames": frames, "text_tokens": TEXT_TOKENS}
    free = _free_bytes(ctx, cap, config, size)
    kw = dict(size, steps=1, weight_dtype=torch.bfloat16, compute_dtype=torch.bfloat16)
    try:
        swap = SwapSettings() if cap is None else auto_swap(config, free, SwapSettings(prefetch=1, mode="auto"), **kw)
    except ValueError as err:
        return {"fits": False, "planner": str(err)}
    engine = BlockSwapEngine(model, swap, ctx.device).place() if swap.swaps_anything else None
    if engine is None:
        model.to(ctx.device)
    inputs = DiTInputs.make(config, **size)
    ctx.reset_peak()
    try:
        with engine.running() if engine else _nothing():
            start = time.perf_counter()
            out = inputs.run(model, ctx.device, torch.bfloat16)
            ctx.sync()
            seconds = time.perf_counter() - start
    except torch.OutOfMemoryError as err:
        raise CheckFailed(f"{label}: out of memory with the planner's auto swap {swap}: {err}") from None
    finally:
        model.to("cpu")
    finite(label, out)
    predicted = estimate_sampling_memory(config, swap=swap, **kw)
    return {"fits": True, "free_gib": free / GIB, "double": swap.double_blocks, "single": swap.single_blocks,
            "seconds_per_step": seconds,
            **memory_row(ctx, ctx.peaks(), (predicted.weights_bytes + predicted.activation_bytes
                                               + predicted.text_bytes) / GIB)}


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def stage_real_13b(ctx: Ctx) -> dict:
    """Every case that fits in the time left; a case the planner says cannot fit is reported as such."""
    ctx.need(90, "real 13B")
    start = time.monotonic()
    model = _model(ctx)
    out = {"model_seconds": time.monotonic() - start, "text_tokens": TEXT_TOKENS}
    try:
        for case in CASES:
            try:
                if not ctx.dry_run:
                    ctx.need(case[-1], case[0])
                out[case[0]] = run_case(ctx, model, case)
            except Skipped as err:
                out[case[0]] = {"skipped": str(err)}
    finally:
        if ctx.cuda:
            torch.cuda.set_per_process_memory_fraction(1.0, ctx.device)
        del model
    return out

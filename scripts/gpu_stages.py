"""The GPU check's stages at tiny and partial-depth real width (scripts/gpu_check.py runs them).

Each stage takes the run context and returns a dict of what it measured; it raises CheckFailed
when a property does not hold on the device and Skipped when it cannot run here. In ``--dry-run``
the device is the CPU and the sizes are the smallest, so every line runs in the suite.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil

import torch

from hunyuan.dit import REAL, AttentionBackendError, resolve_backend
from hunyuan.dit.checkpoint import load_dit
from hunyuan.dit.tiny import TINY_DIT_FILE, random_state_dict
from hunyuan.offload import BlockSwapEngine, SwapSettings
from scripts.gpu_common import (
    Ctx,
    DiTInputs,
    expect,
    finite,
    memory_row,
    planner_gib,
    rel_err,
    timed,
    within,
)

FP32_TOL = 1e-4  # same math in fp32 (TF32 off); only summation order differs between devices
BF16_TOL = 5e-2  # bf16 against the fp32 reference: ~8 mantissa bits, errors average over the sums
FP8_TOL = 0.15  # fp8 e4m3 storage (3 mantissa bits, per-weight error up to ~6%) against bf16 storage
ATTN_TOL = 5e-2  # another attention kernel in bf16 against sdpa (sage quantises q/k to int8)


def partial_config(ctx: Ctx):
    """Real width (3072, 24 heads), 1 double + 2 single blocks; the tiny model in a dry run."""
    if ctx.dry_run:
        from hunyuan.dit.tiny import tiny_config

        return tiny_config()
    return dataclasses.replace(REAL, depth_double=1, depth_single=2)


def partial_size(ctx: Ctx) -> dict:
    return {"width": 64, "height": 48, "frames": 9, "text_tokens": 8} if ctx.dry_run else \
        {"width": 544, "height": 320, "frames": 33, "text_tokens": 256}


def stage_pack_imports(ctx: Ctx) -> dict:
    """Every module of the hunyuan package imports here (no ComfyUI needed)."""
    import hunyuan

    names = [m.name for m in pkgutil.walk_packages(hunyuan.__path__, "hunyuan.")]
    for name in names:
        importlib.import_module(name)
    info = {"modules": len(names), "torch": torch.__version__}
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}", total_gib=props.total_memory / 2**30,
                    cuda=torch.version.cuda, **_context_bytes(ctx))
    return info


def _context_bytes(ctx: Ctx) -> dict:
    """What the process holds on the device outside PyTorch's allocator once cuBLAS and a conv kernel
    have loaded: the CUDA context that hunyuan/process_memory.py assumes is 0.5 GB."""
    a = torch.randn(1024, 1024, device=ctx.device, dtype=torch.bfloat16)
    (a @ a).sum().item()
    torch.nn.functional.conv3d(torch.randn(1, 8, 4, 16, 16, device=ctx.device), torch.randn(8, 8, 3, 3, 3,
                               device=ctx.device)).sum().item()
    free, total = torch.cuda.mem_get_info(ctx.device)
    used = total - free  # the whole device: other processes would count too (none on the GPU machine)
    return {"device_used_gb": used / 1e9, "torch_reserved_gb": torch.cuda.memory_reserved(ctx.device) / 1e9,
            "cuda_context_gb": (used - torch.cuda.memory_reserved(ctx.device)) / 1e9}


def stage_tiny_dit(ctx: Ctx) -> dict:
    """The tiny DiT file through the real loader: fp32 on the device vs fp32 on the CPU, and bf16."""
    path = ctx.work / "models" / "diffusion_models" / TINY_DIT_FILE
    cpu = load_dit(path, device="cpu", dtype=torch.float32)
    inputs = DiTInputs.make(cpu.config, 64, 48, 9, 8)
    ref = inputs.run(cpu, torch.device("cpu"), torch.float32)
    out32 = inputs.run(load_dit(path, device=ctx.device, dtype=torch.float32), ctx.device, torch.float32)
    out16 = inputs.run(load_dit(path, device=ctx.device, dtype=torch.bfloat16), ctx.device, torch.bfloat16)
    finite("tiny DiT", out32)
    expect(out32.device.type == ctx.device.type, f"output on {out32.device}, expected {ctx.device}")
    return {"fp32": within("tiny DiT fp32 device vs CPU", rel_err(out32, ref), FP32_TOL),
            "bf16": within("tiny DiT bf16 device vs CPU fp32", rel_err(out16, ref), BF16_TOL)}


def _swap_for(config) -> SwapSettings:
    return SwapSettings(double_blocks=config.depth_double, single_blocks=config.depth_single - 1, prefetch=1)


def _swap_run(ctx: Ctx, model, inputs: DiTInputs, settings: SwapSettings, dtype) -> tuple[torch.Tensor, dict]:
    """One forward with ``settings`` swapped (side stream + pinned host memory on CUDA)."""
    engine = BlockSwapEngine(model, settings, ctx.device).place()
    swapped = [p for b in list(model.double_blocks)[: settings.double_blocks]
               + list(model.single_blocks)[: settings.single_blocks] for p in b.parameters()]
    expect(all(p.device.type == "cpu" for p in swapped), "swapped block weights are not in host memory")
    if ctx.cuda:
        expect(all(p.is_pinned() for p in swapped), "swapped block weights are not pinned on a CUDA run")
    ctx.reset_peak()
    with engine.running():
        seconds, out = timed(ctx, lambda: inputs.run(model, ctx.device, dtype))
    info = {"seconds": seconds, "peaks": ctx.peaks(), "sync_loads": engine.stats["sync_loads"],
            "fetches": engine.stats["fetches"], "transport": type(engine.transport).__name__}
    model.to(ctx.device)
    return out, info


def _resident_run(ctx: Ctx, model, inputs: DiTInputs, dtype) -> tuple[torch.Tensor, float, tuple]:
    ctx.reset_peak()
    seconds, out = timed(ctx, lambda: inputs.run(model, ctx.device, dtype), repeats=2)
    return out, seconds, ctx.peaks()


def stage_blockswap(ctx: Ctx) -> dict:
    """Partial-depth real-width DiT in bf16: swap on vs off must be bit-equal (the swap only moves
    the same weights; the kernels and their order are the same), peaks next to the planner."""
    config, size = partial_config(ctx), partial_size(ctx)
    ctx.need(60, "blockswap")
    sd = random_state_dict(config)
    model = load_dit(sd, device=ctx.device, dtype=torch.bfloat16)
    model.detach_refiner()
    inputs = DiTInputs.make(config, **size)
    plain, seconds, peak = _resident_run(ctx, model, inputs, torch.bfloat16)
    finite("partial DiT bf16", plain)
    settings = _swap_for(config)
    swapped, info = _swap_run(ctx, model, inputs, settings, torch.bfloat16)
    swap_peaks = info.pop("peaks")
    expect(torch.equal(plain, swapped), f"swap on vs off differ: rel err {rel_err(swapped, plain):.2e} (must be 0)")
    ref = DiTInputs.run(inputs, load_dit(sd, device="cpu", dtype=torch.float32), torch.device("cpu"), torch.float32)
    ctx.kept["blockswap"] = (sd, plain, seconds)
    return {
        "config": {"hidden": config.hidden_size, "double": config.depth_double, "single": config.depth_single},
        "size": size, "no_swap": {"seconds": seconds, **memory_row(ctx, peak, planner_gib(config, size, SwapSettings()))},
        "swap": {**info, "double": settings.double_blocks, "single": settings.single_blocks,
                 **memory_row(ctx, swap_peaks, planner_gib(config, size, settings))},
        "swap_bit_equal": True,
        "bf16_vs_cpu_fp32": within("partial DiT bf16 device vs CPU fp32", rel_err(plain, ref), BF16_TOL),
    }


def stage_fp8(ctx: Ctx) -> dict:
    """fp8 e4m3 storage of the block Linears (upcast per layer): close to bf16, swap still bit-equal."""
    sd, bf16_out, bf16_s = ctx.kept.pop("blockswap")
    config, size = partial_config(ctx), partial_size(ctx)
    model = load_dit(sd, device=ctx.device, dtype=torch.bfloat16, weight_dtype=torch.float8_e4m3fn)
    model.detach_refiner()
    inputs = DiTInputs.make(config, **size)
    out, seconds, peak = _resident_run(ctx, model, inputs, torch.bfloat16)
    finite("partial DiT fp8", out)
    swapped, info = _swap_run(ctx, model, inputs, _swap_for(config), torch.bfloat16)
    expect(torch.equal(out, swapped), "fp8: swap on vs off differ (must be bit-equal)")
    predicted = planner_gib(config, size, SwapSettings(), weight_dtype=torch.float8_e4m3fn)
    return {"vs_bf16": within("fp8 storage vs bf16", rel_err(out, bf16_out), FP8_TOL),
            "seconds": seconds, "bf16_seconds": bf16_s, "fp8_over_bf16_time": seconds / bf16_s,
            **memory_row(ctx, peak, predicted), "swap_bit_equal": True, "swap_seconds": info["seconds"],
            "compute": "fp8 storage, bf16 compute (the pack has no fp8 matmul path)"}


def stage_attention(ctx: Ctx) -> dict:
    """sdpa vs sage vs flash at partial depth, bf16: time and error against sdpa (skipped ones say why)."""
    config, size = partial_config(ctx), partial_size(ctx)
    model = load_dit(random_state_dict(config, seed=1), device=ctx.device, dtype=torch.bfloat16)
    model.detach_refiner()
    inputs = DiTInputs.make(config, **size)
    rows, ref = {}, None
    for name in ("sdpa", "sage", "flash"):
        try:
            resolve_backend(name, ctx.device)
        except AttentionBackendError as err:
            rows[name] = {"skipped": str(err)}
            continue
        model.attention_backend = name
        seconds, out = timed(ctx, lambda: inputs.run(model, ctx.device, torch.bfloat16), repeats=2)
        finite(f"attention {name}", out)
        ref = out if ref is None else ref
        rows[name] = {"seconds": seconds, **within(f"attention {name} vs sdpa", rel_err(out, ref), ATTN_TOL)}
    if all("skipped" in r for k, r in rows.items() if k != "sdpa"):
        rows["note"] = "only sdpa can run here"
    return rows


def stage_real_vae(ctx: Ctx) -> dict:
    """The real VAE layout (random weights) decodes a small latent, tiled, on the device in bf16;
    peak next to hunyuan.vae.tiling.estimate_peak."""
    from hunyuan.vae import HUNYUAN_VIDEO_VAE, TINY_VAE, load_vae
    from hunyuan.vae.tiled import decode
    from hunyuan.vae.tiling import TileSpec, estimate_peak
    from hunyuan.vae.tiny import random_state_dict as vae_weights

    ctx.need(30, "real VAE")
    cfg = TINY_VAE if ctx.dry_run else HUNYUAN_VIDEO_VAE
    vae = load_vae(vae_weights(cfg), device=ctx.device, dtype=torch.bfloat16)
    shape = (1, 16, 3, 8, 12) if ctx.dry_run else (1, 16, 9, 40, 68)  # 544x320x33 video
    spec = TileSpec(tile=0 if ctx.dry_run else 32, overlap=0 if ctx.dry_run else 8, chunk=0)
    latent = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(ctx.device, torch.bfloat16)
    ctx.reset_peak()
    seconds, video = timed(ctx, lambda: decode(vae, latent, spec, out_device=ctx.device), repeats=1)
    finite("VAE decode", video)
    predicted = estimate_peak(spec, shape, widest=cfg.block_channels[0]) / 2**30
    weights = sum(p.numel() * p.element_size() for p in vae.parameters()) / 2**30
    return {"latent": list(shape), "tile": dataclasses.asdict(spec), "seconds": seconds,
            **memory_row(ctx, ctx.peaks(), predicted + weights), "weights_gib": weights,
            "video_shape": list(video.shape)}

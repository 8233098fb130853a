"""The GPU check's speed stage: batched true CFG (one forward of twice the batch) vs two forwards.

On a compute-bound CPU the batched forward gains nothing (bench/bench_compile_cfg.py); the gain it
exists for is on a GPU at small sizes, where one forward does not fill the device. Timed at the
step-cache bench's small size and at the GPU check's partial size, real width, bf16; each side's
device peak is recorded, since batching doubles the activations. ``--dry-run``: the tiny DiT on
the CPU at two tiny sizes (the same code path).
"""

from __future__ import annotations

import torch

from hunyuan.conditioning import RefinedText
from hunyuan.dit.checkpoint import load_dit
from hunyuan.dit.tiny import random_state_dict
from hunyuan.sampling import flow_sigmas, latent_shape
from hunyuan.sampling.loop import guided_velocity
from hunyuan.sampling.pipeline import batched_guided_velocity, text_velocity
from scripts.gpu_common import Ctx, finite, rel_err, timed, within
from scripts.gpu_stages import BF16_TOL, partial_config

CFG, GUIDANCE = 5.0, 6.0


def cfg_sizes(ctx: Ctx) -> dict[str, dict]:
    """name -> video size and the two prompts' token counts (different lengths: padding and masks)."""
    if ctx.dry_run:
        return {"small": {"width": 32, "height": 32, "frames": 1, "text_tokens": (6, 4)},
                "partial": {"width": 64, "height": 48, "frames": 9, "text_tokens": (8, 5)}}
    return {"small": {"width": 320, "height": 192, "frames": 5, "text_tokens": (128, 96)},
            "partial": {"width": 544, "height": 320, "frames": 33, "text_tokens": (256, 192)}}


def _refined(config, sigmas: torch.Tensor, length: int, seed: int) -> RefinedText:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(len(sigmas) - 1, 1, length, config.hidden_size, generator=g) * 0.5
    return RefinedText(sigmas, tokens.to(torch.bfloat16), torch.ones(1, length, dtype=torch.bool),
                       torch.randn(1, config.text_states_dim_2, generator=g))


def _one_size(ctx: Ctx, model, config, size: dict) -> dict:
    sigmas = flow_sigmas(4, 7.0)
    pos, neg = (_refined(config, sigmas, n, seed) for n, seed in zip(size["text_tokens"], (1, 2)))
    shape = latent_shape(1, size["width"], size["height"], size["frames"], config.in_channels)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(ctx.device)
    kw = {"offset": 0, "guidance": GUIDANCE, "device": ctx.device}
    two = guided_velocity(text_velocity(model, pos, sigmas, **kw), text_velocity(model, neg, sigmas, **kw), CFG)
    one = batched_guided_velocity(model, pos, neg, sigmas, CFG, **kw)
    row = {"size": size}
    with torch.no_grad():
        for name, velocity in (("two_forwards", two), ("batched", one)):
            ctx.reset_peak()
            seconds, out = timed(ctx, lambda v=velocity: v(x, 1), repeats=3)
            finite(f"CFG {name}", out)
            row[name] = {"seconds": seconds, "peak_gib": ctx.peaks()[0]}
            row.setdefault("outputs", {})[name] = out
    outputs = row.pop("outputs")
    row["batched_speedup"] = row["two_forwards"]["seconds"] / row["batched"]["seconds"]
    row["bf16_diff"] = within("batched vs two-forward CFG (bf16)", rel_err(outputs["batched"], outputs["two_forwards"]),
                              BF16_TOL)
    return row


def stage_cfg(ctx: Ctx) -> dict:
    """One true-CFG step (cfg 5, prompts of different lengths) as two forwards and as one batched
    forward: median seconds of 3 after a warm-up, device peaks, and the two results' difference."""
    ctx.need(60, "batched CFG")
    config = partial_config(ctx)
    model = load_dit(random_state_dict(config, seed=2), device=ctx.device, dtype=torch.bfloat16)
    model.detach_refiner()
    rows = {name: _one_size(ctx, model, config, size) for name, size in cfg_sizes(ctx).items()}
    return {"config": {"hidden": config.hidden_size, "double": config.depth_double, "single": config.depth_single,
                       "dtype": "bf16", "cfg": CFG}, **rows}

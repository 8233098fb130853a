"""One DiT step at real width: ours vs diffusers vs ComfyUI's native HunyuanVideo, same weights.

    .venv/bin/python bench/bench_dit_step.py [--repeats 3] [--fp32-repeats 2] [--dtypes bf16,fp32] [--blocks 1,1]
        [--no-profile] [--out bench/results/dit_step.json]

Real width (3072, 24 heads x 128) with ``--blocks`` double + single blocks (default 1 + 1, to fit
the one-command budget; the per-block work is identical, so ratios carry over), the real 2-block
token refiner run inside the step like the peers do, and 2040 video tokens (T=5 x 17 x 24 after
patching) + 256 text tokens, on this machine's CPU. Every model reads the *same* tensors (loaded
with assign=True from one state dict in each layout), so memory holds one copy.

Timing: the implementations run in turn (rotating order) ``--repeats`` times after a warm-up;
each repeat gives one ratio peer/ours, reported as median and range. A plain GEMM of the MLP's
shape over the step's tokens is timed in the same turns; its best turn is this machine's GEMM
rate, and our median step's matmul FLOPs per second over it is the "share of this machine's GEMM
throughput" (a lower bound: the step is a median, the GEMM a best). With profiling on, one more
bf16 step of ours runs under torch.profiler to say where the time goes.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "parity"))

from scripts.comfy_server import default_comfyui_dir  # noqa: E402

COMFYUI = default_comfyui_dir()
sys.path.append(str(COMFYUI))

from bench.common import RESULTS, interleaved, ratios, spread, write_json  # noqa: E402
from hunyuan.dit import DiTConfig, HunyuanVideoDiT  # noqa: E402
from hunyuan.dit.checkpoint import load_dit  # noqa: E402

LATENT = (5, 34, 48)  # T, H, W latent -> 5 x 17 x 24 = 2040 video tokens
WARM_LATENT = (1, 4, 4)
TEXT_LEN = 256
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
PEERS = ("diffusers", "comfyui")
TARGET_SPEEDUP, TARGET_GEMM_SHARE = 1.25, 0.85  # issue 3


def make_config(double: int, single: int) -> DiTConfig:
    return dataclasses.replace(DiTConfig(), depth_double=double, depth_single=single)


def weights(config: DiTConfig, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """Tencent-layout random weights in ``dtype`` (one copy in memory), N(0, 0.02) (norm scales N(1, 0.1)).

    Every tensor is filled from one pool of 2^24 normal draws at a random offset (tiling the pool
    when longer): drawing ~0.8G fresh normals took ~10 s here, and values this random are all a
    timing needs (every implementation gets the same tensors, so outputs stay comparable).
    """
    with torch.device("meta"):
        skeleton = HunyuanVideoDiT(config).state_dict()
    gen = torch.Generator().manual_seed(seed)
    normal = torch.randn(2**24, generator=gen)
    pools = {"weight": (normal * 0.02).to(dtype), "norm": (normal * 0.1 + 1.0).to(dtype)}
    out = {}
    for key, meta in skeleton.items():
        pool = pools["norm" if ("norm" in key and meta.ndim == 1) else "weight"]
        tensor = torch.empty(meta.shape, dtype=dtype)
        flat, size = tensor.view(-1), pool.numel()
        start = int(torch.randint(0, size, (1,), generator=gen))
        for at in range(0, flat.numel(), size):  # the pool from a random offset, wrapping around
            take = min(size, flat.numel() - at)
            first = min(take, size - start)
            flat[at:at + first].copy_(pool[start:start + first])
            flat[at + first:at + take].copy_(pool[:take - first])
        out[key] = tensor
    return out


def step_inputs(config: DiTConfig, dtype: torch.dtype, latent=LATENT):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, *latent, generator=g).to(dtype)
    text = torch.randn(1, TEXT_LEN, config.text_states_dim, generator=g).to(dtype)
    pooled = torch.randn(1, config.text_states_dim_2, generator=g).to(dtype)
    return x, torch.tensor([700.0]), text, torch.ones(1, TEXT_LEN, dtype=torch.bool), pooled, torch.tensor([6.0])


def video_tokens(latent=LATENT) -> int:
    return (latent[0] * latent[1] * latent[2]) // 4


def matmul_flops(config: DiTConfig) -> float:
    """FLOPs of every Linear and attention matmul of one step (refiner included)."""
    c, n_img, n_txt = config, video_tokens(), TEXT_LEN
    d, m, n = c.hidden_size, c.mlp_hidden, n_img + n_txt
    double = n * (3 * d * d + d * d + 2 * d * m) + 2 * 2 * n * n * d
    single = n * ((3 * d + m) * d + (d + m) * d) + 2 * 2 * n * n * d
    refiner = n_txt * (3 * d * d + d * d + 2 * d * 4 * d) + 2 * 2 * n_txt * n_txt * d + n_txt * c.text_states_dim * d
    final = n_img * d * 64
    return 2.0 * (c.depth_double * double + c.depth_single * single + c.refiner_depth * refiner + final)


def gemm_run(config: DiTConfig, dtype: torch.dtype, calls: int = 3):
    """``calls`` plain GEMMs of the MLP's shape over the step's tokens: (callable, their FLOPs).

    Warmed up here: oneDNN builds a kernel per shape on the first bf16 call.
    """
    n = video_tokens() + TEXT_LEN
    a = torch.randn(n, config.hidden_size).to(dtype)
    b = torch.randn(config.mlp_hidden, config.hidden_size).to(dtype)

    def run():
        for _ in range(calls):
            torch.nn.functional.linear(a, b)

    run()
    return run, calls * 2.0 * n * config.hidden_size * config.mlp_hidden


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def build_models(config: DiTConfig, dtype: torch.dtype, sd: dict) -> dict:
    """Ours and both peers, all reading the same tensors of ``sd`` (assign=True).

    "ours" is built as the DiT Loader node builds it, from the ComfyUI layer classes that
    ``comfy.ops.pick_operations`` chooses for the dtypes; "ours_default_ops" from the library's own
    (:class:`hunyuan.ops.DefaultOps`, what runs outside ComfyUI), so the two paths are compared.
    """
    import comfy.ops
    from test_dit_parity import comfy_model, diffusers_model  # the parity tests' peer builders

    node_ops = comfy.ops.pick_operations(dtype, dtype)
    return {"ours": load_dit(sd, dtype=dtype, operations=node_ops), "ours_default_ops": load_dit(sd, dtype=dtype),
            "diffusers": diffusers_model(config, sd).to(dtype), "comfyui": comfy_model(config, sd)}


def make_runs(models: dict, config: DiTConfig, dtype: torch.dtype, latent) -> dict:
    """label -> callable running one step of that implementation on ``latent``."""
    x, t, text, mask, pooled, g = step_inputs(config, dtype, latent)
    ours, default, diff, comfy = models["ours"], models["ours_default_ops"], models["diffusers"], models["comfyui"]
    return {
        "ours": lambda: ours(x, t, mask, pooled, g, text_states=text),
        "ours_default_ops": lambda: default(x, t, mask, pooled, g, text_states=text),
        "diffusers": lambda: diff(x, t, text, mask.long(), pooled, g * 1000.0, return_dict=False)[0],
        "comfyui": lambda: comfy(x, t, text, y=pooled, guidance=g, attention_mask=mask.long(), transformer_options={}),
    }


def bench_dtype(name: str, config: DiTConfig, repeats: int, profile: bool) -> dict:
    """Warm-up, then ``repeats`` interleaved turns of every implementation and the GEMMs.

    bf16 warms up at the full size (oneDNN builds its bf16 kernels per shape, so the first
    full-size call is slow); fp32 warms up at a small size only (its BLAS has no per-shape set-up,
    and a full-size fp32 step costs ~20 s per implementation here).
    """
    import comfy.ldm.modules.attention as comfy_attention

    dtype = DTYPES[name]
    models = build_models(config, dtype, weights(config, dtype))
    with torch.inference_mode():
        runs = make_runs(models, config, dtype, LATENT)
        warm = runs if dtype == torch.bfloat16 else make_runs(models, config, dtype, WARM_LATENT)
        for fn in warm.values():
            fn()
        gemms = {"gemm_bf16": gemm_run(config, torch.bfloat16)}
        if dtype != torch.bfloat16:
            gemms[f"gemm_{name}"] = gemm_run(config, dtype)
        timed = {**runs, **{k: fn for k, (fn, _) in gemms.items()}}
        times, outputs = interleaved(timed, repeats)
        top = profile_ours(runs["ours"]) if profile else None
    result = {
        "seconds": {label: spread(times[label]) for label in runs},
        "raw_seconds": {label: times[label] for label in runs},
        "speedup": {other: spread(ratios(times, other, "ours")) for other in (*PEERS, "ours_default_ops")},
        "speedup_vs_faster_peer": spread([min(times[p][r] for p in PEERS) / times["ours"][r] for r in range(repeats)]),
        # the machine's GEMM rate: the best turn (the least disturbed by the other processes here)
        "gemm_gflops": {k: max(flops / s / 1e9 for s in times[k]) for k, (_, flops) in gemms.items()},
        "gemm_gflops_median": {k: statistics.median(flops / s / 1e9 for s in times[k]) for k, (_, flops) in gemms.items()},
        "max_rel_err_vs_ours": {p: rel_err(outputs[p], outputs["ours"]) for p in (*PEERS, "ours_default_ops")},
        "comfyui_attention": comfy_attention.optimized_attention.__name__,
    }
    if top is not None:
        result["profile_top"] = top
    for label in runs:
        s = result["seconds"][label]
        print(f"  {name} {label:10s} median {s['median']:8.3f} s  ({s['min']:.3f}-{s['max']:.3f})", flush=True)
    return result  # the models and their shared weights are freed here


def profile_ours(fn, rows: int = 10) -> list[dict]:
    """Top operators of one step by self CPU time: [{op, ms, pct}]."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [{"op": e.key, "ms": e.self_cpu_time_total / 1e3, "pct": 100.0 * e.self_cpu_time_total / total}
            for e in events[:rows]]


def summarize(result: dict, flops: float, name: str, gemm: dict[str, float]) -> dict:
    """Our median step's FLOP rate and its share of the machine's (best-turn) GEMM rates."""
    achieved = flops / result["seconds"]["ours"]["median"] / 1e9
    return {
        "achieved_gflops_ours": achieved,
        "share_of_bf16_gemm": achieved / gemm["gemm_bf16"],
        "share_of_same_dtype_gemm": achieved / gemm.get(f"gemm_{name}", gemm["gemm_bf16"]),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed turns per implementation (bf16)")
    parser.add_argument("--fp32-repeats", type=int, default=2,
                        help="timed turns in fp32 (a step is ~4x slower than bf16 on this CPU)")
    parser.add_argument("--dtypes", default="bf16,fp32", help="comma-separated subset of bf16,fp32")
    parser.add_argument("--blocks", default="1,1", help="double,single blocks at real width")
    parser.add_argument("--no-profile", action="store_true", help="skip the torch.profiler step of ours (bf16)")
    parser.add_argument("--out", type=Path, default=RESULTS / "dit_step.json")
    args = parser.parse_args(argv)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    torch.manual_seed(0)
    double, single = (int(v) for v in args.blocks.split(","))
    config = make_config(double, single)
    flops = matmul_flops(config)
    print(f"DiT step: hidden {config.hidden_size}, {double}+{single} blocks + 2-block refiner, {video_tokens()} video "
          f"+ {TEXT_LEN} text tokens, {flops / 1e12:.2f} TFLOP of matmuls", flush=True)
    results = {}
    for name in args.dtypes.split(","):
        repeats = args.fp32_repeats if name == "fp32" else args.repeats
        results[name] = bench_dtype(name, config, repeats, profile=not args.no_profile and name == "bf16")
    gemm = {}  # the best rate of each GEMM over every turn of every dtype's run
    for r in results.values():
        for key, rate in r["gemm_gflops"].items():
            gemm[key] = max(gemm.get(key, 0.0), rate)
    for name, r in results.items():
        r["summary"] = summarize(r, flops, name, gemm)
    report = {
        "config": {"hidden": config.hidden_size, "heads": config.num_heads, "double": double, "single": single,
                   "refiner": config.refiner_depth, "video_tokens": video_tokens(), "text_tokens": TEXT_LEN,
                   "latent": LATENT},
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "repeats": {"bf16": args.repeats, "fp32": args.fp32_repeats},
        "step_matmul_tflop": flops / 1e12,
        "gemm_gflops": gemm,
        "targets": {"speedup_vs_faster_peer": TARGET_SPEEDUP, "share_of_bf16_gemm": TARGET_GEMM_SHARE},
        "results": results,
    }
    write_json(args.out, report)
    for name, r in results.items():
        s, f = r["summary"], r["speedup_vs_faster_peer"]
        print(f"{name}: ours vs faster peer x{f['median']:.2f} ({f['min']:.2f}-{f['max']:.2f}); "
              f"{s['achieved_gflops_ours']:.0f} GFLOP/s = {100 * s['share_of_bf16_gemm']:.0f}% of bf16 GEMM")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

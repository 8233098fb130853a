"""One DiT step at real width: ours vs diffusers vs ComfyUI's native HunyuanVideo, same weights.

    python bench/bench_dit_step.py [--repeats 3] [--dtypes bf16,fp32] [--profile]

Real width (3072, 24 heads x 128), 2 double + 2 single blocks, the real 2-block token refiner,
2040 video tokens (T=5 x 17 x 24 after patching) + 256 text tokens, on this machine's CPU. Every
model reads the *same* tensors (loaded with assign=True from one state dict in each layout), so
memory holds one copy. Prints a table and writes bench/results/dit_step.json.

Rows: ``ours`` runs txt_in inside the step like the peers; ``ours_refined`` gets the refined text
precomputed (what our sampler does: the refiner runs once per step before sampling, off the
DiT's budget). Throughput share: the step's matmul FLOPs / time, over a plain bf16 GEMM of the
block's shape timed in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
COMFYUI = Path(os.environ.get("COMFYUI_PATH") or ROOT / ".comfyui" / "ComfyUI")
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "parity"))
sys.path.append(str(COMFYUI))

from hunyuan.dit import DiTConfig, HunyuanVideoDiT  # noqa: E402
from hunyuan.dit.checkpoint import load_dit  # noqa: E402

CONFIG = dataclasses.replace(DiTConfig(), depth_double=2, depth_single=2)
LATENT = (5, 34, 48)  # T, H, W latent -> 5 x 17 x 24 = 2040 video tokens
TEXT_LEN = 256
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def weights(dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    """Tencent-layout random weights made tensor by tensor in ``dtype`` (one copy in memory)."""
    with torch.device("meta"):
        skeleton = HunyuanVideoDiT(CONFIG).state_dict()
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, meta in skeleton.items():
        mean, std = (1.0, 0.1) if ("norm" in key and meta.ndim == 1) else (0.0, 0.02)
        out[key] = torch.empty(meta.shape).normal_(mean, std, generator=gen).to(dtype)
    return out


def step_inputs(dtype: torch.dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, *LATENT, generator=g).to(dtype)
    text = torch.randn(1, TEXT_LEN, CONFIG.text_states_dim, generator=g).to(dtype)
    pooled = torch.randn(1, CONFIG.text_states_dim_2, generator=g).to(dtype)
    return x, torch.tensor([700.0]), text, torch.ones(1, TEXT_LEN, dtype=torch.bool), pooled, torch.tensor([6.0])


def matmul_flops() -> float:
    """FLOPs of every Linear and attention matmul of one step (refiner included)."""
    c, n_img, n_txt = CONFIG, (LATENT[0] * LATENT[1] * LATENT[2]) // 4, TEXT_LEN
    d, m, n = c.hidden_size, c.mlp_hidden, n_img + n_txt
    double = n * (3 * d * d + d * d + 2 * d * m) + 2 * 2 * n * n * d
    single = n * ((3 * d + m) * d + (d + m) * d) + 2 * 2 * n * n * d
    refiner = n_txt * (3 * d * d + d * d + 2 * d * 4 * d) + 2 * 2 * n_txt * n_txt * d + n_txt * c.text_states_dim * d
    final = n_img * d * 64
    return 2.0 * (c.depth_double * double + c.depth_single * single + c.refiner_depth * refiner + final)


def gemm_run():
    """A plain bf16 GEMM of the MLP's shape over the step's tokens: (callable, its FLOPs)."""
    n = (LATENT[0] * LATENT[1] * LATENT[2]) // 4 + TEXT_LEN
    a = torch.randn(n, CONFIG.hidden_size).to(torch.bfloat16)
    b = torch.randn(CONFIG.mlp_hidden, CONFIG.hidden_size).to(torch.bfloat16)
    return (lambda: torch.nn.functional.linear(a, b)), 2.0 * n * CONFIG.hidden_size * CONFIG.mlp_hidden


def timed_round_robin(runs: dict, repeats: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Median seconds per implementation, running them in turn each repeat.

    Interleaving spreads the load of other processes on this shared machine evenly over all
    implementations instead of penalising whichever one happened to run during a busy spell.
    """
    times: dict[str, list[float]] = {label: [] for label in runs}
    with torch.inference_mode():
        outputs = {label: fn().float() for label, fn in runs.items()}  # warm-up and outputs to compare
        for _ in range(repeats):
            for label, fn in runs.items():
                t0 = time.perf_counter()
                fn()
                times[label].append(time.perf_counter() - t0)
    return {label: statistics.median(ts) for label, ts in times.items()}, outputs


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def bench_dtype(name: str, repeats: int, profile: bool) -> dict:
    import comfy.ldm.modules.attention as comfy_attention
    from test_dit_parity import comfy_model, diffusers_model  # the parity tests' peer builders

    dtype = DTYPES[name]
    sd = weights(dtype)
    x, t, text, mask, pooled, g = step_inputs(dtype)
    ours = load_dit(sd, dtype=dtype)  # assign=True: shares sd's tensors
    with torch.inference_mode():
        refined = ours.txt_in(text, t, mask)
    diff = diffusers_model(CONFIG, sd).to(dtype)
    comfy = comfy_model(CONFIG, sd)
    runs = {
        "ours": lambda: ours(x, t, text, mask, pooled, g),
        "ours_refined": lambda: ours(x, t, None, mask, pooled, g, refined_text=refined),
        "diffusers": lambda: diff(x, t, text, mask.long(), pooled, g * 1000.0, return_dict=False)[0],
        "comfyui": lambda: comfy(x, t, text, y=pooled, guidance=g, attention_mask=mask.long(), transformer_options={}),
    }
    gemm, gemm_flops = gemm_run()
    seconds, outputs = timed_round_robin({**runs, "bf16_gemm": gemm}, repeats)
    gemm_seconds = seconds.pop("bf16_gemm")
    result = {"seconds": seconds, "max_rel_err_vs_ours": {}, "bf16_gemm_gflops": gemm_flops / gemm_seconds / 1e9}
    for label, sec in seconds.items():
        print(f"  {name} {label:13s} {sec:8.3f} s", flush=True)
    for label in ("ours_refined", "diffusers", "comfyui"):
        result["max_rel_err_vs_ours"][label] = rel_err(outputs[label], outputs["ours"])
    result["comfyui_attention"] = comfy_attention.optimized_attention.__name__
    if profile:
        result["profile_top"] = profile_ours(runs["ours_refined"])
    return result  # the models and their shared weights are freed here


def profile_ours(fn, rows: int = 12) -> str:
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    print(table)
    return table


def summarize(results: dict, gemm: float, flops: float) -> dict:
    summary = {}
    for name, r in results.items():
        s = r["seconds"]
        peer = min(s["diffusers"], s["comfyui"])
        summary[name] = {
            "speedup_vs_faster_peer": peer / s["ours"],
            "speedup_refined_vs_faster_peer": peer / s["ours_refined"],
            "speedup_vs_diffusers": s["diffusers"] / s["ours"],
            "speedup_vs_comfyui": s["comfyui"] / s["ours"],
            "achieved_gflops_ours": flops / s["ours"] / 1e9,
            "share_of_bf16_gemm": flops / s["ours"] / 1e9 / gemm,
        }
    return summary


def print_table(results: dict, summary: dict, gemm: float) -> None:
    print(f"\nbf16 GEMM on this machine: {gemm:.0f} GFLOP/s ({torch.get_num_threads()} threads)")
    print(f"{'dtype':6s} {'impl':13s} {'median s':>9s} {'vs ours':>8s} {'rel err':>9s}")
    for name, r in results.items():
        for label, sec in r["seconds"].items():
            err = r["max_rel_err_vs_ours"].get(label, 0.0)
            print(f"{name:6s} {label:13s} {sec:9.3f} {sec / r['seconds']['ours']:8.2f} {err:9.2e}")
        s = summary[name]
        print(f"{name:6s} ours vs faster peer: x{s['speedup_vs_faster_peer']:.2f} "
              f"(refined: x{s['speedup_refined_vs_faster_peer']:.2f}); "
              f"{s['achieved_gflops_ours']:.0f} GFLOP/s = {100 * s['share_of_bf16_gemm']:.0f}% of bf16 GEMM")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per implementation (median)")
    parser.add_argument("--dtypes", default="bf16,fp32", help="comma-separated subset of bf16,fp32")
    parser.add_argument("--profile", action="store_true", help="torch.profiler table of our step")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dit_step.json")
    args = parser.parse_args(argv)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    torch.manual_seed(0)
    flops = matmul_flops()
    n_img = (LATENT[0] * LATENT[1] * LATENT[2]) // 4
    print(f"DiT step: hidden {CONFIG.hidden_size}, {CONFIG.depth_double}+{CONFIG.depth_single} blocks, "
          f"{n_img} video + {TEXT_LEN} text tokens, {flops / 1e12:.2f} TFLOP of matmuls", flush=True)
    results = {name: bench_dtype(name, args.repeats, args.profile) for name in args.dtypes.split(",")}
    gemm = statistics.median(r["bf16_gemm_gflops"] for r in results.values())  # timed among the steps
    summary = summarize(results, gemm, flops)
    print_table(results, summary, gemm)
    report = {
        "config": {"hidden": CONFIG.hidden_size, "heads": CONFIG.num_heads, "double": CONFIG.depth_double,
                   "single": CONFIG.depth_single, "refiner": CONFIG.refiner_depth, "video_tokens": n_img,
                   "text_tokens": TEXT_LEN, "latent": LATENT},
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "repeats": args.repeats,
        "bf16_gemm_gflops": gemm,
        "step_matmul_tflop": flops / 1e12,
        "results": results,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

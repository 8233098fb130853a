"""Block swap on a real GPU: step time and peak VRAM for swap counts 0 / 10 / 20 / all, and per
attention backend.

    .venv/bin/python bench/gpu_blockswap.py [--width 544 --height 320 --frames 33] [--config real|half]
        [--prefetch 1] [--repeats 3] [--attention sdpa,sage,flash] [--out bench/results/gpu_blockswap.json]

Builds a random-weight DiT (the real 13B layout with ``--config real``: needs ~26 GB of host RAM
in bf16), runs one DiT forward per measurement with the swap engine (side CUDA stream, pinned
host memory) and reports median forward time, peak allocated VRAM and the planner's prediction.
"Swap N" swaps N double blocks and then single blocks up to N in total; "all" swaps every block.
Then every attention backend that can run here (the others are listed with the reason) is timed
at the smallest swap count that fitted. Exits with status 2 and a clear message when no CUDA
device is present (``bench/run_all.py`` checks first and reports "GPU: not run").
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hunyuan.dit import REAL, AttentionBackendError, HunyuanVideoDiT, resolve_backend  # noqa: E402
from hunyuan.memory import estimate_sampling_memory  # noqa: E402
from hunyuan.offload import BlockSwapEngine, SwapSettings  # noqa: E402
from hunyuan.sampling import latent_shape  # noqa: E402

CONFIGS = {"real": REAL, "half": dataclasses.replace(REAL, depth_double=10, depth_single=20)}
TEXT = 256


def swap_for(total: int, config) -> SwapSettings:
    double = min(total, config.depth_double)
    return SwapSettings(double_blocks=double, single_blocks=min(total - double, config.depth_single))


def run_case(model, config, settings, args, inputs, device) -> dict:
    engine = BlockSwapEngine(model, settings, device).place() if settings.swaps_anything else None
    if engine is None:
        model.to(device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.repeats + 1):
        guard = engine.running() if engine is not None else _null()
        with guard, torch.no_grad():
            start = time.perf_counter()
            model(*inputs[:-1], refined_text=inputs[-1])
            torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device)
    predicted = estimate_sampling_memory(
        config, width=args.width, height=args.height, frames=args.frames, text_tokens=TEXT, steps=1, swap=settings,
        compute_dtype=torch.bfloat16,
    )
    model.to("cpu")
    return {"double": settings.double_blocks, "single": settings.single_blocks, "prefetch": settings.prefetch,
            "median_s": statistics.median(times[1:]), "peak_gib": peak / 2**30,
            "predicted_gib": (predicted.weights_bytes + predicted.activation_bytes) / 2**30,
            "sync_loads": engine.stats["sync_loads"] if engine else 0}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=544)
    parser.add_argument("--height", type=int, default=320)
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--config", choices=["auto", *sorted(CONFIGS)], default="auto",
                        help="real: the 13B layout (~26 GB of host RAM in bf16); half: 10+20 blocks; "
                        "auto: real when the host has 40 GB available, else half")
    parser.add_argument("--prefetch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--attention", default="sdpa,sage,flash", help="backends to compare (comma-separated)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_blockswap.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_blockswap: no CUDA device here; this benchmark measures GPU step time and VRAM and needs one. "
              "Run it on a machine with an NVIDIA GPU (the CPU swap cost is bench/bench_blockswap.py).")
        sys.exit(2)
    device = torch.device("cuda", torch.cuda.current_device())
    if args.config == "auto":
        import psutil

        args.config = "real" if psutil.virtual_memory().available >= 40 * 2**30 else "half"
    config = CONFIGS[args.config]
    torch.manual_seed(0)
    model = HunyuanVideoDiT(config, dtype=torch.bfloat16).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.02)
    model.detach_refiner()
    shape = latent_shape(1, args.width, args.height, args.frames)
    inputs = (torch.randn(shape, device=device), torch.tensor([900.0], device=device),
              torch.ones(1, TEXT, dtype=torch.bool, device=device), torch.randn(1, config.text_states_dim_2, device=device),
              torch.tensor([6.0], device=device), torch.randn(1, TEXT, config.hidden_size, device=device, dtype=torch.bfloat16))
    total = config.depth_double + config.depth_single
    rows = []
    for count in (0, 10, 20, total):
        settings = dataclasses.replace(swap_for(count, config), prefetch=args.prefetch)
        rows.append(try_case(model, config, settings, args, inputs, device))
    attention = attention_rows(model, config, rows, args, inputs, device)
    print(f"{torch.cuda.get_device_name(device)}; {args.config} config, {args.width}x{args.height}x{args.frames}, "
          f"bf16, prefetch {args.prefetch}")
    print(f"{'double':>7}{'single':>7}{'step s':>9}{'peak GiB':>10}{'planner GiB':>13}{'sync loads':>12}")
    for r in rows:
        if r.get("oom"):
            print(f"{r['double']:>7}{r['single']:>7}{'OOM':>9}")
            continue
        print(f"{r['double']:>7}{r['single']:>7}{r['median_s']:>9.3f}{r['peak_gib']:>10.2f}{r['predicted_gib']:>13.2f}"
              f"{r['sync_loads']:>12}")
    print(f"{'attention':>10}{'step s':>9}{'peak GiB':>10}  note")
    for r in attention:
        step = f"{r['median_s']:>9.3f}{r['peak_gib']:>10.2f}" if "median_s" in r else f"{'-':>9}{'-':>10}"
        print(f"{r['backend']:>10}{step}  {r.get('skipped', '')}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"device": torch.cuda.get_device_name(device), "args": {k: str(v) for k, v in vars(args).items()},
              "rows": rows, "attention": attention}
    args.out.write_text(json.dumps(report, indent=2))


def try_case(model, config, settings, args, inputs, device) -> dict:
    try:
        return run_case(model, config, settings, args, inputs, device)
    except torch.OutOfMemoryError:
        model.to("cpu")
        torch.cuda.empty_cache()
        return {"double": settings.double_blocks, "single": settings.single_blocks, "oom": True}


def attention_rows(model, config, rows, args, inputs, device) -> list[dict]:
    """Step time and VRAM per attention backend, at the smallest swap count that fitted."""
    fitted = [r for r in rows if not r.get("oom")]
    if not fitted:
        return []
    settings = dataclasses.replace(swap_for(0, config), double_blocks=fitted[0]["double"],
                                   single_blocks=fitted[0]["single"], prefetch=args.prefetch)
    out = []
    for name in args.attention.split(","):
        try:
            resolve_backend(name, device)
        except AttentionBackendError as err:
            out.append({"backend": name, "skipped": str(err)})
            continue
        model.attention_backend = name
        out.append({"backend": name, **try_case(model, config, settings, args, inputs, device)})
    model.attention_backend = "sdpa"
    return out


if __name__ == "__main__":
    main()

"""Token-refiner precompute: the time it takes out of every DiT step, and the memory it frees.

    .venv/bin/python bench/bench_refiner.py [--repeats 5] [--steps 50] [--out bench/results/refiner.json]

The refiner (``txt_in``, 2 blocks at the real width 3072, LLM states 4096 wide) depends only on
(text, timestep). Our Token Refiner node runs it for every step of the schedule *before*
sampling, so the sampler's DiT step never runs it and the sampler's device never holds it.

Time (bf16, 256 text tokens, this CPU; the three calls below run in turn, ``--repeats`` times):
``inside`` is what a DiT step that owns txt_in runs (diffusers and ComfyUI do this every step);
``refine`` is what precompute runs per step (the timestep-dependent part); ``prepare`` is the
timestep-independent projection precompute runs once. Removed from each sampling step:
``inside``; over a schedule of S steps: S x inside in the loop vs prepare + S x refine before it.

Memory: the refiner's weight bytes in the real 13B model (exact, from a meta-device model), and a
measurement: two fresh child processes build the same real-width DiT (1 double + 1 single block)
in bf16, one keeping txt_in and one detaching and dropping it as our loader/sampler split does;
the difference of their resident memory is what sampling no longer needs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, interleaved, rss_now, spread, write_json  # noqa: E402
from hunyuan.dit import REAL, HunyuanVideoDiT, SingleTokenRefiner  # noqa: E402

TEXT_LEN = 256
EXPECTED_MIB = 590  # issue 3: "saves about 590 MB bf16 on the real model" (309M params x 2 B = 589 MiB)


def build_refiner(dtype: torch.dtype) -> SingleTokenRefiner:
    torch.manual_seed(0)
    refiner = SingleTokenRefiner(REAL.text_states_dim, REAL.hidden_size, REAL.num_heads, REAL.refiner_depth,
                                 device="meta", dtype=dtype).to_empty(device="cpu")  # no throw-away default init
    with torch.no_grad():
        for p in refiner.parameters():
            p.normal_(0.0, 0.02)
    return refiner.eval()


def time_refiner(repeats: int) -> dict:
    refiner = build_refiner(torch.bfloat16)
    g = torch.Generator().manual_seed(1)
    text = torch.randn(1, TEXT_LEN, REAL.text_states_dim, generator=g).to(torch.bfloat16)
    mask = torch.ones(1, TEXT_LEN, dtype=torch.bool)
    t = torch.tensor([700.0])
    with torch.inference_mode():
        tokens, context = refiner.prepare(text, mask)
        runs = {
            "inside": lambda: refiner(text, t, mask),
            "refine": lambda: refiner.refine(tokens, context, t, mask),
            "prepare": lambda: refiner.prepare(text, mask),
        }
        for fn in runs.values():  # warm-up (oneDNN builds its bf16 kernels per shape)
            fn()
        times, _ = interleaved(runs, repeats)
    return {label: spread(values) for label, values in times.items()} | {"raw": times}


def refiner_bytes(dtype: torch.dtype = torch.bfloat16) -> dict:
    with torch.device("meta"):
        model = HunyuanVideoDiT(REAL)
    item = torch.empty((), dtype=dtype).element_size()
    refiner = sum(p.numel() for p in model.txt_in.parameters())
    total = sum(p.numel() for p in model.parameters())
    return {"refiner_params": refiner, "dit_params": total, "refiner_bytes_bf16": refiner * item,
            "dit_bytes_bf16": total * item, "share_of_dit": refiner / total}


def child(keep_refiner: bool) -> dict:
    """Build a real-width 1+1-block DiT in bf16; optionally drop its refiner; report VmRSS."""
    import dataclasses
    import gc

    base = rss_now()
    config = dataclasses.replace(REAL, depth_double=1, depth_single=1)
    model = HunyuanVideoDiT(config, device="meta", dtype=torch.bfloat16).to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():  # make every page resident
            p.fill_(0.01)
    if not keep_refiner:
        model.detach_refiner()  # the sampler's process never holds it
        gc.collect()
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"rss_bytes": rss_now() - base, "param_bytes": params}


def run_child(keep: bool) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "keep" if keep else "drop"]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}  # freed tensors leave the RSS at once
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600, env=env)
    if proc.returncode:
        raise RuntimeError(f"child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50, help="schedule length (reference: 50)")
    parser.add_argument("--out", type=Path, default=RESULTS / "refiner.json")
    parser.add_argument("--child", choices=["keep", "drop"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child == "keep")))
        return 0
    timing = time_refiner(args.repeats)
    inside, refine, prepare = (timing[k]["median"] for k in ("inside", "refine", "prepare"))
    steps = args.steps
    keep, drop = run_child(True), run_child(False)
    sizes = refiner_bytes()
    result = {
        "text_tokens": TEXT_LEN, "dtype": "bf16", "steps": steps, "repeats": args.repeats, "seconds": timing,
        "per_step_removed_s": inside,
        "loop_total_inside_s": steps * inside,
        "precompute_total_s": prepare + steps * refine,
        "total_saved_s": steps * inside - (prepare + steps * refine),
        "memory": {**sizes, "expected_mib": EXPECTED_MIB,
                   "measured_rss_with_refiner": keep["rss_bytes"], "measured_rss_without_refiner": drop["rss_bytes"],
                   "measured_rss_saved": keep["rss_bytes"] - drop["rss_bytes"],
                   "param_bytes_saved_1plus1": keep["param_bytes"] - drop["param_bytes"]},
    }
    write_json(args.out, result)
    m = result["memory"]
    print(f"txt_in inside a step: {inside:.3f} s (refine {refine:.3f} s + prepare {prepare:.3f} s); over {steps} steps "
          f"{steps * inside:.1f} s in the loop vs {result['precompute_total_s']:.1f} s precomputed before it")
    print(f"refiner weights: {m['refiner_bytes_bf16'] / 2**20:.0f} MiB bf16 ({100 * m['share_of_dit']:.1f}% of the DiT); "
          f"measured resident difference {m['measured_rss_saved'] / 2**20:.0f} MiB")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

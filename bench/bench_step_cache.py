"""Step caches: per-video time with each rule at its published setting vs no cache, same run.

    .venv/bin/python bench/bench_step_cache.py [--steps 20] [--repeats 2] [--blocks 1,1]
        [--out bench/results/step_cache.json]

The DiT at real width (3072) with ``--blocks`` double + single blocks (the DiT-step bench's
partial depth) and random weights, bf16, a 320 x 192 x 5-frame video (480 video tokens) with 128
text tokens, on this CPU. Each variant samples the same video from the same
noise (Euler, ``--steps`` steps, shift 7, embedded guidance 6); the variants run in turn
``--repeats`` times. Reported per variant: seconds per video (median, range), the speed-up over
no cache, the steps computed and skipped, and the final latent's PSNR against the uncached one.

Random weights: a cache's decisions follow how much the model's output changes from step to
step, which random weights do not reproduce, so the skip counts and PSNR here say that the
machinery works and what a skipped step saves, not what the rules give on the real model.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_dit_step import make_config, weights  # noqa: E402
from bench.common import RESULTS, interleaved, ratios, spread, write_json  # noqa: E402
from hunyuan.conditioning import RefinedConditioning, RefinedText  # noqa: E402
from hunyuan.dit.checkpoint import load_dit  # noqa: E402
from hunyuan.dit.step_cache import DEFAULTS, StepCacheRun, StepCacheSettings  # noqa: E402
from hunyuan.sampling import flow_sigmas, seeded_noise  # noqa: E402
from hunyuan.sampling.pipeline import sample_video  # noqa: E402

LATENT = (1, 16, 2, 24, 40)  # raw latent: 2 x 12 x 20 = 480 video tokens after 1x2x2 patching
TEXT_LEN = 128


def partial_dit(blocks: str):
    """The DiT at real width with ``blocks`` ("double,single") blocks, random bf16 weights, no refiner."""
    double, single = (int(v) for v in blocks.split(","))
    config = make_config(double, single)
    model = load_dit(weights(config, torch.bfloat16), dtype=torch.bfloat16)
    model.detach_refiner()
    return config, model


def random_text(config, sigmas: torch.Tensor, length: int, generator: torch.Generator) -> RefinedText:
    """Random refined text tokens (bf16, N(0, 0.25)) and pooled vector for every step of ``sigmas``."""
    tokens = (torch.randn(len(sigmas) - 1, 1, length, config.hidden_size, generator=generator) * 0.5)
    return RefinedText(sigmas, tokens.to(torch.bfloat16), torch.ones(1, length, dtype=torch.bool),
                       torch.randn(1, config.text_states_dim_2, generator=generator))


def psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    mse = float((x.float() - ref.float()).pow(2).mean())
    peak = float(ref.float().abs().max())
    return math.inf if mse == 0 else 10 * math.log10(peak * peak / mse)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--blocks", default="1,1", help="double,single blocks at real width")
    parser.add_argument("--out", type=Path, default=RESULTS / "step_cache.json")
    args = parser.parse_args(argv)
    config, model = partial_dit(args.blocks)
    sigmas = flow_sigmas(args.steps, 7.0)
    text = random_text(config, sigmas, TEXT_LEN, torch.Generator().manual_seed(3))
    conditioning, noise = RefinedConditioning(text), seeded_noise(0, LATENT)
    settings = {"none": None} | {kind: StepCacheSettings(kind, thr, start) for kind, (thr, start) in DEFAULTS.items()}
    runs_of: dict[str, list[StepCacheRun]] = {label: [] for label in settings}

    def video(label):
        run = StepCacheRun(settings[label]) if settings[label] is not None else None
        if run is not None:
            runs_of[label].append(run)
        with torch.inference_mode():
            return sample_video(model, conditioning, sigmas, noise, step_cache=run)

    video("none")  # warm-up: oneDNN builds its bf16 kernels per shape
    times, outputs = interleaved({label: (lambda label=label: video(label)) for label in settings}, args.repeats)
    rows = {}
    for label in settings:
        row = {"seconds": spread(times[label])}
        if label != "none":
            state = runs_of[label][0].states["cond"]
            row |= {"speedup": spread(ratios(times, "none", label)), "computed": state.computed,
                    "skipped": state.skipped, "psnr_db": psnr(outputs[label], outputs["none"]),
                    "threshold": settings[label].threshold, "start": settings[label].start}
        rows[label] = row
    data = {"config": {"blocks": [len(model.double_blocks), len(model.single_blocks)], "hidden": config.hidden_size, "latent": list(LATENT),
                       "text_tokens": TEXT_LEN, "steps": args.steps, "repeats": args.repeats, "dtype": "bf16",
                       "video_tokens": LATENT[2] * (LATENT[3] // 2) * (LATENT[4] // 2)},
            "results": rows, "torch": torch.__version__, "threads": torch.get_num_threads()}
    write_json(args.out, data)
    for label, row in rows.items():
        extra = "" if label == "none" else (f", {row['speedup']['median']:.2f}x, {row['skipped']}/{args.steps} skipped, "
                                            f"PSNR {row['psnr_db']:.1f} dB")
        print(f"{label:12s} {row['seconds']['median']:.1f} s{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())



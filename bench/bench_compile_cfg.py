"""Compiled vs eager DiT step, and batched vs two-forward true CFG, same run.

    .venv/bin/python bench/bench_compile_cfg.py [--repeats 3] [--blocks 1,1] [--out bench/results/compile_cfg.json]

The DiT at real width (3072) with ``--blocks`` double + single blocks and random weights, bf16,
480 video + 128 text tokens (the step-cache bench's size), on this CPU:

* **compile**: one guided step (cfg 1) eager vs with every block compiled by inductor
  (:mod:`hunyuan.dit.compile`); the compile time is the first compiled call minus an eager one,
  with inductor's cache in a new empty folder (a cold compile, as on a user's first run).
* **batched CFG**: one true-CFG step (cfg 5, prompts of 128 and 96 tokens) as two forwards vs
  one forward of twice the batch (:func:`hunyuan.sampling.pipeline.batched_guided_velocity`).

Each pair runs in turn ``--repeats`` times after a warm-up; the ratio is per repeat. On a
compute-bound CPU little is expected from either; the gains they exist for are on a GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# A cold compile: inductor's on-disk cache would otherwise hold an earlier run's kernels.
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="hyvid-inductor-")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_step_cache import LATENT, TEXT_LEN, partial_dit, random_text  # noqa: E402
from bench.common import RESULTS, interleaved, ratios, spread, write_json  # noqa: E402
from hunyuan.dit.compile import CompileSettings, check_can_compile, compiled_blocks  # noqa: E402
from hunyuan.sampling import flow_sigmas, seeded_noise  # noqa: E402
from hunyuan.sampling.loop import guided_velocity  # noqa: E402
from hunyuan.sampling.pipeline import MODEL_LATENT_SCALE, batched_guided_velocity, text_velocity  # noqa: E402


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--blocks", default="1,1", help="double,single blocks at real width")
    parser.add_argument("--out", type=Path, default=RESULTS / "compile_cfg.json")
    args = parser.parse_args(argv)
    config, model = partial_dit(args.blocks)
    sigmas = flow_sigmas(4, 7.0)
    pos = random_text(config, sigmas, TEXT_LEN, torch.Generator().manual_seed(1))
    neg = random_text(config, sigmas, TEXT_LEN * 3 // 4, torch.Generator().manual_seed(2))
    x = seeded_noise(0, LATENT) * MODEL_LATENT_SCALE
    kw = {"offset": 0, "guidance": 6.0}
    single_pass = text_velocity(model, pos, sigmas, **kw)
    two = guided_velocity(single_pass, text_velocity(model, neg, sigmas, **kw), 5.0)
    one = batched_guided_velocity(model, pos, neg, sigmas, 5.0, **kw)
    out: dict = {"config": {"blocks": [len(model.double_blocks), len(model.single_blocks)], "hidden": config.hidden_size, "latent": list(LATENT),
                            "text_tokens": [TEXT_LEN, TEXT_LEN * 3 // 4], "repeats": args.repeats, "dtype": "bf16"},
                 "torch": torch.__version__, "threads": torch.get_num_threads()}
    with torch.inference_mode():
        times, first = interleaved({"two_forwards": lambda: two(x, 1), "batched": lambda: one(x, 1)}, args.repeats)
        out["batched_cfg"] = {"seconds": {k: spread(v) for k, v in times.items()},
                              "speedup": spread(ratios(times, "two_forwards", "batched")),
                              "max_rel_diff": rel(first["batched"], first["two_forwards"])}
        try:
            check_can_compile("cpu")
        except RuntimeError as exc:
            out["compile"] = {"skipped": str(exc)}
        else:
            start = time.perf_counter()
            eager_once = single_pass(x, 1)
            eager_s = time.perf_counter() - start
            with compiled_blocks(model, CompileSettings()):
                start = time.perf_counter()
                compiled_once = single_pass(x, 1)
                first_s = time.perf_counter() - start
                times, _ = interleaved({"eager": lambda: _eager(model, single_pass, x),
                                        "compiled": lambda: single_pass(x, 1)}, args.repeats)
            out["compile"] = {"seconds": {k: spread(v) for k, v in times.items()},
                              "speedup": spread(ratios(times, "eager", "compiled")),
                              "compile_s": first_s - eager_s, "max_rel_diff": rel(compiled_once, eager_once)}
    write_json(args.out, out)
    b = out["batched_cfg"]
    print(f"batched CFG: {b['speedup']['median']:.2f}x vs two forwards (max rel diff {b['max_rel_diff']:.1e})")
    c = out["compile"]
    print(f"compile: {c}" if "skipped" in c else
          f"compile: {c['speedup']['median']:.2f}x vs eager, compiled in {c['compile_s']:.0f} s "
          f"(max rel diff {c['max_rel_diff']:.1e})")
    return 0


def _eager(model, velocity, x):
    """One step with the eager block forwards, from inside a compiled_blocks() context."""
    blocks = [*model.double_blocks, *model.single_blocks]
    saved = [b.__dict__.pop("forward") for b in blocks]
    try:
        return velocity(x, 1)
    finally:
        for block, forward in zip(blocks, saved):
            block.forward = forward


if __name__ == "__main__":
    sys.exit(main())

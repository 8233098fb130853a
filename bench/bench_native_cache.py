"""The whole video with step caches: ours vs ComfyUI's native KSampler + EasyCache, same weights file, same run.

    .venv/bin/python bench/bench_native_cache.py [--steps 10] [--repeats 1] [--blocks 1,1]
        [--comfy-thresholds 0.2,0.5,1] [--ours-easycache 0.5] [--out bench/results/native_cache.json]

One safetensors file (Tencent layout, real width 3072, ``--blocks`` double + single blocks, the
real 2-block token refiner, random bf16 weights) is loaded by both sides: ours through
``hunyuan.dit.checkpoint.load_dit``, ComfyUI's through its own ``comfy.sd.load_diffusion_model``
(UNETLoader's loader: its HunyuanVideo model detected from the keys), computing in bf16 as it
does on a GPU. Both sample the same video size (the step-cache bench's: 320 x 192 x 5 frames,
480 video tokens, 128 random text tokens), the same number of Euler steps, from the same seed,
embedded guidance 6, no true CFG:

* ours: the Token Refiner's precompute, then ``sample_video`` with no cache, with each of our
  caches at its published setting, and with easycache at ``--ours-easycache`` (the rule
  ComfyUI's node implements, at thresholds where it skips steps with random weights too); the
  precompute is inside the timed video.
* ComfyUI: its ``KSampler`` (euler, simple, cfg 1) on the model as loaded, and on the model
  through its ``EasyCache`` node at each of ``--comfy-thresholds`` (start 0.15, end 0.95: the
  node's defaults; 0.2 is its default threshold). Its model runs the token refiner inside every
  step, as it does for users.

Each side's cached videos are compared with its *own* uncached video (final latent PSNR). Equal
quality: for each variant of ours, ComfyUI's fastest EasyCache run whose PSNR is at least ours
(its uncached run when none is); the ratio is that run's time over ours. Time is this process's
CPU seconds per video (both sides run on the same threads; other jobs on a shared machine stretch
the wall time of whatever they overlap, not its CPU time); wall seconds are recorded too. Every
variant runs ``--repeats`` times in turn (rotating order). Steps computed: ours from the
cache's own counts, ComfyUI's from calls of its model's final layer (run on computed steps only).

Random weights: the caches' decisions follow how much the output changes from step to step,
which random weights do not reproduce, so skip counts and PSNR here show the machinery, not
what the rules give on the real model; quality must be judged on real weights. At this partial
depth the token refiner (inside every ComfyUI step, precomputed by ours) is a larger share of a
step than at the real 60-block depth, so the uncached ratio is reported separately.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
COMFYUI = Path(os.environ.get("COMFYUI_PATH") or ROOT / ".comfyui" / "ComfyUI")
sys.path.insert(0, str(ROOT))
sys.path.append(str(COMFYUI))

from bench.bench_dit_step import make_config, weights  # noqa: E402
from bench.bench_step_cache import LATENT, TEXT_LEN, psnr  # noqa: E402
from bench.common import RESULTS, interleaved, spread, write_json  # noqa: E402
from hunyuan.conditioning import RefinedConditioning, TextEmbeds  # noqa: E402
from hunyuan.dit import precompute_refined_text  # noqa: E402
from hunyuan.dit.checkpoint import load_dit  # noqa: E402
from hunyuan.dit.step_cache import DEFAULTS, StepCacheRun, StepCacheSettings  # noqa: E402
from hunyuan.sampling import flow_sigmas, seeded_noise  # noqa: E402
from hunyuan.sampling.pipeline import sample_video  # noqa: E402

SEED, GUIDANCE, SHIFT = 0, 6.0, 7.0  # ComfyUI's HunyuanVideo model samples with shift 7 too
COMFY_START, COMFY_END = 0.15, 0.95  # the EasyCache node's defaults


def write_weights(blocks: str, folder: Path) -> tuple[object, Path]:
    from safetensors.torch import save_file

    double, single = (int(v) for v in blocks.split(","))
    config = make_config(double, single)
    path = folder / f"hunyuan_video_{double}+{single}_blocks_bf16.safetensors"
    save_file(weights(config, torch.bfloat16), str(path))
    return config, path


def text_inputs(config) -> TextEmbeds:
    g = torch.Generator().manual_seed(3)
    states = torch.randn(1, TEXT_LEN, config.text_states_dim, generator=g).to(torch.bfloat16)
    return TextEmbeds(states, torch.ones(1, TEXT_LEN, dtype=torch.bool),
                      torch.randn(1, config.text_states_dim_2, generator=g).to(torch.bfloat16))


class Ours:
    def __init__(self, path: Path, text: TextEmbeds, steps: int):
        self.model = load_dit(path, dtype=torch.bfloat16).eval()
        self.refiner = self.model.detach_refiner()
        self.text, self.sigmas = text, flow_sigmas(steps, SHIFT)
        self.noise = seeded_noise(SEED, LATENT)
        self.last: dict[str, StepCacheRun] = {}

    def video(self, label: str, settings: StepCacheSettings | None, sigmas: torch.Tensor | None = None) -> torch.Tensor:
        run = StepCacheRun(settings) if settings is not None else None
        sigmas = self.sigmas if sigmas is None else sigmas
        with torch.inference_mode():
            refined = precompute_refined_text(self.refiner, self.text, sigmas, device="cpu", dtype=torch.bfloat16)
            out = sample_video(self.model, RefinedConditioning(refined), sigmas, self.noise,
                               embedded_guidance=GUIDANCE, step_cache=run)
        if run is not None:
            self.last[label] = run
        return out

    def computed(self, label: str, steps: int) -> int:
        return self.last[label].states["cond"].computed if label in self.last else steps


def comfy_nodes():
    """ComfyUI's own ``nodes.py`` (its KSampler); by file, because the pack's ``nodes/`` package is
    first on this process's path under the same name."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("comfyui_nodes", COMFYUI / "nodes.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Comfy:
    """ComfyUI's own loader, KSampler and EasyCache node, called in-process as its executor would."""

    def __init__(self, path: Path, text: TextEmbeds, steps: int):
        import comfy.cli_args

        comfy.cli_args.args.cpu = True
        import comfy.model_management as mm
        import comfy.sd

        # On a CPU ComfyUI computes bf16 weights in fp32 (its should_use_bf16 says no for CPUs), ours in
        # bf16: for the same arithmetic it gets the decision it makes on a bf16-capable GPU, no cast.
        choice, mm.unet_manual_cast = mm.unet_manual_cast, lambda *args, **kwargs: None
        try:
            self.patcher = comfy.sd.load_diffusion_model(str(path), model_options={"dtype": torch.bfloat16})
        finally:
            mm.unet_manual_cast = choice
        model = self.patcher.model
        assert model.manual_cast_dtype is None and model.get_dtype() == torch.bfloat16, "ComfyUI is not computing in bf16"
        self.ksampler, self.steps = comfy_nodes().KSampler(), steps
        self.positive = [[text.states, {"pooled_output": text.pooled, "guidance": GUIDANCE}]]
        self.negative = [[torch.zeros_like(text.states), {"pooled_output": torch.zeros_like(text.pooled)}]]
        self.latent = {"samples": torch.zeros(LATENT)}
        self.models = {}
        self.calls = 0
        self.patcher.model.diffusion_model.final_layer.register_forward_hook(self._count)
        self.computed_of: dict[str, int] = {}

    def _count(self, *_):
        self.calls += 1

    def with_easycache(self, threshold: float):
        from comfy_extras.nodes_easycache import EasyCacheNode

        return EasyCacheNode.execute(self.patcher, threshold, COMFY_START, COMFY_END, False).result[0]

    def video(self, label: str, model, steps: int | None = None) -> torch.Tensor:
        before = self.calls
        with torch.inference_mode():
            out = self.ksampler.sample(model, SEED, steps or self.steps, 1.0, "euler", "simple", self.positive,
                                       self.negative, self.latent, denoise=1.0)[0]["samples"]
        self.computed_of.setdefault(label, self.calls - before)
        return out


def variants(ours: Ours, comfy: Comfy, thresholds: list[float], ours_easycache: list[float]) -> dict:
    """label -> callable sampling that video; ours at the published settings plus ``ours_easycache`` thresholds."""
    settings = {f"ours_{kind}": StepCacheSettings(kind, t, start) for kind, (t, start) in DEFAULTS.items()}
    settings |= {f"ours_easycache_{t:g}": StepCacheSettings("easycache", t, DEFAULTS["easycache"][1])
                 for t in ours_easycache}
    runs = {"ours_none": lambda: ours.video("ours_none", None)}
    runs |= {label: (lambda label=label, s=s: ours.video(label, s)) for label, s in settings.items()}
    runs["comfy_none"] = lambda: comfy.video("comfy_none", comfy.patcher)
    for t in thresholds:
        model = comfy.with_easycache(t)
        runs[f"comfy_easycache_{t:g}"] = lambda label=f"comfy_easycache_{t:g}", m=model: comfy.video(label, m)
    return runs


def summarize(times: dict, walls: dict, outputs: dict, ours: Ours, comfy: Comfy, steps: int) -> dict:
    rows = {}
    for label in times:
        side = "ours" if label.startswith("ours") else "comfy"
        computed = ours.computed(label, steps) if side == "ours" else comfy.computed_of[label]
        rows[label] = {"seconds": spread(times[label]), "wall_seconds": spread(walls[label]), "computed": computed,
                       "skipped": steps - computed,
                       "psnr_db": psnr(outputs[label], outputs[f"{side}_none"]) if label != f"{side}_none" else None}
    median = {label: r["seconds"]["median"] for label, r in rows.items()}
    comfy_cached = [label for label in rows if label.startswith("comfy_easycache")]
    matched = {}
    for label in (k for k in rows if k.startswith("ours_") and k != "ours_none"):
        mine = rows[label]["psnr_db"]
        good = [c for c in comfy_cached if rows[c]["psnr_db"] >= mine]  # inf (no skip) only matches inf
        peer = min(good, key=median.get) if good else "comfy_none"
        matched[label] = {"comfy": peer, "ours_psnr_db": mine, "comfy_psnr_db": rows[peer]["psnr_db"],
                          "speedup": median[peer] / median[label],
                          "per_repeat": [a / b for a, b in zip(times[peer], times[label])]}
    return {"variants": rows, "uncached_speedup": median["comfy_none"] / median["ours_none"], "matched": matched}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--blocks", default="1,1", help="double,single blocks at real width")
    parser.add_argument("--comfy-thresholds", default="0.2,0.5,1",
                        help="ComfyUI EasyCache reuse_threshold values (0.2: its node's default)")
    parser.add_argument("--ours-easycache", default="0.5",
                        help="extra thresholds for our easycache (same rule as ComfyUI's: a pair where both skip)")
    parser.add_argument("--out", type=Path, default=RESULTS / "native_cache.json")
    args = parser.parse_args(argv)
    logging.disable(logging.INFO)  # ComfyUI's per-run EasyCache lines; warnings still show
    thresholds = [float(t) for t in args.comfy_thresholds.split(",")]
    with tempfile.TemporaryDirectory(prefix="hyvid_native_cache_") as tmp:
        config, path = write_weights(args.blocks, Path(tmp))
        text = text_inputs(config)
        ours, comfy = Ours(path, text, args.steps), Comfy(path, text, args.steps)
    extra = [float(t) for t in args.ours_easycache.split(",") if t]
    runs, walls = variants(ours, comfy, thresholds, extra), {}

    def walled(label, fn):
        def run():
            start = time.perf_counter()
            out = fn()
            walls.setdefault(label, []).append(time.perf_counter() - start)
            return out
        return run

    # warm-up, one step each: oneDNN builds its bf16 kernels per shape on the first call
    ours.video("warm-up", None, flow_sigmas(1, SHIFT)), comfy.video("warm-up", comfy.patcher, steps=1)
    # CPU seconds of this process (both sides use the same threads): other jobs on a shared machine
    # stretch the wall time of whichever variant they overlap, not its CPU time; wall is kept too
    times, outputs = interleaved({k: walled(k, fn) for k, fn in runs.items()}, args.repeats, clock=time.process_time)
    data = summarize(times, walls, outputs, ours, comfy, args.steps)
    data["config"] = {"blocks": [config.depth_double, config.depth_single], "hidden": config.hidden_size,
                      "latent": list(LATENT), "text_tokens": TEXT_LEN, "steps": args.steps, "repeats": args.repeats,
                      "dtype": "bf16", "video_tokens": LATENT[2] * (LATENT[3] // 2) * (LATENT[4] // 2),
                      "comfy_thresholds": thresholds, "comfy_start_end": [COMFY_START, COMFY_END],
                      "ours_settings": {k: {"threshold": t, "start": s} for k, (t, s) in DEFAULTS.items()},
                      "ours_easycache_extra": extra, "clock": "process CPU seconds"}
    data |= {"torch": torch.__version__, "threads": torch.get_num_threads()}
    write_json(args.out, data)
    for label, row in data["variants"].items():
        quality = "" if row["psnr_db"] is None else f", PSNR {row['psnr_db']:.1f} dB vs its own uncached"
        print(f"{label:24s} {row['seconds']['median']:6.1f} CPU s ({row['wall_seconds']['median']:.1f} s wall), "
              f"{row['skipped']}/{args.steps} skipped{quality}")
    print(f"uncached: ComfyUI / ours = {data['uncached_speedup']:.2f}x")
    for label, m in data["matched"].items():
        print(f"{label} vs {m['comfy']} (equal or better PSNR): {m['speedup']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

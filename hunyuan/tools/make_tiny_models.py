"""Write deterministic tiny random-weight models in the real on-disk layouts.

    python -m hunyuan.tools.make_tiny_models --out MODELS_DIR [--seed N]

MODELS_DIR is a ComfyUI ``models/`` folder: every stage writes into the sub-folder a user would
put the real file in (``diffusion_models/``, ``loras/``, ``vae/``, ``LLM/``, ``text_encoders/``, ``clip/``).
The weights are random: the demo's output is noise. They exist so that the whole graph, and every
loader's real layout, runs in seconds on a CPU.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from pathlib import Path

log = logging.getLogger(__name__)

# Each stage package that ships tiny weights has a ``tiny`` module with
# ``write_tiny(models_dir: Path, seed: int) -> list[Path]``.
STAGES = ("text", "dit", "vae", "rewrite")

# With ``real_names``, the tiny files are also linked under the names of the real weights, so the
# example workflows in workflows/ (which name the real files) run unchanged on tiny weights.
REAL_NAMES = {
    "diffusion_models/hunyuan_video_t2v_720p_bf16.safetensors": "diffusion_models/hyvid_tiny_dit.safetensors",
    "diffusion_models/hunyuan_video_v2_replace_image_to_video_720p_bf16.safetensors":
        "diffusion_models/hyvid_tiny_dit_i2v_replace.safetensors",
    "diffusion_models/hunyuan_video_image_to_video_720p_bf16.safetensors":
        "diffusion_models/hyvid_tiny_dit_i2v_concat.safetensors",
    "diffusion_models/skyreels_hunyuan_i2v_bf16.safetensors": "diffusion_models/hyvid_tiny_dit_skyreels_i2v.safetensors",
    "vae/hunyuan_video_vae_bf16.safetensors": "vae/hyvid_tiny_vae.safetensors",
    "text_encoders/llava_llama3_fp16.safetensors": "text_encoders/hyvid_tiny_llava_llama3_fp16.safetensors",
    "text_encoders/clip_l.safetensors": "text_encoders/hyvid_tiny_clip_l.safetensors",
    "clip_vision/llava_llama3_vision.safetensors": "clip_vision/hyvid_tiny_llava_llama3_vision.safetensors",
    "LLM/Qwen2.5-1.5B-Instruct": "LLM/hyvid_tiny_rewrite_lm",
    "loras/hunyuan_video_style_lora.safetensors": "loras/hyvid_tiny_lora.safetensors",
}


def link_real_names(models_dir: Path) -> list[Path]:
    links = []
    for name, target in REAL_NAMES.items():
        link, source = models_dir / name, models_dir / target
        if not source.exists():
            continue
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(source.relative_to(link.parent), target_is_directory=source.is_dir())
        links.append(link)
    return links


def write_all(models_dir: Path, seed: int = 0, *, real_names: bool = False) -> list[Path]:
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    package = __package__.rsplit(".", 1)[0]  # "hunyuan", or "<pack>.hunyuan" inside ComfyUI
    for stage in STAGES:
        try:
            tiny = importlib.import_module(f"{package}.{stage}.tiny")
        except ModuleNotFoundError as exc:
            if exc.name not in (f"{package}.{stage}", f"{package}.{stage}.tiny"):
                raise
            log.info("stage %s has no tiny weights yet", stage)
            continue
        written.extend(tiny.write_tiny(models_dir, seed))
    if real_names:
        written.extend(link_real_names(models_dir))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="a ComfyUI models/ folder")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--real-names", action="store_true",
                        help="also link the tiny files under the real weights' names (for the example workflows); "
                        "never use this in a folder that holds real weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in write_all(args.out, args.seed, real_names=args.real_names):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

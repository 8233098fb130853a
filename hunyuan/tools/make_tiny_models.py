"""Write deterministic tiny random-weight models in the real on-disk layouts.

    python -m hunyuan.tools.make_tiny_models --out MODELS_DIR --comfyui COMFYUI_DIR [--seed N]

MODELS_DIR is a ComfyUI ``models/`` folder: every stage writes into the sub-folder a user would
put the real file in (``diffusion_models/``, ``loras/``, ``vae/``, ``LLM/``, ``text_encoders/``, ``clip/``).
The weights are random: the demo's output is noise. They exist so that the whole graph, and every
loader's real layout, runs in seconds on a CPU. The text encoders and the rewrite LM get the real
tokenizers that the ComfyUI tree at COMFYUI_DIR ships (default: $COMFYUI_PATH).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
from pathlib import Path

# Each stage package that ships tiny weights has a ``tiny`` module with
# ``write_tiny(models_dir: Path, seed: int) -> list[Path]``; those in TOKENIZED also take the
# ComfyUI tree whose tokenizers they copy (``comfyui=``).
STAGES = ("text", "dit", "vae", "rewrite")
TOKENIZED = ("text", "rewrite")

# With ``real_names``, the tiny files are also linked under the names of the real weights, so the
# example workflows in workflows/ (which name the real files) load them. Each runs on tiny weights
# in this pack's tests, but t2v_native_text does so only with a test-only shim the tests add: in an
# unmodified ComfyUI the native DualCLIPLoader builds the real-size text encoders and refuses the
# tiny ones (a size mismatch).
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


def write_all(models_dir: Path, seed: int = 0, *, comfyui: Path, real_names: bool = False) -> list[Path]:
    """Every stage's tiny weights under ``models_dir``; ``comfyui``: the ComfyUI tree whose tokenizers
    the text stages copy."""
    models_dir = Path(models_dir)
    models_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    package = __package__.rsplit(".", 1)[0]  # "hunyuan", or "<pack>.hunyuan" inside ComfyUI
    for stage in STAGES:
        tiny = importlib.import_module(f"{package}.{stage}.tiny")
        extra = {"comfyui": Path(comfyui)} if stage in TOKENIZED else {}
        written.extend(tiny.write_tiny(models_dir, seed, **extra))
    if real_names:
        written.extend(link_real_names(models_dir))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="a ComfyUI models/ folder")
    parser.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_PATH"),
                        help="the ComfyUI tree whose tokenizers the text encoders get (default: $COMFYUI_PATH)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    parser.add_argument("--real-names", action="store_true",
                        help="also link the tiny files under the real weights' names, so the example workflows "
                        "find them (t2v_native_text also needs this pack's test-only shim: native DualCLIPLoader "
                        "refuses tiny encoders); never use this in a folder that holds real weights")
    args = parser.parse_args(argv)
    if args.comfyui is None:
        parser.error("--comfyui is required (or set COMFYUI_PATH): the ComfyUI tree whose tokenizers to copy")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in write_all(args.out, args.seed, comfyui=args.comfyui, real_names=args.real_names):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Deterministic random-weight DiTs in Tencent's bare on-disk layout (tests, demos, CI)."""

from __future__ import annotations

import dataclasses
import pathlib

import torch
from safetensors.torch import save_file

from .config import TINY, DiTConfig
from .model import HunyuanVideoDiT

TINY_DIT_FILE = "hyvid_tiny_dit.safetensors"
TINY_I2V_FILES = {
    # file name -> (input channels, guidance embedding, seed offset, weight std): the released I2V
    # variants' shapes. The token-replace file has wider weights so that frames couple through
    # attention enough for a pipeline test to see the first frame's own modulation.
    "hyvid_tiny_dit_i2v_replace.safetensors": (16, True, 1, 0.1),  # HunyuanVideo-I2V v2: T2V keys and shapes
    "hyvid_tiny_dit_i2v_concat.safetensors": (33, False, 2, 0.02),  # HunyuanVideo-I2V v1
    "hyvid_tiny_dit_skyreels_i2v.safetensors": (32, True, 3, 0.02),  # SkyReels-V1-I2V
}
TINY_LORA_FILE = "hyvid_tiny_lora.safetensors"


def random_state_dict(config: DiTConfig, seed: int = 0, std: float = 0.02) -> dict[str, torch.Tensor]:
    """fp32 weights in Tencent key layout: N(0, std) for weights and biases, ~1 for norm scales.

    Nothing is zero-initialised, so every layer (final layer and gates included) shapes the output.
    """
    with torch.device("meta"):
        skeleton = HunyuanVideoDiT(config)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, meta in skeleton.state_dict().items():
        t = torch.empty(meta.shape, dtype=torch.float32)
        if "norm" in key and meta.ndim == 1 and key.endswith("weight"):
            t.normal_(1.0, 0.1, generator=gen)
        else:
            t.normal_(0.0, std, generator=gen)
        out[key] = t
    return out


def tiny_config(text_states_dim: int = 32, text_states_dim_2: int = 32) -> DiTConfig:
    return dataclasses.replace(TINY, text_states_dim=text_states_dim, text_states_dim_2=text_states_dim_2)


def write_tiny(
    models_dir: pathlib.Path, seed: int = 0, *, text_states_dim: int = 32, text_states_dim_2: int = 32
) -> list[pathlib.Path]:
    """Write ``models_dir/diffusion_models/hyvid_tiny_dit.safetensors`` (~2.5 MB, bf16).

    hidden 64, 4 heads x 16 (RoPE axes 4+6+6), 2 double + 2 single blocks, 2 refiner blocks,
    guidance embedding. ``text_states_dim`` / ``text_states_dim_2`` must match the tiny LLM's
    hidden size and the tiny CLIP's pooled size.
    Also the image-to-video variants (:data:`TINY_I2V_FILES`), each with its own seed, and a tiny
    LoRA for the text-to-video DiT (:func:`write_tiny_lora`).
    """
    config = tiny_config(text_states_dim, text_states_dim_2)
    folder = pathlib.Path(models_dir) / "diffusion_models"
    folder.mkdir(parents=True, exist_ok=True)
    paths = [_write(folder / TINY_DIT_FILE, config, seed)]
    for name, (channels, guidance, offset, std) in TINY_I2V_FILES.items():
        variant = dataclasses.replace(config, in_channels=channels, guidance_embed=guidance)
        paths.append(_write(folder / name, variant, seed + 1000 * offset, std))
    return [*paths, write_tiny_lora(models_dir, config, seed)]


def _write(path: pathlib.Path, config: DiTConfig, seed: int, std: float = 0.02) -> pathlib.Path:
    sd = {k: v.to(torch.bfloat16).contiguous() for k, v in random_state_dict(config, seed, std).items()}
    save_file(sd, str(path), metadata={"format": "pt", "model": "hunyuan_video_dit_tiny"})
    return path


def write_tiny_lora(models_dir: pathlib.Path, config: DiTConfig, seed: int = 0, rank: int = 4) -> pathlib.Path:
    """``models_dir/loras/hyvid_tiny_lora.safetensors``: a random rank-``rank`` LoRA on every
    Linear of the blocks, in musubi-tuner's layout (``lora_unet_<Tencent name>``, with alpha)."""
    with torch.device("meta"):
        skeleton = HunyuanVideoDiT(config)
    gen = torch.Generator().manual_seed(seed + 1)
    sd = {}
    for key, meta in skeleton.state_dict().items():
        if not key.startswith(("double_blocks.", "single_blocks.")) or meta.ndim != 2:
            continue
        name = "lora_unet_" + key[: -len(".weight")].replace(".", "_")
        sd[name + ".lora_down.weight"] = torch.randn(rank, meta.shape[1], generator=gen).to(torch.bfloat16)
        sd[name + ".lora_up.weight"] = (torch.randn(meta.shape[0], rank, generator=gen) * 0.05).to(torch.bfloat16)
        sd[name + ".alpha"] = torch.tensor(float(rank), dtype=torch.bfloat16)
    path = pathlib.Path(models_dir) / "loras" / TINY_LORA_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path), metadata={"format": "pt", "model": "hunyuan_video_lora_tiny"})
    return path

"""Deterministic random-weight VAEs in the real on-disk layouts, for tests and demos.

``write_tiny`` writes the tiny config in the Tencent/diffusers layout (what our loader node
reads). ComfyUI's native ``VAELoader`` cannot read it: ``comfy.sd.VAE`` recognises a HunyuanVideo
VAE by ``decoder.conv_in.conv.weight`` and then builds the network with hard-coded widths
(ch=128, ch_mult=(1,2,4,4), two resnets per level), so only a real-width file loads natively.
``write_native_interop`` writes such a file (random weights, ComfyUI's own key layout) for
tests that prove native nodes and ours decode each other's LATENTs.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from .config import HUNYUAN_VIDEO_VAE, TINY_VAE, VAEConfig
from .keys import diffusers_to_comfy
from .model import CausalVAE

TINY_NAME = "hyvid_tiny_vae.safetensors"
NATIVE_NAME = "hyvid_realwidth_vae_comfy.safetensors"


def random_state_dict(cfg: VAEConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Default-initialised weights for ``cfg``, identical for identical ``seed``; norms get random affines."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CausalVAE(cfg)
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.data.uniform_(0.5, 1.5)
            elif "norm" in name and name.endswith("bias"):
                p.data.uniform_(-0.2, 0.2)
    return {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}


def write_tiny(models_dir: Path, seed: int = 0) -> list[Path]:
    """Write the tiny VAE (diffusers/Tencent layout) to ``models_dir/vae/hyvid_tiny_vae.safetensors``."""
    folder = Path(models_dir) / "vae"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TINY_NAME
    save_file(random_state_dict(TINY_VAE, seed), str(path), metadata={"format": "pt", "model": "hyvid-vae-tiny"})
    return [path]


def write_native_interop(models_dir: Path, seed: int = 0, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write a REAL-width random VAE in ComfyUI's layout (~490 MB in bf16) for native-node interop."""
    folder = Path(models_dir) / "vae"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / NATIVE_NAME
    sd = diffusers_to_comfy(random_state_dict(HUNYUAN_VIDEO_VAE, seed, dtype))
    save_file(sd, str(path), metadata={"format": "pt", "model": "hyvid-vae-realwidth-random"})
    return path

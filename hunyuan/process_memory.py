"""Whole-process device memory: every component on the device, not only DiT sampling.

:mod:`hunyuan.memory` predicts the DiT sampling peak (weights + one forward's activations +
latents + refined text). A whole text-to-video process also holds, at its peak:

* the CUDA context (driver, kernels, cuBLAS workspace), outside PyTorch's allocator;
* the components it keeps on the device: the 8B LLaVA-Llama-3 text encoder and CLIP-L (fp16 in
  Tencent's reference), the VAE (fp16 there), the DiT (bf16, its token refiner included);
* the larger of two working sets, which never overlap: DiT sampling, and the tiled VAE decode
  (Tencent's reference decodes in 32-latent tiles with 16-latent-frame chunks);
* the caching allocator's reserve: memory it holds in freed blocks that a later, differently
  sized request cannot reuse, taken as a fraction of the working set.

Tencent's published peaks (60 GB at 720x1280x129, 45 GB at 544x960x129, no offload, one GPU)
are of this whole process: ``reference_process_memory`` models that configuration, and
``tests/unit/test_process_memory.py`` pins it to them. The CUDA context and the reserve fraction
are assumptions until ``scripts/gpu_check.sh`` measures them (its ``pack_imports`` stage records
the context, every device peak records reserved next to allocated).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from .dit.config import REAL, DiTConfig
from .memory import estimate_sampling_memory
from .offload.settings import SwapSettings
from .sampling.schedule import latent_shape
from .text.layouts import clip_text_layout, llama_layout
from .text.loader import CLIP_L, LLAVA_LLAMA3_8B
from .vae.config import HUNYUAN_VIDEO_VAE
from .vae.tiling import TileSpec, estimate_peak

CUDA_CONTEXT_BYTES = int(0.5e9)  # assumed: CUDA 12 context with cuBLAS/cuDNN loaded, ~0.3-0.6 GB
ALLOCATOR_RESERVE = 0.05  # assumed fraction of the working set held in unusable cached blocks
REFERENCE_TILES = TileSpec(tile=32, overlap=8, chunk=16)  # Tencent: 256 px tiles, 64 px blend, 16+1 frames
LLM_HEAD_DIM = 128
PUBLISHED_GB = {(1280, 720, 129): 60.0, (960, 544, 129): 45.0}  # Tencent README: no offload, one GPU


@functools.lru_cache(maxsize=1)
def component_params() -> dict[str, int]:
    """Parameter counts of the released components (from their layouts; no weights needed)."""
    from .vae.model import CausalVAE

    llm = llama_layout(vocab=LLAVA_LLAMA3_8B["vocab_size"], hidden=LLAVA_LLAMA3_8B["hidden_size"],
                       intermediate=LLAVA_LLAMA3_8B["intermediate_size"],
                       layers=LLAVA_LLAMA3_8B["num_hidden_layers"], heads=LLAVA_LLAMA3_8B["num_attention_heads"],
                       kv_heads=LLAVA_LLAMA3_8B["num_key_value_heads"], head_dim=LLM_HEAD_DIM)
    clip = clip_text_layout(vocab=CLIP_L["vocab_size"], hidden=CLIP_L["hidden_size"],
                            intermediate=CLIP_L["intermediate_size"], layers=CLIP_L["num_hidden_layers"],
                            positions=CLIP_L["max_position_embeddings"])
    with torch.device("meta"):
        vae = CausalVAE(HUNYUAN_VIDEO_VAE)
    return {"llm": sum(math.prod(s) for s in llm.values()), "clip_l": sum(math.prod(s) for s in clip.values()),
            "vae": sum(p.numel() for p in vae.parameters())}


@dataclass(frozen=True)
class ProcessEstimate:
    """Bytes per component; ``peak_bytes`` is their sum with the larger working set counted once."""

    cuda_context: int
    text_encoders: int
    vae_weights: int
    dit_weights: int
    dit_working: int
    vae_decode_working: int
    allocator_reserve: int

    @property
    def working(self) -> int:
        return max(self.dit_working, self.vae_decode_working)

    @property
    def peak_bytes(self) -> int:
        return (self.cuda_context + self.text_encoders + self.vae_weights + self.dit_weights + self.working
                + self.allocator_reserve)

    @property
    def peak_stage(self) -> str:
        return "DiT sampling" if self.dit_working >= self.vae_decode_working else "VAE decode"

    def breakdown_gb(self) -> dict[str, float]:
        parts = {k: getattr(self, k) / 1e9 for k in self.__dataclass_fields__}
        return {**parts, "peak": self.peak_bytes / 1e9}


def estimate_process_memory(
    width: int, height: int, frames: int, *, config: DiTConfig = REAL, text_on_device: bool = True,
    text_bytes_per_param: int = 2, vae_bytes_per_param: int = 2, tiles: TileSpec = REFERENCE_TILES,
    swap: SwapSettings | None = None, weight_dtype: torch.dtype = torch.bfloat16, steps: int = 50,
    cfg: bool = False, reserve: float = ALLOCATOR_RESERVE, cuda_context: int = CUDA_CONTEXT_BYTES,
) -> ProcessEstimate:
    """Peak device bytes of a whole text-to-video process (see the module docstring).

    ``text_on_device``: the text encoders stay on the device after encoding (Tencent's reference
    without offload); off, they are offloaded before sampling (ComfyUI under memory pressure).
    ``swap``/``weight_dtype``/``steps``/``cfg`` as for :func:`hunyuan.memory.estimate_sampling_memory`.
    """
    sampling = estimate_sampling_memory(config, width=width, height=height, frames=frames, steps=steps, cfg=cfg,
                                        swap=swap, weight_dtype=weight_dtype)
    params = component_params()
    text = (params["llm"] + params["clip_l"]) * text_bytes_per_param if text_on_device else 0
    dit_working = sampling.activation_bytes + sampling.state_bytes + sampling.text_bytes
    decode = estimate_peak(tiles, latent_shape(1, width, height, frames), HUNYUAN_VIDEO_VAE.block_channels[0],
                           vae_bytes_per_param)
    return ProcessEstimate(
        cuda_context=cuda_context, text_encoders=text, vae_weights=params["vae"] * vae_bytes_per_param,
        dit_weights=sampling.weights_bytes, dit_working=dit_working, vae_decode_working=decode,
        allocator_reserve=int(reserve * max(dit_working, decode)),
    )


def reference_process_memory(width: int, height: int, frames: int) -> ProcessEstimate:
    """Tencent's reference without offload: every component on the device, fp16 text encoders
    and VAE, bf16 DiT, 50 steps with embedded guidance (no true CFG), decode at its tiles."""
    return estimate_process_memory(width, height, frames)


def published_comparison() -> list[dict]:
    """The reference configuration's estimate next to each published peak, with the breakdown."""
    rows = []
    for (w, h, f), published in PUBLISHED_GB.items():
        est = reference_process_memory(w, h, f)
        rows.append({"size": f"{w}x{h}x{f}", "published_gb": published, "predicted_gb": est.peak_bytes / 1e9,
                     "ratio": est.peak_bytes / 1e9 / published, "peak_stage": est.peak_stage,
                     "breakdown_gb": est.breakdown_gb()})
    return rows

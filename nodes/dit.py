"""DiT stage nodes: load the DiT, and precompute the token refiner's output for a schedule.

The loader takes the token refiner (``txt_in``, ~309M params in the real model) out of the DiT
and gives it its own ModelPatcher: the DiT patcher then sizes and moves only what sampling needs,
and the refiner is loaded by the refiner node alone, through ComfyUI's model management.
"""

from __future__ import annotations

import logging

import comfy.ldm.modules.attention
import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops
import folder_paths
import torch
from comfy_api.latest import io

from ..hunyuan.conditioning import PromptEmbeds, RefinedConditioning
from ..hunyuan.dit import (
    available_backends,
    precompute_refined_text,
    register_attention_backend,
    resolve_backend,
)
from ..hunyuan.dit.attention import per_item_valid_keys
from ..hunyuan.dit.checkpoint import StoredWeights, load_dit
from ..hunyuan.dit.compile import MODES as COMPILE_MODES
from ..hunyuan.dit.compile import CompileSettings, usable
from ..hunyuan.dtypes import FP8
from ..hunyuan.sampling import check_sigmas
from .blockswap import BlockSwapPatcher
from .common import LEGACY_DTYPES, dtype_input, handed_on, plain_dtype
from .multi import record_source
from .types import CATEGORY, CheckedNode, Conditioning, DiT, PromptEmbedsSocket, with_option

log = logging.getLogger(__name__)
COMPILE_KEY = "hyvid_compile"  # a with_option() key

FP8_LABEL = "fp8_e4m3fn"


def _comfy_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask=None) -> torch.Tensor:
    """ComfyUI's optimized attention (whatever --use-*-attention picked): [B,H,N,D] -> [B,N,H*D]."""
    return comfy.ldm.modules.attention.optimized_attention(q, k, v, q.shape[1], skip_reshape=True)


# ComfyUI's backends take masks in different forms; running each item on its valid keys needs none.
register_attention_backend("comfy", per_item_valid_keys(_comfy_attention))


def compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 where supported (and on CPUs, where it is the fast GEMM dtype), else fp16."""
    if mm.is_device_cpu(device) or mm.should_use_bf16(device):
        return torch.bfloat16
    return torch.float16


def comfy_operations(load_device: torch.device):
    """Picks ComfyUI's layer classes for the weights :func:`load_dit` found, as ComfyUI's own loaders
    do (``comfy.ops.pick_operations``): its cast-on-use, fp8 and on-the-fly patches then reach every
    layer. Per-row fp8 scales are beyond ComfyUI's scaled fp8 Linear (one scale per layer): those
    files keep the pack's own Linear, which a lowvram partial load loads whole."""

    def pick(stored: StoredWeights):
        if stored.scales == "per_row":
            log.info("DiT: fp8 scales per output row; the pack's own fp8 Linear is used, not ComfyUI's ops")
            return None
        scaled = stored.weight_dtype if stored.scales == "per_layer" else None
        return comfy.ops.pick_operations(stored.weight_dtype, stored.compute_dtype, load_device=load_device,
                                         scaled_fp8=scaled)

    return pick


REFINER_KEY = "hyvid_token_refiner"  # a patcher attachment: the refiner's own patcher, shared by every clone


def refiner_patcher(dit: comfy.model_patcher.ModelPatcher) -> comfy.model_patcher.ModelPatcher:
    """The refiner's own patcher, attached to the DiT's patcher (``clone()`` passes it on by
    reference, so every clone finds the same one); created (and ``txt_in`` detached) on first use."""
    patcher = dit.get_attachment(REFINER_KEY)
    if patcher is None:
        refiner = dit.model.detach_refiner()
        patcher = comfy.model_patcher.ModelPatcher(refiner, load_device=dit.load_device, offload_device=dit.offload_device)
        dit.set_attachments(REFINER_KEY, patcher)
    return patcher


class HunyuanVideoDiTLoader(CheckedNode):
    CHOICES_FROM = {"dit_name": "models/diffusion_models"}
    RENAMED = {"weight_dtype": LEGACY_DTYPES}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanVideoDiTLoader",
            display_name="HunyuanVideo DiT Loader",
            category=CATEGORY,
            description="Loads the HunyuanVideo transformer from Tencent, ComfyUI or diffusers files (bf16/fp16/fp8).",
            inputs=[
                io.Combo.Input(
                    "dit_name",
                    options=folder_paths.get_filename_list("diffusion_models"),
                    tooltip="DiT weights in models/diffusion_models: Tencent .pt/.safetensors, ComfyUI "
                    "repackaged or diffusers layout (any shard of a sharded folder reads them all; a config.json "
                    "beside them sets the RoPE split); an fp8 Tencent file uses its *_map.pt scales.",
                ),
                dtype_input(
                    "weight_dtype",
                    "Storage dtype of the weights. fp8_e4m3fn halves memory: block weights stay "
                    "fp8 and are upcast one layer at a time. auto = bf16 (fp16 where bf16 is slow).",
                    extra=(FP8_LABEL,),
                ),
                io.Combo.Input(
                    "attention",
                    options=available_backends(),
                    default="auto",
                    tooltip="Attention kernel: auto picks sage, then flash, then sdpa; 'comfy' uses "
                    "ComfyUI's own choice. A backend that cannot run here is reported at load.",
                ),
            ],
            outputs=[DiT.Output(display_name="dit", tooltip="The DiT in ComfyUI's model manager.")],
        )

    @classmethod
    def execute(cls, dit_name: str, weight_dtype: str, attention: str) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise("diffusion_models", dit_name)
        load_device, offload_device = mm.get_torch_device(), mm.unet_offload_device()
        resolve_backend(attention, load_device)  # fail here, not in the middle of sampling
        dtype = plain_dtype(weight_dtype) or compute_dtype(load_device)
        fp8 = FP8 if weight_dtype == FP8_LABEL else None
        model = load_dit(path, device=offload_device, dtype=dtype, weight_dtype=fp8,
                         operations=comfy_operations(load_device))
        model.attention_backend = attention
        patcher = BlockSwapPatcher(model, load_device=load_device, offload_device=offload_device)
        record_source(patcher, path, dtype, fp8, attention)
        refiner_patcher(patcher)
        log.info("HunyuanVideo DiT %s: compute %s, attention %s, %.0f MB without txt_in",
                 dit_name, dtype, attention, patcher.model_size() / 2**20)
        return io.NodeOutput(patcher)


class HunyuanVideoTokenRefiner(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanVideoTokenRefiner",
            display_name="HunyuanVideo Token Refiner",
            category=CATEGORY,
            description="Runs the DiT's token refiner once per step of the schedule, so sampling never "
            "needs it on the device.",
            inputs=[
                DiT.Input("dit", tooltip="The DiT from HunyuanVideo DiT Loader (its token refiner is used)."),
                PromptEmbedsSocket.Input("text_embeds", tooltip="Positive (and optional negative) prompt embeddings."),
                io.Sigmas.Input(
                    "sigmas",
                    tooltip="The sampling schedule; the sampler must use the same one (it checks).",
                ),
            ],
            outputs=[Conditioning.Output(display_name="conditioning",
                                         tooltip="Refined text tokens for every step, positive and negative.")],
        )

    @classmethod
    def execute(cls, dit, text_embeds: PromptEmbeds, sigmas: torch.Tensor) -> io.NodeOutput:
        if not isinstance(text_embeds, PromptEmbeds):
            raise ValueError(f"text_embeds is a {type(text_embeds).__name__}, expected PromptEmbeds from the text encoder")
        sigmas = check_sigmas(sigmas)
        patcher = refiner_patcher(dit)
        model = dit.model
        embeds = [text_embeds.positive] + ([text_embeds.negative] if text_embeds.negative is not None else [])
        tokens = max(e.states.shape[0] * e.states.shape[1] for e in embeds)
        memory = tokens * model.config.hidden_size * 4 * 24  # activations of one refiner block, generous
        mm.load_models_gpu([patcher], memory_required=memory, force_full_load=True)
        device = patcher.load_device
        _, attn = resolve_backend(model.attention_backend, device)
        out = [
            precompute_refined_text(patcher.model, e, sigmas, device=device, dtype=model.compute_dtype, attn=attn)
            for e in embeds
        ]
        return io.NodeOutput(handed_on(RefinedConditioning(positive=out[0], negative=out[1] if len(out) > 1 else None)))


class HunyuanVideoCompile(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanVideoCompile",
            display_name="HunyuanVideo Compile (torch.compile)",
            category=CATEGORY,
            description="Compiles each DiT block with torch.compile (inductor) for the sampler. The first run "
            "compiles (minutes on a CPU); later runs at the same size reuse it.",
            inputs=[
                DiT.Input("dit", tooltip="The DiT (from the loader, Block Swap or Step Cache)."),
                io.Combo.Input("mode", options=list(COMPILE_MODES), default="default",
                               tooltip="inductor mode; max-autotune-no-cudagraphs tries more kernels (slower to "
                               "compile). CUDA-graph modes are not offered: block swap moves weights every step."),
                io.Boolean.Input("dynamic", default=False,
                                 tooltip="Compile for any size (slower code). Off: one compile per video size."),
                io.Int.Input("recompile_limit", default=8, min=1, max=64,
                             tooltip="Compiles per block kind before torch gives up and runs it eagerly (with a "
                             "warning in the log): a new video size or prompt-mask layout costs one."),
                io.Boolean.Input("eager_fallback", default=True,
                                 tooltip="Where compile cannot run (no C++ compiler on the CPU, no Triton on CUDA, "
                                 "another device): log why and run uncompiled. Off: the job fails with that reason."),
            ],
            outputs=[DiT.Output(display_name="dit", tooltip="A clone of the DiT carrying the compile settings.")],
        )

    @classmethod
    def execute(cls, dit, mode, dynamic, recompile_limit, eager_fallback) -> io.NodeOutput:
        settings = CompileSettings(mode, dynamic, recompile_limit, eager_fallback)
        if not usable(settings, dit.load_device):
            return io.NodeOutput(dit)
        return io.NodeOutput(with_option(dit, COMPILE_KEY, settings))


NODES = [HunyuanVideoDiTLoader, HunyuanVideoTokenRefiner, HunyuanVideoCompile]

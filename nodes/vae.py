"""VAE stage nodes: load the causal 3D VAE, decode LATENT -> IMAGE and encode IMAGE -> LATENT.

LATENT holds raw VAE latents ``{"samples": [B, 16, T, H/8, W/8]}`` (ComfyUI's convention for
HunyuanVideo), so native latents decode here and ours decode through native nodes.
"""

from __future__ import annotations

import logging

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io
from einops import rearrange

from ..hunyuan.vae import tiled
from ..hunyuan.vae.loader import load_vae
from ..hunyuan.vae.tiling import MEASURED_DB, MEASURED_SHARED_TIME, TileSpec, auto_choice, estimate_peak
from .common import LEGACY_DTYPES, dtype_input, plain_dtype, progress_bar
from .types import CATEGORY, VAE, CheckedNode

log = logging.getLogger(__name__)

TILE_MODES = ("auto", "custom", "off")


def _tiling_inputs() -> list:
    db = MEASURED_DB
    return [
        io.Combo.Input(
            "tiling",
            options=list(TILE_MODES),
            default="auto",
            tooltip="auto: from the device's free memory, the most accurate tiles, chunk and shared_norm that fit "
            "(by the accuracies measured below; the log says what and why); custom: the sizes below; "
            "off: whole video in one piece (exact, most memory). Out of memory always retries smaller.",
        ),
        io.Int.Input("tile_size", default=256, min=64, max=4096, step=8,
                     tooltip="custom: spatial tile side in output pixels (multiple of 8). Spatial tiles are never "
                     f"exact: on one 5-frame 192x192 benchmark video, 128 px tiles with 32 px overlap measured "
                     f"{db['tiles_shared']:.1f} dB PSNR vs untiled with shared_norm, {db['tiles_per_tile']:.1f} dB "
                     "without."),
        io.Int.Input("tile_overlap", default=64, min=0, max=2048, step=8,
                     tooltip="custom: overlap between neighbouring tiles in output pixels; blended."),
        io.Int.Input("temporal_chunk", default=2, min=0, max=256,
                     tooltip="custom: latent frames per chunk (1 latent frame = 4 video frames); 0 = all. Smaller "
                     "chunks use less memory. The causal convolutions carry their state across chunks exactly; the "
                     "GroupNorm statistics do not: on one 5-frame benchmark video, whole frames in chunks of 1 measured "
                     f"{db['frames_shared']:.1f} dB PSNR vs untiled with shared_norm and one statistics pass, "
                     f"{db['frames_per_chunk']:.1f} dB without, exact with norm_passes 0."),
        io.Boolean.Input("shared_norm", default=True,
                         tooltip="custom: normalise every tile and chunk with statistics recorded over the whole video "
                         "in statistics passes over tiles without overlap (see norm_passes): fewer seams between spatial "
                         "tiles (measured above), no gain for whole-frame chunks at one pass. Costs time: one pass "
                         "is about one more untiled decode, measured "
                         f"{MEASURED_SHARED_TIME:.2f}x the time of per-tile statistics at 128 px tiles."),
        io.Int.Input("norm_passes", default=1, min=0, max=64, optional=True,
                     tooltip="With shared_norm: statistics passes before the output pass. Pass k makes the k-th "
                     "GroupNorm's statistics exact with whole frames (the others are recorded with per-piece "
                     "normalisation); passes before the last stop at their norm. 0 = one per norm (19 in the "
                     "released decoder's tiled part; the mid block and first up block run whole, exact): exact with "
                     "whole frames. Each pass costs up to one decode's time (less for "
                     "the early, low-resolution norms). Spatial tiles stay approximate whatever the count."),
    ]


def _load_with_tiles(patcher, shape, tiling: str, tile_size: int, tile_overlap: int, chunk: int, shared: bool,
                     passes: int):
    """Load the VAE through ComfyUI's manager (asking for the working memory) and pick the tiles."""
    model = patcher.model
    widest, size = model.config.block_channels[0], model.weight_device_dtype()[1].itemsize
    if tiling == "off":
        spec = None
    elif tiling == "custom":
        tile = tile_size // 8
        spec = TileSpec(tile=tile, overlap=min(tile_overlap // 8, max(tile - 1, 0)), chunk=chunk, shared_norm=shared,
                        norm_passes=passes)
    else:
        spec = TileSpec(tile=32, overlap=8, chunk=2)  # a floor to ask memory for
    need = estimate_peak(spec or TileSpec(tile=0, chunk=0), shape, widest, size)
    mm.load_models_gpu([patcher], memory_required=need)
    if tiling == "auto":
        free = mm.get_free_memory(patcher.load_device)
        spec, why = auto_choice(free, shape, widest, size, norm_passes=passes)
        log.info("VAE auto tiling for %s with %.0f MB free: %s", tuple(shape), free / 2**20, why)
    return spec


def _run_tiled(run, vae, x: torch.Tensor, shape, tiling: tuple, **extra) -> torch.Tensor:
    """Load the VAE, pick the tiles for a latent of ``shape`` and run ``run`` (tiled.decode or
    tiled.encode) on ``x`` with a progress bar and the interrupt check."""
    spec = _load_with_tiles(vae, shape, *tiling)
    return run(vae.model, x, spec, progress=progress_bar(1), interrupt=mm.throw_exception_if_processing_interrupted,
               **extra)


class HunyuanVideoVAELoader(CheckedNode):
    CHOICES_FROM = {"vae_name": "models/vae"}
    RENAMED = {"dtype": LEGACY_DTYPES}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanVideoVAELoader",
            display_name="HunyuanVideo VAE Loader",
            category=CATEGORY,
            description="Loads HunyuanVideo's causal 3D VAE (Tencent/diffusers or ComfyUI layout).",
            inputs=[
                io.Combo.Input("vae_name", options=folder_paths.get_filename_list("vae"),
                               tooltip="VAE weights in models/vae (.safetensors, or .pt read weights-only)."),
                dtype_input("dtype", "Compute dtype. auto: ComfyUI's VAE dtype for the device (bf16 where fast)."),
            ],
            outputs=[VAE.Output(display_name="vae", tooltip="The VAE in ComfyUI's model manager.")],
        )

    @classmethod
    def execute(cls, vae_name: str, dtype: str) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise("vae", vae_name)
        load_device, offload_device = mm.vae_device(), mm.vae_offload_device()
        chosen = plain_dtype(dtype) or mm.vae_dtype(load_device, [torch.bfloat16, torch.float32])
        model = load_vae(path, device=offload_device, dtype=chosen)
        patcher = comfy.model_patcher.ModelPatcher(model, load_device=load_device, offload_device=offload_device)
        log.info("HunyuanVideo VAE %s: %s, %s", vae_name, model.config.block_channels, chosen)
        return io.NodeOutput(patcher)


class HunyuanVideoVAEDecode(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanVideoVAEDecode",
            display_name="HunyuanVideo VAE Decode",
            category=CATEGORY,
            description="Decodes raw HunyuanVideo latents to frames, tiled in space and time.",
            inputs=[
                VAE.Input("vae", tooltip="From HunyuanVideo VAE Loader."),
                io.Latent.Input("samples", tooltip="Raw VAE latents [B, 16, T, H/8, W/8] (sampler output "
                                "or native HunyuanVideo LATENT); decodes to 4*(T-1)+1 frames."),
                *_tiling_inputs(),
            ],
            outputs=[io.Image.Output(display_name="images", tooltip="Frames [B*frames, H, W, 3] in 0..1.")],
        )

    @classmethod
    def execute(cls, vae, samples, tiling, tile_size, tile_overlap, temporal_chunk, shared_norm,
                norm_passes=1) -> io.NodeOutput:
        latent = samples["samples"]
        channels = vae.model.config.latent_channels
        if latent.ndim != 5 or latent.shape[1] != channels:
            raise ValueError(
                f"samples has shape {tuple(latent.shape)}; the HunyuanVideo VAE expects video latents "
                f"[B, {channels}, T, H/8, W/8] (an image-model LATENT or another video model's cannot be decoded)"
            )
        tiles = (tiling, tile_size, tile_overlap, temporal_chunk, shared_norm, norm_passes)
        video = _run_tiled(tiled.decode, vae, latent, latent.shape, tiles, out_device=mm.intermediate_device())
        return io.NodeOutput(rearrange(video.add_(1).div_(2).clamp_(0, 1), "b c t h w -> (b t) h w c"))


class HunyuanVideoVAEEncode(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanVideoVAEEncode",
            display_name="HunyuanVideo VAE Encode",
            category=CATEGORY,
            description="Encodes frames (4k+1 of them) to raw HunyuanVideo latents, for video-to-video.",
            inputs=[
                VAE.Input("vae", tooltip="From HunyuanVideo VAE Loader."),
                io.Image.Input("pixels", tooltip="Frames [frames, H, W, 3] in 0..1; frames must be 4k+1 "
                               "and H, W multiples of 8."),
                *_tiling_inputs(),
            ],
            outputs=[io.Latent.Output(display_name="latent", tooltip="Raw latents [1, 16, k+1, H/8, W/8].")],
        )

    @classmethod
    def execute(cls, vae, pixels, tiling, tile_size, tile_overlap, temporal_chunk, shared_norm,
                norm_passes=1) -> io.NodeOutput:
        frames, height, width = pixels.shape[:3]
        config = vae.model.config
        config.check_frames(frames, name="pixels: frames")
        s = config.spatial_ratio
        if height % s or width % s:
            raise ValueError(f"pixels is {width}x{height}; width and height must be multiples of {s}")
        video = rearrange(pixels[..., :3], "t h w c -> 1 c t h w").mul(2).sub(1)
        shape = (1, config.latent_channels, config.latent_frames(frames), height // s, width // s)
        tiles = (tiling, tile_size, tile_overlap, temporal_chunk, shared_norm, norm_passes)
        latent = _run_tiled(tiled.encode, vae, video, shape, tiles)
        return io.NodeOutput({"samples": latent.to(mm.intermediate_device(), torch.float32)})


NODES = [HunyuanVideoVAELoader, HunyuanVideoVAEDecode, HunyuanVideoVAEEncode]

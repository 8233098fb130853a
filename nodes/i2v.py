"""Image-to-video: the node that turns the input image into the first frame the sampler needs.

How the first frame enters sampling (token replace, concat with or without mask) is decided at
the sampler, which knows the DiT: see ``hunyuan/sampling/image.py``.
"""

from __future__ import annotations

import logging

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.latest import io

from ..hunyuan.sampling import check_video_size
from ..hunyuan.sampling.image import I2V_RESOLUTIONS, MODES, FirstFrame, ImageInput, bucket_for, resolve
from ..hunyuan.sampling.pipeline import MODEL_LATENT_SCALE
from .common import size_input
from .types import CATEGORY, VAE, CheckedNode, ImageLatent

log = logging.getLogger(__name__)

MODE_TOOLTIP = (
    "Only for 16-channel DiTs, whose file cannot say whether it is text-to-video or HunyuanVideo-I2V "
    "token replace (the fixed 'v2' I2V weights): token_replace = latent frame 0 is the image at every step "
    "(pick this for hunyuan_video_v2_replace_image_to_video); t2v = ignore the image (a T2V DiT). "
    "33-channel (I2V v1 concat) and 32-channel (SkyReels-V1) DiTs take the image their own way and "
    "ignore this. Picking t2v for I2V weights gives a video that ignores the image."
)


def rgb(image: torch.Tensor) -> torch.Tensor:
    """[B, H, W, C] -> [B, H, W, 3]: grayscale repeated, alpha dropped (as PIL's convert('RGB'))."""
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image has shape {tuple(image.shape)}; expected [B, H, W, C] with C = 1, 3 or 4")
    if image.shape[-1] == 1:
        return image.expand(-1, -1, -1, 3)
    return image[..., :3]


def fit(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[1, H, W, 3] -> [1, 3, height, width]: scaled to cover the video, center-cropped (bilinear)."""
    src_h, src_w = image.shape[1:3]
    if src_w < width or src_h < height:
        log.warning("image is %dx%d, smaller than the %dx%d video: upscaled (as the references do)",
                    src_w, src_h, width, height)
    return comfy.utils.common_upscale(image.movedim(-1, 1), width, height, "bilinear", "center")


class HunyuanVideoI2VEncode(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanVideoI2VEncode",
            display_name="HunyuanVideo I2V Encode",
            category=CATEGORY,
            description="Image-to-video: encodes the start image with the VAE for the sampler's image input. "
            "Works with HunyuanVideo-I2V (token replace 'v2', concat 'v1') and SkyReels-V1 DiTs. For "
            "HunyuanVideo-I2V connect the same image to Text Encode's image input too (the text reads it).",
            inputs=[
                VAE.Input("vae", tooltip="From HunyuanVideo VAE Loader."),
                io.Image.Input("image", tooltip="The first frame. Only the first image of a batch is used; "
                               "grayscale is repeated to RGB, alpha is dropped."),
                size_input("width", 848, "Video width (the sampler's). The image is scaled to cover width x height "
                           "keeping its aspect ratio, then center-cropped (Tencent: resize + center crop to "
                           "its bucket; diffusers stretches instead). Pick a size with the image's aspect."),
                size_input("height", 480, "Video height (the sampler's); see width for the resize rule."),
                io.Combo.Input("mode", options=list(MODES), default="token_replace", tooltip=MODE_TOOLTIP),
                io.Boolean.Input("stability", default=False,
                                 tooltip="Start from 0.999 x noise + 0.001 x image latent instead of pure noise "
                                 "(Tencent's --i2v-stability; diffusers always does this). Steadier motion."),
            ],
            outputs=[ImageLatent.Output(display_name="image_latent",
                                           tooltip="The encoded first frame: connect to the sampler's image input.")],
        )

    @classmethod
    def execute(cls, vae, image, width, height, mode, stability) -> io.NodeOutput:
        check_video_size(width, height, 1)
        if image.shape[0] > 1:
            log.info("HunyuanVideo I2V: %d images given, the first is the start frame", image.shape[0])
        pixels = fit(rgb(image[:1]).float(), width, height)
        mm.load_models_gpu([vae])
        with torch.inference_mode():
            mean, std = vae.model.posterior(pixels.mul(2).sub(1).unsqueeze(2))
        out = mm.intermediate_device()
        return io.NodeOutput(FirstFrame(mean.to(out, torch.float32), std.to(out, torch.float32), mode, stability))


class HunyuanVideoI2VSize(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanVideoI2VSize",
            display_name="HunyuanVideo I2V Size",
            category=CATEGORY,
            description="The video size HunyuanVideo-I2V uses for an image: Tencent's bucket with the closest "
            "aspect ratio at the chosen resolution. Connect width and height to I2V Encode and the sampler.",
            inputs=[
                io.Image.Input("image", tooltip="The start image (its first image's aspect ratio is used)."),
                io.Combo.Input("resolution", options=list(I2V_RESOLUTIONS), default="720p",
                               tooltip="Tencent's --i2v-resolution: buckets of about 960x960 (720p), 720x720 "
                               "(540p) or 480x480 (360p) pixels, sides multiples of 32, e.g. 1248x704 for a "
                               "16:9 image at 720p."),
            ],
            outputs=[io.Int.Output(display_name="width", tooltip="Video width."),
                     io.Int.Output(display_name="height", tooltip="Video height.")],
        )

    @classmethod
    def execute(cls, image, resolution) -> io.NodeOutput:
        height, width = bucket_for(image.shape[1], image.shape[2], resolution)
        log.info("HunyuanVideo I2V Size: %dx%d image -> %dx%d video (%s bucket)",
                 image.shape[2], image.shape[1], width, height, resolution)
        return io.NodeOutput(width, height)


def image_input(dit, first, seed: int, shape: tuple[int, ...]) -> ImageInput | None:
    """The sampler's image input resolved against its DiT, with a log line saying what was done."""
    if first is not None and not isinstance(first, FirstFrame):
        raise ValueError(f"image_latent is a {type(first).__name__}, expected the output of HunyuanVideo I2V Encode")
    config = dit.model.config
    resolved = resolve(config.image_input, first, scale=MODEL_LATENT_SCALE, seed=seed, latent_hw=shape[-2:])
    if first is not None:
        how = resolved.how if resolved is not None else "ignored (mode t2v)"
        log.info("HunyuanVideo I2V: DiT with %s; image %s", config.describe(), how)
    return resolved


NODES = [HunyuanVideoI2VEncode, HunyuanVideoI2VSize]

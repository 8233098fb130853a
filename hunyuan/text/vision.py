"""The LLaVA vision path: CLIP ViT-L/14-336 tower + multi-modal projector, for image-to-video text.

HunyuanVideo-I2V's text encoder is the full LLaVA-Llama-3: the image is cut into 14-pixel
patches (336 px -> 24 x 24 = 576 patches), the tower's second-to-last hidden state (class token
dropped) goes through the projector (Linear, GELU, Linear) into the LLM's width, and those 576
vectors take the place of the template's ``<image>`` token (see :mod:`.encode_image`).

Layouts (weights are memory-mapped, as for the LLM):

* the full LLaVA folder (Tencent's ``text_encoder_i2v``, xtuner's ``llava-llama-3-8b-v1_1-transformers``):
  ``vision_tower.vision_model.*`` + ``multi_modal_projector.*`` (``model.``-prefixed with
  transformers 4.52+), the tower's config in ``config.json``'s ``vision_config``;
* ComfyUI's ``models/clip_vision/llava_llama3_vision.safetensors``: ``vision_model.*`` +
  ``multi_modal_projector.*`` (its ``visual_projection`` is CLIP's own head, unused here).

Image preprocessing is transformers' ``CLIPImageProcessor`` with the values the LLaVA folders'
``preprocessor_config.json`` hold (shortest side to 336 bicubic, center crop, CLIP mean/std), the
processor Tencent and diffusers run.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import init_empty_weights
from PIL import Image
from torch import nn
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from ..checkpoint_io import CheckpointError, open_state_dict
from .dtypes import DtypeChoice, resolve
from .layouts import FoundWeights, is_llava_config, read_config, weight_files
from .loader import _FILE_FIELDS, _assign, _heads_for

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# CLIP ViT-L/14-336 as LLaVA-Llama-3 uses it; shapes are re-read from the weights.
CLIP_VIT_L_336 = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336,
    patch_size=14, num_channels=3, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
)
FEATURE_LAYER = -2  # LLaVA's vision_feature_layer: the tower's second-to-last hidden state
TOWER_ANCHOR = "embeddings.patch_embedding.weight"
# (tower prefix, projector prefix) of each layout; the tower's own names start with "vision_model.".
PREFIXES = (("vision_tower.", "multi_modal_projector."), ("model.vision_tower.", "model.multi_modal_projector."),
            ("", "multi_modal_projector."))


@dataclass
class FoundVision:
    """The tower's tensors (``vision_model.*``) with its config, the projector's (``linear_1.*``, ``linear_2.*``)."""

    tower: FoundWeights
    projector: dict[str, torch.Tensor]
    feature_layer: int = FEATURE_LAYER


def _is_vision_key(key: str) -> bool:
    return "vision_tower." in key or "multi_modal_projector." in key or key.startswith("vision_model.")


def _split(raw: dict[str, torch.Tensor], source: Path) -> tuple[dict, dict]:
    for tower, projector in PREFIXES:
        if f"{tower}vision_model.{TOWER_ANCHOR}" in raw and f"{projector}linear_1.weight" in raw:
            towers = {k[len(tower):]: v for k, v in raw.items()
                      if k.startswith(tower + "vision_model.") and not k.endswith("position_ids")}
            projs = {k[len(projector):]: v for k, v in raw.items() if k.startswith(projector)}
            return towers, projs
    sample = ", ".join(sorted(raw)[:4]) or "no tensors"
    raise CheckpointError(
        f"checkpoint {str(source)!r} has no LLaVA vision tower and projector: no 'vision_model.{TOWER_ANCHOR}' + "
        f"'multi_modal_projector.linear_1.weight' keys (found e.g. {sample}); expected the full LLaVA-Llama-3 "
        "folder (Tencent's text_encoder_i2v) or ComfyUI's clip_vision/llava_llama3_vision.safetensors"
    )


def find_vision(path: str | Path) -> FoundVision:
    """Vision tower + projector from a full LLaVA folder or ComfyUI's llava_llama3_vision file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"vision source {str(path)!r} does not exist (expected a LLaVA folder or a .safetensors file)")
    config, layer = None, FEATURE_LAYER
    if path.is_dir():
        llava = read_config(path)
        if not is_llava_config(llava) or "vision_config" not in llava:
            raise CheckpointError(
                f"folder {str(path)!r} is not a full LLaVA checkpoint (its config.json has no 'vision_config'); "
                "the vision tower comes from Tencent's text_encoder_i2v folder or a models/clip_vision file"
            )
        config, layer = llava["vision_config"], llava.get("vision_feature_layer", FEATURE_LAYER)
        if llava.get("vision_feature_select_strategy", "default") != "default":
            raise CheckpointError(f"LLaVA folder {str(path)!r}: vision_feature_select_strategy "
                                  f"{llava['vision_feature_select_strategy']!r} is not supported; expected 'default'")
        files = weight_files(path, wanted=_is_vision_key)
    else:
        files = [path]
    raw: dict[str, torch.Tensor] = {}
    for file in files:
        raw.update({k: v for k, v in open_state_dict(file).items() if _is_vision_key(k)})
    tower, projector = _split(raw, path)
    log.info("LLaVA vision weights: %d tower + %d projector tensors from %d file(s) under %s",
             len(tower), len(projector), len(files), path)
    return FoundVision(FoundWeights(path, tower, config, {}, files), projector, layer)


def vision_fields(found: FoundWeights) -> dict:
    """The tower's config fields, every shape re-read from the weights."""
    sd = found.tensors
    base = {**CLIP_VIT_L_336, **(found.config or {})}
    hidden, _, patch, _ = sd["vision_model." + TOWER_ANCHOR].shape
    side = math.isqrt(sd["vision_model.embeddings.position_embedding.weight"].shape[0] - 1)
    if found.config is None or "num_attention_heads" not in found.config:
        base["num_attention_heads"] = _heads_for(hidden, 64)
    base.update(
        hidden_size=hidden, patch_size=patch, image_size=side * patch,
        num_hidden_layers=1 + max(int(k.split(".")[3]) for k in sd if k.startswith("vision_model.encoder.layers.")),
        intermediate_size=sd["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0],
    )
    return {k: v for k, v in base.items() if k not in _FILE_FIELDS}


class Projector(nn.Module):
    """LLaVA's multi-modal projector: Linear, GELU (exact), Linear, into the LLM's width."""

    def __init__(self, vision_hidden: int, text_hidden: int):
        super().__init__()
        self.linear_1 = nn.Linear(vision_hidden, text_hidden)
        self.linear_2 = nn.Linear(text_hidden, text_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(nn.functional.gelu(self.linear_1(x)))


class LlavaVision(nn.Module):
    """pixel values [B, 3, S, S] -> image tokens [B, (S / patch)^2, LLM hidden]."""

    def __init__(self, tower: CLIPVisionModel, projector: Projector, feature_layer: int = FEATURE_LAYER):
        super().__init__()
        self.tower, self.projector, self.feature_layer = tower, projector, feature_layer

    @property
    def image_size(self) -> int:
        return self.tower.config.image_size

    @property
    def tokens(self) -> int:
        return (self.tower.config.image_size // self.tower.config.patch_size) ** 2

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = self.projector.linear_1.weight.dtype
        out = self.tower(pixel_values=pixel_values.to(dtype), output_hidden_states=True)
        return self.projector(out.hidden_states[self.feature_layer][:, 1:])  # class token dropped


def build_vision(found: FoundVision, dtype: DtypeChoice) -> LlavaVision:
    """The tower in the compute dtype (fp8 storage is not worth it for 0.3B params), on the CPU."""
    key = "vision_model." + TOWER_ANCHOR
    dtype = resolve(dtype, found.tower.tensors[key].dtype)
    dtype = DtypeChoice(dtype.compute, dtype.compute)
    config = CLIPVisionConfig(**vision_fields(found.tower))
    config._attn_implementation = "sdpa"
    with init_empty_weights():
        tower = CLIPVisionModel(config)
        projector = Projector(config.hidden_size, found.projector["linear_2.weight"].shape[0])
    _assign(tower, found.tower, dtype, set(), "vision tower", "vision_model.", TOWER_ANCHOR)
    projector_found = FoundWeights(found.tower.source, dict(found.projector))
    _assign(projector, projector_found, dtype, set(), "multi-modal projector", "", "linear_1.weight")
    return LlavaVision(tower, projector, found.feature_layer).eval().requires_grad_(False)


def load_vision(path: str | Path, dtype: DtypeChoice) -> LlavaVision:
    return build_vision(find_vision(path), dtype)


def image_processor(size: int) -> CLIPImageProcessor:
    """LLaVA's preprocessing: shortest side to ``size`` (bicubic), center crop, CLIP mean/std."""
    return CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": size}, resample=Image.BICUBIC, do_center_crop=True,
        crop_size={"height": size, "width": size}, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD), do_convert_rgb=True,
    )


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """ComfyUI IMAGE [B, H, W, C] in 0..1 (C = 1, 3 or 4) -> 8-bit RGB images, as the processor reads files."""
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"image has shape {tuple(images.shape)}; expected [B, H, W, C] with C = 1, 3 or 4")
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    return [Image.fromarray(np.repeat(p, 3, axis=-1) if p.shape[-1] == 1 else p[..., :3]) for p in pixels]


def pixel_values(images: torch.Tensor, size: int) -> torch.Tensor:
    """ComfyUI IMAGE -> the tower's input [B, 3, size, size] float32."""
    return image_processor(size)(to_pil(images), return_tensors="pt")["pixel_values"]

"""Text-encoder nodes: load LLaVA-Llama-3 + CLIP-L, encode prompts, bridge native CONDITIONING.

The model code is in ``hunyuan/text``; this module finds files in ComfyUI's model folders,
passes ComfyUI's shipped tokenizer folders for single-file checkpoints, and runs the encoders
through ComfyUI's model management.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import comfy.model_management as mm
import comfy.model_patcher
import comfy.sd1_clip
import folder_paths
import torch
from comfy_api.latest import io

from ..hunyuan.conditioning import PromptEmbeds, TextEmbeds
from ..hunyuan.text import (
    DTYPE_CHOICES,
    TEMPLATE_NAMES,
    EncodeOptions,
    TextEncoders,
    encode_prompts,
    encode_prompts_image,
    get_template,
    image_template,
    load_clip,
    load_clip_tokenizer,
    load_llm,
    load_llm_tokenizer,
    load_vision,
    parse_dtype,
)
from .common import LLM_FOLDER, handed_on, hf_folders, loaded
from .types import CATEGORY, CheckedNode, PromptEmbedsSocket, TextEncoder

log = logging.getLogger(__name__)

TE_FOLDER, VISION_FOLDER = "text_encoders", "clip_vision"  # "clip" is an alias of text_encoders in ComfyUI
NO_VISION, VISION_FROM_LLM = "none", "from llm (full LLaVA folder)"
COMFY_DIR = Path(os.path.dirname(os.path.realpath(comfy.sd1_clip.__file__)))
LLAMA_TOKENIZER = COMFY_DIR / "text_encoders" / "llama_tokenizer"
CLIP_TOKENIZER = COMFY_DIR / "sd1_tokenizer"


def _single_files() -> list[str]:
    """text_encoders/clip files that are not inside an HF folder."""
    folders = set(hf_folders(TE_FOLDER))
    return [f for f in folder_paths.get_filename_list(TE_FOLDER) if f.replace("\\", "/").split("/")[0] not in folders]


def llm_sources() -> list[str]:
    return sorted(hf_folders(LLM_FOLDER)) + _single_files()


def clip_sources() -> list[str]:
    return sorted(hf_folders(TE_FOLDER)) + _single_files()


def vision_sources() -> list[str]:
    return [NO_VISION, VISION_FROM_LLM] + folder_paths.get_filename_list(VISION_FOLDER)


def _vision_path(vision: str, llm_path: Path) -> Path | None:
    if vision == NO_VISION:
        return None
    if vision == VISION_FROM_LLM:
        return llm_path
    path = folder_paths.get_full_path(VISION_FOLDER, vision)
    if path is None:
        raise ValueError(f"vision={vision!r} is not a file in models/{VISION_FOLDER}; expected "
                         f"{NO_VISION!r}, {VISION_FROM_LLM!r} or a file such as llava_llama3_vision.safetensors")
    return Path(path)


def _resolve(name: str, folders: dict[str, Path], what: str) -> Path:
    if name in folders:
        return folders[name]
    path = folder_paths.get_full_path(TE_FOLDER, name)
    if path is None:
        raise ValueError(f"{what}={name!r} is neither a model folder nor a file in models/{TE_FOLDER}")
    return Path(path)


def _tokenizer_dir(source: Path, needed: str, fallback: Path) -> Path:
    """An HF folder's own tokenizer when it has one, else the one ComfyUI ships."""
    return source if source.is_dir() and (source / needed).is_file() else fallback


class HeldModel(torch.nn.Module):
    """Holds an HF model for ModelPatcher (which writes attributes such as ``device`` on it)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner


@dataclass
class LoadedTextEncoder:
    """What travels on the HYVID_TEXT_ENCODER socket."""

    llm: comfy.model_patcher.ModelPatcher
    clip: comfy.model_patcher.ModelPatcher
    llm_tokenizer: object
    clip_tokenizer: object
    vision: comfy.model_patcher.ModelPatcher | None = None  # LLaVA's vision tower + projector, for I2V


def _patcher(model: torch.nn.Module) -> comfy.model_patcher.ModelPatcher:
    return comfy.model_patcher.ModelPatcher(
        HeldModel(model), load_device=mm.text_encoder_device(), offload_device=mm.text_encoder_offload_device())


class HunyuanVideoTextEncoderLoader(CheckedNode):
    CHOICES_FROM = {"llm": f"models/{LLM_FOLDER} and models/{TE_FOLDER}", "clip": f"models/{TE_FOLDER}",
                    "vision": f"models/{VISION_FOLDER}"}

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanVideoTextEncoderLoader",
            display_name="HunyuanVideo Text Encoder Loader",
            category=CATEGORY,
            description="Loads the LLaVA-Llama-3 language model and CLIP-L from any layout (HF folder, full "
                        "LLaVA checkpoint, ComfyUI single files), and for image-to-video LLaVA's vision tower.",
            inputs=[
                io.Combo.Input("llm", options=llm_sources(),
                               tooltip="models/LLM folder (text-encoder split or the full LLaVA-Llama-3 "
                                       "checkpoint) or a models/text_encoders file such as llava_llama3_fp16."),
                io.Combo.Input("clip", options=clip_sources(),
                               tooltip="CLIP-L: a models/clip HF folder or a file such as clip_l.safetensors."),
                io.Combo.Input("dtype", options=list(DTYPE_CHOICES), default="auto",
                               tooltip="Weight storage. auto keeps the file's dtype (no copy in RAM); fp8 "
                                       "stores LLM linear weights in float8 and computes in bf16/fp16."),
                io.Combo.Input("vision", options=vision_sources(), default=NO_VISION, optional=True,
                               tooltip="Image-to-video only: LLaVA's vision tower, so the prompt is encoded "
                                       "together with the start image. 'from llm' reads it from a full LLaVA "
                                       "folder (Tencent's text_encoder_i2v); or pick ComfyUI's "
                                       "clip_vision/llava_llama3_vision.safetensors. none = text-to-video."),
            ],
            outputs=[TextEncoder.Output(display_name="text_encoder")],
        )

    @classmethod
    def execute(cls, llm: str, clip: str, dtype: str, vision: str = NO_VISION) -> io.NodeOutput:
        choice = parse_dtype(dtype)
        llm_path = _resolve(llm, hf_folders(LLM_FOLDER), "llm")
        clip_path = _resolve(clip, hf_folders(TE_FOLDER), "clip")
        vision_path = _vision_path(vision, llm_path)
        llm_tok = load_llm_tokenizer(_tokenizer_dir(llm_path, "tokenizer.json", LLAMA_TOKENIZER))
        clip_tok = load_clip_tokenizer(_tokenizer_dir(clip_path, "vocab.json", CLIP_TOKENIZER))
        tower = None if vision_path is None else _patcher(load_vision(vision_path, choice))
        encoder = LoadedTextEncoder(_patcher(load_llm(llm_path, choice)), _patcher(load_clip(clip_path, choice)),
                                    llm_tok, clip_tok, tower)
        return io.NodeOutput(encoder)


def _memory_required(encoder: LoadedTextEncoder, batch: int) -> int:
    config = encoder.llm.model.inner.config
    image_tokens = 0 if encoder.vision is None else encoder.vision.model.inner.tokens
    tokens = batch * (256 + 128 + image_tokens)  # prompt budget + template (+ the image's tokens)
    return tokens * (config.intermediate_size * 3 + config.hidden_size * 6) * 4 + (64 << 20)


def run_encode(encoder: LoadedTextEncoder, prompts: list[str], options: EncodeOptions,
               negative: list[str] | None, image: torch.Tensor | None = None, interleave: int = 4) -> PromptEmbeds:
    """Load the encoders through ComfyUI's manager, encode, return embeds on the intermediate device.

    With ``image`` the vision tower is loaded too (only then), and offloaded with the others after."""
    batch = len(prompts) * (2 if negative else 1)
    patchers = [encoder.llm, encoder.clip] + ([encoder.vision] if image is not None else [])
    with loaded(patchers, _memory_required(encoder, batch)) as device:
        models = TextEncoders(encoder.llm.model.inner, encoder.llm_tokenizer, encoder.clip.model.inner,
                              encoder.clip_tokenizer)
        if image is None:
            embeds = encode_prompts(models, prompts, options, device, negative=negative)
        else:
            embeds = encode_prompts_image(models, encoder.vision.model.inner, prompts, image, options, interleave,
                                          device, negative=negative)
    return handed_on(embeds)


class HunyuanVideoTextEncode(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanVideoTextEncode",
            display_name="HunyuanVideo Text Encode",
            category=CATEGORY,
            description="Encodes a prompt (and an optional negative prompt for true CFG) into LLM states + "
                        "mask and the CLIP-L pooled vector. The prompt gets the full 256 LLM tokens after "
                        "the template; longer prompts are truncated with a warning in the log. One prompt "
                        "per node (batches of prompts: hunyuan.text.encode_prompts).",
            inputs=[
                TextEncoder.Input("text_encoder", tooltip="From HunyuanVideo Text Encoder Loader."),
                io.String.Input("prompt", multiline=True, dynamic_prompts=True,
                                tooltip="What the video shows. Up to 256 LLM tokens and 77 CLIP tokens are used."),
                io.String.Input("negative_prompt", multiline=True, default="", optional=True,
                                tooltip="For true CFG only. Empty = no negative embeds."),
                io.Combo.Input("template", options=list(TEMPLATE_NAMES), default="video",
                               tooltip="video/image: Tencent's prompt templates; video_i2v: Tencent's image-to-video "
                                       "template (used for 'video' when an image is connected); custom: use "
                                       "custom_template (with an image it needs '<image>' before the {})."),
                io.String.Input("custom_template", multiline=True, default="",
                                tooltip="Used when template=custom: chat text with one {} where the prompt goes. "
                                        "The crop offset is measured with the tokenizer."),
                io.Int.Input("hidden_state_skip_layer", default=2, min=0, max=31,
                             tooltip="Take the LLM hidden state this many layers below the top (2 = "
                                     "hidden_states[-3], what HunyuanVideo was trained with)."),
                io.Boolean.Input("apply_final_norm", default=False,
                                 tooltip="Apply the LLM's final RMSNorm to the chosen hidden state (off for "
                                         "HunyuanVideo)."),
                io.Image.Input("image", optional=True,
                               tooltip="Image-to-video (HunyuanVideo-I2V): the start image, read by LLaVA's vision "
                                       "tower (set the loader's vision input) so the text sees it. Resized: "
                                       "shortest side to 336, center crop. The video template becomes video_i2v; "
                                       "a negative prompt is encoded with a black image. Leave empty for "
                                       "text-to-video and SkyReels-V1 (which encodes text only)."),
                io.Int.Input("image_interleave", default=4, min=1, max=16, optional=True,
                             tooltip="Keep every n-th of the image's 576 tokens: 4 for the token-replace DiT "
                                     "(I2V 'v2', Tencent's default), 2 for the concat DiT ('v1'). Only used with "
                                     "an image. The negative prompt always uses 2, as Tencent and diffusers do."),
            ],
            outputs=[PromptEmbedsSocket.Output(display_name="text_embeds")],
        )

    @classmethod
    def execute(cls, text_encoder: LoadedTextEncoder, prompt: str, template: str, custom_template: str,
                hidden_state_skip_layer: int, apply_final_norm: bool, negative_prompt: str = "",
                image: torch.Tensor | None = None, image_interleave: int = 4) -> io.NodeOutput:
        chosen = get_template(template, custom_template)
        negative = [negative_prompt] if negative_prompt.strip() else None
        if image is None:
            if chosen.takes_image:
                raise ValueError(f"template={template!r} has an '<image>' place but no image is connected; "
                                 "connect the start image or use the video template")
            return io.NodeOutput(run_encode(text_encoder, [prompt], EncodeOptions(
                chosen, hidden_state_skip_layer, apply_final_norm), negative))
        if text_encoder.vision is None:
            raise ValueError("image is connected but the text encoder has no vision tower; set the HunyuanVideo "
                             f"Text Encoder Loader's vision to {VISION_FROM_LLM!r} (a full LLaVA folder) or to "
                             f"models/{VISION_FOLDER}/llava_llama3_vision.safetensors")
        if image.shape[0] > 1:
            log.info("HunyuanVideo Text Encode: %d images given, the first is read with the prompt", image.shape[0])
        options = EncodeOptions(image_template(chosen), hidden_state_skip_layer, apply_final_norm)
        return io.NodeOutput(run_encode(text_encoder, [prompt], options, negative, image[:1], image_interleave))


def conditioning_to_embeds(conditioning: list, name: str) -> TextEmbeds:
    """Native CONDITIONING ``[[cond [B,L,D], {"pooled_output": [B,768], "attention_mask"?: [B,L]}], ...]``.

    Several entries are stacked along the batch, right-padded to the longest (mask False there).
    """
    if not conditioning:
        raise ValueError(f"{name} is an empty CONDITIONING; expected the output of CLIPTextEncode")
    states, masks, pooled = [], [], []
    for cond, extra in conditioning:
        if extra.get("pooled_output") is None:
            raise ValueError(f"{name} has no pooled_output; expected CLIPTextEncode with a DualCLIPLoader of "
                             "type hunyuan_video (LLaVA-Llama-3 + CLIP-L)")
        mask = extra.get("attention_mask")
        mask = torch.ones(cond.shape[:2], dtype=torch.bool) if mask is None else mask.bool()
        states.append(cond)
        masks.append(mask.to(cond.device))
        pooled.append(extra["pooled_output"])
    length = max(s.shape[1] for s in states)
    states = [torch.nn.functional.pad(s, (0, 0, 0, length - s.shape[1])) for s in states]
    masks = [torch.nn.functional.pad(m, (0, length - m.shape[1])) for m in masks]
    return TextEmbeds(states=torch.cat(states), mask=torch.cat(masks), pooled=torch.cat(pooled))


class HunyuanVideoConditioningBridge(CheckedNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="HunyuanVideoConditioningBridge",
            display_name="HunyuanVideo Conditioning Bridge",
            category=CATEGORY,
            description="Uses native ComfyUI text encoding (DualCLIPLoader type hunyuan_video + CLIPTextEncode) "
                        "with this pack's sampler. Native encoding keeps only the prompt tokens, unpadded.",
            inputs=[
                io.Conditioning.Input("positive", tooltip="CONDITIONING from CLIPTextEncode (hunyuan_video CLIP)."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Optional negative CONDITIONING for true CFG."),
            ],
            outputs=[PromptEmbedsSocket.Output(display_name="text_embeds")],
        )

    @classmethod
    def execute(cls, positive: list, negative: list | None = None) -> io.NodeOutput:
        embeds = PromptEmbeds(
            positive=conditioning_to_embeds(positive, "positive"),
            negative=None if negative is None else conditioning_to_embeds(negative, "negative"),
        )
        return io.NodeOutput(handed_on(embeds))


NODES = [HunyuanVideoTextEncoderLoader, HunyuanVideoTextEncode, HunyuanVideoConditioningBridge]

"""Prompt + image -> image-conditioned LLM states (HunyuanVideo-I2V), and CLIP-L's pooled vector.

The I2V template holds one ``<image>`` token after the system header. The image's tokens
(:class:`.vision.LlavaVision`, 576 for the real tower) take its place in the LLM's input
embeddings, so the prompt is read "looking at" the image. From the chosen hidden state
(``hidden_states[-3]``) two parts are kept, image first:

* the image's tokens, every ``interleave``-th one (4 for token replace "v2", 2 for concat "v1");
* the prompt's tokens after the template, without the 4 tokens
  ``<|eot_id|><|start_header_id|>assistant<|end_header_id|>`` that close the user turn (the
  ``\\n\\n`` after the assistant header and the padding stay, with their mask).

This is what Tencent's HunyuanVideo-I2V text encoder and diffusers' ``HunyuanVideoImageToVideoPipeline``
compute, including the positions of padding tokens (``cumsum(mask) - 1``, padding at 1, as
transformers' LLaVA merged image tokens when Tencent's code was written). The prompt budget
counts tokens before expansion: ``prompt_tokens`` (256) minus the 4 dropped ones stay.
"""

from __future__ import annotations

import logging

import torch

from ..conditioning import PromptEmbeds, TextEmbeds
from .encode import EncodeOptions, encode_clip, negatives_for, tokenize_llm
from .loader import TextEncoders
from .templates import IMAGE_MARKER
from .vision import LlavaVision, pixel_values

log = logging.getLogger(__name__)

END_HEADER = "<|end_header_id|>"
CLOSING_TOKENS = 4  # <|eot_id|> <|start_header_id|> assistant <|end_header_id|>
NEGATIVE_INTERLEAVE = 2  # diffusers' and Tencent's default for the unconditional pass, for every I2V variant


def _image_position(ids: torch.Tensor, image_id: int) -> int:
    """The one ``<image>`` token's index, the same in every row (it sits in the template's fixed prefix)."""
    rows, cols = torch.where(ids == image_id)
    if rows.numel() != ids.shape[0] or not torch.equal(rows, torch.arange(ids.shape[0])) or cols.unique().numel() != 1:
        raise ValueError(f"prompt: template and prompt together hold {rows.numel()} '{IMAGE_MARKER}' tokens "
                         f"(id {image_id}) in a batch of {ids.shape[0]}; expected exactly one per prompt, the "
                         f"template's (remove '{IMAGE_MARKER}' from the prompt text)")
    return int(cols[0])


def _kept_text(ids: torch.Tensor, crop: int, end_header_id: int) -> torch.Tensor:
    """[B, K] indices (before expansion) of the prompt tokens kept: ``crop..a-4`` and ``a..end``, where
    ``a`` follows the last ``<|end_header_id|>`` (the assistant header); ``a`` is the end when the
    prompt was long enough to truncate the header away."""
    length = ids.shape[1]
    kept = []
    for row in ids:
        headers = torch.where(row == end_header_id)[0]
        start = int(headers[-1]) + 1 if headers.numel() and int(headers[-1]) >= crop else length
        kept.append(torch.cat([torch.arange(crop, start - CLOSING_TOKENS), torch.arange(start, length)]))
    return torch.stack(kept)


@torch.no_grad()
def encode_llm_image(llm, tokenizer, vision: LlavaVision, prompts: list[str], images: torch.Tensor,
                     options: EncodeOptions, interleave: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """states [B, ceil(N / interleave) + K, hidden] and mask (bool); ``images`` are ComfyUI IMAGEs, one per prompt."""
    layers, skip = llm.config.num_hidden_layers, options.hidden_state_skip_layer
    if not 0 <= skip < layers:
        raise ValueError(f"hidden_state_skip_layer={skip} is out of range; expected 0..{layers - 1} for a {layers}-layer LLM")
    if interleave < 1:
        raise ValueError(f"image_interleave={interleave}; expected 1 or more (4 for token replace, 2 for concat)")
    tokens, crop = tokenize_llm(tokenizer, prompts, options)
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    at = _image_position(ids, tokenizer.convert_tokens_to_ids(IMAGE_MARKER))
    image = vision(pixel_values(images, vision.image_size).to(device))
    n = image.shape[1]
    embeds = llm.embed_tokens(ids.to(device))
    embeds = torch.cat([embeds[:, :at], image.to(embeds.dtype), embeds[:, at + 1:]], dim=1)
    full_mask = torch.cat([mask[:, :at], mask.new_ones(mask.shape[0], n), mask[:, at + 1:]], dim=1).to(device)
    positions = (full_mask.cumsum(-1) - 1).masked_fill(full_mask == 0, 1)
    out = llm(inputs_embeds=embeds, attention_mask=full_mask, position_ids=positions, output_hidden_states=True,
              use_cache=False)
    states = out.hidden_states[-(skip + 1)]
    if options.apply_final_norm:
        states = llm.norm(states)
    kept = _kept_text(ids, crop, tokenizer.convert_tokens_to_ids(END_HEADER)).to(device)
    text = torch.gather(states, 1, (kept + n - 1).unsqueeze(-1).expand(-1, -1, states.shape[-1]))
    picked = states[:, at:at + n:interleave]
    mask_out = torch.cat([torch.ones(picked.shape[:2], dtype=torch.bool, device=device),
                          torch.gather(mask.to(device), 1, kept).bool()], dim=1)
    return torch.cat([picked, text], dim=1), mask_out


def encode_texts_image(encoders: TextEncoders, vision: LlavaVision, prompts: list[str], images: torch.Tensor,
                       options: EncodeOptions, interleave: int, device) -> TextEmbeds:
    if images.shape[0] != len(prompts):
        raise ValueError(f"image batch is {images.shape[0]}, expected one image per prompt ({len(prompts)})")
    states, mask = encode_llm_image(encoders.llm, encoders.llm_tokenizer, vision, prompts, images, options,
                                    interleave, device)
    pooled = encode_clip(encoders.clip, encoders.clip_tokenizer, prompts, device)
    return TextEmbeds(states=states, mask=mask, pooled=pooled)


def encode_prompts_image(encoders: TextEncoders, vision: LlavaVision, prompts: list[str], image: torch.Tensor,
                         options: EncodeOptions, interleave: int, device,
                         negative: list[str] | None = None) -> PromptEmbeds:
    """Positive prompts with ``image`` (one IMAGE [1, H, W, C], used for every prompt); negative
    prompts with a black image of the same size and interleave 2, as the references do."""
    images = image[:1].expand(len(prompts), -1, -1, -1)
    positive = encode_texts_image(encoders, vision, prompts, images, options, interleave, device)
    if negative is None:
        return PromptEmbeds(positive=positive)
    black = torch.zeros_like(images)
    return PromptEmbeds(positive=positive, negative=encode_texts_image(
        encoders, vision, negatives_for(prompts, negative), black, options, NEGATIVE_INTERLEAVE, device))

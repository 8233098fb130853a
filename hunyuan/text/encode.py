"""Prompt -> (LLM hidden states, mask, CLIP-L pooled vector).

LLM: the prompt goes into the template, is tokenized to ``crop_start + prompt_tokens`` tokens
(padding on the right), and the hidden state ``hidden_state_skip_layer`` layers below the top
is taken; the template tokens are then cropped away, so the budget of ``prompt_tokens`` (256)
belongs to the prompt alone. CLIP-L: 77 tokens, pooled output (the EOS token's final state).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ..conditioning import PromptEmbeds, TextEmbeds
from .loader import TextEncoders
from .templates import PromptTemplate, crop_start

log = logging.getLogger(__name__)

PROMPT_TOKENS = 256
CLIP_TOKENS = 77


@dataclass(frozen=True)
class EncodeOptions:
    """hidden_state_skip_layer=2 takes hidden_states[-3]; apply_final_norm runs the LLM's last RMSNorm on it."""

    template: PromptTemplate
    hidden_state_skip_layer: int = 2
    apply_final_norm: bool = False
    prompt_tokens: int = PROMPT_TOKENS


def _warn_dropped(tokenizer, texts: list[str], crop: int, suffix: int, budget: int) -> None:
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]
    for i, length in enumerate(lengths):
        prompt_len = length - crop - suffix
        if prompt_len > budget:
            log.warning(
                "prompt %d is %d tokens long; the LLM keeps the first %d tokens after the template, "
                "so %d tokens were dropped", i, prompt_len, budget, prompt_len - budget,
            )


def tokenize_llm(tokenizer, prompts: list[str], options: EncodeOptions) -> tuple[dict, int]:
    """Token ids/mask [B, crop_start + prompt_tokens] and the crop offset."""
    template = options.template
    crop = crop_start(tokenizer, template)
    suffix = len(tokenizer(template.apply(""), add_special_tokens=True)["input_ids"]) - crop
    texts = [template.apply(p) for p in prompts]
    _warn_dropped(tokenizer, texts, crop, suffix, options.prompt_tokens)
    tokens = tokenizer(
        texts, max_length=crop + options.prompt_tokens, padding="max_length", truncation=True,
        return_tensors="pt", return_attention_mask=True,
    )
    return tokens, crop


@torch.no_grad()
def encode_llm(llm, tokenizer, prompts: list[str], options: EncodeOptions, device) -> tuple[torch.Tensor, torch.Tensor]:
    """states [B, prompt_tokens, hidden] in the LLM's compute dtype, mask [B, prompt_tokens] bool."""
    layers = llm.config.num_hidden_layers
    skip = options.hidden_state_skip_layer
    if not 0 <= skip < layers:
        raise ValueError(f"hidden_state_skip_layer={skip} is out of range; expected 0..{layers - 1} for a {layers}-layer LLM")
    tokens, crop = tokenize_llm(tokenizer, prompts, options)
    ids = tokens["input_ids"].to(device)
    mask = tokens["attention_mask"].to(device)
    out = llm(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
    states = out.hidden_states[-(skip + 1)]
    if options.apply_final_norm:
        states = llm.norm(states)
    return states[:, crop:], mask[:, crop:].bool()


@torch.no_grad()
def encode_clip(clip, tokenizer, prompts: list[str], device) -> torch.Tensor:
    """pooled [B, hidden] (768 for CLIP-L): the final-layer-normed state at each prompt's EOS."""
    tokens = tokenizer(prompts, max_length=CLIP_TOKENS, padding="max_length", truncation=True, return_tensors="pt")
    full = tokenizer(prompts)["input_ids"]
    for i, ids in enumerate(full):
        if len(ids) > CLIP_TOKENS:
            log.warning("prompt %d: CLIP-L reads %d tokens; %d were dropped for its pooled vector",
                        i, CLIP_TOKENS, len(ids) - CLIP_TOKENS)
    return clip(input_ids=tokens["input_ids"].to(device)).pooler_output


def encode_texts(encoders: TextEncoders, prompts: list[str], options: EncodeOptions, device) -> TextEmbeds:
    """A batch of prompts -> :class:`TextEmbeds` on ``device``."""
    if not prompts:
        raise ValueError("prompts is empty; expected at least one prompt")
    states, mask = encode_llm(encoders.llm, encoders.llm_tokenizer, prompts, options, device)
    pooled = encode_clip(encoders.clip, encoders.clip_tokenizer, prompts, device)
    return TextEmbeds(states=states, mask=mask, pooled=pooled)


def encode_prompts(
    encoders: TextEncoders, prompts: list[str], options: EncodeOptions, device,
    negative: list[str] | None = None,
) -> PromptEmbeds:
    """Positive prompts, and negative ones for true CFG (one negative is reused for every prompt)."""
    positive = encode_texts(encoders, prompts, options, device)
    if negative is None:
        return PromptEmbeds(positive=positive)
    negative = negatives_for(prompts, negative)
    return PromptEmbeds(positive=positive, negative=encode_texts(encoders, negative, options, device))


def negatives_for(prompts: list[str], negative: list[str]) -> list[str]:
    """One negative prompt per prompt: a single one is reused for all."""
    if len(negative) == 1 and len(prompts) > 1:
        return negative * len(prompts)
    if len(negative) != len(prompts):
        raise ValueError(f"negative prompts: got {len(negative)}, expected 1 or {len(prompts)} (one per prompt)")
    return negative

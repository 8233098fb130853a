"""Values that travel between pipeline stages (and so between ComfyUI nodes).

They are plain tensors in frozen dataclasses so that every stage agrees on shapes:

* :class:`TextEmbeds`: what the text encoders produce for one set of prompts.
* :class:`PromptEmbeds`: the positive embeds and, for true CFG, the negative ones.
* :class:`RefinedText`: the token refiner's output for every step of one sigma schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass(frozen=True)
class TextEmbeds:
    """LLM hidden states with their mask, plus CLIP-L's pooled vector.

    states: [B, L, 4096] (text_states_dim) float
    mask:   [B, L] bool, True for real tokens (padding is False)
    pooled: [B, 768] (text_states_dim_2) float
    """

    states: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def __post_init__(self):
        b, length = self.states.shape[:2]
        if self.mask.shape != (b, length):
            raise ValueError(f"text mask has shape {tuple(self.mask.shape)}, expected {(b, length)}")
        if self.pooled.shape[0] != b:
            raise ValueError(f"pooled text has batch {self.pooled.shape[0]}, expected {b}")

    @property
    def batch(self) -> int:
        return self.states.shape[0]


@dataclass(frozen=True)
class PromptEmbeds:
    positive: TextEmbeds
    negative: TextEmbeds | None = None


@dataclass(frozen=True)
class RefinedText:
    """Token-refiner output for every step of a schedule.

    sigmas:  [S+1] the schedule it was computed for (the sampler checks it matches its own)
    tokens:  [S, B, L', hidden] refined text tokens, one slice per step; L' <= L because
             text columns that are padding in every batch item are dropped
    mask:    [B, L'] bool, matching ``tokens``
    pooled:  [B, 768] CLIP pooled vector (the DiT's vector_in input)
    """

    sigmas: torch.Tensor
    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor


@dataclass(frozen=True)
class RefinedConditioning:
    positive: RefinedText
    negative: RefinedText | None = None


def moved(value, device):
    """``value`` (one of the dataclasses above, or None) with every tensor in it moved to ``device``."""
    if value is None:
        return None
    changes = {}
    for field in fields(value):
        item = getattr(value, field.name)
        changes[field.name] = item.to(device) if isinstance(item, torch.Tensor) else moved(item, device)
    return replace(value, **changes)

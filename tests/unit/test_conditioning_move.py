"""conditioning.moved: every tensor of a stage's dataclass (nested ones too) on the device asked for."""

from __future__ import annotations

import torch

from hunyuan.conditioning import PromptEmbeds, RefinedConditioning, RefinedText, TextEmbeds, moved


def _text(batch=2, length=5):
    return TextEmbeds(torch.randn(batch, length, 8), torch.ones(batch, length, dtype=torch.bool), torch.randn(batch, 4))


def test_prompt_embeds_move_whole_and_keep_a_missing_negative():
    embeds = PromptEmbeds(positive=_text())
    out = moved(embeds, "meta")
    assert out.negative is None
    assert {t.device.type for t in (out.positive.states, out.positive.mask, out.positive.pooled)} == {"meta"}
    assert embeds.positive.states.device.type == "cpu"  # the input is left as it was
    assert out.positive.mask.dtype == torch.bool and out.positive.states.shape == (2, 5, 8)


def test_refined_conditioning_moves_both_passes():
    refined = RefinedText(torch.linspace(1, 0, 4), torch.randn(3, 1, 5, 8), torch.ones(1, 5, dtype=torch.bool),
                          torch.randn(1, 4))
    out = moved(RefinedConditioning(positive=refined, negative=refined), "meta")
    for text in (out.positive, out.negative):
        assert {t.device.type for t in (text.sigmas, text.tokens, text.mask, text.pooled)} == {"meta"}
    assert moved(None, "meta") is None

"""The DiT module alone: refiner precompute/detach, masks, shapes, config."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from hunyuan.conditioning import TextEmbeds
from hunyuan.dit import (
    REAL,
    TINY,
    DiTConfig,
    HunyuanVideoDiT,
    SingleTokenRefiner,
    infer_config,
    precompute_refined_text,
)
from hunyuan.dit.checkpoint import load_dit
from hunyuan.dit.tiny import random_state_dict
from tests.checks import rel_err


@pytest.fixture(scope="module")
def model() -> HunyuanVideoDiT:
    return load_dit(random_state_dict(TINY, seed=0), dtype=torch.float32)


def make_text(batch=2, length=8, lengths=(8, 3), seed=0) -> TextEmbeds:
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(length)[None] < torch.tensor(lengths)[:, None]
    return TextEmbeds(
        states=torch.randn(batch, length, TINY.text_states_dim, generator=g),
        mask=mask,
        pooled=torch.randn(batch, TINY.text_states_dim_2, generator=g),
    )


def latent(batch=2, t=3, h=4, w=6, seed=1):
    return torch.randn(batch, 16, t, h, w, generator=torch.Generator().manual_seed(seed))


def test_output_shape_and_dtype(model):
    text, x = make_text(), latent()
    out = model(x, torch.tensor([500.0, 20.0]), text.mask, text.pooled, torch.tensor([6.0, 6.0]), text_states=text.states)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.isfinite(out).all()


def test_odd_height_is_rejected_with_the_value(model):
    text = make_text(1, 4, (4,))
    with pytest.raises(ValueError, match="H=5 is not a multiple of the patch size 2"):
        model(latent(1, 3, 5, 6), torch.tensor([1.0]), text.mask, text.pooled, text_states=text.states)


def test_batch_item_equals_item_alone(model):
    text, x = make_text(), latent()
    t, g = torch.tensor([700.0, 700.0]), torch.tensor([6.0, 6.0])
    batch = model(x, t, text.mask, text.pooled, g, text_states=text.states)
    for b, n in enumerate((8, 3)):
        alone = model(x[b : b + 1], t[:1], text.mask[b : b + 1, :n], text.pooled[b : b + 1], g[:1],
                      text_states=text.states[b : b + 1, :n])
        assert rel_err(batch[b : b + 1], alone) <= 1e-5


def test_padding_content_does_not_leak(model):
    text, x = make_text(), latent()
    noisy = text.states.clone()
    noisy[~text.mask] = 1e3 * torch.randn_like(noisy[~text.mask])
    t = torch.tensor([400.0, 400.0])
    a = model(x, t, text.mask, text.pooled, text_states=text.states)
    b = model(x, t, text.mask, text.pooled, text_states=noisy)
    assert rel_err(b, a) <= 1e-6


def test_guidance_changes_the_output(model):
    text, x = make_text(1, 8, (8,)), latent(1)
    t = torch.tensor([500.0])
    a = model(x, t, text.mask, text.pooled, torch.tensor([6.0]), text_states=text.states)
    b = model(x, t, text.mask, text.pooled, torch.tensor([1.0]), text_states=text.states)
    assert rel_err(a, b) > 1e-3


def test_precomputed_refined_text_equals_txt_in_inside(model):
    text, x = make_text(), latent()
    sigmas = torch.tensor([1.0, 0.8, 0.35, 0.0])
    refined = precompute_refined_text(model.txt_in, text, sigmas, device="cpu", dtype=torch.float32)
    assert refined.tokens.shape == (3, 2, 8, TINY.hidden_size)
    assert torch.equal(refined.sigmas, sigmas)
    for step in range(3):
        t = (sigmas[step] * 1000).expand(2)
        inside = model(x, t, text.mask, text.pooled, torch.tensor([6.0, 6.0]), text_states=text.states)
        outside = model(x, t, refined.mask, refined.pooled, torch.tensor([6.0, 6.0]),
                        refined_text=refined.tokens[step])
        assert rel_err(outside, inside) <= 1e-6


def test_refiner_trims_columns_padded_everywhere(model):
    text = make_text(2, 10, (4, 6))
    refined = precompute_refined_text(model.txt_in, text, torch.tensor([1.0, 0.0]), device="cpu",
                                      dtype=torch.float32)
    assert refined.tokens.shape[2] == 6 and refined.mask.shape == (2, 6)


def test_detached_refiner_is_outside_the_module_tree(model):
    m = load_dit(random_state_dict(TINY, seed=0), dtype=torch.float32)
    text, x = make_text(), latent()
    t = torch.tensor([300.0, 300.0])
    before = m(x, t, text.mask, text.pooled, text_states=text.states)
    n_params = sum(p.numel() for p in m.parameters())
    refiner = m.detach_refiner()
    assert m.txt_in is None and isinstance(refiner, SingleTokenRefiner)
    with pytest.raises(ValueError, match="already detached"):
        m.detach_refiner()
    with pytest.raises(ValueError, match="pass refined_text"):
        m(x, t, text.mask, text.pooled, text_states=text.states)
    assert not any(k.startswith("txt_in.") for k in m.state_dict())
    assert sum(p.numel() for p in m.parameters()) == n_params - sum(p.numel() for p in refiner.parameters())
    refined = precompute_refined_text(refiner, text, torch.tensor([0.3, 0.0]), device="cpu", dtype=torch.float32)
    after = m(x, t, refined.mask, refined.pooled, refined_text=refined.tokens[0])
    assert rel_err(after, before) <= 1e-6
    # refined_text given: txt_in is never called
    refiner.register_forward_pre_hook(lambda *_: (_ for _ in ()).throw(AssertionError("txt_in ran")))
    m(x, t, refined.mask, refined.pooled, refined_text=refined.tokens[0])


def test_infer_config_round_trip():
    cfg = dataclasses.replace(TINY, depth_double=3, depth_single=1, text_states_dim=20, guidance_embed=False)
    with torch.device("meta"):
        sd = HunyuanVideoDiT(cfg).state_dict()
    assert infer_config(sd) == cfg
    with torch.device("meta"):
        assert infer_config(HunyuanVideoDiT(REAL).state_dict()) == REAL


def test_config_validation_names_values():
    with pytest.raises(ValueError, match="rope_axes=.* sum to 20, expected head_dim=16"):
        DiTConfig(hidden_size=64, num_heads=4, rope_axes=(4, 8, 8))

"""Attention backends: the masked contract, selection, clear errors, the registration hook."""

from __future__ import annotations

import importlib.util
import logging

import pytest
import torch

from hunyuan.dit import TINY
from hunyuan.dit import attention as A
from hunyuan.dit.checkpoint import load_dit
from hunyuan.dit.tiny import random_state_dict


def qkv(b=2, h=3, n=10, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g) for _ in range(3)]


def naive(q, k, v, key_mask):
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)


def test_sdpa_excludes_masked_keys():
    q, k, v = qkv()
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 6:] = False
    out = A.sdpa_attention(q, k, v, mask)
    assert out.shape == (2, 10, 24)
    torch.testing.assert_close(out, naive(q, k, v, mask), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out, A.sdpa_attention(q, k, v, None))


def test_per_item_wrapper_equals_masked_attention():
    q, k, v = qkv()
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, 3:] = False
    wrapped = A.per_item_valid_keys(lambda q, k, v, m: A.sdpa_attention(q, k, v, None))
    torch.testing.assert_close(wrapped(q, k, v, mask), A.sdpa_attention(q, k, v, mask), rtol=1e-5, atol=1e-6)


def test_auto_on_cpu_picks_sdpa_and_logs_why(caplog):
    A._auto_logged.clear()
    with caplog.at_level(logging.INFO, logger=A.__name__):
        name, fn = A.resolve_backend("auto", "cpu")
    assert name == "sdpa" and fn is A.sdpa_attention
    text = caplog.text
    assert "skipping sage" in text and "skipping flash" in text


def test_auto_looks_for_the_packages_once(monkeypatch):
    calls = []
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: calls.append(name) or real(name, *a))
    A.installed.cache_clear()
    for _ in range(3):
        assert A.resolve_backend("auto", "cpu")[0] == "sdpa"
    assert sorted(calls) == ["flash_attn", "sageattention"]
    A.installed.cache_clear()


@pytest.mark.parametrize("name", ["sage", "flash"])
def test_explicit_unavailable_backend_raises(name):
    with pytest.raises(A.AttentionBackendError, match=f"'{name}' was requested but cannot run"):
        A.resolve_backend(name, "cpu")


def test_unknown_backend_lists_choices():
    with pytest.raises(A.AttentionBackendError, match="unknown; expected one of auto, sdpa"):
        A.resolve_backend("xformerz", "cpu")


def test_registered_backend_is_used_by_the_model():
    calls = []

    def counting(q, k, v, key_mask):
        calls.append(q.shape)
        return A.sdpa_attention(q, k, v, key_mask)

    A.register_attention_backend("test_counting", counting)
    model = load_dit(random_state_dict(TINY, seed=1), dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    states = torch.randn(1, 6, TINY.text_states_dim, generator=g)
    args = (torch.randn(1, 16, 2, 4, 4, generator=g), torch.tensor([500.0]), torch.ones(1, 6, dtype=torch.bool),
            torch.randn(1, TINY.text_states_dim_2, generator=g))
    ref = model(*args, text_states=states)
    model.attention_backend = "test_counting"
    out = model(*args, text_states=states)
    # 2 refiner + 2 double + 2 single blocks
    assert len(calls) == 6
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert "test_counting" in A.available_backends()


def test_builtin_names_are_reserved():
    with pytest.raises(ValueError, match="reserved"):
        A.register_attention_backend("sdpa", A.sdpa_attention)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_auto_on_cuda_matches_sdpa():
    q, k, v = (t.cuda().half() for t in qkv(n=64, d=64))
    mask = torch.ones(2, 64, dtype=torch.bool, device="cuda")
    mask[1, 40:] = False
    _, fn = A.resolve_backend("auto", "cuda")
    torch.testing.assert_close(fn(q, k, v, mask).float(), A.sdpa_attention(q, k, v, mask).float(),
                               rtol=2e-2, atol=2e-2)

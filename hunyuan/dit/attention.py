"""Attention backends behind one pure function.

Every backend takes q, k, v: [B, heads, N, head_dim] and ``key_mask``: None (attend to all) or
bool [B, N] (False = a padded text token no query may attend to) and returns [B, N, heads*head_dim].

Built in: ``"sdpa"`` (torch scaled_dot_product_attention, the default), ``"sage"``
(sageattention, CUDA only), ``"flash"`` (flash-attn, CUDA only). The ComfyUI layer registers
``"comfy"`` (ComfyUI's optimized attention) with :func:`register_attention_backend`.
``"auto"`` takes the first usable of sage, flash, sdpa and logs why it skipped the others.
Backends without mask support run item by item on the valid keys only, which is the same math.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]
AUTO_ORDER = ("sage", "flash", "sdpa")

_registry: dict[str, AttentionFn] = {}
_auto_logged: set[tuple[str, str]] = set()


class AttentionBackendError(ValueError):
    """An attention backend was asked for by name but cannot run here."""


def _merge_heads(out: torch.Tensor) -> torch.Tensor:
    """[B, H, N, D] -> [B, N, H*D]"""
    return out.transpose(1, 2).flatten(2)


def sdpa_attention(q, k, v, key_mask=None):
    mask = None if key_mask is None else key_mask[:, None, None, :]
    return _merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def per_item_valid_keys(fn: AttentionFn) -> AttentionFn:
    """Wrap a mask-less backend: with a mask, run each batch item on its valid keys only."""

    def run(q, k, v, key_mask=None):
        if key_mask is None or bool(key_mask.all()):
            return fn(q, k, v, None)
        outs = []
        for b in range(q.shape[0]):
            keep = key_mask[b]
            outs.append(fn(q[b : b + 1], k[b : b + 1, :, keep], v[b : b + 1, :, keep], None))
        return torch.cat(outs, dim=0)

    return run


def _sage(q, k, v, key_mask=None):
    from sageattention import sageattn

    return _merge_heads(sageattn(q, k, v, tensor_layout="HND", is_causal=False))


def _flash(q, k, v, key_mask=None):
    from flash_attn import flash_attn_func

    return flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).flatten(2)


@functools.cache
def installed(module: str) -> bool:
    """Whether ``module`` can be imported; looked up once per process (not on every forward)."""
    return importlib.util.find_spec(module) is not None


def _unavailable_reason(name: str, device: torch.device) -> str | None:
    """None when backend ``name`` can run on ``device``, else a sentence saying why not."""
    if name == "sdpa":
        return None
    if name in ("sage", "flash"):
        module = "sageattention" if name == "sage" else "flash_attn"
        if not installed(module):
            return f"the '{module}' package is not installed"
        if device.type != "cuda":
            return f"it needs a CUDA device, the model runs on {device.type}"
        return None
    if name in _registry:
        return None
    return "no such backend has been registered"


_builtin: dict[str, AttentionFn] = {
    "sdpa": sdpa_attention,
    "sage": per_item_valid_keys(_sage),
    "flash": per_item_valid_keys(_flash),
}


def register_attention_backend(name: str, fn: AttentionFn) -> None:
    """Make ``fn`` selectable as backend ``name`` (same contract as :func:`sdpa_attention`)."""
    if name in _builtin or name == "auto":
        raise ValueError(f"attention backend name {name!r} is reserved; choose another name")
    _registry[name] = fn


def available_backends() -> list[str]:
    return ["auto", *_builtin, *_registry]


def resolve_backend(name: str, device: torch.device | str) -> tuple[str, AttentionFn]:
    """Return (name, function) for ``name`` on ``device``; "auto" picks and logs the choice."""
    device = torch.device(device)
    if name == "auto":
        for candidate in AUTO_ORDER:
            reason = _unavailable_reason(candidate, device)
            if reason is None:
                return candidate, _builtin[candidate]
            if (candidate, reason) not in _auto_logged:
                _auto_logged.add((candidate, reason))
                log.info("attention 'auto': skipping %s because %s", candidate, reason)
    if name not in _builtin and name not in _registry:
        raise AttentionBackendError(
            f"attention backend {name!r} is unknown; expected one of {', '.join(available_backends())}"
        )
    reason = _unavailable_reason(name, device)
    if reason is not None:
        raise AttentionBackendError(
            f"attention backend {name!r} was requested but cannot run: {reason}. "
            "Choose 'sdpa' (always available) or 'auto'."
        )
    return name, _builtin.get(name) or _registry[name]

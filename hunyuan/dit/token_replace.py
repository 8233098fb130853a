"""Token replace (HunyuanVideo-I2V "v2"): the first latent frame's tokens get their own modulation.

In a token-replace forward the first latent frame holds the clean image latent, so its tokens are
modulated as if at timestep 0: ``time_in(0) + vector_in(pooled)``, with no guidance embedding
(Tencent's I2V ``models.py`` and diffusers; ComfyUI adds the guidance there too, see the README).
Every other video token, and every text token, uses the ordinary ``vec``.

:class:`FirstFrameVec` travels where ``vec`` does; :class:`Split` is one modulation parameter
(shift, scale or gate) that differs between the first ``n`` tokens and the rest. ``modulate`` and
``gated_residual_`` in :mod:`.layers` apply a Split piecewise, so the blocks need no other change.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class FirstFrameVec:
    """vec [B, D] for all tokens but the first ``n`` video tokens, which get first [B, D]."""

    vec: torch.Tensor
    first: torch.Tensor
    n: int


@dataclass(frozen=True)
class Split:
    """A modulation parameter: ``first`` [B, 1, D] for tokens :n, ``rest`` [B, 1, D] for n:."""

    first: torch.Tensor
    rest: torch.Tensor
    n: int


def plain(vec):
    """The ordinary conditioning vector (text tokens, final layer) of a vec or FirstFrameVec."""
    return vec.vec if isinstance(vec, FirstFrameVec) else vec


def modulate_split(x: torch.Tensor, shift: Split, scale: Split) -> torch.Tensor:
    n = shift.n
    head = torch.addcmul(shift.first, x[:, :n], 1 + scale.first)
    tail = torch.addcmul(shift.rest, x[:, n:], 1 + scale.rest)
    return torch.cat((head, tail), dim=1)


def gated_residual_split(x: torch.Tensor, y: torch.Tensor, gate: Split, in_place: bool) -> torch.Tensor:
    n = gate.n
    if in_place:
        x[:, :n].addcmul_(y[:, :n], gate.first)
        x[:, n:].addcmul_(y[:, n:], gate.rest)
        return x
    return torch.cat((torch.addcmul(x[:, :n], y[:, :n], gate.first), torch.addcmul(x[:, n:], y[:, n:], gate.rest)), 1)

"""3-D rotary position embedding for video tokens (pure functions).

Each head's channels are split into (t, h, w) groups of sizes ``axes`` (16, 56, 56 in the
released model). Inside a group, consecutive channel pairs (0,1), (2,3)... are rotated by
``position * theta ** (-2i / axis_dim)``. Text tokens get no rotation.
"""

from __future__ import annotations

import torch


def axis_frequencies(dim: int, theta: float, device=None) -> torch.Tensor:
    """[dim // 2] inverse frequencies of one axis, fp32."""
    exponent = torch.arange(0, dim, 2, dtype=torch.float64, device=device)[: dim // 2] / dim
    return (1.0 / theta**exponent).float()


def video_rope(
    grid: tuple[int, int, int], axes: tuple[int, ...], theta: float, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables for a (T', H', W') token grid flattened t-major.

    Returns two fp32 tensors [T'H'W', head_dim], each value repeated for both members of a pair.
    """
    t, h, w = grid
    positions = torch.stack(
        torch.meshgrid(
            torch.arange(t, device=device, dtype=torch.float32),
            torch.arange(h, device=device, dtype=torch.float32),
            torch.arange(w, device=device, dtype=torch.float32),
            indexing="ij",
        ),
        dim=-1,
    ).reshape(-1, 3)
    angles = torch.cat(
        [torch.outer(positions[:, i], axis_frequencies(d, theta, device)) for i, d in enumerate(axes)], dim=-1
    )
    angles = angles.repeat_interleave(2, dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of x: [B, N, heads, head_dim] by cos/sin [N, head_dim] (fp32 math)."""
    xf = x.float()
    pairs = xf.unflatten(-1, (-1, 2))
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    cos, sin = cos[:, None, :], sin[:, None, :]
    return (xf * cos + rotated * sin).to(x.dtype)

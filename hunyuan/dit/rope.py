"""3-D rotary position embedding for video tokens (pure functions).

Each head's channels are split into (t, h, w) groups of sizes ``axes`` (16, 56, 56 in the
released model). Inside a group, consecutive channel pairs (0,1), (2,3)... are rotated by
``position * theta ** (-2i / axis_dim)``. Text tokens get no rotation.

A pair (a, b) is treated as the complex number a + ib, so a rotation is one complex multiply.
"""

from __future__ import annotations

import torch


def axis_frequencies(dim: int, theta: float, device=None) -> torch.Tensor:
    """[dim // 2] inverse frequencies of one axis, fp32."""
    exponent = torch.arange(0, dim, 2, dtype=torch.float64, device=device)[: dim // 2] / dim
    return (1.0 / theta**exponent).float()


def video_rope(grid: tuple[int, int, int], axes: tuple[int, ...], theta: float, device=None) -> torch.Tensor:
    """Unit complex rotations for a (T', H', W') token grid flattened t-major: [T'H'W', head_dim // 2]."""
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
    return torch.polar(torch.ones_like(angles), angles)


def apply_rope(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of x: [B, N, heads, head_dim] by ``rotation`` [N, head_dim // 2] (fp32 math)."""
    pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
    return torch.view_as_real(pairs * rotation[:, None, :]).flatten(-2).to(x.dtype)

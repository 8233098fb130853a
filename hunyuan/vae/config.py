"""Configuration of HunyuanVideo's causal 3D VAE ("884-16c-hy").

The released VAE compresses 8x in height and width and 4x in time (frames 4k+1 -> k+1 latent
frames) into 16 channels. LATENT tensors in this pack hold the RAW latents this VAE produces;
the model-side scale :data:`SCALING_FACTOR` is applied by the sampler, never here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCALING_FACTOR = 0.476986  # the released model's latent scale (applied by the sampler)


@dataclass(frozen=True)
class VAEConfig:
    """Shape of the causal VAE. ``block_channels`` runs from the full-resolution block down."""

    block_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2  # resnets per encoder block; decoder blocks get one more
    latent_channels: int = 16
    image_channels: int = 3
    norm_groups: int = 32
    spatial_ratio: int = 8
    temporal_ratio: int = 4
    mid_attention: bool = True

    def __post_init__(self) -> None:
        levels = len(self.block_channels)
        if 2 ** (levels - 1) != self.spatial_ratio:
            raise ValueError(
                f"block_channels={self.block_channels} gives {levels - 1} spatial halvings, "
                f"which does not match spatial_ratio={self.spatial_ratio}"
            )
        if self.temporal_ratio != 4:
            raise ValueError(f"temporal_ratio={self.temporal_ratio} is not supported (expected 4)")
        for ch in self.block_channels:
            if ch % self.norm_groups:
                raise ValueError(f"channel width {ch} is not divisible by norm_groups={self.norm_groups}")

    @property
    def time_halvings(self) -> int:
        return int(math.log2(self.temporal_ratio))

    def resample_factors(self) -> list[tuple[int, int, int] | None]:
        """(t, h, w) factor of each block's down/upsampler (None for the innermost block).

        Index i counts from the full-resolution end for the encoder and from the latent end for
        the decoder; both use the same pattern (spatial-only first, then space and time).
        """
        levels = len(self.block_channels)
        first_time = levels - 1 - self.time_halvings
        return [None if i == levels - 1 else (2 if i >= first_time else 1, 2, 2) for i in range(levels)]

    def frames_out(self, latent_frames: int) -> int:
        """Pixel frames decoded from ``latent_frames`` latent frames: 4*(T-1)+1."""
        return self.temporal_ratio * (latent_frames - 1) + 1

    def first_pixel_frame(self, latent_frame: int) -> int:
        """Index of the first pixel frame that latent frame ``latent_frame`` decodes to: as many as
        the latent frames before it decode to (0 -> 0, t -> 4t-3)."""
        return self.frames_out(latent_frame) if latent_frame else 0

    def latent_frames(self, frames: int) -> int:
        """Latent frames for ``frames`` pixel frames, which must be 4k+1."""
        return (frames - 1) // self.temporal_ratio + 1

    def check_frames(self, frames: int, name: str = "frames") -> None:
        """Raise a ValueError naming ``name``, the value and the nearest valid counts unless
        ``frames`` is 4k+1 (the VAE compresses time by 4 after the first frame)."""
        ratio = self.temporal_ratio
        if isinstance(frames, int) and frames >= 1 and (frames - 1) % ratio == 0:
            return
        low = max(1, (int(frames) - 1) // ratio * ratio + 1)
        near = f"{low}" if int(frames) < low else f"{low} or {low + ratio}"
        raise ValueError(f"{name}={frames} is not {ratio}k+1; nearest valid: {near}")


def groups_for(channels: tuple[int, ...], limit: int = 32) -> int:
    """Largest GroupNorm group count <= ``limit`` dividing every width (32 for the real model)."""
    common = 0
    for ch in channels:
        common = math.gcd(common, ch)
    return math.gcd(common, limit)


HUNYUAN_VIDEO_VAE = VAEConfig()

# Same code, toy widths: 8x/4x compression is kept so that shapes match the real pipeline.
# Widths of 16 keep CPU convolutions on the fast (oneDNN) path; 8 channels fall back to a slow kernel.
TINY_VAE = VAEConfig(block_channels=(16, 16, 16, 16), layers_per_block=1, norm_groups=16)

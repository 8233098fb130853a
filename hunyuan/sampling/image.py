"""Image-to-video: how an encoded first frame enters sampling, for each DiT variant.

The DiT's input width says how it takes an image (:attr:`DiTConfig.image_input`):

- ``none`` (16 channels): text-to-video, or HunyuanVideo-I2V *token replace* (the fixed "v2"
  weights). The file cannot tell them apart, so the user's ``mode`` decides. Token replace puts
  the clean image latent in latent frame 0 before every DiT call (its tokens are modulated as at
  t=0) and never moves frame 0: its velocity is zeroed, so frame 0 stays the image latent
  exactly. Only frames 1.. are denoised (Tencent, diffusers).
- ``concat_mask`` (33 channels, HunyuanVideo-I2V "v1"): the DiT sees [noisy latent; image latent
  in frame 0, zeros after; a mask channel, 1 in frame 0]. Tencent and diffusers drop latent frame
  0 of the result (4 video frames), and so do we.
- ``concat`` (32 channels, SkyReels-V1): [noisy latent; image latent in frame 0, zeros after].
  The image latent is a *sample* of the VAE posterior (SkyReels' code and diffusers), drawn from
  a CPU generator seeded with the sampler's seed.

``stability`` (Tencent's ``--i2v-stability``; diffusers always does it) starts every frame from
``0.999 * noise + 0.001 * image latent`` instead of plain noise.
All latents here are in model space (raw VAE latent times the VAE's scaling factor).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

MODES = ("token_replace", "t2v")
"""What a 16-channel DiT does with the image: HunyuanVideo-I2V v2 token replace, or ignore it (T2V)."""

STABILITY_T = 0.999

I2V_RESOLUTIONS = {"720p": 960, "540p": 720, "360p": 480}
"""Tencent's ``--i2v-resolution`` -> the side of the square bucket whose area every bucket has."""


def size_buckets(base: int, grid: int = 32, max_ratio: float = 4.0) -> list[tuple[int, int]]:
    """HunyuanVideo-I2V's (height, width) buckets for ``base``, in Tencent's order (the first of
    equally close buckets would win; no two share an aspect at the three resolutions): multiples of ``grid``, about ``(base / grid)**2`` cells, sides at most
    ``max_ratio`` apart. Walks from the tallest: widen while the area allows, else lower."""
    cells = round((base / grid) ** 2)
    rows, cols, out = cells, 1, []
    while rows > 0:
        if max(rows, cols) <= max_ratio * min(rows, cols):
            out.append((rows * grid, cols * grid))
        if (cols + 1) * rows <= cells:
            cols += 1
        else:
            rows -= 1
    return out


def bucket_for(height: int, width: int, resolution: str) -> tuple[int, int]:
    """The (height, width) bucket HunyuanVideo-I2V picks for an image: the first whose aspect
    (height / width, rounded to 5 decimals as Tencent does) is closest to the image's."""
    if resolution not in I2V_RESOLUTIONS:
        raise ValueError(f"resolution={resolution!r} is not one of {tuple(I2V_RESOLUTIONS)}")
    buckets = size_buckets(I2V_RESOLUTIONS[resolution])
    aspect = height / width
    return min(buckets, key=lambda hw: abs(round(hw[0] / hw[1], 5) - aspect))


@dataclass(frozen=True)
class FirstFrame:
    """An encoded input image, as the I2V node hands it to the sampler (raw VAE space).

    mean, std: [B, 16, 1, h, w] of the VAE posterior; mode: one of :data:`MODES` (used only by a
    16-channel DiT); stability: start from 0.999 noise + 0.001 image latent.
    """

    mean: torch.Tensor
    std: torch.Tensor
    mode: str = "token_replace"
    stability: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} is unknown; expected one of {', '.join(MODES)}")


@dataclass(frozen=True)
class ImageInput:
    """A first frame resolved against one DiT: ``how`` is token_replace, concat_mask or concat."""

    how: str
    raw: torch.Tensor  # [B, 16, 1, h, w] raw VAE space
    stability: bool
    scale: float  # model space = raw * scale

    @property
    def latent(self) -> torch.Tensor:
        return self.raw * self.scale

    def start(self, noise: torch.Tensor) -> torch.Tensor:
        """The initial state from [B, 16, T, h, w] model-space noise."""
        x = noise
        if self.stability:
            t = torch.tensor(STABILITY_T, dtype=noise.dtype, device=noise.device)
            x = noise * t + self.latent.to(noise) * (1 - t)
        if self.how == "token_replace":
            x = torch.cat([self.latent.to(x).expand(x.shape[0], -1, -1, -1, -1), x[:, :, 1:]], dim=2)
        return x

    def wrap(self, model: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """The DiT with the image put in: same call signature, velocity for the 16 latent channels."""
        if self.how == "token_replace":
            return self._token_replace(model)

        def concat(x, *args, **kwargs):
            frames = torch.zeros(x.shape[0], self.latent.shape[1], *x.shape[2:], device=x.device, dtype=x.dtype)
            frames[:, :, :1] = self.latent.to(x)
            parts = [x, frames]
            if self.how == "concat_mask":
                mask = torch.zeros_like(frames[:, :1])
                mask[:, :, 0] = 1
                parts.append(mask)
            return model(torch.cat(parts, dim=1), *args, **kwargs)

        return concat

    def _token_replace(self, model):
        def replaced(x, *args, **kwargs):
            image = self.latent.to(x).expand(x.shape[0], -1, -1, -1, -1)
            v = model(torch.cat([image, x[:, :, 1:]], dim=2), *args, token_replace=True, **kwargs)
            return torch.cat([torch.zeros_like(v[:, :, :1]), v[:, :, 1:]], dim=2)

        return replaced

    def finish(self, out: torch.Tensor) -> torch.Tensor:
        """Model-space result -> raw latent as the reference returns it.

        concat_mask drops latent frame 0; token replace's frame 0 is the raw image latent itself
        (not ``raw * scale / scale``, which may differ in the last bit).
        """
        raw = out / self.scale
        if self.how == "concat_mask":
            return raw[:, :, 1:]
        if self.how == "token_replace":
            raw[:, :, :1] = self.raw.to(raw)
        return raw


def resolve(image_input: str, first: FirstFrame | None, *, scale: float, seed: int,
            latent_hw: tuple[int, int]) -> ImageInput | None:
    """Check a first frame against the DiT (``image_input`` of its config) and put it in model space.

    Raises ValueError naming the input when the DiT needs an image and has none, or when the
    image latent's size is not the video's.
    """
    if first is None:
        if image_input != "none":
            raise ValueError(
                f"image: this DiT is an image-to-video model (image input {image_input!r}) and needs an image; "
                "connect HunyuanVideo I2V Encode to the sampler's image input"
            )
        return None
    if tuple(first.mean.shape[-2:]) != tuple(latent_hw):
        h, w = (8 * s for s in first.mean.shape[-2:])
        raise ValueError(
            f"image was encoded at {w}x{h} but the sampler makes {8 * latent_hw[1]}x{8 * latent_hw[0]}; "
            "give the I2V node and the sampler the same width and height"
        )
    if image_input == "none":
        if first.mode == "t2v":
            return None
        return ImageInput("token_replace", first.mean, first.stability, scale)
    latent = first.mean
    if image_input == "concat":
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
        draw = torch.randn(first.mean.shape, generator=generator, dtype=first.mean.dtype)
        latent = first.mean + first.std * draw.to(first.std.device)
    return ImageInput(image_input, latent, first.stability, scale)

"""HunyuanVideo's causal 3D VAE: encoder, decoder and the KL autoencoder around them.

Shapes: video [B, 3, 4k+1, H, W] in -1..1  <->  latent [B, 16, k+1, H/8, W/8] (raw, unscaled).
Each half is split in two so that tiling can run the cheap innermost part (mid block with its
whole-frame attention, at latent resolution) on the whole video and tile only the expensive
full-resolution part:
  encoder = body (conv_in, down blocks)  ->  tail (mid block, norm, conv_out)
  decoder = stem (conv_in, mid block, the first up block's resnets)
            ->  head (the first up block's upsampler, the other up blocks, norm, conv_out)
The first up block's resnets run at the latent's resolution, like the mid block: in the stem they
cost little memory, and a tiled decode gets them exact (no tile borders, whole-video statistics).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .config import VAEConfig
from .layers import (
    CausalConv3d,
    Downsample,
    GroupNorm3d,
    MidBlock,
    ResBlock,
    Runtime,
    Upsample,
    activation_format,
)


class DownBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, stride) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResBlock(cin if i == 0 else cout, cout, groups) for i in range(layers)])
        self.downsamplers = nn.ModuleList([Downsample(cout, stride)]) if stride else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.downsamplers is None else self.downsamplers[0](x)


class UpBlock(nn.Module):
    def __init__(self, cin: int, cout: int, layers: int, groups: int, factor) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResBlock(cin if i == 0 else cout, cout, groups) for i in range(layers)])
        self.upsamplers = nn.ModuleList([Upsample(cout, factor)]) if factor else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.upsamplers is None else self.upsamplers[0](x)


class Encoder(nn.Module):
    """[B, 3, 4k+1, H, W] -> [B, 2*latent, k+1, H/8, W/8] (mean and log-variance)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        chans, g = cfg.block_channels, cfg.norm_groups
        self.conv_in = CausalConv3d(cfg.image_channels, chans[0])
        strides = cfg.resample_factors()
        self.down_blocks = nn.ModuleList(
            DownBlock(chans[max(i - 1, 0)], chans[i], cfg.layers_per_block, g, strides[i]) for i in range(len(chans))
        )
        self.mid_block = MidBlock(chans[-1], g, cfg.mid_attention)
        self.conv_norm_out = GroupNorm3d(g, chans[-1], eps=1e-6)
        self.conv_out = CausalConv3d(chans[-1], 2 * cfg.latent_channels)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return x

    def body_norms(self) -> list[GroupNorm3d]:
        """The GroupNorms of :meth:`body`, in the order they run."""
        return [m for m in self.down_blocks.modules() if isinstance(m, GroupNorm3d)]

    def tail(self, h: torch.Tensor) -> torch.Tensor:
        h = self.mid_block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h), inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tail(self.body(x))


class Decoder(nn.Module):
    """[B, latent, T, h, w] -> [B, 3, 4(T-1)+1, 8h, 8w]."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        chans, g = tuple(reversed(cfg.block_channels)), cfg.norm_groups
        self.conv_in = CausalConv3d(cfg.latent_channels, chans[0])
        self.mid_block = MidBlock(chans[0], g, cfg.mid_attention)
        factors = cfg.resample_factors()
        self.up_blocks = nn.ModuleList(
            UpBlock(chans[max(i - 1, 0)], chans[i], cfg.layers_per_block + 1, g, factors[i]) for i in range(len(chans))
        )
        self.conv_norm_out = GroupNorm3d(g, chans[-1], eps=1e-6)
        self.conv_out = CausalConv3d(chans[-1], cfg.image_channels)

    def stem(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid_block(self.conv_in(z))
        for resnet in self.up_blocks[0].resnets:  # still at the latent's resolution
            h = resnet(h)
        return h

    def head_norms(self, blocks: int = 0) -> list[GroupNorm3d]:
        """The GroupNorms of :meth:`head`, in the order they run: those of the first ``blocks`` up
        blocks only, or (``blocks=0``) all of them and the final norm. The first up block's norms
        are the stem's, so they are never among them."""
        ups = self.up_blocks[1:blocks] if blocks else self.up_blocks[1:]
        norms = [m for m in ups.modules() if isinstance(m, GroupNorm3d)]
        return norms if blocks else norms + [self.conv_norm_out]

    def head(self, h: torch.Tensor) -> torch.Tensor:
        first = self.up_blocks[0]
        if first.upsamplers is not None:
            h = first.upsamplers[0](h)
        for block in self.up_blocks[1:]:
            h = block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h), inplace=True))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(z))


class CausalVAE(nn.Module):
    """The whole autoencoder. ``encode`` returns the posterior mean; ``decode`` the video in -1..1."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv3d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.post_quant_conv = nn.Conv3d(cfg.latent_channels, cfg.latent_channels, 1)

    def weight_device_dtype(self) -> tuple[torch.device, torch.dtype]:
        """Where the weights live and in which dtype (inputs are moved there)."""
        w = self.post_quant_conv.weight
        return w.device, w.dtype

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` on the weights' device and dtype, in the memory format the convolutions run fastest in."""
        device, dtype = self.weight_device_dtype()
        return x.to(device, dtype).contiguous(memory_format=activation_format(device))

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """[B, 3, 4k+1, H, W] in -1..1 -> raw latent mean [B, 16, k+1, H/8, W/8]."""
        moments = self.quant_conv(self.encoder(self.prepare(video)))
        return moments[:, : self.config.latent_channels].contiguous()

    def posterior(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, 4k+1, H, W] in -1..1 -> (mean, std) of the latent posterior, each [B, 16, k+1, H/8, W/8].

        std = exp(logvar / 2) with logvar clamped to -30..20 (diffusers' DiagonalGaussianDistribution).
        """
        mean, logvar = self.quant_conv(self.encoder(self.prepare(video))).chunk(2, dim=1)
        return mean.contiguous(), torch.exp(0.5 * logvar.clamp(-30.0, 20.0))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Raw latent [B, 16, T, h, w] -> video [B, 3, 4(T-1)+1, 8h, 8w] in about -1..1."""
        return self.decoder(self.post_quant_conv(self.prepare(latent))).contiguous()

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.decode(latent)

    @contextmanager
    def running(self, rt: Runtime | None):
        """Attach ``rt`` to every conv, norm and upsampler for the duration of the block."""
        users = [m for m in self.modules() if isinstance(m, (CausalConv3d, GroupNorm3d, Upsample))]
        for m in users:
            m.runtime = rt
        try:
            yield rt
        finally:
            for m in users:
                m.runtime = None

"""Seams: tiled vs untiled decode of the same latent, ours against diffusers' tiling.

Same weights, same latent, same tile sizes (diffusers' tile/stride in pixels == our tile/overlap
in latent pixels x8; diffusers' temporal window of 16 frames == our chunk of 4 latent frames).
"""

from __future__ import annotations

import pytest
import torch

from hunyuan.vae import tiled
from hunyuan.vae.config import TINY_VAE
from hunyuan.vae.loader import load_vae
from hunyuan.vae.tiling import TileSpec
from hunyuan.vae.tiny import random_state_dict
from tests.peers import diffusers_vae

diffusers = pytest.importorskip("diffusers")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return (10 * torch.log10(4 / ((a - b) ** 2).mean())).item()  # signal range -1..1


@torch.no_grad()
@pytest.mark.parametrize(("tile", "overlap"), [(8, 2)])
def test_our_seams_beat_diffusers_tiling(tile, overlap):
    sd = random_state_dict(TINY_VAE, seed=0)
    ours = load_vae(sd)
    ref = diffusers_vae(TINY_VAE, sd)
    z = torch.randn(1, 16, 5, 12, 12, generator=torch.Generator().manual_seed(0))
    full = ours.decode(z)
    ref.use_framewise_decoding = False
    assert ((ref.decode(z).sample - full).abs().max() / full.abs().max()).item() <= 1e-5  # same untiled model

    px, stride = tile * 8, (tile - overlap) * 8
    ref.enable_tiling(
        tile_sample_min_height=px, tile_sample_min_width=px, tile_sample_stride_height=stride,
        tile_sample_stride_width=stride, tile_sample_min_num_frames=16, tile_sample_stride_num_frames=12,
    )
    ref.use_framewise_decoding = True
    theirs = ref.decode(z).sample
    mine = tiled.decode(ours, z, TileSpec(tile=tile, overlap=overlap, chunk=4))
    assert mine.shape == theirs.shape == full.shape == (1, 3, 17, 96, 96)
    ours_db, theirs_db = psnr(mine, full), psnr(theirs, full)
    print(f"tile {px}px overlap {overlap * 8}px: ours {ours_db:.2f} dB, diffusers {theirs_db:.2f} dB")
    assert ours_db >= theirs_db

"""Decode and encode through tiles (see :mod:`.tiling` for the why)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .layers import Runtime, StopPass
from .model import CausalVAE
from .tiling import (
    Interrupt,
    Progress,
    Ticker,
    TileSpec,
    tile_chunks,
    tile_ramp,
    tile_spans,
    with_oom_retry,
)

Span = tuple[int, int]


def _sweep(
    fn: Callable[[torch.Tensor], torch.Tensor],
    take: Callable[[Span, Span, Span], torch.Tensor],
    grid: tuple[list[Span], list[Span], list[Span]],
    rt: Runtime,
    ticker: Ticker,
    sink: Callable[[int, int, Span, torch.Tensor], None] | None,
) -> None:
    """Run ``fn`` over every (tile, chunk); chunks of one tile stream through the causal convs."""
    ys, xs, times = grid
    for i, yspan in enumerate(ys):
        for j, xspan in enumerate(xs):
            rt.start_tile()
            for tspan in times:
                ticker.check()
                rt.last_chunk = tspan == times[-1]
                try:
                    out = fn(take(tspan, yspan, xspan))
                except StopPass:  # a statistics pass that needs nothing past the norm it records
                    out = None
                rt.first_chunk = False
                if sink is not None:
                    sink(i, j, tspan, out)
                del out
                ticker.tick()


def _units(grid) -> int:
    return len(grid[0]) * len(grid[1]) * len(grid[2])


def _run_passes(vae, fn, norms, take, grid, spec, ticker_args, sink, size: tuple[int, int], stats_tile: int) -> None:
    """The output pass over ``grid``, preceded with shared statistics by ``spec.norm_passes``
    statistics passes on tiles of side ``stats_tile`` without overlap (each pixel counted once).
    ``norms`` are the norms that share statistics (any others normalise each piece on its own).

    Pass k (of P) normalises ``norms[:k-1]`` with the statistics recorded before it and every later
    norm with each piece's own, recording them. Passes before the last stop after recording
    ``norms[k-1]``, so they cost only the network up to it; the last records all remaining norms
    (and stops after the last norm).
    With whole frames the first P norms' statistics are therefore exact (their inputs are) and
    the rest approximate; P >= len(norms) (or 0) gives exact whole-video statistics."""
    passes = min(spec.norm_passes or len(norms), len(norms)) if spec.shared_norm and _units(grid) > 1 else 0
    stats_grid = (tile_spans(size[0], stats_tile, 0), tile_spans(size[1], stats_tile, 0), grid[2])
    ticker = Ticker(_units(grid) + passes * _units(stats_grid), *ticker_args)
    rt, final = Runtime(), {}
    with vae.running(rt):
        for k in range(passes):
            last = k == passes - 1
            rt.stats, rt.sums, rt.record = dict(final), {}, True
            rt.stop_at = id(norms[-1] if last else norms[k])  # nothing after the last norm is needed
            _sweep(fn, take, stats_grid, rt, ticker, None)
            final.update(rt.sums if last else {id(norms[k]): rt.sums[id(norms[k])]})
        rt.stats, rt.record, rt.stop_at = final, False, None
        _sweep(fn, take, grid, rt, ticker, sink)


@torch.no_grad()
def decode(
    vae: CausalVAE,
    latent: torch.Tensor,
    spec: TileSpec | None = None,
    *,
    progress: Progress | None = None,
    interrupt: Interrupt | None = None,
    out_device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Raw latent [B, 16, T, h, w] -> float32 video [B, 3, 4(T-1)+1, 8h, 8w] (about -1..1) on ``out_device``.

    ``spec=None`` decodes in one piece. Otherwise tiles per ``spec``, shrinking them on a device OOM.
    """
    if spec is None:
        if interrupt is not None:
            interrupt()
        out = vae.decode(latent).to(out_device, torch.float32)
        if progress is not None:
            progress(1, 1)
        return out
    return with_oom_retry(
        lambda s: _decode_tiled(vae, latent, s, (progress, interrupt), out_device), spec, tuple(latent.shape)
    )


def _decode_tiled(vae: CausalVAE, latent: torch.Tensor, spec: TileSpec, ticker_args, out_device) -> torch.Tensor:
    # the whole latent: exact mid-block attention and first up block (whole-video statistics, no tile borders)
    feats = vae.decoder.stem(vae.post_quant_conv(vae.prepare(latent)))
    b, _, frames, height, width = feats.shape
    s = vae.config.spatial_ratio
    grid = (tile_spans(height, spec.tile, spec.overlap), tile_spans(width, spec.tile, spec.overlap), tile_chunks(frames, spec.chunk))
    out = torch.zeros(b, vae.config.image_channels, vae.config.frames_out(frames), height * s, width * s, device=out_device)
    weight = torch.zeros(height * s, width * s, device=out_device)
    ramps_y = [tile_ramp(grid[0], i, s).to(out_device) for i in range(len(grid[0]))]
    ramps_x = [tile_ramp(grid[1], j, s).to(out_device) for j in range(len(grid[1]))]

    def take(t: Span, y: Span, x: Span) -> torch.Tensor:
        return feats[:, :, t[0] : t[1], y[0] : y[1], x[0] : x[1]]

    def sink(i: int, j: int, t: Span, video: torch.Tensor) -> None:
        (y0, y1), (x0, x1) = grid[0][i], grid[1][j]
        w = ramps_y[i][:, None] * ramps_x[j][None, :]
        f0 = vae.config.first_pixel_frame(t[0])
        region = out[:, :, f0 : f0 + video.shape[2], y0 * s : y1 * s, x0 * s : x1 * s]
        region.add_(video.to(out_device, torch.float32) * w)
        if t[0] == 0:
            weight[y0 * s : y1 * s, x0 * s : x1 * s] += w

    blocks = len(vae.decoder.up_blocks)
    if spec.shared_blocks > blocks:
        raise ValueError(f"shared_blocks={spec.shared_blocks}: the decoder has {blocks} up blocks "
                         f"(expected 0 for all norms, or 1..{blocks})")
    norms = vae.decoder.head_norms(spec.shared_blocks)
    # Statistics passes that stop within the first two up blocks never reach more than 512 channels
    # at twice the latent's side and frame rate 1, >= 16x fewer elements per latent pixel than the
    # output pass's full-resolution layers: tiles of 4x the side fit the same memory and waste less
    # on borders (and get fewer border errors into the statistics).
    stats_tile = spec.tile * 4 if 0 < spec.shared_blocks <= 2 else spec.tile
    _run_passes(vae, vae.decoder.head, norms, take, grid, spec, ticker_args, sink, (height, width), stats_tile)
    return out.div_(weight)


@torch.no_grad()
def encode(
    vae: CausalVAE,
    video: torch.Tensor,
    spec: TileSpec | None = None,
    *,
    progress: Progress | None = None,
    interrupt: Interrupt | None = None,
) -> torch.Tensor:
    """Video [B, 3, 4k+1, H, W] in -1..1 (H, W multiples of 8) -> raw latent mean [B, 16, k+1, H/8, W/8]."""
    vae.config.check_frames(video.shape[2])
    s = vae.config.spatial_ratio
    if video.shape[-1] % s or video.shape[-2] % s:
        raise ValueError(f"video size {video.shape[-2]}x{video.shape[-1]} is not a multiple of {s}")
    if spec is None:
        if interrupt is not None:
            interrupt()
        out = vae.encode(video)
        if progress is not None:
            progress(1, 1)
        return out
    return with_oom_retry(lambda sp: _encode_tiled(vae, video, sp, (progress, interrupt)), spec, tuple(video.shape))


def _encode_tiled(vae: CausalVAE, video: torch.Tensor, spec: TileSpec, ticker_args) -> torch.Tensor:
    b, _, frames, height, width = video.shape
    device = vae.weight_device_dtype()[0]
    config = vae.config
    s = config.spatial_ratio
    lat = (config.latent_frames(frames), height // s, width // s)
    grid = (tile_spans(lat[1], spec.tile, spec.overlap), tile_spans(lat[2], spec.tile, spec.overlap), tile_chunks(lat[0], spec.chunk))
    feats = torch.zeros(b, config.block_channels[-1], *lat, device=device)
    weight = torch.zeros(lat[1], lat[2], device=device)
    ramps_y = [tile_ramp(grid[0], i, 1).to(device) for i in range(len(grid[0]))]
    ramps_x = [tile_ramp(grid[1], j, 1).to(device) for j in range(len(grid[1]))]

    def take(t: Span, y: Span, x: Span) -> torch.Tensor:
        clip = video[:, :, config.first_pixel_frame(t[0]) : config.first_pixel_frame(t[1])]
        return vae.prepare(clip[..., y[0] * s : y[1] * s, x[0] * s : x[1] * s])

    def sink(i: int, j: int, t: Span, h: torch.Tensor) -> None:
        (y0, y1), (x0, x1) = grid[0][i], grid[1][j]
        w = ramps_y[i][:, None] * ramps_x[j][None, :]
        feats[:, :, t[0] : t[1], y0:y1, x0:x1].add_(h.float() * w)
        if t[0] == 0:
            weight[y0:y1, x0:x1] += w

    _run_passes(vae, vae.encoder.body, vae.encoder.body_norms(), take, grid, spec, ticker_args, sink, lat[1:], spec.tile)
    moments = vae.quant_conv(vae.encoder.tail(vae.prepare(feats.div_(weight))))
    return moments[:, : config.latent_channels].contiguous()

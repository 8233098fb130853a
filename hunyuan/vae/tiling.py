"""Tiled decode and encode in space and time, with seams hidden at the source.

Why tiles seam, and what this module does about each cause:

* Time. Every convolution is causal, so instead of overlapping frame windows we stream the
  latent in chunks of frames and let each causal conv carry the tail of its input into the next
  chunk (:class:`~.layers.Runtime`). Convolutions are then exact across chunk borders and the
  output has exactly 4*(T-1)+1 frames.
* Whole-frame operations. The mid block (attention over every token of a frame) and the first up
  block's resnets run on the whole latent, where they are cheap (1/64 of the pixels): exact, with no
  tile borders. Only the upsampled part is tiled.
* GroupNorm statistics. Normalising each tile with its own mean/variance shifts brightness and
  contrast from tile to tile. With ``shared_norm``, statistics passes over tiles without overlap
  (each pixel counted once) record every norm's statistics over the whole video, and the output
  pass normalises every tile with them. They are only approximately the untiled decode's: a norm's
  input depends on how the norms before it normalised, and a statistics pass can only normalise
  with statistics already known. Pass k therefore uses the statistics of norms 1..k-1 recorded by
  earlier passes and records norm k (and, in the last pass, all later norms, normalised piece by
  piece). With whole frames the first ``norm_passes`` norms are exact and ``norm_passes=0`` (one
  pass per norm) is the untiled decode; with spatial tiles each pass also sees the tile borders'
  padding, so they stay approximate. Measured accuracies: :data:`MEASURED_DB`.
* Receptive field. Tiles overlap; each is weighted by a ramp that falls towards its inner edges
  (where padding made it least accurate) and the weighted sum is renormalised.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

log = logging.getLogger(__name__)

OOM_ERRORS: tuple[type[BaseException], ...] = tuple(
    {getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError}
)
Progress = Callable[[int, int], None]
Interrupt = Callable[[], None]


@dataclass(frozen=True)
class TileSpec:
    """Tile sizes in LATENT units. ``tile=0`` / ``chunk=0`` mean "no tiling" along that axis."""

    tile: int = 32  # spatial tile side (latent pixels; x8 for output pixels)
    overlap: int = 8  # spatial overlap between neighbouring tiles (latent pixels)
    chunk: int = 4  # latent frames per temporal chunk
    shared_norm: bool = True  # GroupNorm statistics recorded over the whole video, shared by every tile
    norm_passes: int = 1  # statistics passes before the output pass (shared_norm only); 0: one per norm (exact)
    # shared_norm only: share the statistics of the norms in the first N up blocks of the decoder
    # (the low-resolution end, cheap to record); later norms normalise each piece on its own. 0: all
    # norms, the final one included. The first up block's norms run in the decoder's stem, on the
    # whole latent, and are exact whatever this says. Decode only: encoding always shares all.
    shared_blocks: int = 0

    def __post_init__(self) -> None:
        if self.tile < 0 or self.chunk < 0 or self.overlap < 0:
            raise ValueError(f"tile sizes must be >= 0, got {self}")
        if self.shared_blocks < 0:
            raise ValueError(f"shared_blocks={self.shared_blocks} must be >= 0 (0: every norm shares statistics)")
        if self.norm_passes < 0:
            raise ValueError(f"norm_passes={self.norm_passes} must be >= 0 (0: one pass per norm layer, exact)")
        if self.tile and self.overlap >= self.tile:
            raise ValueError(f"overlap={self.overlap} must be smaller than tile={self.tile} (latent pixels)")

    def smaller(self, height: int, width: int, frames: int) -> TileSpec | None:
        """The next spec to try after running out of memory, or None when nothing is left to shrink."""
        tile = self.tile or max(height, width)
        if tile > 8:
            new = max(8, tile // 2)
            return replace(self, tile=new, overlap=min(self.overlap or new // 4, new // 2))
        chunk = self.chunk or frames
        if chunk > 1:
            return replace(self, chunk=chunk // 2)
        return None


# Elements carried between temporal chunks per latent pixel of a tile, over ``widest``: two frames
# of every causal conv's input in the decoder head, but one frame of the low-resolution input of the
# two upsamplers that double the frame rate (their upsampling is folded into the conv), channels x
# upscale^2 for the real layout (widths w, 2w, 4w, 4w; three resnets per up block, the first block's
# in the stem). Counted by the caches after a chunk at a 16x16 latent tile: 1812 (the tile's
# one-pixel padding included).
CARRIED_PER_WIDEST = 1720
# Elements of the upsamplers' folded kernels (layers.CausalConv3d.forward_upsampled), over widest^2, for
# the real layout: 4 kernels of 4w x 4w x 3x2x2 (space only) + 8 of 4w x 4w x 2x2x2 + 8 of 2w x 2w x 2x2x2.
FOLDED_PER_WIDEST_SQ = 2048


def estimate_peak(spec: TileSpec, latent_shape: tuple[int, ...], widest: int = 128, dtype_size: int = 2) -> int:
    """Rough peak bytes of a decode with ``spec``: ~6 live activations of the widest full-resolution
    block (``widest`` channels) per output voxel of one tile-chunk, the tails the causal convs carry
    from chunk to chunk (only when the frames are split), the upsamplers' folded kernels, and the
    whole-latent stem: mid block and first up block (~8 tensors of 512 channels)."""
    _, _, frames, height, width = latent_shape
    th, tw = (height, width) if spec.tile == 0 else (min(spec.tile, height), min(spec.tile, width))
    voxels = 4 * (spec.chunk or frames) * th * tw * 64
    carried = CARRIED_PER_WIDEST * widest * th * tw if 0 < spec.chunk < frames else 0
    folded = FOLDED_PER_WIDEST_SQ * widest * widest  # the upsamplers' folded kernels, held for the decode
    return int((6 * widest * voxels + carried + folded + 8 * 512 * frames * height * width) * dtype_size)


# Accuracy of each tiling mode: PSNR (dB, range 0..1) of the decode against the untiled one, measured
# by bench/bench_vae_decode.py --shape 2 24 24 at real widths with random weights (bf16, 5 frames of
# 192x192: 2 latent frames, so chunks of 1 split off frame 0; 128/32 px tiles; bench/RESULTS.md).
# One shape only: other sizes and real weights will differ. Exact modes are not listed: untiled,
# one chunk and one tile, and whole frames with norm_passes=0. norm_passes between 1 and the number
# of norms counts as 1 here: only one pass and all passes were measured.
MEASURED_DB = {
    "frames_shared": 47.5,  # whole frames in temporal chunks, one statistics pass
    "frames_per_chunk": 48.4,  # whole frames in temporal chunks, each chunk its own statistics
    "tiles_shared": 36.5,  # spatial tiles, one statistics pass
    "tiles_per_tile": 31.7,  # spatial tiles, each tile its own statistics
    # spatial tiles, one statistics pass, shared_blocks=2 (the rest per tile): measured by the same
    # command with --variants ours_untiled ours_tiled_shared2 (bench/results/vae_shared_blocks_2x24x24.json)
    "tiles_shared_2": 32.0,
}
# Time of shared statistics (one statistics pass, then the output pass) over per-piece statistics (the
# output pass alone) at 128/32 px tiles, 17 frames of 256x256, bf16, real widths: 100.1 / 60.1 s, the
# medians of two interleaved runs (bench/results/vae_shared_speed_5x32x32.json). The statistics pass
# runs the decoder to its last norm over every pixel once, about one untiled decode.
MEASURED_SHARED_TIME = 1.67


def expected_db(spec: TileSpec, latent_shape: tuple[int, ...]) -> float:
    """The measured accuracy of ``spec``'s mode on ``latent_shape`` (inf where the decode is exact)."""
    frames, height, width = latent_shape[2:]
    tiled = 0 < spec.tile < max(height, width)
    chunked = 0 < spec.chunk < frames
    # shared_blocks=1 shares nothing: the first up block's norms run in the stem, exact whatever the mode
    if spec.shared_norm and spec.shared_blocks == 1:
        spec = replace(spec, shared_norm=False, shared_blocks=0)
    partial = spec.shared_norm and spec.shared_blocks > 0  # some norms shared, the rest per piece
    if not tiled and (not chunked or (spec.shared_norm and spec.norm_passes == 0 and not partial)):
        return math.inf
    where = "tiles" if tiled else "frames"
    if partial:  # measured for 2 blocks with spatial tiles; otherwise no more than the worse of the two modes
        measured = MEASURED_DB.get(f"{where}_shared_{spec.shared_blocks}")
        per_piece = MEASURED_DB["tiles_per_tile" if tiled else "frames_per_chunk"]
        return measured if measured is not None else min(MEASURED_DB[f"{where}_shared"], per_piece)
    norm = "shared" if spec.shared_norm else ("per_tile" if tiled else "per_chunk")
    return MEASURED_DB[f"{where}_{norm}"]


def auto_choice(
    free_bytes: int, latent_shape: tuple[int, ...], widest: int = 128, dtype_size: int = 2, norm_passes: int = 1
) -> tuple[TileSpec, str]:
    """The most accurate tiling (:func:`expected_db`) whose estimated peak fits in 80% of
    ``free_bytes``, and why. Among equally accurate ones: whole frames, then the largest tile,
    then the longest chunk (fewest pieces, least time). Shared or per-piece statistics are
    chosen by the same measurement; ``norm_passes`` is the caller's (it costs time, not memory)."""
    budget, fitting, best_db = 0.8 * free_bytes, [], -math.inf
    for tile in (0, 96, 64, 48, 32, 24, 16, 8):
        for chunk in (0, 8, 4, 2, 1):
            for shared in (True, False):
                spec = TileSpec(tile, min(8, tile // 4), chunk, shared_norm=shared, norm_passes=norm_passes)
                db = expected_db(spec, latent_shape)
                best_db = max(best_db, db)
                if estimate_peak(spec, latent_shape, widest, dtype_size) <= budget:
                    fitting.append((db, spec))
    if not fitting:
        spec = TileSpec(tile=8, overlap=2, chunk=1, norm_passes=norm_passes)
        return spec, f"nothing fits {budget / 2**20:.0f} MB (80% of free); smallest tiles {spec}"
    db, spec = max(fitting, key=lambda f: f[0])  # max() keeps the first of equals: the largest pieces
    need = estimate_peak(spec, latent_shape, widest, dtype_size)
    why = (f"{spec}: {'exact' if db == math.inf else f'{db:.1f} dB vs untiled (measured)'}, estimated peak "
           f"{need / 2**20:.0f} MB within {budget / 2**20:.0f} MB (80% of free)")
    if db < best_db:
        why += "; more accurate modes need more memory"
    frames, height, width = latent_shape[2:]
    tiled = 0 < spec.tile < max(height, width)
    if spec.shared_norm and (tiled or 0 < spec.chunk < frames):
        passes = ("a statistics pass" if spec.norm_passes == 1 else f"{spec.norm_passes} statistics passes"
                  if spec.norm_passes else "one statistics pass per GroupNorm")
        why += f"; shared statistics add {passes} (each up to one decode's time) before the output pass"
        if spec.norm_passes == 1 and tiled:
            why += f" (measured {MEASURED_SHARED_TIME:.2f}x the time of per-tile statistics at 128/32 px tiles)"
    return spec, why


def auto_tiling(
    free_bytes: int, latent_shape: tuple[int, ...], widest: int = 128, dtype_size: int = 2, norm_passes: int = 1
) -> TileSpec:
    """:func:`auto_choice`'s tiling, without the reason."""
    return auto_choice(free_bytes, latent_shape, widest, dtype_size, norm_passes)[0]


def tile_spans(size: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Start/end of tiles covering [0, size) every ``tile - overlap``; the last one may be shorter."""
    if tile == 0 or size <= tile:
        return [(0, size)]
    spans, start = [], 0
    while True:
        end = min(start + tile, size)
        spans.append((start, end))
        if end >= size:
            return spans
        start += tile - overlap


def tile_ramp(spans: list[tuple[int, int]], i: int, scale: int) -> torch.Tensor:
    """1-D blend weight of tile i in output pixels: 1 inside, falling linearly over each overlap."""
    a, b = spans[i]
    w = torch.ones((b - a) * scale)
    n = (spans[i - 1][1] - a) * scale if i > 0 else 0
    if n > 0:
        w[:n] = torch.minimum(w[:n], (torch.arange(n) + 0.5) / n)
    n = (b - spans[i + 1][0]) * scale if i < len(spans) - 1 else 0
    if n > 0:
        w[-n:] = torch.minimum(w[-n:], (torch.arange(n, 0, -1) - 0.5) / n)
    return w


def tile_chunks(frames: int, chunk: int) -> list[tuple[int, int]]:
    step = chunk or frames
    return [(s, min(s + step, frames)) for s in range(0, frames, step)]


class Ticker:
    def __init__(self, total: int, progress: Progress | None, interrupt: Interrupt | None) -> None:
        self.done, self.total, self.progress, self.interrupt = 0, total, progress, interrupt

    def check(self) -> None:
        if self.interrupt is not None:
            self.interrupt()

    def tick(self) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)


def with_oom_retry(run: Callable[[TileSpec], torch.Tensor], spec: TileSpec, shape: tuple[int, ...]) -> torch.Tensor:
    """Call ``run(spec)``; on a device OOM shrink the tiles and try again (logged)."""
    while True:
        try:
            return run(spec)
        except OOM_ERRORS as exc:
            smaller = spec.smaller(shape[-2], shape[-1], shape[2])
            if smaller is None:
                raise
            log.warning("VAE ran out of memory with %s (%s); retrying with %s", spec, str(exc)[:80], smaller)
            spec = smaller
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

"""RESULTS.md parts for issue 16 (VAE decode accuracy and speed): norm modes, our memory estimate
next to the measured working set, the time at ComfyUI's tiles, and the real-size estimates."""

from __future__ import annotations

import sys
from pathlib import Path

from bench.report_fmt import met, table, verdict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hunyuan.vae.tiling import TileSpec, auto_choice, estimate_peak  # noqa: E402

GB = 2**30
# (label, latent shape) of the two published sizes; cards by their memory
REAL_SIZES = [("1280x720x129", (1, 16, 33, 90, 160)), ("960x544x129", (1, 16, 33, 68, 120))]
CARDS = [("24 GB", 24 * GB), ("8 GB", 8 * GB)]


def _spec(r: dict) -> TileSpec | None:
    if not r.get("impl") == "ours" or (not r.get("tile_px") and not r.get("chunk")):
        return None
    return TileSpec(tile=r["tile_px"] // 8, overlap=r["overlap_px"] // 8, chunk=r["chunk"],
                    shared_norm=r.get("shared_norm", True), norm_passes=r.get("norm_passes", 1))


def _norm_mode(r: dict) -> str:
    if r.get("impl") != "ours":
        return "per piece" if r.get("tile_px") else "-"
    if _spec(r) is None:
        return "-"
    return f"shared x{r.get('norm_passes', 1)}" if r.get("shared_norm", True) else "per piece"


def _estimate_mb(r: dict, data: dict) -> str:
    """Our planner's estimate for an ``ours`` row (bf16 sizes as in the benchmark), in MB."""
    if r.get("impl") != "ours":
        return "-"
    spec = _spec(r) or TileSpec(tile=0, chunk=0)
    size = 2 if data.get("dtype") == "bf16" else 4
    return f"{estimate_peak(spec, tuple(data['latent']), 128, size) / 2**20:.0f}"


def issue16_verdicts(rows: dict) -> list[dict]:
    """Issue 16: our tiled decode <= 1.0x ComfyUI's native time at the same tiles, in the same run."""
    comfy, out = rows.get("comfy_tiled"), []
    if not comfy:
        return out
    for name in ("ours_tiled", "ours_tiled_per_tile_norm"):
        r = rows.get(name)
        if r is None:
            continue
        ratio = r["seconds"] / comfy["seconds"]
        out.append(verdict(f"VAE tiled time vs ComfyUI native tiled, same tiles ({name}, {_norm_mode(r)})",
                           "<= 1.0x (issue 16)", f"{ratio:.2f}x ({r['seconds']:.0f} vs {comfy['seconds']:.0f} s; "
                           f"peak {r['decode_peak_mb'] / comfy['decode_peak_mb']:.2f}x; PSNR "
                           f"{r['psnr_vs_untiled']:.2f} vs {comfy['psnr_vs_untiled']:.2f} dB)", met(ratio <= 1.0)))
    return out


def real_size_table() -> str:
    """What ``auto`` picks at the published sizes for 24 GB and 8 GB free, and the estimated peak."""
    rows = []
    for label, shape in REAL_SIZES:
        for card, free in CARDS:
            for passes in (1, 0):
                spec, why = auto_choice(free, shape, 128, 2, norm_passes=passes)
                tiles = f"{spec.tile * 8}/{spec.overlap * 8} px tiles" if spec.tile else "whole frames"
                rows.append([label, card, passes, f"{tiles}, chunk {spec.chunk or 'all'}, "
                             f"{'shared' if spec.shared_norm else 'per piece'}",
                             f"{estimate_peak(spec, shape, 128, 2) / GB:.2f}", why.split(': ', 1)[1]])
    return ("\n**Real sizes** (estimates only: bf16, the released widths; `auto` gets 80% of the free memory; "
            "norm_passes is the user's, 0 = exact statistics with whole frames):\n\n"
            + table(["video", "free", "norm_passes", "auto picks", "estimated peak (GB)", "why"], rows))


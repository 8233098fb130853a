"""RESULTS.md parts for issue 16 (VAE decode accuracy and speed): norm modes, our memory estimate
next to the measured working set, the time at ComfyUI's tiles, and the real-size estimates."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from bench.report_fmt import met, table, verdict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hunyuan.vae.tiling import TileSpec, auto_choice, estimate_peak  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEED_RUNS = "vae_shared_speed_*.json"  # bench_vae_decode.py --repeat runs at ComfyUI's tiles (issue 16)
GB = 2**30
# (label, latent shape) of the two published sizes; cards by their memory
REAL_SIZES = [("1280x720x129", (1, 16, 33, 90, 160)), ("960x544x129", (1, 16, 33, 68, 120))]
CARDS = [("24 GB", 24 * GB), ("8 GB", 8 * GB)]


def _spec(r: dict) -> TileSpec | None:
    if not r.get("impl") == "ours" or (not r.get("tile_px") and not r.get("chunk")):
        return None
    return TileSpec(tile=r["tile_px"] // 8, overlap=r["overlap_px"] // 8, chunk=r["chunk"],
                    shared_norm=r.get("shared_norm", True), norm_passes=r.get("norm_passes", 1),
                    shared_blocks=r.get("shared_blocks", 0))


def _norm_mode(r: dict) -> str:
    if r.get("impl") != "ours":
        return "per piece" if r.get("tile_px") else "-"
    if _spec(r) is None:
        return "-"
    if not r.get("shared_norm", True):
        return "per piece"
    blocks = r.get("shared_blocks", 0)
    return f"shared x{r.get('norm_passes', 1)}" + (f", first {blocks} up blocks" if blocks else "")


def _time_ratios(r: dict, comfy: dict) -> tuple[float, float | None]:
    """(wall, CPU) time ratio of ``r`` to ``comfy``; CPU None for runs that did not record it."""
    cpu = r["cpu_seconds"] / comfy["cpu_seconds"] if "cpu_seconds" in r and "cpu_seconds" in comfy else None
    return r["seconds"] / comfy["seconds"], cpu


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
    for name in ("ours_tiled", "ours_tiled_shared2", "ours_tiled_per_tile_norm"):
        r = rows.get(name)
        if r is None:
            continue
        ratio, cpu = _time_ratios(r, comfy)
        cpu_text = "" if cpu is None else f"; CPU time {cpu:.2f}x ({r['cpu_seconds']:.0f} vs {comfy['cpu_seconds']:.0f} s)"
        out.append(verdict(f"VAE tiled time vs ComfyUI native tiled, same tiles ({name}, {_norm_mode(r)})",
                           "<= 1.0x (issue 16)", f"{ratio:.2f}x ({r['seconds']:.0f} vs {comfy['seconds']:.0f} s{cpu_text}; "
                           f"peak {r['decode_peak_mb'] / comfy['decode_peak_mb']:.2f}x; PSNR "
                           f"{r['psnr_vs_untiled']:.2f} vs {comfy['psnr_vs_untiled']:.2f} dB)",
                           met(max(ratio, cpu or 0.0) <= 1.0)))
    return out


def speed_runs_table(paths: list[Path]) -> str:
    """Interleaved speed runs at ComfyUI's tiles (``bench_vae_decode.py --repeat``), one table per file:
    each of our rows against comfy_tiled by wall and by CPU time (medians), and their PSNR."""
    out = ""
    for path in paths:
        data = json.loads(path.read_text())
        rows, comfy = data["rows"], data["rows"].get("comfy_tiled")
        if not comfy:
            continue
        body = []
        for name, r in rows.items():
            if not r.get("tile_px") or (r["tile_px"], r["overlap_px"]) != (comfy["tile_px"], comfy["overlap_px"]):
                continue
            ratio, cpu = _time_ratios(r, comfy)
            psnr = "-" if r.get("psnr_vs_untiled") is None else f"{r['psnr_vs_untiled']:.2f}"
            tiny = "-" if r.get("tiny_psnr_vs_untiled") is None else f"{r['tiny_psnr_vs_untiled']:.2f}"
            body.append([name, _norm_mode(r), ", ".join(f"{x:.1f}" for x in r.get("seconds_runs", [r["seconds"]])),
                         ", ".join(f"{x:.1f}" for x in r.get("cpu_seconds_runs", [])) or "-", f"{ratio:.2f}",
                         "-" if cpu is None else f"{cpu:.2f}", r["decode_peak_mb"], psnr, tiny])
        out += (f"\n**Speed at ComfyUI's tiles, interleaved** (`{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}`: latent {data.get('latent')}, "
                f"{data.get('dtype')}, {comfy['tile_px']}/{comfy['overlap_px']} px tiles; variants run in turn, "
                f"ratios of medians; CPU = the child's user + system seconds over the decode):\n\n"
                + table(["variant", "norm", "wall s (runs)", "CPU s (runs)", "wall ratio", "CPU ratio", "peak (MB)",
                         "PSNR vs untiled (dB)", "tiny PSNR (dB)"], body))
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


"""Tiled VAE decode, side by side: ours, diffusers' tiling, ComfyUI's native tiled decode.

One command: ``.venv/bin/python bench/bench_vae_decode.py``. The real channel widths
(128, 256, 512, 512) with random weights (one file, shared by all variants) decode a
[1, 16, 5, 32, 32] latent to 17 frames of 256x256. Every variant runs in a fresh child process
so its peak RSS is its own: ``load_rss`` is the resident size after loading the weights,
``decode_peak`` the high-water mark during the decode alone (VmHWM reset via
/proc/self/clear_refs), and ``process_peak`` the whole child's ru_maxrss. Seams are measured as
PSNR (range 0..1) of each tiled decode against the SAME implementation decoding untiled, so
ComfyUI's non-causal mid attention does not count against it. Writes bench/results/vae_decode.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
COMFY = ROOT / ".comfyui" / "ComfyUI"
RESULTS = ROOT / "bench" / "results" / "vae_decode.json"
LATENT = (1, 16, 5, 32, 32)  # -> 17 x 256 x 256
TILE_PX, OVERLAP_PX = 128, 32  # the same spatial tiles for every tiled variant

# variant -> (implementation, tiled?, PSNR references in order of preference). diffusers'
# untiled decode equals ours (parity-tested), so ours_untiled stands in for it by default.
VARIANTS = {
    "ours_untiled": ("ours", False, ()),
    "ours_tiled": ("ours", True, ("ours_untiled",)),
    "ours_tiled_per_tile_norm": ("ours", True, ("ours_untiled",)),
    "diffusers_untiled": ("diffusers", False, ()),
    "diffusers_tiled": ("diffusers", True, ("diffusers_untiled", "ours_untiled")),
    "comfy_untiled": ("comfy", False, ()),
    "comfy_tiled": ("comfy", True, ("comfy_untiled",)),
}
DEFAULT = ["ours_untiled", "ours_tiled", "diffusers_tiled", "comfy_untiled", "comfy_tiled"]


def _rss_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _hwm() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _ours(variant: str, weights: Path, z: torch.Tensor, dtype: torch.dtype):
    sys.path.insert(0, str(ROOT))
    from hunyuan.vae import tiled
    from hunyuan.vae.loader import load_vae
    from hunyuan.vae.tiling import TileSpec

    vae = load_vae(weights, dtype=dtype)
    shared = not variant.endswith("per_tile_norm")
    spec = TileSpec(tile=TILE_PX // 8, overlap=OVERLAP_PX // 8, chunk=2, shared_norm=shared) if VARIANTS[variant][1] else None
    return lambda: ((tiled.decode(vae, z, spec) + 1) / 2).clamp(0, 1)[0].permute(1, 2, 3, 0)


def _diffusers(variant: str, weights: Path, z: torch.Tensor, dtype: torch.dtype):
    from diffusers import AutoencoderKLHunyuanVideo

    with torch.device("meta"):  # no throw-away random init: same loading cost as ours
        vae = AutoencoderKLHunyuanVideo()
    vae.load_state_dict({k: v.to(dtype) for k, v in load_file(str(weights)).items()}, assign=True)
    vae.eval()
    if VARIANTS[variant][1]:
        stride = TILE_PX - OVERLAP_PX
        vae.enable_tiling(tile_sample_min_height=TILE_PX, tile_sample_min_width=TILE_PX,
                          tile_sample_stride_height=stride, tile_sample_stride_width=stride)
    else:
        vae.use_framewise_decoding = False
    return lambda: ((vae.decode(z.to(dtype)).sample.float() + 1) / 2).clamp(0, 1)[0].permute(1, 2, 3, 0)


def _comfy(variant: str, weights: Path, z: torch.Tensor, dtype: torch.dtype):
    sys.path.append(str(COMFY))
    from comfy.cli_args import args

    args.cpu = True
    import comfy.sd

    sys.path.insert(0, str(ROOT))
    from hunyuan.vae.keys import diffusers_to_comfy

    vae = comfy.sd.VAE(sd=diffusers_to_comfy(load_file(str(weights))), dtype=dtype)
    if VARIANTS[variant][1]:
        t = TILE_PX // 8
        return lambda: vae.decode_tiled(z, tile_x=t, tile_y=t, overlap=OVERLAP_PX // 8)[0]
    return lambda: vae.decode(z)[0]


def child(variant: str, weights: Path, latent: Path, out: Path, dtype: torch.dtype) -> dict:
    torch.set_num_threads(2)
    z = load_file(str(latent))["z"]
    make = {"ours": _ours, "diffusers": _diffusers, "comfy": _comfy}[VARIANTS[variant][0]]
    with torch.no_grad():
        run = make(variant, weights, z, dtype)
        load_rss = _rss_now()
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to "now"
        start = time.perf_counter()
        frames = run().float().contiguous()
        seconds = time.perf_counter() - start
    save_file({"frames": frames}, str(out))
    return {
        "variant": variant, "seconds": round(seconds, 2), "shape": list(frames.shape),
        "load_rss_mb": round(load_rss / 2**20), "decode_peak_mb": round(_hwm() / 2**20),
        "process_peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return round((10 * torch.log10(1 / ((a - b) ** 2).mean().clamp_min(1e-12))).item(), 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="*", default=DEFAULT, choices=list(VARIANTS))
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="bf16 is the fast CPU dtype here")
    parser.add_argument("--child", nargs=3, metavar=("VARIANT", "WEIGHTS", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--latent", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    if args.child:
        variant, weights, out = args.child
        print(json.dumps(child(variant, Path(weights), args.latent, Path(out), dtype)))
        return 0

    sys.path.insert(0, str(ROOT))
    from hunyuan.vae.config import HUNYUAN_VIDEO_VAE
    from hunyuan.vae.tiny import random_state_dict

    rows, frames = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        weights, latent = Path(tmp) / "vae.safetensors", Path(tmp) / "z.safetensors"
        save_file(random_state_dict(HUNYUAN_VIDEO_VAE, seed=0, dtype=dtype), str(weights))
        save_file({"z": torch.randn(LATENT, generator=torch.Generator().manual_seed(0))}, str(latent))
        for variant in args.variants:
            out = Path(tmp) / f"{variant}.safetensors"
            cmd = [sys.executable, __file__, "--child", variant, str(weights), str(out),
                   "--latent", str(latent), "--dtype", args.dtype]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode:
                print(f"{variant} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            rows[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
            frames[variant] = load_file(str(out))["frames"]
            print(f"done {variant}: {rows[variant]}", flush=True)
    for variant, row in rows.items():
        ref = next((r for r in VARIANTS[variant][2] if r in frames), None)
        row["psnr_vs_untiled"] = psnr(frames[variant], frames[ref]) if ref else None
        row["psnr_reference"] = ref
    _report(rows, args.dtype)
    return 0


def _report(rows: dict, dtype: str) -> None:
    print(f"\nVAE decode {LATENT} -> 17x256x256, real widths, random weights, {dtype}, "
          f"tiles {TILE_PX}px overlap {OVERLAP_PX}px")
    print(f"{'variant':<20}{'time s':>8}{'load MB':>9}{'peak MB':>9}{'peak-load':>10}{'PSNR dB':>9}")
    for v, r in rows.items():
        print(f"{v:<20}{r['seconds']:>8}{r['load_rss_mb']:>9}{r['decode_peak_mb']:>9}"
              f"{r['decode_peak_mb'] - r['load_rss_mb']:>10}{str(r['psnr_vs_untiled']):>9}")
    ours, theirs = rows.get("ours_tiled"), rows.get("diffusers_tiled")
    summary = {}
    if ours and theirs:
        summary = {
            "peak_ratio_ours_vs_diffusers": round(ours["decode_peak_mb"] / theirs["decode_peak_mb"], 3),
            "working_set_ratio_ours_vs_diffusers": round(
                (ours["decode_peak_mb"] - ours["load_rss_mb"]) / max(1, theirs["decode_peak_mb"] - theirs["load_rss_mb"]), 3),
        }
        print(summary)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"latent": LATENT, "dtype": dtype, "tile_px": TILE_PX, "overlap_px": OVERLAP_PX,
                                   "rows": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())

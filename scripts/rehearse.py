"""Real-size rehearsal on the CPU (``make rehearse``; not part of the tests or CI).

    .venv/bin/python scripts/rehearse.py [--double 20 --single 40 --llm-layers 32] [--work DIR]

Writes random weights at the real widths in the files users download, streamed tensor by tensor
so no step holds a whole file in memory: ComfyUI's repacked DiT in bf16
(``hunyuan_video_t2v_720p_bf16.safetensors``), ``llava_llama3_fp8_scaled.safetensors`` (fp8 +
per-tensor ``scale_weight`` + the ``scaled_fp8`` marker), ``clip_l.safetensors`` and the VAE in
bf16. Then runs each stage in a fresh process through the pack's loaders (text encode with the
real tokenizers; one DiT step with the bf16 file loaded as fp8 storage; VAE decode of that
latent, written as an mp4) and records, per stage, the wall time and the peak RSS (``VmHWM``)
next to the planner's prediction. The defaults are partial depth (2 double + 4 single DiT blocks,
4 LLM layers: about 5 GB of files and a few GB of RAM on a shared machine); the full depth needs
about 36 GB of disk and more RAM than a 24 GiB machine shared with others should give (see README).
Results: ``bench/results/rehearse.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import reset_peak, rss_now, rss_peak  # noqa: E402

FILES = {"dit": "diffusion_models/hunyuan_video_t2v_720p_bf16.safetensors",
         "llm": "text_encoders/llava_llama3_fp8_scaled.safetensors",
         "clip": "text_encoders/clip_l.safetensors", "vae": "vae/hunyuan_video_vae_bf16.safetensors"}
TENCENT_PT = "diffusion_models/mp_rank_00_model_states_fp8.pt"  # with --tencent-pt; its scales in ..._fp8_map.pt
FP8 = torch.float8_e4m3fn
PROMPT = "A cat walks on the grass, realistic style."


def _random(name: str, meta: torch.Tensor, std: float = 0.02) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    if meta.dtype == FP8:
        return (torch.randn(meta.shape, generator=g) * 8 * std).to(FP8)
    if meta.ndim == 0 or name.endswith("scale_weight"):
        return torch.full(meta.shape, 1 / 8, dtype=meta.dtype)
    base = 1.0 if "norm" in name and name.endswith("weight") and meta.ndim == 1 else 0.0
    return (base + std * torch.randn(meta.shape, generator=g)).to(meta.dtype)


def _dit_config(args):
    from hunyuan.dit import REAL

    return dataclasses.replace(REAL, depth_double=args.double, depth_single=args.single)


def _write(path: Path, shapes: dict, metadata: dict | None = None) -> float:
    from hunyuan.tools.split_llava import write_safetensors

    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    write_safetensors(path, shapes, metadata, make=_random)
    return time.perf_counter() - start


def write_files(args) -> dict:
    from hunyuan.dit import HunyuanVideoDiT
    from hunyuan.text.layouts import clip_text_layout, llama_layout
    from hunyuan.text.loader import CLIP_L, LLAVA_LLAMA3_8B
    from hunyuan.vae import HUNYUAN_VIDEO_VAE, CausalVAE

    with torch.device("meta"):
        dit = HunyuanVideoDiT(_dit_config(args), dtype=torch.bfloat16)
        vae = CausalVAE(HUNYUAN_VIDEO_VAE).to(torch.bfloat16)
    m = lambda shape, dtype: torch.empty(shape, dtype=dtype, device="meta")  # noqa: E731
    llm = {}
    c = LLAVA_LLAMA3_8B
    for key, shape in llama_layout(vocab=c["vocab_size"], hidden=c["hidden_size"], intermediate=c["intermediate_size"],
                                   layers=args.llm_layers, heads=c["num_attention_heads"],
                                   kv_heads=c["num_key_value_heads"], head_dim=128).items():
        fp8 = key.startswith("layers.") and len(shape) == 2
        llm["model." + key] = m(shape, FP8 if fp8 else torch.float16)
        if fp8:
            llm["model." + key[: -len("weight")] + "scale_weight"] = m((), torch.float32)
    llm["scaled_fp8"] = m((0,), FP8)
    clip = {k: m(s, torch.float16) for k, s in clip_text_layout(
        vocab=CLIP_L["vocab_size"], hidden=CLIP_L["hidden_size"], intermediate=CLIP_L["intermediate_size"],
        layers=CLIP_L["num_hidden_layers"], positions=CLIP_L["max_position_embeddings"]).items()}
    clip["text_projection.weight"] = m((768, 768), torch.float16)
    out = {}
    for key, shapes in (("dit", {"model.diffusion_model." + k: v for k, v in dit.state_dict().items()}),
                        ("llm", llm), ("clip", clip), ("vae", vae.state_dict())):
        path = args.work / "models" / FILES[key]
        seconds = None if path.is_file() and args.reuse else _write(path, shapes)
        out[key] = {"file": FILES[key], "gb": path.stat().st_size / 1e9, "write_s": seconds}
        print(f"rehearse: {FILES[key]} ({out[key]['gb']:.2f} GB) written in {seconds} s", flush=True)
    return out


def write_tencent_pt(args) -> dict:
    """Tencent's fp8 DiT as shipped: ``torch.save({"module": ...})`` with the block Linear weights in
    e4m3fn, the rest bf16, and the per-layer scales in ``<name>_map.pt``. The tensors are written
    to a scratch safetensors file first (streamed) and saved from views of its map, so neither step
    holds the 13 GB in the process's own memory; the scratch file is deleted after."""
    from safetensors import safe_open

    from hunyuan.dit import HunyuanVideoDiT
    from hunyuan.dit.checkpoint import fp8_map_path

    path = args.work / "models" / TENCENT_PT
    if path.is_file() and fp8_map_path(path).is_file() and args.reuse:
        return {"file": TENCENT_PT, "gb": path.stat().st_size / 1e9, "write_s": None}
    with torch.device("meta"):
        dit = HunyuanVideoDiT(_dit_config(args), dtype=torch.bfloat16)
    fp8 = {k for k, v in dit.state_dict().items() if k.startswith(("double_blocks.", "single_blocks."))
           and k.endswith(".weight") and v.ndim == 2}
    shapes = {k: v.to(FP8) if k in fp8 else v for k, v in dit.state_dict().items()}
    scratch = path.with_suffix(".scratch.safetensors")
    seconds = _write(scratch, shapes)
    start = time.perf_counter()
    with safe_open(str(scratch), framework="pt") as f:
        torch.save({"module": {k: f.get_tensor(k) for k in shapes}}, str(path))
    torch.save({k[: -len(".weight")]: torch.tensor([1 / 8]) for k in fp8}, str(fp8_map_path(path)))
    scratch.unlink()
    row = {"file": TENCENT_PT, "gb": path.stat().st_size / 1e9, "write_s": seconds + time.perf_counter() - start}
    print(f"rehearse: {TENCENT_PT} ({row['gb']:.2f} GB) written in {row['write_s']:.0f} s", flush=True)
    return row


def stage_dit_pt(args, models: Path) -> dict:
    """Load only: Tencent's fp8 .pt as fp8 storage. Its fp8 weights stay views of the file's map
    (page cache), so the process's own (anonymous) memory holds only the bf16 rest."""
    from bench.common import rss_anon
    from hunyuan.dit.checkpoint import load_dit

    anon = rss_anon()
    dit = load_dit(models / TENCENT_PT, dtype=torch.bfloat16, weight_dtype=FP8)
    loaded, load_peak = time.perf_counter(), rss_peak()
    weights = dit.state_dict().values()
    # read every weight once (a step would): the file's pages come in, the process's own memory stays
    checksum = sum(float(t.float().abs().sum()) for t in weights)
    size = sum(t.numel() * t.element_size() for t in weights)
    return {"loaded_at": loaded, "load_peak": load_peak, "predicted_bytes": size, "anon_grown_bytes": rss_anon() - anon,
            "fp8_weight_bytes": sum(t.numel() for t in weights if t.dtype == FP8), "checksum": checksum,
            "predicted": "the loaded model's tensors (fp8 weights as views of the file; VmHWM counts their pages)",
            "files": ["dit_pt"]}


def stage_text(args, models: Path) -> dict:
    from hunyuan import text as te
    from hunyuan.text.tiny import clip_tokenizer_dir, llama_tokenizer_dir
    from scripts.comfy_server import default_comfyui_dir

    llm = te.load_llm(models / FILES["llm"], te.parse_dtype("fp8_e4m3fn (bf16 compute)"))
    clip = te.load_clip(models / FILES["clip"], te.parse_dtype("bf16"))
    loaded, load_peak = time.perf_counter(), rss_peak()
    comfyui = default_comfyui_dir()
    encoders = te.TextEncoders(llm, te.load_llm_tokenizer(llama_tokenizer_dir(comfyui)), clip,
                               te.load_clip_tokenizer(clip_tokenizer_dir(comfyui)))
    embeds = te.encode_prompts(encoders, [PROMPT], te.EncodeOptions(template=te.get_template("video")), "cpu")
    first = embeds.positive
    torch.save({"states": first.states, "mask": first.mask, "pooled": first.pooled}, args.work / "text.pt")
    weights = sum(t.numel() * t.element_size() for m in (llm, clip) for t in list(m.parameters()) + list(m.buffers()))
    return {"loaded_at": loaded, "load_peak": load_peak, "predicted_bytes": weights, "predicted": "resident weights (fp8 LLM + bf16 CLIP)",
            "files": ["llm", "clip"]}


def stage_dit(args, models: Path) -> dict:
    from hunyuan.conditioning import RefinedConditioning, TextEmbeds
    from hunyuan.dit import precompute_refined_text
    from hunyuan.dit.checkpoint import load_dit
    from hunyuan.memory import estimate_sampling_memory
    from hunyuan.sampling import flow_sigmas, latent_shape, seeded_noise
    from hunyuan.sampling.pipeline import sample_video

    dit = load_dit(models / FILES["dit"], dtype=torch.bfloat16, weight_dtype=FP8)
    loaded, load_peak = time.perf_counter(), rss_peak()
    sigmas = flow_sigmas(1)
    refiner = dit.detach_refiner()
    refined = precompute_refined_text(refiner, TextEmbeds(**torch.load(args.work / "text.pt")), sigmas,
                                      device="cpu", dtype=torch.bfloat16)
    size = {"width": args.width, "height": args.height, "frames": args.frames}
    latent = sample_video(dit, RefinedConditioning(refined), sigmas, seeded_noise(0, latent_shape(1, **size)))
    torch.save(latent, args.work / "latent.pt")
    est = estimate_sampling_memory(dit.config, **size, text_tokens=refined.tokens.shape[2], steps=1,
                                   weight_dtype=FP8, compute_dtype=torch.bfloat16)
    refiner_bytes = sum(p.numel() * p.element_size() for p in refiner.parameters())
    return {"loaded_at": loaded, "load_peak": load_peak, "predicted_bytes": est.peak_bytes + refiner_bytes,
            "predicted": "hunyuan.memory sampling peak (fp8 storage, 1 step) + the detached refiner", "files": ["dit"]}


def stage_vae(args, models: Path) -> dict:
    from bench.bench_pipeline import write_mp4
    from hunyuan.vae import load_vae
    from hunyuan.vae.tiled import decode
    from hunyuan.vae.tiling import TileSpec, estimate_peak

    vae = load_vae(models / FILES["vae"], dtype=torch.bfloat16)
    loaded, load_peak = time.perf_counter(), rss_peak()
    latent = torch.load(args.work / "latent.pt").to(torch.bfloat16)
    spec = TileSpec(tile=0, overlap=0, chunk=0)
    video = decode(vae, latent, spec)
    write_mp4(((video[0].permute(1, 2, 3, 0) + 1) / 2).float(), args.work / "rehearse.mp4", 24)
    weights = sum(p.numel() * p.element_size() for p in vae.parameters())
    return {"loaded_at": loaded, "load_peak": load_peak, "predicted_bytes": weights + estimate_peak(spec, tuple(latent.shape)),
            "predicted": "VAE weights + hunyuan.vae.tiling.estimate_peak", "video": str(args.work / "rehearse.mp4"),
            "files": ["vae"]}


STAGES = {"text": stage_text, "dit": stage_dit, "vae": stage_vae, "dit_pt": stage_dit_pt}


def run_child(args) -> None:
    """One stage in this fresh process: peak RSS counted from after the imports."""
    import hunyuan.text  # noqa: F401  (imports are not the stage's memory)

    base = rss_now()
    reset_peak()
    start = time.perf_counter()
    row = STAGES[args.stage](args, args.work / "models")
    end = time.perf_counter()
    row.update(load_s=row.pop("loaded_at") - start, run_s=end - start, peak_rss_bytes=rss_peak() - base,
               load_peak_rss_bytes=row.pop("load_peak") - base, base_rss_bytes=base)
    row["measured_over_predicted"] = row["peak_rss_bytes"] / row["predicted_bytes"]
    # a loader that reads a whole safetensors file through its memory map has the mapped pages
    # resident next to the converted weights (reclaimable, but counted in VmHWM); the DiT loader
    # reads one block at a time, so for it the file term is an upper bound
    row["file_bytes"] = sum((args.work / "models" / {**FILES, "dit_pt": TENCENT_PT}[k]).stat().st_size
                            for k in row["files"])
    row["predicted_with_file_bytes"] = row["predicted_bytes"] + row["file_bytes"]
    row["measured_over_predicted_with_file"] = row["peak_rss_bytes"] / row["predicted_with_file_bytes"]
    print("REHEARSE " + json.dumps(row))


def _argv(args) -> list[str]:
    return ["--work", str(args.work), "--double", str(args.double), "--single", str(args.single),
            "--llm-layers", str(args.llm_layers), "--width", str(args.width), "--height", str(args.height),
            "--frames", str(args.frames)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "_work" / "rehearse")
    parser.add_argument("--double", type=int, default=2, help="DiT double blocks (released: 20)")
    parser.add_argument("--single", type=int, default=4, help="DiT single blocks (released: 40)")
    parser.add_argument("--llm-layers", type=int, default=4, help="LLM layers (released: 32; >= 3 for skip layer 2)")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--reuse", action="store_true", help="keep weight files already in --work (same sizes!)")
    parser.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--tencent-pt", action="store_true",
                        help="also write Tencent's fp8 .pt + _map.pt (13 GB at full depth) and load it as fp8")
    parser.add_argument("--only-tencent-pt", action="store_true", help="just that (the other files may be gone)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "rehearse.json")
    args = parser.parse_args(argv)
    if args.stage:
        run_child(args)
        return 0
    start = time.perf_counter()
    only_pt = args.only_tencent_pt
    report = {"args": {k: str(v) for k, v in vars(args).items()}, "files": {} if only_pt else write_files(args),
              "stages": {}}
    if args.tencent_pt or only_pt:
        report["files"]["dit_pt"] = write_tencent_pt(args)
    stages = [] if only_pt else ["text", "dit", "vae"]
    for stage in stages + (["dit_pt"] if args.tencent_pt or only_pt else []):
        run = subprocess.run([sys.executable, __file__, "--stage", stage, *_argv(args)], capture_output=True, text=True)
        lines = [x for x in run.stdout.splitlines() if x.startswith("REHEARSE ")]
        if run.returncode or not lines:
            print(run.stdout[-3000:], run.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"rehearse: stage {stage} failed (exit {run.returncode})")
        report["stages"][stage] = row = json.loads(lines[-1][len("REHEARSE "):])
        print(f"rehearse: {stage}: load {row['load_s']:.1f} s (peak {row['load_peak_rss_bytes'] / 2**30:.2f} GiB), "
              f"total {row['run_s']:.1f} s, peak RSS "
              f"{row['peak_rss_bytes'] / 2**30:.2f} GiB vs predicted {row['predicted_bytes'] / 2**30:.2f} GiB "
              f"({row['measured_over_predicted']:.2f}x), vs that + the mapped file "
              f"{row['predicted_with_file_bytes'] / 2**30:.2f} GiB ({row['measured_over_predicted_with_file']:.2f}x)",
              flush=True)
    report["wall_s"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    if "dit_pt" in report["stages"]:
        row = report["stages"]["dit_pt"]
        print(f"rehearse: dit_pt: the process's own memory grew {row['anon_grown_bytes'] / 2**30:.2f} GiB for "
              f"{row['fp8_weight_bytes'] / 2**30:.2f} GiB of fp8 weights kept in the file's map", flush=True)
    print(f"rehearse: {report['wall_s']:.0f} s in all; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Whole-pipeline wall time of the tiny demo: through a real ComfyUI's API vs the same graph in-process.

    .venv/bin/python bench/bench_pipeline.py [--repeats 11] [--workflow workflows/t2v_basic_api.json]

Both sides use the demo's files and sizes: the tiny random weights of
``hunyuan.tools.make_tiny_models --real-names`` in a fresh ComfyUI base directory, and the example
workflow shrunk by ``scripts/smoke_size.py`` (64x48, 9 frames, 3 steps).

* API: ``scripts/comfy_server.ComfyServer`` starts ComfyUI with the pack; each run POSTs the graph
  to ``/prompt`` and polls ``/history`` every 10 ms until it is done (client wall time; the
  server's own execution_start -> execution_success time is recorded too).
* In-process: this process loads the same files with the workflow's loader settings and calls
  the same stages through ``hunyuan/`` (encode -> token refiner -> sampler -> tiled decode) and
  writes the mp4 with PyAV as ComfyUI's Save Video does (h264, yuv420p).

Warm runs: both sides first run once (that loads the models; its time is kept as "first run"),
then every repeat changes the prompt and the seed, so that ComfyUI re-executes everything but
the three loaders (their outputs are cached, as in-process keeps its loaded models). The two
sides take turns, alternating which goes first. The ratio API / in-process is the overhead of
ComfyUI plus the pack's node layer. The first repeat's two videos are decoded and compared.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, ratios, rss_peak, spread, write_json  # noqa: E402
from scripts.comfy_server import ComfyServer, JobFailed, default_comfyui_dir, execution_error  # noqa: E402
from scripts.smoke_size import SMOKE_INPUTS, shrink  # noqa: E402

DEFAULT_WORKFLOW = ROOT / "workflows" / "t2v_basic_api.json"
POLL_S = 0.01


def node(workflow: dict, class_type: str) -> dict:
    """The inputs of the (only) node of ``class_type`` in an API-format workflow."""
    found = [n["inputs"] for n in workflow.values() if n["class_type"] == class_type]
    if len(found) != 1:
        raise ValueError(f"workflow has {len(found)} {class_type} nodes, expected exactly 1")
    return found[0]


def variant(workflow: dict, run: int) -> dict:
    """The workflow with a new prompt and seed for ``run`` (so nothing but the loaders is cached)."""
    out = copy.deepcopy(workflow)
    encode = node(out, "HunyuanVideoTextEncode")
    encode["prompt"] = f"{encode['prompt']} (run {run})"
    node(out, "HunyuanVideoSampler")["seed"] = 1000 + run
    return out


def server_dtypes(log: str) -> dict:
    """The compute dtypes the server's DiT and VAE loaders chose, from their log lines."""
    dit = re.search(r"HunyuanVideo DiT .*: compute torch\.(\w+)", log)
    vae = re.search(r"HunyuanVideo VAE .*, torch\.(\w+)", log)
    if not dit or not vae:
        raise RuntimeError("the server log does not say which dtypes the DiT and VAE loaders chose")
    return {"dit": dit.group(1), "vae": vae.group(1)}


class InProcess:
    """The workflow's stages called through hunyuan/, models loaded once (like ComfyUI's cache)."""

    def __init__(self, models: Path, workflow: dict, dtypes: dict):
        import torch

        from hunyuan.dit.checkpoint import load_dit
        from hunyuan.text import (
            TextEncoders,
            load_clip,
            load_clip_tokenizer,
            load_llm,
            load_llm_tokenizer,
            parse_dtype,
        )
        from hunyuan.text.tiny import clip_tokenizer_dir, llama_tokenizer_dir
        from hunyuan.vae.loader import load_vae

        te = node(workflow, "HunyuanVideoTextEncoderLoader")
        choice = parse_dtype(te["dtype"])
        llm, clip = self._text_path(models, te["llm"], "LLM"), self._text_path(models, te["clip"], "clip")
        self.text = TextEncoders(
            load_llm(llm, choice), load_llm_tokenizer(llm if (llm / "tokenizer.json").is_file() else llama_tokenizer_dir(default_comfyui_dir())),
            load_clip(clip, choice), load_clip_tokenizer(clip if (clip / "vocab.json").is_file() else clip_tokenizer_dir(default_comfyui_dir())),
        )
        dit = node(workflow, "HunyuanVideoDiTLoader")
        self.dit = load_dit(models / "diffusion_models" / dit["dit_name"], dtype=getattr(torch, dtypes["dit"])).eval()
        self.dit.attention_backend = dit["attention"]
        self.refiner = self.dit.detach_refiner()
        vae = node(workflow, "HunyuanVideoVAELoader")
        self.vae = load_vae(models / "vae" / vae["vae_name"], dtype=getattr(torch, dtypes["vae"])).eval()

    @staticmethod
    def _text_path(models: Path, name: str, folder: str) -> Path:
        candidate = models / folder / name
        return candidate if candidate.is_dir() else models / "text_encoders" / name

    def run(self, workflow: dict, out: Path) -> None:
        import torch

        from hunyuan.conditioning import RefinedConditioning
        from hunyuan.dit import precompute_refined_text, resolve_backend
        from hunyuan.sampling import flow_sigmas, latent_shape, seeded_noise
        from hunyuan.sampling.pipeline import sample_video
        from hunyuan.text import EncodeOptions, encode_prompts, get_template

        enc, sch, smp = (node(workflow, k) for k in ("HunyuanVideoTextEncode", "HunyuanVideoScheduler", "HunyuanVideoSampler"))
        options = EncodeOptions(get_template(enc["template"], enc["custom_template"]), enc["hidden_state_skip_layer"],
                                enc["apply_final_norm"])
        negative = [enc["negative_prompt"]] if enc["negative_prompt"].strip() else None
        sigmas = flow_sigmas(sch["steps"], sch["shift"], sch["denoise"])
        _, attn = resolve_backend(self.dit.attention_backend, "cpu")
        with torch.inference_mode():
            embeds = encode_prompts(self.text, [enc["prompt"]], options, "cpu", negative=negative)
            refined = [precompute_refined_text(self.refiner, e, sigmas, device="cpu", dtype=self.dit.compute_dtype,
                                               attn=attn) for e in (embeds.positive, embeds.negative) if e is not None]
            cond = RefinedConditioning(refined[0], refined[1] if len(refined) > 1 else None)
            noise = seeded_noise(smp["seed"], latent_shape(1, smp["width"], smp["height"], smp["frames"]))
            latent = sample_video(self.dit, cond, sigmas, noise, cfg=smp["cfg"], embedded_guidance=smp["embedded_guidance"],
                                  solver=smp["solver"], device="cpu")
            frames = self.decode(latent, node(workflow, "HunyuanVideoVAEDecode"))
        write_mp4(frames, out, node(workflow, "CreateVideo")["fps"])

    def decode(self, latent, settings: dict):
        """The VAE Decode node's tiling choice on a CPU (free memory = available RAM), then decode."""
        import psutil

        from hunyuan.vae import tiled
        from hunyuan.vae.tiling import TileSpec, auto_tiling

        shared = settings["shared_norm"]
        if settings["tiling"] == "off":
            spec = None
        elif settings["tiling"] == "custom":
            tile = settings["tile_size"] // 8
            spec = TileSpec(tile, min(settings["tile_overlap"] // 8, max(tile - 1, 0)), settings["temporal_chunk"], shared)
        else:
            widest = self.vae.config.block_channels[0]
            size = next(self.vae.parameters()).element_size()
            auto = auto_tiling(psutil.virtual_memory().available, latent.shape, widest, size)
            spec = TileSpec(auto.tile, auto.overlap, auto.chunk, shared_norm=shared)
        video = tiled.decode(self.vae, latent, spec)
        frames = video.add_(1).div_(2).clamp_(0, 1).permute(0, 2, 3, 4, 1)
        return frames.reshape(-1, *frames.shape[2:])


def write_mp4(frames, path: Path, fps: float) -> None:
    """frames [N, H, W, 3] in 0..1 -> an h264/yuv420p mp4, as ComfyUI's Save Video writes it."""
    import av
    import torch

    pixels = (frames * 255).clamp(0, 255).to(torch.uint8).numpy()
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("h264", rate=Fraction(round(fps * 1000), 1000))
        stream.width, stream.height, stream.pix_fmt = pixels.shape[2], pixels.shape[1], "yuv420p"
        for image in pixels:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        container.mux(stream.encode())


def decoded(path: Path):
    import av
    import numpy as np

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def api_run(server: ComfyServer, workflow: dict) -> tuple[float, float | None, Path]:
    """(client wall seconds, server execution seconds, the video written) of one queued graph."""
    start = time.perf_counter()
    status, body = server.submit(workflow)
    if status != 200:
        raise JobFailed(f"prompt rejected ({status}): {json.dumps(body)[:2000]}", body)
    prompt_id = body["prompt_id"]
    while True:
        entry = server.get(f"/history/{prompt_id}").get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            break
        if time.perf_counter() - start > 300:
            raise TimeoutError(f"job {prompt_id} did not finish in 300 s")
        time.sleep(POLL_S)
    wall = time.perf_counter() - start
    if entry["status"].get("status_str") != "success":
        raise JobFailed(f"job failed: {execution_error(entry)}", entry)
    stamps = {kind: data.get("timestamp") for kind, data in entry["status"].get("messages", [])}
    started, done = stamps.get("execution_start"), stamps.get("execution_success")
    videos = [p for p in server.output_files(entry) if p.suffix == ".mp4"]
    if not videos:
        raise RuntimeError("the API run wrote no mp4")
    return wall, (done - started) / 1000 if started and done else None, videos[-1]


def measure(workflow: dict, repeats: int, work: Path) -> dict:
    from hunyuan.tools.make_tiny_models import write_all

    models = work / "models"
    write_all(models, seed=0, comfyui=default_comfyui_dir(), real_names=True)
    start = time.perf_counter()
    server = ComfyServer(work).start()
    startup = time.perf_counter() - start
    try:
        first_api = api_run(server, variant(workflow, 0))[0]
        start = time.perf_counter()
        local = InProcess(models, workflow, server_dtypes(server.log_text()))
        local.run(variant(workflow, 0), work / "local_0.mp4")
        first_local = time.perf_counter() - start
        times = {"api": [], "in_process": []}
        server_exec, same_video = [], None
        for r in range(1, repeats + 1):
            graph = variant(workflow, r)
            for side in (("api", "in_process") if r % 2 else ("in_process", "api")):
                if side == "api":
                    wall, execution, api_video = api_run(server, graph)
                    server_exec.append(execution)
                else:
                    start = time.perf_counter()
                    local.run(graph, work / f"local_{r}.mp4")
                    wall = time.perf_counter() - start
                times[side].append(wall)
            if same_video is None:
                same_video = bool((decoded(api_video) == decoded(work / f"local_{r}.mp4")).all())
        peak_server = rss_peak(server.proc.pid)
    finally:
        server.stop()
    return {
        "seconds": {side: spread(values) for side, values in times.items()}, "raw_seconds": times,
        "server_execution_s": spread([s for s in server_exec if s is not None]) if any(server_exec) else None,
        "raw_server_execution_s": server_exec,
        "overhead_ratio": spread(ratios(times, "api", "in_process")),
        "overhead_s": spread([a - b for a, b in zip(times["api"], times["in_process"])]),
        "first_run_s": {"api": first_api, "in_process_including_load": first_local},
        "server_startup_s": startup, "identical_video": same_video,
        "peak_rss_bytes": {"server": peak_server, "in_process": rss_peak()},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=11,
                        help="pairs of runs; short runs on a shared machine need many (the median ratio is robust)")
    parser.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW)
    parser.add_argument("--out", type=Path, default=RESULTS / "pipeline.json")
    args = parser.parse_args(argv)
    workflow = shrink(json.loads(args.workflow.read_text()))
    with tempfile.TemporaryDirectory(prefix="hyvid_bench_pipeline_") as tmp:
        result = measure(workflow, args.repeats, Path(tmp))
    result.update({"workflow": str(args.workflow.relative_to(ROOT)), "sizes": SMOKE_INPUTS, "repeats": args.repeats,
                   "poll_s": POLL_S})
    write_json(args.out, result)
    s, r = result["seconds"], result["overhead_ratio"]
    print(f"tiny demo, warm: API {s['api']['median']:.3f} s vs in-process {s['in_process']['median']:.3f} s "
          f"(x{r['median']:.2f}, {r['min']:.2f}-{r['max']:.2f}); identical video: {result['identical_video']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
